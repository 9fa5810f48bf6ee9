"""The run worker: trains one run folder to the end, writing everything the UI watches.

`python -m kt_core worker RUN_DIR` runs this in its own process (started by `launcher.launch`);
`python -m kt_core train CONFIG` runs it in the foreground. The engine knows nothing of files:
the callbacks below turn its hooks into the run folder contract (see `rundir.py`). The worker
holds the run folder's lock for its whole life: it is the folder's only writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Sequence

import torch

from . import compute, headline, rundir
from .assemble import Prepared, prepare
from .config import RunConfig
from .data import iter_batches
from .defaults import hints
from .callbacks import Callback
from .engine import FitContext, FitResult, evaluate, feature_cache_eligible, fit, resolve_device
from .errors import KTError, RunError
from .settings import get_settings
from .sources import run_folder
from .transfer import bn_stat_warnings
from .tensorboard_log import tensorboard_callbacks

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
# The launcher holds the run's lock while it starts us (milliseconds); a worker holds it for
# hours. Waiting this long tells the two apart.
LOCK_WAIT_S = 10.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Terminated(BaseException):
    """SIGTERM: stop now, between two lines of Python (the last checkpoint stays)."""


# --- status with a heartbeat -------------------------------------------------------------

class StatusWriter:
    """The worker's single writer of status.json; a daemon thread refreshes the heartbeat."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.status = rundir.read_status_file(folder)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kt-heartbeat", daemon=True)

    def update(self, **fields) -> None:
        """Change fields and write status.json now (states, errors: readers must see them)."""
        with self._lock:
            self.status.update(fields, heartbeat=time.time())
            rundir.write_status(self.folder, self.status)

    def final(self, **fields) -> None:
        """The run's end, written if the folder still takes it (a full disk, a read-only or
        deleted folder must not turn one clear error into a second traceback)."""
        try:
            self.update(**fields)
        except RunError as exc:
            log.error("the run's end (%s) could not be written: %s", fields.get("state"), exc.message)

    def note(self, **fields) -> None:
        """Change fields in memory; the heartbeat writes them within HEARTBEAT_EVERY_S. For progress
        counters at every logged step, where a file rewrite per batch would slow small runs."""
        with self._lock:
            self.status.update(fields)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_EVERY_S):
            try:
                self.update()
            except RunError as exc:  # a full disk must not kill training; the UI will see a stale heartbeat
                log.warning("heartbeat not written: %s", exc.message)


# --- callbacks: the run folder contract ----------------------------------------------------

class MetricsWriter(Callback):
    """Appends each step and epoch row to metrics.jsonl, flushed so a reader sees it at once."""

    def __init__(self, folder: Path):
        self.file = rundir.MetricsAppender(folder)

    def on_step_end(self, ctx: FitContext, row: dict) -> None:
        self.file.append(row)

    def on_epoch_end(self, ctx: FitContext, row: dict) -> None:
        self.file.append(row)

    def close(self) -> None:
        self.file.close()


class Progress(Callback):
    """Mirrors epoch, step and total steps into status.json (steps via the heartbeat, epochs at once)."""

    def __init__(self, status: StatusWriter):
        self.status = status

    def on_fit_start(self, ctx: FitContext) -> None:
        self.status.update(epoch=ctx.epoch, step=ctx.step, total_steps=ctx.total_steps,
                           planned_epochs=ctx.cfg.train.epochs, feature_cache=ctx.feature_cache, note=None)

    def on_step_end(self, ctx: FitContext, row: dict) -> None:
        self.status.note(epoch=ctx.epoch, step=ctx.step)

    def on_epoch_end(self, ctx: FitContext, row: dict) -> None:
        self.status.update(epoch=ctx.epoch, step=ctx.step)


