"""The run worker: trains one run folder to the end, writing everything the UI watches.

`python -m kt_core worker RUN_DIR` runs this in its own process (started by `launcher.launch`);
`python -m kt_core train CONFIG` runs it in the foreground. The engine knows nothing of files:
the callbacks below turn its hooks into the run folder contract (see `rundir.py`). The worker
holds the run folder's lock for its whole life: it is the folder's only writer.

Under torchrun (a config with more than one process) every process runs this: rank 0 is the
worker above (lock, status, metrics, checkpoints, summary, log.txt); the other ranks read the
config, receive the checkpoint to resume from rank 0, train their shares and write nothing into
the run folder: their log lines go to stderr marked with their rank (torchrun passes them on:
into log.txt for a run the launcher started). A rank that dies ends the run: rank 0 writes
`failed` naming it; when rank 0 itself dies the run reads `interrupted`, naming rank 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import compute, headline, procs, rundir
from .distributed import Ranks
from .assemble import Prepared, prepare
from .config import RunConfig
from .data import iter_batches
from .defaults import hints
from .callbacks import Callback
from .engine import FitContext, FitResult, evaluate, feature_cache_eligible, fit, resolve_device
from .errors import KTError, RunError
from .heartbeat import HeartbeatFile
from .settings import get_settings
from .shared_outputs import OutputStore
from .sources import run_folder
from .transfer import bn_stat_warnings
from .tensorboard_log import available as tensorboard_available, tensorboard_callbacks

log = logging.getLogger(__name__)

# The launcher holds the run's lock while it starts us (milliseconds); a worker holds it for
# hours. Waiting this long tells the two apart.
LOCK_WAIT_S = 10.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Terminated(BaseException):
    """SIGTERM: stop now, between two lines of Python (the last checkpoint stays)."""


# --- status with a heartbeat -------------------------------------------------------------

class StatusWriter(HeartbeatFile):
    """The worker's single writer of status.json (`status`: the fields in memory)."""

    def __init__(self, folder: Path):
        self.folder = folder
        super().__init__(rundir.read_status_file(folder), lambda state: rundir.write_status(folder, state),
                         name="kt-heartbeat", what="the run's")

    @property
    def status(self) -> dict:
        return self.state

    def final(self, **fields) -> None:
        """The run's end, written if the folder still takes it (a full disk, a read-only or
        deleted folder must not turn one clear error into a second traceback)."""
        try:
            self.update(**fields)
        except RunError as exc:
            log.error("the run's end (%s) could not be written: %s", fields.get("state"), exc.message)


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
    """The STOP file or a signal ask for a graceful stop. Without a folder (the other ranks of a
    data-parallel run: rank 0 watches the folder) only a signal.

    The engine asks after every batch; the folder is looked at after the first batch, after each
    epoch, and otherwise at most every STOP_CHECK_S: two stat calls per batch cost a tiny
    model's step (bench B1's MLP) up to ~20 % on a busy or networked filesystem, and a stop
    that lands 0.1 s later is not one a user can tell apart."""

    STOP_CHECK_S = 0.1

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.requested = False
        # the run is ending (its end being written): a SIGTERM now, e.g. torchrun ending every
        # rank after one died, must not interrupt the line that says why
        self.ending = False
        self._looked = -math.inf  # time.monotonic() of the last look at the folder

    def should_stop(self, ctx: FitContext | None) -> bool:
        if self.requested or self.folder is None:
            return self.requested
        now = time.monotonic()
        if ctx is not None and ctx.batch_in_epoch and now - self._looked < self.STOP_CHECK_S:
            return False
        self._looked = now
        # A deleted run folder stops the run too: its checkpoint then says why, in one line.
        return rundir.stop_requested(self.folder) or not os.path.isdir(self.folder)


