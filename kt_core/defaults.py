"""Defaults that transfer: what a run gets for the settings its config leaves on auto, and the
hints shown when a choice is known to hurt.

One place decides them, so the dashboard, the CLI and the bench train the same run from the
same config. The numbers come from measurements on the demo story (MNIST-5k source, scikit-
learn's digits as target, 3 seeds) and a CIFAR ResNet-20 (issue #19); the bench's `quality`
group re-measures them.

- `epochs: null` (auto): enough optimizer steps for the method, clamped to a range of epochs.
  Training only the classifier on cached features is nearly free, so it gets many short epochs
  (at 5 epochs feature extraction reached 0.602 on the demo story where 30 gave 0.845);
  training the whole network costs a full pass per epoch and needs fewer.
- `early_stopping: null` (auto): on, with a patience of a quarter of the auto epochs (at least
  5), when the epochs are auto; off when the config names its epochs (it asked for N epochs).
  The held-out figure is evaluated on the best-on-validation checkpoint either way.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from .config import RunConfig, TrainConfig
from .transfer import transferred_lr_mult

log = logging.getLogger(__name__)

# (optimizer steps aimed at, fewest epochs, most epochs) per kind of method
HEAD_METHODS = ("feature_extraction", "linear_probe")
STEPS_HEAD, EPOCHS_HEAD = 300, (15, 100)
STEPS_FULL, EPOCHS_FULL = 200, (5, 50)
MIN_PATIENCE = 5

# Adam's rate for transferred layers above which fine-tuning a small target is known to wash
# out what the source learnt (demo story K=1: 0.720 at 1e-3, 0.875 at 3e-4)
RISKY_TRANSFERRED_LR = {"adam": 5e-4, "adamw": 5e-4, "sgd": 0.02}


def auto_epochs(preset: str, train_size: int, batch_size: int) -> int:
    """Epochs for `train_size` training images: the method's step budget, clamped."""
    steps_per_epoch = max(1, math.ceil(train_size / batch_size))
    steps, (low, high) = (STEPS_HEAD, EPOCHS_HEAD) if preset in HEAD_METHODS else (STEPS_FULL, EPOCHS_FULL)
    return int(min(high, max(low, math.ceil(steps / steps_per_epoch))))


def patience(epochs: int) -> int:
    return max(MIN_PATIENCE, epochs // 4)


def resolve_train(cfg: RunConfig, train_size: int) -> TrainConfig:
    """`cfg.train` with the auto settings filled in for a training split of `train_size`."""
    t = cfg.train
    if t.epochs is not None:
        return dataclasses.replace(t, early_stopping=t.early_stopping or None)  # 0 = off, as None is
    epochs = auto_epochs(cfg.plan.preset, train_size, t.batch_size)
    stop = patience(epochs) if t.early_stopping is None else (t.early_stopping or None)
    log.info("auto schedule for %s on %d training images: %d epochs, early stopping %s", cfg.plan.preset,
             train_size, epochs, f"after {stop} epochs without a better val_acc" if stop else "off")
    return dataclasses.replace(t, epochs=epochs, early_stopping=stop)


def describe_auto(cfg: RunConfig, train_size: int | None = None) -> str:
    """In words, what `epochs: null` gives this config (the Train page's caption, the CLI's line)."""
    steps, (low, high) = (STEPS_HEAD, EPOCHS_HEAD) if cfg.plan.preset in HEAD_METHODS else (STEPS_FULL, EPOCHS_FULL)
    rule = f"about {steps} optimizer steps, {low}-{high} epochs"
    if train_size:
        epochs = auto_epochs(cfg.plan.preset, train_size, cfg.train.batch_size)
        stop = patience(epochs) if cfg.train.early_stopping is None else cfg.train.early_stopping
        return (f"auto: {epochs} epochs for {cfg.plan.preset.replace('_', ' ')} on {train_size} training images "
                f"({rule}), early stopping {f'after {stop} epochs without a better val_acc' if stop else 'off'}")
    return (f"auto: {rule} for {cfg.plan.preset.replace('_', ' ')}, decided once the data is loaded, "
            "with early stopping")


def expected_train_size(cfg: RunConfig, num_classes: int | None) -> int | None:
    """The training split's size when the config alone says it (K per class x classes)."""
    if cfg.dataset.per_class and num_classes:
        return cfg.dataset.per_class * num_classes
    return None


def hints(cfg: RunConfig, classes_match: bool | None = None) -> list[str]:
    """Choices in `cfg` that are known to hurt, each with what was measured and what to do.

    `classes_match`: whether the target's classes are the source's (None: not known yet)."""
    plan, t, out = cfg.plan, cfg.train, []
    if plan.preset == "scratch":
        return out
    rate = t.lr * transferred_lr_mult(plan)
    risky = RISKY_TRANSFERRED_LR.get(t.optimizer)
    if plan.preset in ("fine_tune", "freeze_first_n", "discriminative") and risky and rate > risky:
        out.append(f"transferred layers train at lr {rate:.2g} ({t.optimizer}): above about {risky:g}, fine-tuning "
                   "on a small target tends to wash out what the source knows (demo story, K=1: 0.720 at 1e-3, "
                   "0.875 at 3e-4). Lower the learning rate or plan.transferred_lr_mult.")
    if plan.head == "new" and classes_match:
        out.append("a new head although the target's classes are the source's: the source's head already "
                   "knows them (demo story, K=1: 0.791 with a new head, 0.841 with the source's). Use head auto.")
    if plan.preset in HEAD_METHODS and t.epochs is not None and t.epochs < 15:
        out.append(f"{t.epochs} epochs for {plan.preset}: with the features cached an epoch costs almost nothing, "
                   "and 5 epochs reached 0.602 on the demo story where 30 gave 0.845. Leave epochs on auto.")
    if t.early_stopping == 0 and t.epochs is None:
        out.append("early stopping is off with auto epochs: the run trains the longest schedule.")
    return out
