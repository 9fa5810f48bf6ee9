"""The experiment driver: trains an experiment's members N at a time until all have ended.

`python -m kt_core experiment-driver DIR` runs `drive(DIR)` in its own session (started by
`folder.spawn_driver`); `python -m kt_core experiment SPEC.json` runs it in the foreground.

What it shares between members:
- **processes**: N member processes (`python -m kt_core worker --serve`) each train one member
  after another, so Python, torch and torch's optimizer machinery start N times, not once per
  member (~3 s each on a CPU; the demo story's feature-extraction members train in ~0.5 s);
  a member whose config asks for several processes (`train.nproc_per_node`) trains under
  torchrun instead, as any such run, in one of the N slots;
- **the source**: a `source_run` in the spec is trained once (or a completed run of exactly
  that config is reused, the demo's included) before any member starts;
- **the prepared dataset**: members of one K and seed (one per method) hit the same on-disk
  dataset cache entry (keyed by every selection parameter, so another K or seed prepares its own);
- **per-image outputs**: the frozen source's features and a teacher's outputs, through the
  workers' `shared_outputs.OutputStore` (keyed by content: the feature-extraction members of one
  seed share their validation features, members of one K and seed with a teacher share it).

It is the only writer of experiment.json and members.jsonl while it runs (a heartbeat every 2 s,
like a run's worker, rewrites experiment.json; each member's state change is one line appended to
members.jsonl, so its bookkeeping per member does not grow with the member count: bench B27).
Killed (kill -9, a reboot), the experiment reads as `interrupted`; `resume` starts a new driver
that keeps completed members, resumes stopped or interrupted ones from their last checkpoint,
waits for members an orphaned member process is still training, and starts the rest.
A member process killed while the driver lives is replaced and its member resumed (twice at most).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import launcher, procs, rundir
from ..config import RunConfig
from ..demo import find_source_run
from ..errors import KTError, RunError
from ..heartbeat import HeartbeatFile
from .folder import append_members, progress_of, read_experiment, write_experiment, write_members
from .spec import ExperimentSpec, Member

log = logging.getLogger(__name__)

POLL_S = 0.25
MAX_RETRIES = 2  # a member whose process died is resumed this many times per driver session
STOP_WAIT_S = 30.0
LOCK_WAIT_S = 10.0  # a resume holds the folder's lock for the moment it takes to start us


def default_parallel() -> int:
    """Members at a time: $KT_EXPERIMENT_PARALLEL, else one per CPU core (at most 8).

    One torch thread per member: small models scale far better across processes than across
    threads (the demo story's members are ~1 s of work each)."""
    value = os.environ.get("KT_EXPERIMENT_PARALLEL", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise KTError(f"KT_EXPERIMENT_PARALLEL={value!r} is not a positive whole number",
                          "set it to the number of members to train at once, or unset it")
        return int(value)
    return max(1, min(cpu_cores(), 8))


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- the member processes -------------------------------------------------------------------------

@dataclass
class Slot:
    """One member process and the member it is training (None: idle)."""

    index: int
    proc: subprocess.Popen | None = None
    folder: Path | None = None
    key: str | None = None


class Pool:
    def __init__(self, size: int, log_path: Path):
        self.slots = [Slot(i) for i in range(size)]
        self.log_path = log_path
        self.threads = max(1, cpu_cores() // size)  # the cores shared out, one thread at least

    def _start(self, slot: Slot) -> None:
        env = launcher._worker_env()
        env["OMP_NUM_THREADS"] = str(self.threads)
        with open(self.log_path, "ab") as out:
            slot.proc = subprocess.Popen([sys.executable, "-m", "kt_core", "worker", "--serve"],
                                         stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env, cwd=os.getcwd())
        procs.adopt(slot.proc)  # pid_alive polls it, so it is reaped when it dies

    def free(self) -> list[Slot]:
        return [s for s in self.slots if s.key is None]

    def assign(self, slot: Slot, folder: Path, key: str) -> None:
        """Hand run folder `folder` to `slot`'s process (started or restarted when needed). A
        member whose config asks for several processes trains under torchrun instead, as any
        such run does (`launcher.start`); it takes one slot, and the slot's process waits."""
        if rundir.load_config(folder).train.world_size > 1:
            rundir.clear_stop(folder)  # a stop of an earlier driver session is over
            launcher.start(folder, wait=5.0)
            slot.folder, slot.key = folder, key
            return
        for _ in range(3):
            if slot.proc is None or slot.proc.poll() is not None:
                self._start(slot)
            # As the launcher does: under the run's lock (the worker waits for it), the status names
            # the worker before the worker learns its run; from then on it is the only writer.
            with rundir.RunLock(folder).acquire(wait=5.0, what="start"):
                rundir.clear_stop(folder)
                rundir.update_status(folder, state="queued", pid=slot.proc.pid, heartbeat=time.time(), error=None)
                try:
                    slot.proc.stdin.write(f"{folder.resolve()}\n".encode())
                    slot.proc.stdin.flush()
                    slot.folder, slot.key = folder, key
                    return
                except OSError:  # it died in the meantime
                    slot.proc = None
        raise RunError("cannot start a member process", "see the experiment's driver.log")

    def close(self, timeout: float = 10.0) -> None:
        """End-of-file to every member process: each exits once its member has ended."""
        for slot in self.slots:
            if slot.proc is not None:
                with contextlib.suppress(OSError):
                    slot.proc.stdin.close()
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()


# --- the experiment's state (experiment.json) ---------------------------------------------------

class Record(HeartbeatFile):
    """experiment.json in memory (`data`, without the members); the heartbeat thread rewrites it
    every 2 s. `members`: the members as the folder had them when this driver started."""

    def __init__(self, folder: Path):
        self.folder = folder
        data = read_experiment(folder)
        data.pop("dir", None)
        self.members = data.pop("members", None) or []
        # The journal first, compacted to a line a member (a folder from before the journal gets
        # one here): experiment.json, which every heartbeat rewrites, is then written without them.
        write_members(folder, self.members)
        super().__init__(data, lambda state: write_experiment(folder, state),
                         name="kt-experiment-heartbeat", what="the experiment's")

    @property
    def data(self) -> dict:
        return self.state


@dataclass
class _Tracked:
    member: Member
    run_id: str | None = None
    state: str = "pending"  # pending | queued | running | completed | failed | stopped | interrupted
    retries: int = 0
    foreign: bool = False  # active in a process this driver did not start (a previous driver's)


@dataclass
class _Stop:
    """A stop asked for by a signal, or by `stop_experiment` (a STOP file, as for a run)."""

    folder: Path
    requested: bool = False
    reason: str = ""

    def __call__(self) -> bool:
        if not self.requested and rundir.stop_requested(self.folder):
            self.requested, self.reason = True, "stop requested"
        return self.requested


def _signals(stop: _Stop):
    """SIGTERM or Ctrl-C: stop the members gracefully (each checkpoints) and end as stopped."""

    def handler(signum, frame):
        stop.requested, stop.reason = True, signal.Signals(signum).name

    return procs.signal_handlers({signal.SIGTERM: handler, signal.SIGINT: handler})


# --- the driver --------------------------------------------------------------------------------

def drive(folder: str | os.PathLike, parallel: int | None = None,
          on_progress: Callable[[dict], None] | None = None) -> dict:
    """Run experiment `folder` to its end; returns the final experiment.json. Never raises for a
    problem of the experiment: it is written to experiment.json for whoever watches it."""
    folder = Path(folder)
    # The experiment folder's lock, held for the driver's whole life (as a worker holds its run's):
    # a second driver of the same experiment is refused here, before it writes anything.
    lock = rundir.RunLock(folder).acquire(wait=LOCK_WAIT_S, what="be driven by a second driver")
    record = Record(folder)
    record.update(state="running", pid=os.getpid(), error=None)
    record.start()
    stop = _Stop(folder=folder)
    size = parallel or record.data.get("parallel") or default_parallel()
    pool = Pool(size, folder / "driver.log")
    runs_dir = Path(record.data["runs_dir"])
    try:
        with _signals(stop):
            spec = ExperimentSpec.from_dict(record.data["spec"])
            source_run = _ensure_source(spec, record, pool, runs_dir, stop)
            if source_run is not False:
                blocks = _source_blocks(spec, source_run, runs_dir) if spec.kind == "layer_transfer" else None
                tracked = _track(spec.members(source_run, blocks), record, runs_dir)
                _run_members(tracked, record, pool, runs_dir, stop, on_progress)
            if stop():
                _stop_members(pool)
                record.update(state="stopped", error=None, progress=record.data.get("progress", {}))
                log.info("experiment %s stopped (%s)", folder.name, stop.reason)
            elif record.data.get("state") == "running":
                record.update(state="completed")
                log.info("experiment %s completed", folder.name)
    except KTError as exc:
        log.error("experiment %s failed: %s", folder.name, exc)
        record.update(state="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug, but the experiment must still end as failed
        log.exception("experiment %s failed with an unexpected error", folder.name)
        record.update(state="failed", error=f"{type(exc).__name__}: {exc} (the traceback is in driver.log)")
    finally:
        pool.close()
        record.close()
        rundir.clear_stop(folder)
        lock.release()
    return read_experiment(folder)


def _ensure_source(spec: ExperimentSpec, record: Record, pool: Pool, runs_dir: Path, stop: _Stop):
    """The id of the trained source run (None when the spec has none; False when stopped)."""
    if spec.source_run is None:
        return None
    cfg = RunConfig.from_dict(spec.source_run)
    run_id = record.data.get("source_run") or find_source_run(cfg, runs_dir)
    if run_id is None or not (runs_dir / run_id).is_dir():
        run_id = rundir.create_run(cfg, runs_dir).name
        log.info("experiment: training the source (run %s)", run_id)
    else:
        log.info("experiment: source run %s (shared)", run_id)
    record.update(source_run=run_id, progress={"phase": "training the source", "source_run": run_id})
    folder, attempts = runs_dir / run_id, 0
    while True:
        status = rundir.read_status(folder)
        if status["state"] == "completed":
            pool.slots[0].key = pool.slots[0].folder = None
            return run_id
        if stop():
            return False
        if status["state"] not in rundir.ACTIVE_STATES:  # new, or ended without completing: (re)start it
            if attempts > MAX_RETRIES or (status["state"] == "failed" and attempts):
                raise RunError(f"the source run {run_id} ended as {status['state']}: {status.get('error')}",
                               f"see `python -m kt_core logs {run_id}`; fix the spec's source_run, or resume")
            attempts += 1
            pool.assign(pool.slots[0], folder, "source")
        time.sleep(POLL_S)


def _source_blocks(spec: ExperimentSpec, source_run: str | None, runs_dir: Path) -> list[str]:
    """The source model's blocks (the layer tree's), input to output."""
    if spec.blocks:
        return spec.blocks
    # Here, not at the top: models and sources import torch (~2 s), which only a layer sweep needs.
    from .. import models, sources

    cfg = RunConfig.from_dict(spec.base)
    source = cfg.source
    if source_run is not None:
        source = dataclasses.replace(source, kind="run", path=str(runs_dir / source_run), arch=None, weights=None)
    elif source.kind == "run":
        source = dataclasses.replace(source, path=str(rundir.run_dir(source.path, runs_dir)))
    loaded = sources.load_source(source)
    return [b.name for b in models.blocks(loaded.model, loaded.spec)]


def _track(members: list[Member], record: Record, runs_dir: Path) -> list[_Tracked]:
    """Members with what is known of them: their run (from members.jsonl, or a run folder a
    killed driver created but had not recorded) and its state."""
    known = {m["key"]: m.get("run_id") for m in record.members}
    by_name = {}
    if any(known.get(m.key) is None for m in members):
        for run_id in rundir.run_ids(runs_dir):
            try:
                cfg = rundir.read_config_dict(runs_dir / run_id)
            except KTError:  # a corrupt folder is nobody's member
                continue
            if cfg.get("experiment") == record.data["id"]:
                by_name.setdefault(cfg.get("name"), run_id)
    tracked = []
    for member in members:
        member.config.experiment = record.data["id"]
        run_id = known.get(member.key) or by_name.get(member.config.name)
        item = _Tracked(member, run_id)
        if run_id and (runs_dir / run_id).is_dir():
            item.state = rundir.read_status(runs_dir / run_id)["state"]
            item.foreign = item.state in rundir.ACTIVE_STATES
            if item.state in ("stopped", "failed", "interrupted"):
                item.state = "pending"  # resumed from its last checkpoint
        else:
            item.run_id = None
        tracked.append(item)
    return tracked


def _entry(item: _Tracked) -> dict:
    return {"key": item.member.key, "coords": item.member.coords, "run_id": item.run_id, "state": item.state}


class _Members:
    """The members' states, kept so that each poll costs what changed, not what there is: a change
    (`set`) is counted and queued for `save`, which appends just those members' lines to
    members.jsonl (the counts reach experiment.json with the next heartbeat). The next member to
    start is the first pending one in the spec's order (a heap of indices), and only members a
    previous driver's process still trains are polled apart."""

    def __init__(self, tracked: list[_Tracked], record: Record):
        self.items, self.record = tracked, record
        self.by_key = {t.member.key: t for t in tracked}
        self.index = {id(t): i for i, t in enumerate(tracked)}
        self.pending = [i for i, t in enumerate(tracked) if t.state == "pending"]  # sorted: a heap
        self.foreign = [t for t in tracked if t.foreign]
        self.changed: dict[str, _Tracked] = {}
        self.progress = progress_of([_entry(t) for t in tracked])
        self.counts = dict(self.progress["counts"])  # a copy: the heartbeat thread writes the progress
        write_members(record.folder, [_entry(t) for t in tracked])  # what this driver found, in one go
        record.update(progress=self.progress)

    def set(self, item: _Tracked, state: str) -> None:
        if state == item.state:
            return
        self.counts[item.state] -= 1
        if not self.counts[item.state]:
            del self.counts[item.state]
        self.counts[state] = self.counts.get(state, 0) + 1
        item.state = state
        self.changed[item.member.key] = item
        if state == "pending":
            heapq.heappush(self.pending, self.index[id(item)])

    def next_pending(self) -> _Tracked | None:
        while self.pending:
            item = self.items[heapq.heappop(self.pending)]
            if item.state == "pending":
                return item
        return None

    def busy(self) -> bool:
        """Members still to start, or trained by a previous driver's process."""
        return bool(self.foreign) or any(self.items[i].state == "pending" for i in self.pending)

    def save(self) -> dict:
        append_members(self.record.folder, [_entry(t) for t in self.changed.values()])
        self.changed.clear()
        self.progress = {"total": len(self.items),
                         "done": self.counts.get("completed", 0) + self.counts.get("failed", 0),
                         "counts": dict(self.counts), "phase": "members"}
        # In memory only: the next heartbeat (2 s) writes it; readers count the journal's lines meanwhile.
        self.record.note(progress=self.progress)
        return self.progress


def _run_members(tracked: list[_Tracked], record: Record, pool: Pool, runs_dir: Path, stop: _Stop,
                 on_progress) -> None:
    members = _Members(tracked, record)
    if on_progress:
        on_progress(members.progress)
    while not stop():
        for slot in pool.slots:  # the members that ended
            if slot.key is None:
                continue
            item = members.by_key[slot.key]
            state = rundir.read_status(slot.folder)["state"]
            members.set(item, state)
            if state in rundir.FINAL_STATES or state == "interrupted":
                slot.key = slot.folder = None
                if state == "interrupted" and item.retries < MAX_RETRIES:
                    item.retries += 1
                    members.set(item, "pending")
                    log.warning("member %s: its process died; resuming it (retry %d)", item.member.key, item.retries)
        for item in list(members.foreign):  # members a previous driver's process is still training
            state = rundir.read_status(runs_dir / item.run_id)["state"]
            if state not in rundir.ACTIVE_STATES:
                item.foreign = False
                members.foreign.remove(item)
                members.set(item, state if state in ("completed", "failed") else "pending")
                members.changed[item.member.key] = item  # no longer foreign, even in the same state
        for slot in pool.free():  # the next members
            item = members.next_pending()
            if item is None:
                break
            if item.run_id is None:
                item.run_id = rundir.create_run(item.member.config, runs_dir).name
            pool.assign(slot, runs_dir / item.run_id, item.member.key)
            members.set(item, "queued")
        if members.changed:
            progress = members.save()
            if on_progress:
                on_progress(progress)
        if not any(s.key for s in pool.slots) and not members.busy():
            break
        time.sleep(POLL_S)
    members.save()


def _stop_members(pool: Pool) -> None:
    """Every busy member finishes its batch and checkpoints (STOP file), then its process exits."""
    busy = [s for s in pool.slots if s.key is not None]
    for slot in busy:
        rundir.request_stop(slot.folder)
    deadline = time.monotonic() + STOP_WAIT_S
    for slot in busy:
        while time.monotonic() < deadline and rundir.read_status(slot.folder)["state"] in rundir.ACTIVE_STATES:
            time.sleep(0.1)
        if rundir.read_status(slot.folder)["state"] in rundir.ACTIVE_STATES:
            launcher.stop(slot.folder, timeout=2.0)
        slot.key = slot.folder = None