class Checkpointer(Callback):
    """Writes checkpoints/last.pt and best.pt atomically (`rundir.write_checkpoint`), spending at
    most about WRITE_SHARE of the run's time on them.

    A checkpoint holds the weights and the optimizer's state: small_cnn's (AdamW) is 76 MB and
    takes 0.05-0.2 s to write. Written after every epoch of a second (the demo's, a few hundred
    images), that was 5-10 % of the run (bench B30, 2026-12-02). So an epoch's state is written
    when the last write started at least 1/WRITE_SHARE times its own duration ago: after every
    epoch still once epochs are longer than that (~5 s for small_cnn here), else every few
    epochs. Always written: the first epoch's (a run may wait for its source's first
    checkpoint), the last one's, a stop's, and, when the run ends on an epoch that was not
    written (early stopping), the final state at `on_fit_end`. A best epoch that is not written
    is copied (into buffers kept for the next one: no allocation after the first) and written
    with the next checkpoint. What it costs after a kill -9: the epochs since the last write are
    trained again on resume (metrics.jsonl is cut back to its step), ~1/WRITE_SHARE write-times
    at most (~5 s for small_cnn); a stop (the STOP file, Stop in the dashboard) loses nothing.
    Without a context (`ctx` None) every state is written.

    `clock` measures the run's time (default: wall time, what the user waits through); the
    bench passes the time its side has had of a machine it shares with other loops in turns.
    """

    # 2 %, not 5 %: every percent here is a percent behind fastai, which writes no checkpoint
    # (bench B30, small_cnn's one-second epochs); retraining at most ~50 writes' worth of epochs
    # after a hard crash, rather than ~20, is the cheaper side of that trade.
    WRITE_SHARE = 0.02

    def __init__(self, folder: Path, clock: Callable[[], float] | None = None):
        self.folder = folder
        self._clock = clock or time.monotonic
        self._last_write: tuple[float, float] | None = None  # (clock at its start, seconds) of the last write
        self._unwritten: tuple[dict, tuple[str, ...]] | None = None  # the newest state, not written
        self._best: dict | None = None  # a copy of a best epoch's state not written yet
        self._buffers: dict = {}  # the copy's tensors, reused from one best epoch to the next

    def on_checkpoint(self, ctx: FitContext | None, state: dict, tags: tuple[str, ...]) -> None:
        if ctx is None or self._due(ctx):
            self._write(state, tags)
            return
        # Live tensors: still this state only until the next step, which is why on_fit_end (no
        # step after the last checkpoint) may write it and a best epoch is copied now.
        self._unwritten = (state, tags)
        if "best" in tags:
            self._best = _copy_tensors(state, self._buffers)

    def on_fit_end(self, ctx: FitContext, result) -> None:
        if self._unwritten is not None:
            self._write(*self._unwritten)

    def _due(self, ctx: FitContext) -> bool:
        if self._last_write is None or ctx.stop_requested or ctx.epoch >= ctx.cfg.train.epochs:
            return True
        started, seconds = self._last_write
        return (self._clock() - started) * self.WRITE_SHARE >= seconds

    def _write(self, state: dict, tags: tuple[str, ...]) -> None:
        started = self._clock()
        path = rundir.write_checkpoint(self.folder, tags[0], state)
        for tag in tags[1:]:  # a best epoch is also the last: a hard link, not a second write
            rundir.write_checkpoint(self.folder, tag, state, same_as=path)
        if "best" not in tags and self._best is not None:
            rundir.write_checkpoint(self.folder, "best", self._best)
        self._best = self._unwritten = None
        self._last_write = (started, self._clock() - started)


def _copy_tensors(value, buffers: dict, key: tuple = ()):
    """`value` (a checkpoint state) with every tensor copied into `buffers[key path]` on the CPU
    (allocated once, reused while the shape stays); everything else as it is (built afresh for
    each state by `engine.checkpoint_state`)."""
    if isinstance(value, torch.Tensor):
        buffer = buffers.get(key)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            buffer = buffers[key] = torch.empty_like(value, device="cpu")
        return buffer.copy_(value.detach())
    if isinstance(value, dict):
        return {k: _copy_tensors(v, buffers, key + (k,)) for k, v in value.items()}
    if type(value) in (list, tuple):  # exactly these: a named tuple's constructor takes fields
        return type(value)(_copy_tensors(v, buffers, key + (i,)) for i, v in enumerate(value))
    return value


