"""After training: how good is the model, class by class, and which images does it get wrong.

Per-class metrics are counted from the confusion matrix (`per_class_metrics`), with
scikit-learn's definitions (`zero_division=0`), and a test holds them to scikit-learn's own,
the reference users compare against. Not scikit-learn itself: importing `sklearn.metrics` took
1.5 s here, which the end of every run paid (TensorBoard's confusion matrix), the demo's
source and transfer on its critical path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import coderef, multitask, progress, rundir, usercode
from .data import iter_batches, load_dataset
from .engine import resolve_device
from .errors import DatasetError, KTError, PathNotAllowedError, RunError, TrustNotAllowedError
from .sources import code_source, load_source, rebuild_model, resolve_run_source

log = logging.getLogger(__name__)

SPLITS = ("val", "test", "train")


@dataclass
class EvalResult:
    """Metrics of one model on one split. `confusion[i][j]`: images of class i predicted as j."""

    split: str
    num_samples: int
    accuracy: float
    loss: float  # mean cross-entropy, no label smoothing
    class_names: list[str]
    confusion: list[list[int]]
    per_class: list[dict[str, Any]]  # {class, precision, recall, f1, support}
    macro_f1: float
    misclassified: list[dict[str, Any]]  # {index, true, predicted, confidence, ...}, most confident first
    num_misclassified: int
    run: str | None = None
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)
    task: str | None = None  # a multi-task run's extra task (None: the target)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_device(device: torch.device | str | None, model: nn.Module) -> torch.device:
    if device is None:
        return next((p.device for p in model.parameters()), torch.device("cpu"))
    return resolve_device(str(device)) if isinstance(device, str) else device


@torch.no_grad()
def predict(model: nn.Module, split, device: torch.device | str | None = None,
            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) of `split`, in the split's order, in eval mode."""
    device = _resolve_device(device, model)
    was_training = model.training
    model.eval()
    model.to(device)
    logits, labels = [], []
    try:
        with progress.task("evaluating", len(split)) as shown:
            for x, y in iter_batches(split, batch_size, shuffle=False):
                logits.append(model(x.to(device)).float().cpu())
                labels.append(y.cpu())
                shown.advance(len(y))
    finally:
        model.train(was_training)
    if not logits:
        raise DatasetError("the split to evaluate is empty", "choose a split with images (val or test)")
    return torch.cat(logits), torch.cat(labels).long()


def confusion_counts(labels: torch.Tensor, predicted: torch.Tensor, k: int) -> np.ndarray:
    """k x k counts: row = true class, column = predicted."""
    return torch.bincount(labels.long() * k + predicted.long(), minlength=k * k).reshape(k, k).numpy()


