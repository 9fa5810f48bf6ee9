"""B30: kt_core beside the tools a user would pick instead, PyTorch Lightning and fastai.

Every side trains the same model from the same initial weights on the same tensors in the same
batch order (the engine's (seed, epoch) permutations, sliced as the plain loop slices them),
with torch's own AdamW at the same learning rate and no weight decay, and each is a ratio to the
same plain loop (`bench.plain`), measured in the same process run: whole runs interleaved
(A B C D, D C B A, ...), each summarised by its best timed epoch, the pairs' ratios' median
(`harness.paired_ratio`). Each framework runs as a user would start it, with its defaults:

- kt_core: a run folder with the worker's writers (metrics rows, status, STOP checks,
  checkpoints every epoch), as in B1;
- Lightning: `Trainer` with its default logger (TensorBoard, else CSV) and its default
  checkpoint every epoch, `log_every_n_steps` as kt_core's `log_every`, the loss logged with
  `self.log` at every step as its docs show; no progress bar (no terminal here);
- fastai: `Learner.fit` with its default callbacks (the Recorder's smoothed loss, the training
  loop's events), torch's AdamW through `OptimWrapper`, no progress bar.

The peers are optional (`requirements-bench.txt`); a peer that is not installed is a SKIP in
the detail, with the reason, and without either the figure is a SKIP. The final weights of each
side are compared with the plain loop's: ~0 proves that each did the same work.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import plain
from .figures import B1_MODELS, b1_task, planned_copy, run_config, spread, weight_gap, worker_writers
from .harness import FIGURES, Context, EpochClock, Skip, Target, best, interleave, paired_ratio

log = logging.getLogger(__name__)

PEER_MODELS = ("mlp", "small_cnn")  # per-step-bound and compute-bound, as in B1
assert set(PEER_MODELS) <= set(B1_MODELS)
INSTALL = "pip install -r requirements-bench.txt"


def missing_peers() -> dict[str, str]:
    """Peer name -> why it cannot be measured here (not installed)."""
    missing = {}
    for name, module in (("Lightning", "lightning"), ("fastai", "fastai")):
        if importlib.util.find_spec(module) is None:
            missing[name] = f"{module} is not installed ({INSTALL})"
    return missing


class EpochBatches:
    """The plain loop's batches as an iterable a framework loops over epoch after epoch: each
    epoch iterated is the next, in the engine's (seed, epoch) order. `len()` is the batch count."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        # A generator: an epoch counts from its first batch, so a framework that calls iter() to
        # probe the iterable (Lightning does) does not shift the order of the epochs.
        from kt_core.engine import epoch_generator

        generator = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        yield from plain.shuffled_batches(self.x, self.y, self.batch_size, generator)


@dataclass
class Side:
    """One framework's run: the images/s of each timed epoch and its final weights' gap to plain."""

    rates: list[float]
    model: torch.nn.Module


# --- the sides -------------------------------------------------------------------------------

def plain_side(model, data, cfg, ctx: Context) -> Side:
    t = cfg.train
    net, _ = planned_copy(model, cfg)
    net.to(ctx.device)
    optimizer = plain.make_optimizer(t.optimizer, net.parameters(), t.lr, t.momentum, t.weight_decay)
    clock, batches = EpochClock(ctx.device), EpochBatches(data.train.x, data.train.y, t.batch_size, t.seed)
    for _ in range(t.epochs):
        plain.train_epoch(net, optimizer, iter(batches), ctx.device)
        clock.tick()
    return Side(clock.epoch_rates(len(data.train)), net)


def kt_core_side(model, data, cfg, ctx: Context) -> Side:
    from kt_core.callbacks import Callback
    from kt_core.engine import fit

    clock = EpochClock(ctx.device)

    class Tick(Callback):
        def on_epoch_end(self, *args) -> None:
            clock.tick()

    net, plan = planned_copy(model, cfg)
    with worker_writers(cfg, ctx) as hooks:
        fit(net, data, cfg, plan=plan, callbacks=[*hooks, Tick()], device=ctx.device)
    return Side(clock.epoch_rates(len(data.train)), net)