# --- the worker ----------------------------------------------------------------------------

class _RunLog(logging.FileHandler):
    """log.txt; a record that cannot be written (full disk, read-only or deleted folder) is
    dropped, not printed as a "--- Logging error ---" traceback per record."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _log_format(ranks: Ranks | None) -> str:
    return LOG_FORMAT if ranks is None else LOG_FORMAT.replace("%(levelname)s", f"rank {ranks.rank} %(levelname)s")


@contextlib.contextmanager
def _run_logging(folder: Path | None, ranks: Ranks | None = None):
    """While the worker runs, every log record also goes to the run's log.txt; for the other
    ranks of a data-parallel run (`folder` None), to stderr, marked with the rank."""
    root = logging.getLogger()
    if folder is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = _RunLog(rundir.log_path(folder), encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(_log_format(ranks)))
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


def _signals(stop: StopFlag):
    """SIGINT (Ctrl-C): a graceful stop, a second one interrupts. SIGTERM: stop now."""

    def on_int(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        log.warning("stopping after this batch (press Ctrl-C again to interrupt)")
        stop.requested = True

    def on_term(signum, frame):
        if not stop.ending:
            raise Terminated

    return procs.signal_handlers({signal.SIGINT: on_int, signal.SIGTERM: on_term})


def run_worker(run: str | os.PathLike, prepared: Prepared | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Train run folder `run` to its end (resuming from checkpoints/last.pt if there is one).
    `prepared`: what `assemble.preflight(deep=True)` already built from this run's config (`train`).

    Returns the final status dict; the state is completed, stopped or failed. Never raises for a
    training problem: it is written to status.json and log.txt for whoever watches the run.
    Raises `RunBusyError`, writing nothing, when another worker holds the run folder.
    `callbacks` are added to the run folder's own (the foreground CLI's terminal progress).
    """
    folder = rundir.run_dir(run)
    ranks = Ranks.from_env()
    if ranks is not None and not ranks.is_main:
        confined = bool(rundir.read_status_file(folder).get("confined"))
        return _follow(rundir.load_config(folder), folder.parent, confined, ranks)  # read only, as written at launch
    with rundir.RunLock(folder).acquire(wait=LOCK_WAIT_S, what="train"), _run_logging(folder, ranks):
        status = StatusWriter(folder)
        # `ranks`: a data-parallel run's processes, recorded once they have joined (a resume on
        # another number of processes must not name the previous attempt's)
        status.update(state="running", pid=os.getpid(), error=None, ranks=None)
        status.start()
        stop = StopFlag(folder)
        metrics, trackers = None, []
        # The signal handlers stay for the handlers below too: a SIGTERM while the end is written
        # (torchrun ending every rank after one died) must not kill the process mid-line.
        with _signals(stop):
            try:
                cfg = rundir.load_config(folder)
                device = resolve_device(cfg.train.device)
                if not _wait_for_source_run(cfg, folder.parent, f"run {folder.name}", status, stop):
                    status.update(state="stopped", error="stopped while waiting for the source run")
                    return rundir.read_status(folder)
                if ranks is not None:
                    device = _join(ranks, device, status)
                resume_state = _resume_state(folder)
                if ranks is not None:
                    ranks.broadcast(resume_state)  # the others resume from the very same checkpoint
                    ranks.broadcast(cfg.to_dict())  # and train this very config
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
                             evaluate_first=bool(head and head.keep), **prepared.fit_options(), ranks=ranks,
                             store=OutputStore(), cache_budget=get_settings().feature_cache_max_bytes)
                summary = _summary(folder, cfg, result, prepared, device)
                rundir.write_summary(folder, summary)
                # Logged before the state is published: whoever sees `completed` finds it in log.txt.
                log.info("run %s %s: %s", folder.name, result.state,
                         ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in summary.items() if k in ("best_val_acc", "test_acc", "epochs", "train_s")))
                status.update(state=result.state, epoch=result.epochs, step=result.steps)
            except Terminated:
                stop.ending = True
                dead = _dead_ranks(status)
                if dead:  # torchrun ends every rank when one dies: that one is the cause
                    log.error("run %s failed: %s", folder.name, dead)
                    status.final(state="failed", error=dead)
                else:
                    log.warning("run %s: terminated (SIGTERM); resume continues from the last checkpoint", folder.name)
                    status.final(state="stopped", error="terminated before the next checkpoint")
            except KTError as exc:
                stop.ending = True
                log.error("run %s failed: %s", folder.name, exc)
                status.final(state="failed", error=_dead_ranks(status) or str(exc))
            except KeyboardInterrupt:
                stop.ending = True
                log.warning("run %s interrupted; resume continues from the last checkpoint", folder.name)
                status.final(state="stopped", error="interrupted before the next checkpoint")
            except Exception as exc:  # noqa: BLE001 - a bug, but the run must still end as failed
                stop.ending = True
                dead = _dead_ranks(status) if ranks is not None else None
                if dead:  # a collective failed because a peer is gone: that is the cause, not a bug
                    log.error("run %s failed: %s (%s: %s)", folder.name, dead, type(exc).__name__, exc)
                    status.final(state="failed", error=dead)
                elif ranks is not None and _is_collective_failure(exc):
                    log.error("run %s failed: another process of the run stopped answering (%s)", folder.name, exc)
                    status.final(state="failed", error=f"a process of this {ranks.world_size}-process run stopped "
                                                       "answering (on another node, or hung); its log says why; "
                                                       "resume continues from the last checkpoint")
                else:
                    log.exception("run %s failed with an unexpected error", folder.name)
                    status.final(state="failed", error=f"{type(exc).__name__}: {exc} (the traceback is in log.txt)")
            finally:
                stop.ending = True
                status.close()
                if ranks is not None and status.status.get("state") == "completed":
                    ranks.close()
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