def per_class_metrics(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix, as scikit-learn's
    `precision_recall_fscore_support(zero_division=0)` defines them: 0 where a ratio has no
    denominator (a class never predicted, a class absent from the split)."""
    hits = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return precision, recall, f1, support


def evaluate_model(model: nn.Module, split, class_names: Sequence[str], device: torch.device | str | None = None,
                   batch_size: int = 256, split_name: str = "val", max_misclassified: int | None = 500) -> EvalResult:
    """Accuracy, loss, confusion matrix, per-class metrics and misclassified examples.

    `misclassified` is sorted by confidence, most confidently wrong first (the ones worth
    looking at), and capped at `max_misclassified` (None: all); `num_misclassified` is the total.
    `index` is the position in the split, so the UI can show the image.
    """
    class_names = [str(c) for c in class_names]
    logits, labels = predict(model, split, device, batch_size)
    k = len(class_names)
    if logits.ndim != 2 or logits.shape[1] != k:
        raise KTError(f"the model outputs {tuple(logits.shape[1:])} scores per image but the data has {k} classes",
                      "evaluate the model on the dataset it was trained for")
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise DatasetError(f"labels run from {int(labels.min())} to {int(labels.max())} but there are {k} class names",
                           "check the dataset's class selection")
    probs = logits.softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    loss = F.cross_entropy(logits, labels).item()
    all_labels = list(range(k))
    confusion = confusion_counts(labels, predicted, k)
    precision, recall, f1, support = per_class_metrics(confusion)

    wrong = (predicted != labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True, stable=True)]
    shown = wrong if max_misclassified is None else wrong[:max_misclassified]
    misclassified = [
        {"index": int(i), "true": class_names[int(labels[i])], "predicted": class_names[int(predicted[i])],
         "confidence": float(confidence[i]), "true_index": int(labels[i]), "predicted_index": int(predicted[i]),
         "true_probability": float(probs[i, labels[i]])}
        for i in shown.tolist()
    ]
    present = support > 0  # macro F1 over the classes this split actually has
    return EvalResult(
        split=split_name,
        num_samples=len(labels),
        accuracy=float((predicted == labels).float().mean()),
        loss=loss,
        class_names=class_names,
        confusion=confusion.tolist(),
        per_class=[{"class": class_names[c], "precision": float(precision[c]), "recall": float(recall[c]),
                    "f1": float(f1[c]), "support": int(support[c])} for c in all_labels],
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        misclassified=misclassified,
        num_misclassified=len(wrong),
    )


# --- runs ---------------------------------------------------------------------------------------

@dataclass
class RunModel:
    """A run's trained model (and, unless asked not to, its data) rebuilt from the run folder."""

    model: nn.Module
    data: Any  # PreparedData, or None from load_run(..., with_data=False)
    cfg: Any  # RunConfig
    run_dir: Path
    checkpoint: str  # "best" or "last", the one loaded
    arch: str | None = None
    input_size: tuple[int, int, int] | None = None  # (C, H, W) the model takes, as trained
    normalization: Any = None  # ((mean, ...), (std, ...)) of its inputs, or None
    class_names: list[str] = field(default_factory=list)
    task: str | None = None  # a multi-task run's extra task whose network this is (None: the target)


# What a run checkpoint must hold for its model and data to be rebuilt without the source.
_CHECKPOINT_KEYS = ("model", "input_size", "class_names")


def load_run(run: str | os.PathLike, checkpoint: str = "best", device=None, with_data: bool = True,
             roots: tuple[Path, ...] | None = None, task: str | None = None) -> RunModel:
    """Rebuild a run's model from its checkpoint, and its data from its `config.json`.

    The architecture comes from the checkpoint (`arch`, its weights' shapes) and its weights are
    loaded strictly; the source's weights are never read, so a run can be evaluated or exported
    after its source file or source run is gone. Only a model that runs its source file's own
    code (TorchScript, a trusted pickled module) needs that file again. The data is prepared
    with the input size and normalization the checkpoint recorded, which gives the same splits,
    image size and normalization as training. Falls back to `last` when there is no `best` yet.
    `roots` (the dashboard): the source file such a model needs, and the dataset, are held to
    the server's roots and trust setting, as when the run was launched. `task`: of a multi-task
    run, the network of that task (the trunk with its head) and its data (None: the target).
    """
    run_dir = rundir.run_dir(run)
    cfg = rundir.load_config(run_dir)
    ckpt = rundir.run_checkpoint(run_dir, checkpoint)
    if ckpt.stem != checkpoint:
        log.warning("run %s has no %s checkpoint; using %s", run_dir.name, checkpoint, ckpt.stem)
    state = rundir.load_checkpoint(ckpt)
    state, dataset = multitask.task_checkpoint(state, cfg, task)
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise RunError(f"checkpoint {ckpt} lacks {', '.join(missing)}: it was not written by KT Studio's trainer",
                       f"train the run again (`{rundir.reproduce_command(run_dir)}`)")
    input_size = tuple(int(v) for v in state["input_size"])
    normalization = state.get("normalization")
    class_names = [str(c) for c in state["class_names"]]
    model, arch = _rebuild(cfg, state, run_dir, ckpt, roots)
    data = None
    if with_data:
        # The data's own (C, H, W) and normalization give the geometry and normalization that the
        # source's gave in training (see datasets.transforms.resolve_geometry / adapt_normalization).
        # An auto content size (the source's framing) is recorded with the checkpoint: named here,
        # it gives the same images without the source.
        if dataset.content_size is None and state.get("content_size") and state["content_size"] != input_size[-1]:
            dataset = replace(dataset, content_size=int(state["content_size"]))
        data = load_dataset(dataset, input_size=input_size, normalization=normalization, roots=roots)
        if [str(c) for c in data.class_names] != class_names:
            raise RunError(f"run {run_dir.name} was trained on classes {class_names}, its dataset now has "
                           f"{[str(c) for c in data.class_names]}",
                           "the dataset changed since training; evaluate on the data the run was trained on")
    if device is not None:
        model.to(device)
    model.eval()
    return RunModel(model, data, cfg, run_dir, ckpt.stem, arch, input_size, normalization, class_names,
                    task if task not in (None, cfg.multitask.primary_name) else None)


def _rebuild(cfg, state: dict, run_dir: Path, ckpt: Path, roots=None) -> tuple[nn.Module, str | None]:
    """The run's model with the checkpoint's weights: from its registered architecture, or (for
    a model that is its source file's own module) from the source file."""
    arch = state.get("arch")
    built_from = state.get("built_from") or _legacy_built_from(cfg, arch)
    if built_from == "code":
        return _rebuild_from_code(cfg, state, run_dir, ckpt, roots), arch
    if built_from == "arch":
        try:
            return rebuild_model(arch, state["model"]), arch
        except (KeyError, RuntimeError) as exc:
            raise RunError(f"checkpoint {ckpt} does not fit architecture {arch} of run {run_dir.name}: "
                           f"{str(exc).splitlines()[0]}",
                           "the checkpoint file was replaced or damaged; re-run the config") from None
    return _rebuild_from_source(cfg, state, run_dir, ckpt, roots), arch


def _rebuild_from_code(cfg, state: dict, run_dir: Path, ckpt: Path, roots=None) -> nn.Module:
    """The user's model code the run's config names (path and hash), with the checkpoint's
    weights; says when the file is gone, and when it changed so that the weights do not fit.
    With `roots` (the dashboard) the code is confined and KT_ALLOW_TRUST=0 refuses it, as at launch."""
    try:
        source = code_source(cfg.source, roots, runs_dir=run_dir.parent)
        change = coderef.recorded_change(source, roots)
        spec = usercode.user_spec(source, roots)
    except (PathNotAllowedError, TrustNotAllowedError):
        raise  # the server's settings, not a missing file: say so as it is
    except KTError as exc:
        raise RunError(f"run {run_dir.name} was trained from model code that cannot be loaded: "
                       f"{exc.message}", exc.hint) from None
    if change:
        log.warning("run %s: %s", run_dir.name, change)
    try:
        return rebuild_model(spec, state["model"])
    except (KeyError, RuntimeError) as exc:
        raise RunError(f"checkpoint {ckpt} does not fit {source.arch}: {str(exc).splitlines()[0]}"
                       + (f"; {change}" if change else ""),
                       "put back the code the run was trained with (its sha256 is in config.json), or re-run the config"
                       ) from None


def _legacy_built_from(cfg, arch: str | None) -> str:
    """For checkpoints written before `built_from` was recorded: architecture and run sources are
    always built from the registry; a file source may be TorchScript or a pickled module, whose
    code is in the file: use the file while it is there, the architecture once it is gone."""
    if not arch:
        return "source"
    if cfg.plan.preset == "scratch":  # a from-scratch baseline is its architecture, whatever the source
        return "arch"
    if cfg.source.kind == "file" and Path(cfg.source.path or "").expanduser().is_file():
        return "source"
    return "arch"


def _rebuild_from_source(cfg, state: dict, run_dir: Path, ckpt: Path, roots=None) -> nn.Module:
    source_cfg = cfg.source
    try:
        source_cfg = resolve_run_source(source_cfg, run_dir.parent)
        src = load_source(source_cfg, num_classes=len(state["class_names"]), in_channels=int(state["input_size"][0]),
                          roots=roots)
    except (PathNotAllowedError, TrustNotAllowedError):
        raise  # the server's settings, not a missing file: say so as it is
    except KTError as exc:
        raise RunError(f"run {run_dir.name}'s model runs the code of its source ({source_cfg.path or source_cfg.arch}), "
                       f"which cannot be loaded: {exc.message}",
                       "put the source file back where the run's config.json says; runs of a registered "
                       "architecture need no source") from None
    try:
        src.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RunError(f"checkpoint {ckpt} does not fit the model of run {run_dir.name}: {str(exc).splitlines()[0]}",
                       "the run's source file changed since training; put the original back or re-run the config") from None
    return src.model


def evaluate_run(run: str | os.PathLike | RunModel, split: str = "val", device: torch.device | str = "cpu",
                 checkpoint: str = "best", batch_size: int = 256, save: bool = True,
                 task: str | None = None) -> EvalResult:
    """Evaluate a run's checkpoint on its own `val` or `test` split (or `train`).

    `run` may be a `RunModel` that `load_run` already gave (the Runs page keeps it for the
    split's images); then `checkpoint` is the one it loaded. With `save`, the result is also
    written to `RUN/eval/<split>.json` for the Runs page (`<split>.<task>.json` for a multi-task
    run's extra task `task`).
    """
    if split not in SPLITS:
        raise KTError(f"unknown split {split!r}", f"valid splits: {', '.join(SPLITS)}")
    loaded = run if isinstance(run, RunModel) else load_run(run, checkpoint, task=task)
    if loaded.data is None:
        raise KTError("the run was loaded without its data", "load it with load_run(run) to evaluate it")
    data_split = loaded.data.splits().get(split)
    if data_split is None or len(data_split) == 0:
        have = ", ".join(k for k, v in loaded.data.splits().items() if len(v)) or "none"
        raise DatasetError(f"run {loaded.run_dir.name}'s dataset has no {split} split", f"splits with images: {have}")
    result = evaluate_model(loaded.model, data_split, loaded.data.class_names, device=device,
                            batch_size=batch_size, split_name=split)
    result.run, result.checkpoint, result.task = loaded.run_dir.name, loaded.checkpoint, loaded.task
    run_dir = loaded.run_dir
    if save:
        try:  # the saved copy is a convenience: a read-only or full run folder still gets its result
            rundir.write_eval(run_dir, split if loaded.task is None else f"{split}.{loaded.task}", result.to_dict())
        except OSError as exc:
            log.warning("run %s: the evaluation was not saved to eval/%s.json (%s)", run_dir.name, split,
                        exc.strerror or exc)
    log.info("run %s, %s split: accuracy %.4f on %d images", run_dir.name, split, result.accuracy, result.num_samples)
    return result
