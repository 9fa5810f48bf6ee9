"""Starting, stopping, resuming and deleting experiments (the experiment folder is `folder`'s).

Like the launcher for runs: nothing here trains; the driver process does (`driver.drive`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import launcher, procs, rundir
from ..config import RunConfig
from ..errors import RunBusyError, RunError
from .driver import drive
from .folder import (ACTIVE_STATES, DRIVER_LOG, create_experiment, experiment_dir, members_runs_dir,
                     read_experiment, read_record, write_experiment)
from .spec import ExperimentSpec

log = logging.getLogger(__name__)


def spawn_driver(folder: Path) -> int:
    """Start `python -m kt_core experiment-driver FOLDER` in its own session: closing the browser,
    the terminal or the server leaves it running."""
    folder = folder.resolve()
    data = read_record(folder) or {}
    with open(folder / DRIVER_LOG, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kt_core", "experiment-driver", str(folder)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=launcher._worker_env(), cwd=os.getcwd())
    procs.adopt(proc)  # polled (and so reaped) by pid_alive
    data.update(state="queued", pid=proc.pid, heartbeat=time.time(), error=None)
    write_experiment(folder, data)
    log.info("experiment %s: driver pid %d started", folder.name, proc.pid)
    return proc.pid


def start_experiment(spec: ExperimentSpec, runs_dir=None, parallel: int | None = None) -> str:
    """Create the experiment and start its driver in the background; returns the id at once."""
    preflight(spec, runs_dir)
    folder = create_experiment(spec, runs_dir, parallel)
    spawn_driver(folder)
    return folder.name


def preflight(spec: ExperimentSpec, runs_dir=None) -> None:
    """What can fail before anything runs fails now: the configs, the device, a source run."""
    # Here, not at the top: assembling imports torch (~2 s), which listing experiments never needs.
    from ..assemble import preflight as run_preflight

    run_preflight(RunConfig.from_dict(spec.source_run if spec.source_run is not None else spec.base), runs_dir)


def stop_experiment(exp, runs_dir=None, timeout: float = 30.0) -> dict:
    """Ask the driver to stop its members (each finishes its batch and checkpoints) and exit; a
    driver that does not within `timeout` is terminated, and its members stopped from here."""
    folder = experiment_dir(exp, runs_dir)
    data = read_experiment(folder)
    if data["state"] not in ACTIVE_STATES + ("interrupted",):
        raise RunError(f"experiment {folder.name} is not running (state {data['state']})",
                       "nothing to stop; `python -m kt_core experiment resume ID` continues it")
    if data["state"] != "interrupted":
        rundir.request_stop(folder)  # the driver reads it as a run's worker does
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and procs.pid_alive(data.get("pid")):
            time.sleep(0.2)
        if procs.pid_alive(data.get("pid")):
            log.warning("experiment %s: driver %s did not stop within %.0f s; terminating it",
                        folder.name, data.get("pid"), timeout)
            try:
                os.kill(data["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            time.sleep(2.0)
    # Whatever the driver left running (it was killed, or it died) is stopped from here.
    for member in (read_experiment(folder).get("members") or []):
        run_id = member.get("run_id")
        if run_id and (members_runs_dir(data) / run_id).is_dir():
            if rundir.read_status(members_runs_dir(data) / run_id)["state"] in ACTIVE_STATES:
                launcher.stop(members_runs_dir(data) / run_id)
    final = read_experiment(folder)
    if final["state"] in ACTIVE_STATES + ("interrupted",):
        final.update(state="stopped", error=None)
        final.pop("dir", None)
        write_experiment(folder, final)
    rundir.clear_stop(folder)
    return read_experiment(folder)


def resume_experiment(exp, runs_dir=None, foreground: bool = False, on_progress=None) -> str:
    """Continue a stopped, failed or interrupted experiment: completed members are kept, stopped
    and interrupted ones resume from their last checkpoint, the rest are started."""
    folder = experiment_dir(exp, runs_dir)
    _refuse_unless_resumable(folder)
    # Under the folder's lock (the driver holds it for its whole life), so of two resumes at once
    # (two tabs, a tab and the CLI) one starts a driver and the other is refused.
    try:
        lock = rundir.RunLock(folder).acquire(what="be resumed")
    except RunBusyError:
        raise RunError(f"experiment {folder.name} is being resumed or driven by another process",
                       "watch it on the Experiments page or with `experiment show`; stop it first to restart it") from None
    with lock:
        _refuse_unless_resumable(folder)
        rundir.clear_stop(folder)
        if not foreground:
            spawn_driver(folder)
            return folder.name
        data = read_record(folder) or {}
        data.update(state="queued", pid=os.getpid(), heartbeat=time.time(), error=None)
        write_experiment(folder, data)  # this live pid turns other resumes away until drive() has the lock
    drive(folder, on_progress=on_progress)
    return folder.name


def _refuse_unless_resumable(folder: Path) -> None:
    data = read_experiment(folder)
    if data["state"] in ACTIVE_STATES and data.get("pid"):  # queued without a pid: never driven, start it
        raise RunError(f"experiment {folder.name} is already {data['state']}", "stop it first, or watch it")
    if data["state"] == "completed" and not _unfinished(data):
        raise RunError(f"experiment {folder.name} has completed", "start a new one from its spec.json to run it again")


def _unfinished(data: dict) -> bool:
    counts = (data.get("progress") or {}).get("counts", {})
    return any(counts.get(s) for s in ("failed", "stopped", "interrupted", "pending"))


def delete_experiment(exp, runs_dir=None, keep_runs: bool = False) -> list[str]:
    """Remove the experiment folder and (unless `keep_runs`) its member runs; a shared source run
    stays. Refuses an experiment that is still running. Returns the member runs deleted."""
    folder = experiment_dir(exp, runs_dir)
    data = read_experiment(folder)
    if data["state"] in ACTIVE_STATES and data.get("pid"):  # queued without a pid: never driven, start it
        raise RunError(f"experiment {folder.name} is still {data['state']}", "stop it first")
    deleted = []
    if not keep_runs:
        for member in data.get("members") or []:
            run_folder = members_runs_dir(data) / (member.get("run_id") or "")
            if member.get("run_id") and run_folder.is_dir():
                launcher.delete(run_folder)
                deleted.append(member["run_id"])
    shutil.rmtree(folder)
    return deleted