# --- the other ranks of a data-parallel run ------------------------------------------------

def _join(ranks: Ranks, device: torch.device, status: StatusWriter | None) -> torch.device:
    """Join the process group on this rank's device; rank 0 records every rank's pid and host
    in status.json, so a rank that dies can be named."""
    device = ranks.device(device)
    ranks.init(device)
    members = ranks.gather({"rank": ranks.rank, "pid": os.getpid(), "host": ranks.host})
    if status is not None:
        status.update(world_size=ranks.world_size, ranks=members, backend=ranks.backend)
    return device


def run_config_worker(config: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> dict:
    """Under torchrun, a run from a config file (`worker --config`: the same command on every node,
    as SLURM's `srun` starts it): rank 0 creates the run folder and trains it as `run_worker`
    does; the other ranks train from their own copy of the config and never need the folder."""
    ranks = Ranks.from_env()
    if ranks is None:
        raise KTError("worker --config is for processes torchrun starts",
                      "run `python -m kt_core train CONFIG --nproc-per-node N`, or start it under torchrun")
    cfg = RunConfig.from_file(config)
    if not ranks.is_main:
        return _follow(cfg, runs_dir, False, ranks)
    # what torchrun started is what trained the run: recorded in its config.json
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
    cfg.train.nproc_per_node, cfg.train.nnodes = per_node, max(1, ranks.world_size // per_node)
    if cfg.train.nnodes > 1 and not cfg.train.rdzv_endpoint:
        cfg.train.rdzv_endpoint = f"{os.environ.get('MASTER_ADDR', 'localhost')}:{os.environ.get('MASTER_PORT', '29400')}"
    folder = rundir.create_run(cfg, runs_dir)
    print(f"run {folder.name} ({folder})", file=sys.stderr, flush=True)
    return run_worker(folder)


def _follow(cfg: RunConfig, runs_dir, confined: bool, ranks: Ranks) -> dict:
    """A rank other than 0: train its shares alongside rank 0, writing nothing into the run folder
    (`runs_dir` only to find a source run). Raises what it cannot handle: torchrun then ends
    the other ranks and rank 0 names this one."""
    stop = StopFlag(None)
    with _run_logging(None, ranks), _signals(stop):
        device = resolve_device(cfg.train.device)
        if not _wait_for_source_run(cfg, rundir.runs_root(runs_dir), f"rank {ranks.rank}", None, stop):
            return {"state": "stopped", "rank": ranks.rank}
        device = _join(ranks, device, None)
        resume_state = ranks.broadcast()
        # rank 0's config is the run's: a node with another copy of the file trains rank 0's
        cfg = RunConfig.from_dict(ranks.broadcast())
        roots = get_settings().dashboard_roots if confined else None
        prepared = prepare(cfg, device, roots=roots, runs_dir=runs_dir)
        head = prepared.plan.head_decision
        log.info("rank %d: %s on %s", ranks.rank, "resuming" if resume_state else "starting", device)
        try:
            result = fit(prepared.model, prepared.data, cfg, prepared.plan, [stop], resume_state, device,
                         meta={"arch": prepared.arch, "built_from": prepared.built_from},
                         evaluate_first=bool(head and head.keep), **prepared.fit_options(), ranks=ranks,
                         store=OutputStore(), cache_budget=get_settings().feature_cache_max_bytes)
        except Terminated:
            log.warning("rank %d: terminated (SIGTERM)", ranks.rank)
            return {"state": "stopped", "rank": ranks.rank}
        if result.state == "completed":
            ranks.close()
        return {"state": result.state, "rank": ranks.rank}


def _dead_ranks(status: StatusWriter, wait_s: float = 2.0) -> str | None:
    """Which of the run's other processes on this host are gone, in words (None: all alive, or
    not a data-parallel run). torchrun ends every rank when one dies, so that one is the cause.
    A killed process closes its sockets before it is a zombie, so a collective can fail a moment
    before its pid reads dead: looked at for up to `wait_s`."""
    members = status.status.get("ranks") or []
    host = members[0]["host"] if members else None
    local = [m for m in members[1:] if m.get("host") == host]
    deadline = time.monotonic() + (wait_s if local else 0)
    while True:
        dead = [m for m in local if not procs.pid_alive(m.get("pid"))]
        if dead or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not dead:
        return None
    names = ", ".join(f"rank {m['rank']} (pid {m['pid']})" for m in dead)
    return (f"{names} of this {len(members)}-process run died (killed, or crashed: its log lines say which); "
            "the other processes were stopped; resume continues from the last checkpoint")


def _is_collective_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer went away or timed out (gloo and NCCL raise these)."""
    dist_error = getattr(torch.distributed, "DistError", RuntimeError)
    text = str(exc).lower()
    return isinstance(exc, dist_error) or any(w in text for w in ("gloo", "nccl", "connection", "timed out", "peer"))


def _bn_warnings(prepared: Prepared, device: torch.device) -> list[str]:
    """Frozen BatchNorm statistics that do not fit the target data, judged on one batch."""
    x, _ = next(iter_batches(prepared.data.train, 256), (None, None))
    if x is None:
        return []
    warnings = bn_stat_warnings(prepared.plan, prepared.model, x.to(device))
    if len(warnings) > 3:  # a whole stage of mismatched layers is one finding, not a page of them
        warnings = warnings[:3] + [f"... and {len(warnings) - 3} more frozen BatchNorm layers like these"]
    return warnings


# How often a run waiting for its source looks at the source's status: the transfer of the demo
# starts this much after its source ends, at worst (a status read costs well under a millisecond).
SOURCE_POLL_S = 0.1


def warm_up() -> None:
    """Pay a training process's one-time costs now: torch's compiler stack, which its first
    optimizer imports (~1.3 s of CPU), and TensorBoard's writer (~1 s). The standby worker does it
    before it has a run; a run waiting for its source does it while it waits."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if tensorboard_available() and get_settings().tensorboard:
        from torch.utils import tensorboard  # noqa: F401 - here, not at the top: only runs that write events need it (~1 s)


def _wait_for_source_run(cfg: RunConfig, runs_dir: Path, who: str, status: StatusWriter | None,
                         stop: StopFlag) -> bool:
    """A run whose source (or distillation teacher) is a run still training waits for it, queued,
    instead of failing (`who` names the waiting run, or rank, in the log).

    This lets the UI launch a chain (train a source, then transfer from it, next to a baseline)
    in one click. A run from scratch reads only the source's structure (architecture, classes,
    input size, normalization: every checkpoint has them), never its weights, so it waits only
    for the source's first checkpoint and trains beside it. Returns False when asked to stop
    while waiting; raises if the source ends badly before it has what this run needs.
    """
    teacher = cfg.distill.teacher if cfg.distill.mode != "off" else None
    for what, src in (("source", cfg.source), ("teacher", teacher)):
        if src is None or src.kind != "run":
            continue
        try:
            source = run_folder(src.path, runs_dir=runs_dir)
        except KTError:
            continue  # not a run of this folder: load_source gives the precise error
        structure_only = what == "source" and cfg.plan.preset == "scratch"
        if not _wait_for(source, what, who, status, stop, structure_only):
            return False
    return True


def _has_checkpoint(source: Path) -> bool:
    try:
        rundir.run_checkpoint(source, "last")
    except RunError:
        return False
    return True


def _wait_for(source: Path, what: str, who: str, status: StatusWriter | None, stop: StopFlag,
              structure_only: bool = False) -> bool:
    announced = False
    while True:
        state = rundir.read_status(source)["state"]
        if state == "completed" or (structure_only and _has_checkpoint(source)):
            if announced and status is not None:
                status.update(state="running", note=None)
            return True
        if state not in rundir.ACTIVE_STATES:
            raise RunError(f"{what} run {source.name} ended as {state}, so there is nothing to transfer",
                           f"resume it (`python -m kt_core resume {source.name}`) or pick another {what}")
        if not announced:
            log.info("%s: waiting for %s run %s to %s", who, what, source.name,
                     "write its first checkpoint" if structure_only else "finish")
            model = "source model" if what == "source" else "teacher"
            if status is not None:
                status.update(state="queued", note=(f"waiting for its {model}'s first checkpoint (run {source.name})"
                                                    if structure_only else
                                                    f"waiting for its {model} to finish training (run {source.name})"))
            announced = True
            warm_up()  # the time it waits pays its start-up costs, off the path to its first step
        if stop.should_stop(None):
            return False
        time.sleep(SOURCE_POLL_S)


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
        "world_size": cfg.train.world_size,  # processes that trained it (torchrun + DDP when > 1)
    }
    if prepared.tasks is not None:  # a multi-task run: every task's results; the target's stay the headline
        best = rundir.checkpoint_path(folder, "best")
        state = rundir.load_checkpoint(best) if result.state == "completed" and best.is_file() else None
        summary["tasks"] = prepared.tasks.summary(prepared.model, last, state, device, max(256, cfg.train.batch_size))
        summary["multitask"] = {"weighting": cfg.multitask.weighting, "sampling": cfg.multitask.sampling}
        summary["total_params"] += prepared.tasks.extra_parameters()  # trainable counts the heads too
    summary["headline"] = dataclasses.asdict(headline.compute(summary))
    return summary