def lightning_side(model, data, cfg, ctx: Context, run: int) -> Side:
    import lightning as L

    t = cfg.train
    clock = EpochClock(ctx.device)
    net, _ = planned_copy(model, cfg)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return plain.make_optimizer(t.optimizer, self.parameters(), t.lr, t.momentum, t.weight_decay)

    class Tick(L.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            clock.tick()

    with _quiet():
        trainer = L.Trainer(max_epochs=t.epochs, accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
                            devices=1, default_root_dir=str(ctx.workdir / "lightning" / str(run)), callbacks=[Tick()],
                            log_every_n_steps=t.log_every, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Module(), train_dataloaders=EpochBatches(data.train.x, data.train.y, t.batch_size, t.seed))
    return Side(clock.epoch_rates(len(data.train)), net)


def fastai_side(model, data, cfg, ctx: Context) -> Side:
    with _quiet():  # its import's deprecation warnings
        from fastai.callback.core import Callback as FastaiCallback
        from fastai.callback.progress import ProgressCallback  # noqa: F401  (a user's `fastai.*.all` import adds it)
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner
        from fastai.optimizer import OptimWrapper

    t = cfg.train
    clock = EpochClock(ctx.device)
    net, _ = planned_copy(model, cfg)
    net.to(ctx.device)

    class Tick(FastaiCallback):
        order = 100  # after the Recorder: the epoch's own bookkeeping is in the epoch

        def after_epoch(self) -> None:
            clock.tick()

    batches = EpochBatches(data.train.x, data.train.y, t.batch_size, t.seed)
    opt = functools.partial(OptimWrapper, opt=functools.partial(torch.optim.AdamW, lr=t.lr,
                                                                 weight_decay=t.weight_decay))
    learn = Learner(DataLoaders(batches, [], device=ctx.device), net, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=opt, lr=t.lr, wd=t.weight_decay, cbs=[Tick()], path=ctx.workdir / "fastai")
    with learn.no_bar(), learn.no_logging(), _quiet():
        learn.fit(t.epochs, lr=t.lr, wd=t.weight_decay)
    return Side(clock.epoch_rates(len(data.train)), net)


@contextlib.contextmanager
def _quiet():
    """The frameworks' chatter (GPU available, logger chosen, epochs reached, their deprecation
    warnings) stays out of the bench's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


# --- the figure ------------------------------------------------------------------------------

def sides_for(ctx: Context, missing: dict[str, str]) -> dict[str, Callable]:
    sides: dict[str, Callable] = {"plain": plain_side, "kt_core": kt_core_side}
    runs = iter(range(10**6))
    if "Lightning" not in missing:
        sides["Lightning"] = lambda *a: lightning_side(*a, run=next(runs))
    if "fastai" not in missing:
        sides["fastai"] = fastai_side
    return sides


def compare(arch: str, ctx: Context, missing: dict[str, str]) -> tuple[dict[str, float], str]:
    """Each side's ratio to the plain loop on `arch`, and the detail of that model."""
    model, data = b1_task(arch, ctx)
    cfg = run_config(arch, ctx)
    sides = sides_for(ctx, missing)
    gaps: dict[str, float] = {}

    def timed(name: str) -> Callable[[], list[float]]:
        def go() -> list[float]:
            torch.set_num_threads(ctx.threads)  # a framework's import or start must not change it
            torch.manual_seed(cfg.train.seed)
            side = sides[name](model, data, cfg, ctx)
            trained[name] = side.model
            return side.rates
        return go

    trained: dict[str, torch.nn.Module] = {}
    runs = interleave({name: timed(name) for name in sides}, ctx.scale.repeats)
    ratios, parts = {}, []
    for name in sides:
        if name == "plain":
            continue
        gaps[name] = weight_gap(trained[name], trained["plain"])
        ratios[name] = paired_ratio(runs[name], runs["plain"])
        pairs = [best(a) / best(b) for a, b in zip(runs[name], runs["plain"])]
        same = "same final weights" if gaps[name] < 1e-4 else f"FINAL WEIGHTS DIFFER by {gaps[name]:.1e}"
        parts.append(f"{name} {ratios[name]:.2f} (range {spread(pairs)}, {same})")
    parts += [f"{name} SKIP ({why})" for name, why in missing.items()]
    plain_best = best([r for run in runs["plain"] for r in run])
    return ratios, f"{arch}: " + ", ".join(parts) + f"; plain {plain_best:.0f} img/s"


@FIGURES.register("B30", title="peers: kt_core's images/s ratio to the plain loop / the fastest installed peer's "
                               "(PyTorch Lightning, fastai; worst of the MLP and small_cnn)",
                  target=Target(">=", 1.0))
def peers(ctx: Context) -> tuple[float, str]:
    missing = missing_peers()
    if len(missing) == 2:
        raise Skip("neither peer is installed: " + "; ".join(missing.values()))
    standings, details = [], []
    for arch in PEER_MODELS:
        ratios, detail = compare(arch, ctx, missing)
        fastest_peer = max(v for k, v in ratios.items() if k != "kt_core")
        standings.append(ratios["kt_core"] / fastest_peer)
        details.append(detail)
    return min(standings), (f"each side / the same plain loop, median of {ctx.scale.repeats} interleaved runs' best "
                            f"epochs: " + "; ".join(details))