class StopFlag(Callback):
    """The STOP file (checked after every batch) or a signal ask for a graceful stop."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.requested = False

    def should_stop(self, ctx: FitContext) -> bool:
        # A deleted run folder stops the run too: its checkpoint then says why, in one line.
        return self.requested or rundir.stop_requested(self.folder) or not os.path.isdir(self.folder)


class Checkpointer(Callback):
    """Writes checkpoints/last.pt and best.pt atomically (`rundir.write_checkpoint`)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._written: tuple[dict, Path] | None = None  # the last state saved, and where

    def on_checkpoint(self, ctx: FitContext, state: dict, tag: str) -> None:
        # Compared by identity, holding the object: a freed state's id() can come back for the next.
        # The same state as the file just written (a best epoch is also the last) is hard-linked.
        same = self._written[1] if tag == "best" and self._written and self._written[0] is state else None
        path = rundir.write_checkpoint(self.folder, tag, state, same_as=same)
        self._written = (state, path)


# --- the worker ----------------------------------------------------------------------------

class _RunLog(logging.FileHandler):
    """log.txt; a record that cannot be written (full disk, read-only or deleted folder) is
    dropped, not printed as a "--- Logging error ---" traceback per record."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def _run_logging(folder: Path):
    """While the worker runs, every log record also goes to the run's log.txt."""
    root = logging.getLogger()
    handler = _RunLog(rundir.log_path(folder), encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    previous = root.level
    if previous > logging.INFO or previous == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(previous)


@contextlib.contextmanager
def _signals(stop: StopFlag):
    """SIGINT (Ctrl-C): a graceful stop, a second one interrupts. SIGTERM: stop now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_int(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        log.warning("stopping after this batch (press Ctrl-C again to interrupt)")
        stop.requested = True

    def on_term(signum, frame):
        raise Terminated

    old = signal.signal(signal.SIGINT, on_int), signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


def run_worker(run: str | os.PathLike, prepared: Prepared | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Train run folder `run` to its end (resuming from checkpoints/last.pt if there is one).
    `prepared`: what `assemble.preflight(deep=True)` already built from this run's config (`train`).

    Returns the final status dict; the state is completed, stopped or failed. Never raises for a
    training problem: it is written to status.json and log.txt for whoever watches the run.
    Raises `RunBusyError`, writing nothing, when another worker holds the run folder.
    `callbacks` are added to the run folder's own (the foreground CLI's terminal progress).
    """
    folder = rundir.run_dir(run)
    with rundir.RunLock(folder).acquire(wait=LOCK_WAIT_S, what="train"), _run_logging(folder):
        status = StatusWriter(folder)
        status.update(state="running", pid=os.getpid(), error=None)
        status.start()
        stop = StopFlag(folder)
        metrics, trackers = None, []
        try:
            with _signals(stop):
                cfg = rundir.load_config(folder)
                device = resolve_device(cfg.train.device)
                if not _wait_for_source_run(cfg, folder, status, stop):
                    status.update(state="stopped", error="stopped while waiting for the source run")
                    return rundir.read_status(folder)
                resume_state = _resume_state(folder)
                log.info("run %s: %s on %s", folder.name, "resuming" if resume_state else "starting", device)
                log.info("compute: %s", compute.describe())
                # What the run is doing before its first step, for whoever watches it.
                status.update(note="loading the source model and the dataset")
                # A dashboard run's paths and trust are held to the server's settings here too.
                roots = get_settings().dashboard_roots if status.status.get("confined") else None
                if prepared is None:
                    prepared = prepare(cfg, device, roots=roots, runs_dir=folder.parent)
                else:
                    prepared.model.to(device)
                status.update(note="extracting the frozen layers' features once (feature cache)"
                              if feature_cache_eligible(cfg, prepared.data, prepared.plan)
                              else "building the optimizer; the first batch comes next")
                for warning in (list(prepared.data.warnings) + list(prepared.plan.warnings)
                                + _bn_warnings(prepared, device)):
                    log.warning("%s", warning)
                for hint in hints(cfg, _classes_match(prepared)):  # what the Train page said before Start
                    log.warning("hint: %s", hint)
                metrics = MetricsWriter(folder)
                trackers = tensorboard_callbacks(folder, get_settings().tensorboard)
                hooks = [metrics, Progress(status), stop, Checkpointer(folder), *trackers, *callbacks]
                head = prepared.plan.head_decision
                result = fit(prepared.model, prepared.data, cfg, prepared.plan, hooks, resume_state,
                             device, meta={"arch": prepared.arch, "built_from": prepared.built_from},
                             evaluate_first=bool(head and head.keep), **prepared.fit_options())
                summary = _summary(folder, cfg, result, prepared, device)
                rundir.write_summary(folder, summary)
                # Logged before the state is published: whoever sees `completed` finds it in log.txt.
                log.info("run %s %s: %s", folder.name, result.state,
                         ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in summary.items() if k in ("best_val_acc", "test_acc", "epochs", "train_s")))
                status.update(state=result.state, epoch=result.epochs, step=result.steps)
        except Terminated:
            log.warning("run %s: terminated (SIGTERM); resume continues from the last checkpoint", folder.name)
            status.final(state="stopped", error="terminated before the next checkpoint")
        except KTError as exc:
            log.error("run %s failed: %s", folder.name, exc)
            status.final(state="failed", error=str(exc))
        except KeyboardInterrupt:
            log.warning("run %s interrupted; resume continues from the last checkpoint", folder.name)
            status.final(state="stopped", error="interrupted before the next checkpoint")
        except Exception as exc:  # noqa: BLE001 - a bug, but the run must still end as failed
            log.exception("run %s failed with an unexpected error", folder.name)
            status.final(state="failed", error=f"{type(exc).__name__}: {exc} (the traceback is in log.txt)")
        finally:
            status.close()
            if metrics is not None:
                metrics.close()
            for tracker in trackers:  # a failed run's events so far are written too
                tracker.close()
            with contextlib.suppress(OSError):
                rundir.clear_stop(folder)
        try:
            return rundir.read_status(folder)
        except (KTError, OSError):  # the folder is gone or unreadable: what this worker knows
            return dict(status.status, run_id=folder.name)


