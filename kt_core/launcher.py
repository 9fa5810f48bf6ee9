"""Starting and ending worker processes: launch, the standby worker, stop, resume, delete.

The launcher never trains and never writes a run's progress: it creates the folder (through
`rundir`), starts `python -m kt_core worker RUN_DIR`, and asks it to stop (STOP file, then
signals). It holds the folder's `rundir.RunLock` while it checks a run's state and starts its
worker, so two resumes (two tabs, the CLI and a tab) never start two workers, and a stop or a
delete never changes a folder that a worker owns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import compute, procs, rundir
from .torchrun import shown, torchrun_command
from .config import RunConfig
from .errors import RunBusyError, RunError
from .settings import get_settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # `-m kt_core` must import this very package, whatever the caller's working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return compute.apply(env)  # the CPU settings the foreground `train` gets too


def _popen_worker(args: list[str], stdout, stdin, stderr=subprocess.STDOUT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kt_core", "worker", *args],
        stdout=stdout, stderr=stderr, stdin=stdin,
        start_new_session=True,  # its own process group: Ctrl-C in a terminal or a server restart spare it
        env=_worker_env(), cwd=os.getcwd(),
    )


class _Standby:
    """One worker process started ahead of time (torch imported, optimizers ready) that forks a
    worker for each run it is sent (`worker --standby`). Starting Python and torch costs ~2 s,
    torch's first optimizer ~1.3 s more and TensorBoard's writer ~1 s; a fork of the warm process
    trains at once, and the demo's three runs, launched in one click, pay none of it.

    Never waited for: a launch that finds it still starting (or dead, or started under another
    working directory or environment, which it is then retired for) gets a fresh worker of its
    own. A standby whose parent goes away reads end-of-file and exits; the workers it forked
    live on, each in its own session.
    """

    # How long a launch waits for the warm standby to answer with its fork's pid (it answers in
    # milliseconds; a standby that does not is retired and the run starts a fresh worker).
    REPLY_S = 10.0

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._key: tuple | None = None
        self._ready = False
        self._pending = b""  # the standby's stdout read so far, up to an incomplete line

    @staticmethod
    def key() -> tuple:
        return os.getcwd(), tuple(sorted(_worker_env().items()))

    def fork(self, folder: Path) -> int | None:
        """The pid of a worker forked for `folder` by the warm standby; None when there is no ready
        standby for the current environment (a fresh one is started when it is missing)."""
        if not self.enabled:
            return None
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or self._key != self.key():
                self._restart()
                return None
            if not self._is_ready():
                return None  # still importing: this run's own fresh worker starts sooner
            try:
                self._proc.stdin.write(f"{folder}\n".encode())
                self._proc.stdin.flush()
                pid = self._forked_pid()
            except OSError:
                pid = None
            if pid is None:
                log.warning("the warm worker did not answer: retired, and run %s starts a fresh worker", folder.name)
                self._restart()
            return pid

    def start(self) -> None:
        with self._lock:
            if self._proc is None:
                self._restart()

    def ready(self) -> bool:
        """Whether the standby has finished starting (never waits)."""
        with self._lock:
            return self._proc is not None and self._is_ready()

    def _is_ready(self) -> bool:
        while not self._ready:
            line = self._next_line(timeout=0)
            if line is None:
                return False
            self._ready = line == "ready"
        return True

    def _forked_pid(self) -> int | None:
        deadline = time.monotonic() + self.REPLY_S
        while (line := self._next_line(timeout=deadline - time.monotonic())) is not None:
            if line.startswith("forked "):
                return int(line.split()[1])
        return None

    def _next_line(self, timeout: float) -> str | None:
        """The standby's next stdout line, or None after `timeout` seconds (0: what is there now)
        or at its end."""
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + max(timeout, 0.0)
        while b"\n" not in self._pending:
            if not select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None  # it exited
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace").strip()

    def _restart(self) -> None:
        if self._proc is not None:
            self._retire(self._proc)
        # stderr (warnings while it imports) is not the protocol: it goes nowhere
        self._proc = _popen_worker(["--standby"], subprocess.PIPE, subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._key, self._ready, self._pending = self.key(), False, b""

    @staticmethod
    def _retire(proc: subprocess.Popen) -> None:
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # end-of-file on its stdin: the standby exits
        procs.adopt(proc)  # reaped by later polls

    def close(self) -> None:
        with self._lock:
            self.enabled = False
            if self._proc is not None:
                self._retire(self._proc)
                self._proc = None


_standby = _Standby()


# Where the standby may fork: Linux. macOS's system libraries are not safe to fork after
# importing torch (Python itself starts processes there by spawning), and Windows has no fork.
FORK_SAFE = sys.platform.startswith("linux")


def keep_worker_warm(enabled: bool = True) -> None:
    """Keep one worker process started ahead of time, which forks the launches' workers (the
    dashboard does; on Linux only, elsewhere each run starts its own worker)."""
    if enabled and not FORK_SAFE:
        log.info("no warm worker on %s: each run starts its own worker process", sys.platform)
        return
    if enabled and not _standby.enabled:
        _standby.enabled = True
        _standby.start()
    elif not enabled:
        _standby.close()


def _spawn_worker(folder: Path) -> int:
    """Start the worker of `folder`; the caller holds the folder's lock (the worker waits for it).
    A config of several processes starts under torchrun (`worker_command`), never a standby."""
    folder = folder.resolve()
    procs.reap()
    command = worker_command(folder)
    if command is not None:
        return _spawn_torchrun(folder, command)
    pid = _standby.fork(folder)
    if pid is not None:
        # Written while this launcher holds the folder's lock, which the worker takes before it
        # writes anything: its `running` can never be overwritten by this `queued`.
        rundir.update_status(folder, state="queued", pid=pid, heartbeat=time.time(), error=None,
                             note="forked from the worker that is already started")
        log.info("run %s: worker pid %d forked from the warm worker", folder.name, pid)
        return pid
    with open(rundir.log_path(folder), "ab") as log_file:
        proc = _popen_worker([str(folder)], log_file, subprocess.DEVNULL)
    rundir.update_status(folder, state="queued", pid=proc.pid, heartbeat=time.time(), error=None,
                         note="starting the worker process (importing PyTorch)")
    procs.adopt(proc)
    log.info("run %s: worker pid %d started", folder.name, proc.pid)
    return proc.pid


def worker_command(folder: Path) -> list[str] | None:
    """The torchrun command that trains `folder` when its config has several processes, else
    None (one plain worker process: `python -m kt_core worker RUN_DIR`)."""
    train = rundir.load_config(folder).train
    if train.world_size == 1:
        return None
    return torchrun_command(train, [str(Path(folder).resolve())], run_id=Path(folder).name)


def shown_command(folder: str | os.PathLike) -> str | None:
    """The torchrun command of a run of several processes, as a user would type it (None: one process)."""
    folder = rundir.run_dir(folder)
    command = worker_command(folder)
    return shown_command_of(rundir.load_config(folder).train, folder) if command else None


def shown_command_of(train_cfg, folder: str | os.PathLike) -> str:
    """The torchrun command a run folder of this train config trains under (the Train page shows
    it before Start with a placeholder folder)."""
    try:
        folder = Path(folder).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return shown(torchrun_command(train_cfg, [str(folder)], run_id=Path(folder).name))


def _spawn_torchrun(folder: Path, command: list[str]) -> int:
    """torchrun in its own session, its output and its ranks' into log.txt. The status names
    torchrun until rank 0 takes over the folder and names itself (and every rank)."""
    with open(rundir.log_path(folder), "ab") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=_worker_env(), cwd=os.getcwd())
    rundir.update_status(folder, state="queued", pid=proc.pid, heartbeat=time.time(), error=None,
                         launcher_pid=proc.pid,
                         note=f"starting {rundir.load_config(folder).train.world_size} processes under torchrun")
    procs.adopt(proc)
    log.info("run %s: torchrun pid %d started: %s", folder.name, proc.pid, " ".join(command))
    return proc.pid


def _preflight(cfg: RunConfig, runs_dir, confined: bool = False, deep: bool = False) -> None:
    # Here, not at the top: assembling imports torch (~2 s), which `stop` and `delete` never need.
    from .assemble import preflight

    preflight(cfg, runs_dir, roots=get_settings().dashboard_roots if confined else None, deep=deep)


def launch(cfg: RunConfig, runs_dir: str | os.PathLike | None = None, confined: bool = False,
           deep: bool = True) -> str:
    """Create the run folder and start its worker process; returns the run id at once. First the
    worker's own preparation runs here (`preflight(deep=True)`), so bad input fails before a run
    folder exists. `confined=True` (the dashboard): held to the server's roots and trust setting,
    now and in the worker. `deep=False` checks the config, device and source run only, for configs
    known to prepare (the demo's): building the model and decoding the data here as well as in the
    worker cost the demo's first click ~3 s of CPU before any worker had its run."""
    _preflight(cfg, runs_dir, confined, deep=deep)
    folder = rundir.create_run(cfg, runs_dir, confined=confined)
    with rundir.RunLock(folder).acquire(what="start"):
        _spawn_worker(folder)
    return folder.name


def start(folder: str | os.PathLike, wait: float = 0.0) -> int:
    """Start the worker of a run folder `rundir.create_run` made (the CLI's `train` of a run of
    several processes, which it then follows through the folder; an experiment's member of
    several processes); returns the process id. `wait`: seconds to wait for a worker that is
    still letting the folder go (a member resumed after its processes died)."""
    folder = rundir.run_dir(folder)
    with rundir.RunLock(folder).acquire(wait=wait, what="start"):
        return _spawn_worker(folder)


def launch_with_baseline(cfg: RunConfig, runs_dir: str | os.PathLike | None = None,
                         confined: bool = False, deep: bool = True) -> tuple[str, str]:
    """The transfer run and its from-scratch twin (same architecture, data and schedule)."""
    run_id = launch(cfg, runs_dir, confined, deep)
    return run_id, launch(cfg.as_baseline(run_id), runs_dir, confined, deep)


def stop(run: str | os.PathLike, timeout: float = 10.0) -> dict:
    """Ask the worker to stop after its current batch (STOP file); SIGTERM, then SIGKILL, if it
    has not exited within `timeout` seconds. Returns the final status."""
    folder = rundir.run_dir(run)
    status = rundir.read_status(folder)
    if status["state"] not in rundir.ACTIVE_STATES:
        raise RunError(f"run {folder.name} is not running (state {status['state']})",
                       "nothing to stop; `python -m kt_core resume RUN` continues a stopped run")
    rundir.request_stop(folder)
    pid = status.get("pid")
    if _wait_exit(pid, timeout):
        return rundir.read_status(folder)
    for sig, wait in ((signal.SIGTERM, max(2.0, timeout / 2)), (signal.SIGKILL, 5.0)):
        log.warning("run %s: worker %s did not stop within %.0f s; sending %s", folder.name, pid, timeout, sig.name)
        procs.signal_group(pid, sig)
        if _wait_exit(pid, wait):
            break
    if rundir.read_status(folder)["state"] in rundir.ACTIVE_STATES + ("interrupted",):
        # The worker died without writing its end. Say so only as the folder's owner: a worker
        # that a resume started meanwhile owns it now, and its status must stand.
        try:
            with rundir.RunLock(folder).acquire(wait=2.0, what="be marked stopped"):
                if rundir.read_status(folder).get("pid") == pid:
                    rundir.update_status(folder, state="stopped", error="stopped by force before a checkpoint; "
                                         "resume continues from the last checkpoint")
        except RunBusyError:
            log.warning("run %s: a new worker took the run over while it was being stopped", folder.name)
    return rundir.read_status(folder)


def _wait_exit(pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.pid_alive(pid):
            return True
        time.sleep(0.1)
    return not procs.pid_alive(pid)


# A worker writes its run's end (stopped, failed, completed) a moment before its process exits and
# the kernel drops its lock: closing its files and, under torchrun, the process group's teardown
# (seconds on a loaded machine). A resume or delete of a run that reads as ended waits this long
# for that holder instead of refusing what the user was just told had ended; a holder still there
# after it (a stuck process) is refused, naming it.
ENDING_WORKER_WAIT_S = 15.0


def _refuse_unless_resumable(folder: Path) -> None:
    status = rundir.read_status(folder)
    if status["state"] in rundir.ACTIVE_STATES:
        raise RunError(f"run {folder.name} is already {status['state']}", "stop it first, or watch it")
    if status["state"] == "completed":
        raise RunError(f"run {folder.name} has completed", "start a new run from its config.json to train again")


def resume(run: str | os.PathLike, foreground: bool = False, confined: bool = False, callbacks=()) -> str:
    """Continue a stopped, failed or interrupted run from checkpoints/last.pt.

    The worker truncates metrics.jsonl to the checkpoint's step first, so the metrics continue
    with no gap and no duplicates. Without a checkpoint the run starts again from the beginning.
    `foreground=True` trains in this process (the CLI's `resume --foreground`, `callbacks` added
    to the worker's: its terminal progress); a run of several processes resumes on them, under
    torchrun as at launch, and this call waits until torchrun has exited (`callbacks` are not
    called: the run trains in torchrun's processes; follow its folder). Under the run's
    lock, so of two resumes at once one starts the worker and the other is refused.
    `confined=True` (the dashboard): the run is held to the server's roots and trust setting.
    """
    folder = rundir.run_dir(run)
    _refuse_unless_resumable(folder)
    with rundir.RunLock(folder).acquire(wait=ENDING_WORKER_WAIT_S, what="be resumed"):
        _refuse_unless_resumable(folder)  # again, as the owner: another resume may have started it
        cfg = rundir.load_config(folder)
        # a broken config.json, a gone device, or a path or trust this server forbids fails here
        _preflight(cfg, folder.parent, confined)
        several = cfg.train.world_size > 1
        rundir.clear_stop(folder)
        rundir.update_status(folder, state="queued", error=None, heartbeat=time.time(),
                             pid=os.getpid() if foreground and not several else None, confined=confined)
        if several or not foreground:
            pid = _spawn_worker(folder)
    if not foreground:
        return folder.name
    if several:  # torchrun trains it in its processes: this call waits for them
        _wait_for_torchrun(folder, pid)
        return folder.name
    # In this process: the worker takes the lock itself; until then the queued status with this
    # live pid turns other resumes away.
    from .worker import run_worker  # here, not at the top: the worker imports the engine (torch)

    run_worker(folder, callbacks=callbacks)
    return folder.name


def _wait_for_torchrun(folder: Path, pid: int) -> None:
    """Until torchrun (`pid`) has exited, its ranks with it. Ctrl-C asks the run to stop after its
    batch (every rank stops at the same step and checkpoints), as Stop does, and waits for that."""
    try:
        while procs.pid_alive(pid):
            time.sleep(0.2)
    except KeyboardInterrupt:
        rundir.request_stop(folder)
        while procs.pid_alive(pid):
            time.sleep(0.2)


def delete(run: str | os.PathLike) -> None:
    """Remove a run folder; refuses a run that is still training (or whose worker is starting)."""
    folder = rundir.run_dir(run)
    if rundir.is_active(folder):
        raise RunError(f"run {folder.name} is still {rundir.read_status(folder)['state']}", "stop it first")
    try:
        with rundir.RunLock(folder).acquire(wait=ENDING_WORKER_WAIT_S, what="be deleted"):
            shutil.rmtree(folder)
    except OSError as exc:  # a read-only runs folder (the lock file cannot even be opened)
        raise RunError(f"cannot delete run {folder.name} ({exc.strerror or exc})",
                       f"the runs folder {folder.parent} is read-only or not yours; "
                       "delete it where it is writable") from None
