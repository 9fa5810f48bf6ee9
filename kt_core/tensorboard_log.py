"""TensorBoard event files in every run folder, so `tensorboard --logdir runs` shows KT Studio's
runs beside the user's other work.

`TensorBoardLogger` is an engine callback the worker adds (unless `KT_TENSORBOARD=0`). What it
writes into `RUN/tensorboard/`, with TensorBoard's own writer (`torch.utils.tensorboard`, which
writes through the `tensorboard` package's event-file writer):
- scalars `step/train_loss`, `step/lr`, `step/images_per_s` for each logged step row, and
  `epoch/train_loss`, `epoch/train_acc`, `epoch/val_loss`, `epoch/val_acc`, `epoch/epoch_s`,
  `epoch/lr` for each epoch, all at the optimizer step as TensorBoard's x axis (the same step the
  metrics file has), with the rows' wall time;
- the config as text (`config`);
- at the end, the validation confusion matrix of the final weights as an image
  (`confusion_matrix`, rows = true class) and as a text table.

Off the hot path: the training thread only puts rows on a queue (about a microsecond); a daemon
thread imports TensorBoard (~1 s, which would otherwise delay the first step), builds the protobuf
summaries and hands them to TensorBoard's own asynchronous file writer. A resumed run purges the
events past its checkpoint's step (TensorBoard's `purge_step`), as `metrics.jsonl` is cut back.
Without the `tensorboard` package the run goes on and its log says how to install it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import queue
import threading
from pathlib import Path

import numpy as np

from . import rundir
from .callbacks import Callback
from .engine import FitContext, FitResult

log = logging.getLogger(__name__)

STEP_KEYS = ("train_loss", "lr", "images_per_s")
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "lr")
INSTALL_HINT = "pip install tensorboard"
CELL_PX = 28  # confusion-matrix image: pixels per cell (a 10-class matrix is 280 px square)


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_callbacks(folder: Path, enabled: bool = True) -> list[Callback]:
    """The worker's TensorBoard callback, or none (turned off, or the package is missing: said once)."""
    if not enabled:
        return []
    if not available():
        log.warning("no TensorBoard event files for this run: the tensorboard package is not installed (%s)",
                    INSTALL_HINT)
        return []
    return [TensorBoardLogger(rundir.tensorboard_dir(folder))]


class TensorBoardLogger(Callback):
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Rows handed over that the writer thread has not taken yet (the bench waits on it)."""
        return self._queue.qsize()

    # --- the training thread: rows onto the queue -------------------------------------------

    def on_fit_start(self, ctx: FitContext) -> None:
        config = json.dumps(ctx.cfg.to_dict(), indent=2)
        self._thread = threading.Thread(target=self._drain, args=(ctx.step, config), name="kt-tensorboard", daemon=True)
        self._thread.start()

    def on_step_end(self, ctx: FitContext, row: dict) -> None:
        self._queue.put(("step", row))

    def on_epoch_end(self, ctx: FitContext, row: dict) -> None:
        self._queue.put(("epoch", row))

    def on_fit_end(self, ctx: FitContext, result: FitResult) -> None:
        if ctx.val_split is not None and len(ctx.val_split):
            try:
                from .evaluate import evaluate_model  # here: evaluate imports sources and data, a worker-only cost

                # The loop's own val split and forward: with the feature cache, the head on cached
                # features (almost free), else the model on the images (one more val pass).
                res = evaluate_model(ctx.forward, ctx.val_split, ctx.data.class_names, ctx.device, split_name="val",
                                     max_misclassified=0)
                self._queue.put(("confusion", (np.asarray(res.confusion), list(ctx.data.class_names), ctx.step)))
            except Exception as exc:  # noqa: BLE001 - a picture must never fail a finished run
                log.warning("TensorBoard: no confusion matrix (%s)", exc)
        self.close()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and close the files (idempotent; the worker calls it on failure too)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    # --- the writer thread ------------------------------------------------------------------

    def _drain(self, start_step: int, config: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency, and ~1 s: off the training thread

            # Made here without parents: TensorBoard's writer would makedirs the whole path and so
            # re-create a run folder deleted while the import ran (an empty folder the UI lists).
            self.log_dir.mkdir(exist_ok=True)

            # purge_step: events an earlier session wrote past the checkpoint we resume from (step
            # `start_step`, whose rows metrics.jsonl keeps) are dropped from TensorBoard's view.
            writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=start_step + 1 if start_step else None,
                                   flush_secs=5)
        except Exception as exc:  # noqa: BLE001 - e.g. a tensorboard too old for this torch
            hint = "" if isinstance(exc, OSError) else f" ({INSTALL_HINT})"  # OSError: the folder, not the package
            log.warning("no TensorBoard event files for this run: %s%s", exc, hint)
            while self._queue.get() is not None:
                pass
            return
        try:
            if start_step == 0:
                writer.add_text("config", f"```json\n{config}\n```", 0)
            while (item := self._queue.get()) is not None:
                kind, payload = item
                if kind == "confusion":
                    self._write_confusion(writer, *payload)
                    continue
                keys = STEP_KEYS if kind == "step" else EPOCH_KEYS
                for key in keys:
                    value = payload.get(key)
                    if value is not None:
                        writer.add_scalar(f"{kind}/{key}", value, payload["step"], walltime=payload.get("time"))
        except Exception as exc:  # noqa: BLE001 - the tracker is a copy; the run and its metrics go on
            log.warning("TensorBoard event files stopped: %s", exc)
            while self._queue.get() is not None:
                pass
        finally:
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001 - e.g. the run folder was deleted: its events go with it
                log.warning("TensorBoard event files not closed: %s", exc)

    @staticmethod
    def _write_confusion(writer, confusion: np.ndarray, class_names: list[str], step: int) -> None:
        writer.add_image("confusion_matrix", confusion_image(confusion), step, dataformats="HWC")
        header = "| true \\ predicted | " + " | ".join(class_names) + " |"
        rule = "|---" * (len(class_names) + 1) + "|"
        rows = [f"| **{name}** | " + " | ".join(str(int(v)) for v in row) + " |"
                for name, row in zip(class_names, confusion)]
        writer.add_text("confusion_matrix", "\n".join([header, rule, *rows]), step)


def confusion_image(confusion: np.ndarray, cell: int = CELL_PX) -> np.ndarray:
    """A heatmap, HxWx3 uint8: each row scaled by its class's count (white = none, dark blue = all),
    the count written in each cell (rows = true class, columns = predicted, as in the Runs page)."""
    from PIL import Image, ImageDraw  # once per run, at its end

    counts = np.asarray(confusion, dtype=np.float64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    low, high = np.array([255, 255, 255]), np.array([30, 64, 175])  # white -> blue
    colours = (low + share[..., None] * (high - low)).astype(np.uint8)
    image = Image.fromarray(np.kron(colours, np.ones((cell, cell, 1), dtype=np.uint8)))
    draw = ImageDraw.Draw(image)
    for (i, j), value in np.ndenumerate(counts):
        text = str(int(value))
        left, top, right, bottom = draw.textbbox((0, 0), text)
        draw.text((j * cell + (cell - right + left) / 2, i * cell + (cell - bottom + top) / 2), text,
                  fill=(255, 255, 255) if share[i, j] > 0.5 else (30, 30, 30))
    return np.asarray(image)