def _classes_match(prepared: Prepared) -> bool | None:
    names = prepared.source.class_names
    return None if not names else [str(c) for c in names] == [str(c) for c in prepared.data.class_names]


def _bn_warnings(prepared: Prepared, device: torch.device) -> list[str]:
    """Frozen BatchNorm statistics that do not fit the target data, judged on one batch."""
    x, _ = next(iter_batches(prepared.data.train, 256), (None, None))
    if x is None:
        return []
    warnings = bn_stat_warnings(prepared.plan, prepared.model, x.to(device))
    if len(warnings) > 3:  # a whole stage of mismatched layers is one finding, not a page of them
        warnings = warnings[:3] + [f"... and {len(warnings) - 3} more frozen BatchNorm layers like these"]
    return warnings


def _wait_for_source_run(cfg: RunConfig, folder: Path, status: StatusWriter, stop: StopFlag) -> bool:
    """A run whose source (or distillation teacher) is a run still training waits for it, queued,
    instead of failing.

    This lets the UI launch a chain (train a source, then transfer from it, next to a baseline)
    in one click. Returns False when asked to stop while waiting; raises if the source ends badly.
    """
    teacher = cfg.distill.teacher if cfg.distill.mode != "off" else None
    for what, src in (("source", cfg.source), ("teacher", teacher)):
        if src is None or src.kind != "run":
            continue
        try:
            source = run_folder(src.path, runs_dir=folder.parent)
        except KTError:
            continue  # not a run of this folder: load_source gives the precise error
        if not _wait_for(source, what, folder, status, stop):
            return False
    return True


