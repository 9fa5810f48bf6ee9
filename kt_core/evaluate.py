"""After training: how good is the model, class by class, and which images does it get wrong.

Metrics come from scikit-learn (`confusion_matrix`, `precision_recall_fscore_support`) rather
than our own counting: they are the reference implementation users compare against.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from .errors import DatasetError, KTError, RunError

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_device(device: torch.device | str | None, model: nn.Module) -> torch.device:
    if device is None:
        return next((p.device for p in model.parameters()), torch.device("cpu"))
    from .engine import resolve_device  # one place decides what "auto" and "cuda:1" mean

    return resolve_device(str(device)) if isinstance(device, str) else device


@torch.no_grad()
def predict(model: nn.Module, split, device: torch.device | str | None = None,
            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) of `split`, in the split's order, in eval mode."""
    from .data import iter_batches

    device = _resolve_device(device, model)
    was_training = model.training
    model.eval()
    model.to(device)
    logits, labels = [], []
    try:
        for x, y in iter_batches(split, batch_size, shuffle=False):
            logits.append(model(x.to(device)).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise DatasetError("the split to evaluate is empty", "choose a split with images (val or test)")
    return torch.cat(logits), torch.cat(labels).long()


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
    y_true, y_pred = labels.numpy(), predicted.numpy()
    all_labels = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, zero_division=0)
    confusion = confusion_matrix(y_true, y_pred, labels=all_labels)

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
    """A run's trained model and its data, rebuilt exactly as the run's training built them."""

    model: nn.Module
    data: Any  # PreparedData
    cfg: Any  # RunConfig
    run_dir: Path
    checkpoint: str  # "best" or "last", the one loaded
    arch: str | None = None


def load_run(run: str | os.PathLike, checkpoint: str = "best", device=None) -> RunModel:
    """Rebuild a run's model and data from its `config.json` and load its checkpoint.

    `runs.prepare` builds architecture, head and data the way the worker did, so evaluation
    sees the same split, image size and normalization as training; the checkpoint's weights
    then replace the freshly prepared ones. Falls back to `last` when there is no `best` yet.
    """
    from . import runs
    from .worker import load_checkpoint

    run_dir = runs.run_dir(run)
    cfg = runs.load_config(run_dir)
    ckpt = runs.run_checkpoint(run_dir, checkpoint)
    if ckpt.stem != checkpoint:
        log.warning("run %s has no %s checkpoint; using %s", run_dir.name, checkpoint, ckpt.stem)
        checkpoint = ckpt.stem
    prepared = runs.prepare(cfg, device)
    state = load_checkpoint(ckpt)
    try:
        prepared.model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise RunError(f"checkpoint {ckpt} does not fit the model of run {run_dir.name}: {str(exc).splitlines()[0]}",
                       "the run's config.json or its source changed since training; re-run the config") from None
    prepared.model.eval()
    return RunModel(prepared.model, prepared.data, cfg, run_dir, checkpoint, prepared.arch)


def evaluate_run(run: str | os.PathLike, split: str = "val", device: torch.device | str = "cpu",
                 checkpoint: str = "best", batch_size: int = 256, save: bool = True) -> EvalResult:
    """Evaluate a run's checkpoint on its own `val` or `test` split (or `train`).

    With `save`, the result is also written to `RUN/eval/<split>.json` for the Runs page.
    """
    if split not in SPLITS:
        raise KTError(f"unknown split {split!r}", f"valid splits: {', '.join(SPLITS)}")
    loaded = load_run(run, checkpoint)
    data_split = loaded.data.splits().get(split)
    if data_split is None or len(data_split) == 0:
        have = ", ".join(k for k, v in loaded.data.splits().items() if len(v)) or "none"
        raise DatasetError(f"run {loaded.run_dir.name}'s dataset has no {split} split", f"splits with images: {have}")
    result = evaluate_model(loaded.model, data_split, loaded.data.class_names, device=device,
                            batch_size=batch_size, split_name=split)
    result.run, result.checkpoint = loaded.run_dir.name, loaded.checkpoint
    run_dir = loaded.run_dir
    if save:
        from .runs import write_json_atomic

        (run_dir / "eval").mkdir(exist_ok=True)
        write_json_atomic(run_dir / "eval" / f"{split}.json", result.to_dict())
    log.info("run %s, %s split: accuracy %.4f on %d images", run_dir.name, split, result.accuracy, result.num_samples)
    return result