def _wait_for(source: Path, what: str, folder: Path, status: StatusWriter, stop: StopFlag) -> bool:
    announced = False
    while True:
        state = rundir.read_status(source)["state"]
        if state == "completed":
            if announced:
                status.update(state="running", note=None)
            return True
        if state not in rundir.ACTIVE_STATES:
            raise RunError(f"{what} run {source.name} ended as {state}, so there is nothing to transfer",
                           f"resume it (`python -m kt_core resume {source.name}`) or pick another {what}")
        if not announced:
            log.info("run %s: waiting for %s run %s to finish", folder.name, what, source.name)
            model = "source model" if what == "source" else "teacher"
            status.update(state="queued", note=f"waiting for its {model} to finish training (run {source.name})")
            announced = True
        if stop.should_stop(None):
            return False
        time.sleep(0.5)


def _resume_state(folder: Path) -> dict | None:
    """The last checkpoint, with metrics.jsonl cut back to its step (no gap, no duplicates)."""
    last = rundir.checkpoint_path(folder, "last")
    if not last.is_file():
        rundir.truncate_metrics(folder, -1)  # rows of an attempt that never checkpointed, epoch 0 included
        return None
    state = rundir.load_checkpoint(last)
    rundir.truncate_metrics(folder, int(state.get("step", 0)))
    return state


def _summary(folder: Path, cfg: RunConfig, result: FitResult, prepared: Prepared, device: torch.device) -> dict:
    rows, _ = rundir.read_metrics(folder)
    epochs = [r for r in rows if r.get("kind") == "epoch" and not r.get("before_training")]
    zero = next((r for r in rows if r.get("kind") == "epoch" and r.get("before_training")), None)
    test_acc = test_loss = None
    data = prepared.data
    if result.state == "completed" and data.test is not None and len(data.test):
        best = rundir.checkpoint_path(folder, "best")
        if best.is_file():
            prepared.model.load_state_dict(rundir.load_checkpoint(best)["model"])
        test_loss, test_acc = evaluate(prepared.model, data.test, device, max(256, cfg.train.batch_size))
    last = epochs[-1] if epochs else {}
    head = prepared.plan.head_decision
    summary = {
        "state": result.state,
        "best_val_acc": result.best_val_acc,
        "final_val_acc": last.get("val_acc"),
        "final_train_acc": last.get("train_acc"),
        "test_acc": test_acc,
        "test_loss": test_loss,
        "test_split": data.test_origin if data.test is not None else None,
        "before_training": ({k: zero.get(k) for k in ("val_acc", "test_acc", "train_acc")} if zero else None),
        "head": head.reason if head else None,
        "epochs": result.epochs,
        "steps": result.steps,
        "early_stopped": result.early_stopped,
        # the time the user waited for training: every epoch of every session of a resumed run
        # (steps, validation, checkpoints) and this session's feature extraction
        "train_s": sum(r.get("epoch_s", 0.0) for r in epochs) + result.feature_cache_s,
        "feature_cache_s": result.feature_cache_s if result.feature_cache else None,
        "images_per_s": result.images_per_s if math.isfinite(result.images_per_s) else None,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "feature_cache": result.feature_cache,
        "method": cfg.method(),
        "objective": prepared.objective.describe() if prepared.objective is not None else None,
        "arch": prepared.arch,
        "num_classes": len(data.class_names),
        "train_images": len(data.train),  # what K = "all" means on an experiment's chart
        "device": str(device),
    }
    if prepared.tasks is not None:  # a multi-task run: every task's results; the target's stay the headline
        best = rundir.checkpoint_path(folder, "best")
        state = rundir.load_checkpoint(best) if result.state == "completed" and best.is_file() else None
        summary["tasks"] = prepared.tasks.summary(prepared.model, last, state, device, max(256, cfg.train.batch_size))
        summary["multitask"] = {"weighting": cfg.multitask.weighting, "sampling": cfg.multitask.sampling}
        summary["total_params"] += prepared.tasks.extra_parameters()  # trainable counts the heads too
    summary["headline"] = dataclasses.asdict(headline.compute(summary))
    return summary
