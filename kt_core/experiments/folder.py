"""The experiment folder: `experiments/<id>/`, beside the runs folder, and nothing else.

| file | written | content |
|---|---|---|
| `experiment.json` | atomically (temp + rename), by the driver while it runs | `id`, `name`, `kind`, `spec` (the validated spec), `runs_dir`, `state`, `pid`, `heartbeat`, `created`, `error`, `parallel`, `source_run`, `members` (`key`, `coords`, `run_id`), `progress` |
| `spec.json` | once, at creation | the spec as given, validated: `python -m kt_core experiment spec.json` runs it again |
| `driver.log` | appended | the driver's log and its member processes' output |
| `STOP` | by `stop_experiment` | asks the driver to stop its members (each checkpoints) and exit |

Members are ordinary runs in the runs folder, each with `experiment` (this id) in its config.
States as for runs: queued -> running -> completed | stopped | failed, and `interrupted` for an
active experiment whose driver is gone (pid dead or heartbeat older than `runs.STALE_AFTER_S`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import runs
from ..errors import AmbiguousRunError, RunError
from ..settings import get_settings
from .spec import ExperimentSpec

log = logging.getLogger(__name__)

ACTIVE_STATES = runs.ACTIVE_STATES
EXPERIMENTS_HINT = "`python -m kt_core experiments` lists them, or see the Experiments page"


def experiments_root(runs_dir: str | os.PathLike | None = None) -> Path:
    """$KT_EXPERIMENTS_DIR, else `experiments/` beside the runs folder."""
    explicit = os.environ.get("KT_EXPERIMENTS_DIR")
    if explicit:
        return Path(explicit)
    return runs.runs_root(runs_dir).parent / "experiments"


def experiment_ids(runs_dir=None) -> list[str]:
    root = experiments_root(runs_dir)
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if (p / "experiment.json").is_file()), reverse=True)


def experiment_dir(exp: str | os.PathLike, runs_dir=None) -> Path:
    """An experiment folder, id, unique id prefix, or name (the newest of that name)."""
    text = str(exp)
    path = Path(text)
    if text.strip() and (path / "experiment.json").is_file():
        return path
    root = experiments_root(runs_dir)
    ids = experiment_ids(runs_dir)
    if text in ids:
        return root / text
    prefixed = [i for i in ids if i.startswith(text)] if text else []
    if len(prefixed) == 1:
        return root / prefixed[0]
    named = [i for i in ids if (_read(root / i) or {}).get("name") == text]
    if named:
        return root / named[0]
    if len(prefixed) > 1:
        raise AmbiguousRunError(f"{text!r} matches {len(prefixed)} experiments", "give more of the experiment id")
    raise RunError(f"no experiment {text!r} in {root}", EXPERIMENTS_HINT)


def _read(folder: Path) -> dict | None:
    return runs.read_json(folder / "experiment.json")


def write_experiment(folder: Path, data: dict) -> None:
    runs.write_json_atomic(folder / "experiment.json", data)


def read_experiment(exp: str | os.PathLike, runs_dir=None) -> dict:
    """experiment.json, with `interrupted` for an active experiment whose driver is gone."""
    folder = experiment_dir(exp, runs_dir)
    data = _read(folder) or {}
    data["dir"] = str(folder)
    if data.get("state") in ACTIVE_STATES and not _driver_alive(data):
        data["state"] = "interrupted"
        data["error"] = data.get("error") or "the experiment's driver process ended before the experiment did"
    return data


def _driver_alive(data: dict) -> bool:
    if not runs.pid_alive(data.get("pid")):
        return False
    if data.get("state") == "queued":  # starting up: no heartbeat yet
        return True
    return time.time() - (data.get("heartbeat") or 0) < runs.STALE_AFTER_S


def new_experiment_id(spec: ExperimentSpec) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{runs.slug(spec.name)}-{secrets.token_hex(2)}"


def create_experiment(spec: ExperimentSpec, runs_dir=None, parallel: int | None = None,
                      spec_source: Any = None) -> Path:
    """A new experiment folder (queued); nothing runs yet. Members are created by the driver."""
    root = experiments_root(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        folder = root / new_experiment_id(spec)
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise RunError("could not create a unique experiment folder", f"check {root}")
    (folder / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
    now = time.time()
    write_experiment(folder, {
        "id": folder.name, "name": spec.name, "kind": spec.kind, "spec": spec.to_dict(),
        "runs_dir": str(runs.runs_root(runs_dir).resolve()), "state": "queued", "pid": None,
        "heartbeat": now, "created": now, "error": None, "parallel": parallel or spec.parallel,
        "source_run": None, "members": [], "progress": {},
    })
    return folder


def members_runs_dir(data: dict) -> Path:
    return Path(data["runs_dir"])


# --- the driver process ---------------------------------------------------------------------------

def spawn_driver(folder: Path) -> int:
    """Start `python -m kt_core experiment-driver FOLDER` in its own session: closing the browser,
    the terminal or the server leaves it running."""
    folder = folder.resolve()
    data = _read(folder) or {}
    with open(folder / "driver.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kt_core", "experiment-driver", str(folder)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=runs._worker_env(), cwd=os.getcwd())
    runs._children[proc.pid] = proc  # polled (and so reaped) by pid_alive
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
    from ..config import RunConfig

    if spec.source_run is not None:
        runs.preflight(RunConfig.from_dict(spec.source_run), runs_dir)
    else:
        runs.preflight(RunConfig.from_dict(spec.base), runs_dir)


def stop_experiment(exp, runs_dir=None, timeout: float = 30.0) -> dict:
    """Ask the driver to stop its members (each finishes its batch and checkpoints) and exit; a
    driver that does not within `timeout` is terminated, and its members stopped from here."""
    folder = experiment_dir(exp, runs_dir)
    data = read_experiment(folder)
    if data["state"] not in ACTIVE_STATES + ("interrupted",):
        raise RunError(f"experiment {folder.name} is not running (state {data['state']})",
                       "nothing to stop; `python -m kt_core experiment resume ID` continues it")
    if data["state"] != "interrupted":
        (folder / "STOP").touch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and runs.pid_alive(data.get("pid")):
            time.sleep(0.2)
        if runs.pid_alive(data.get("pid")):
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
            if runs.read_status(members_runs_dir(data) / run_id)["state"] in ACTIVE_STATES:
                runs.stop(members_runs_dir(data) / run_id)
    final = read_experiment(folder)
    if final["state"] in ACTIVE_STATES + ("interrupted",):
        final.update(state="stopped", error=None)
        final.pop("dir", None)
        write_experiment(folder, final)
    (folder / "STOP").unlink(missing_ok=True)
    return read_experiment(folder)


def resume_experiment(exp, runs_dir=None, foreground: bool = False, on_progress=None) -> str:
    """Continue a stopped, failed or interrupted experiment: completed members are kept, stopped
    and interrupted ones resume from their last checkpoint, the rest are started."""
    folder = experiment_dir(exp, runs_dir)
    data = read_experiment(folder)
    if data["state"] in ACTIVE_STATES:
        raise RunError(f"experiment {folder.name} is already {data['state']}", "stop it first, or watch it")
    if data["state"] == "completed" and not _unfinished(data):
        raise RunError(f"experiment {folder.name} has completed", "start a new one from its spec.json to run it again")
    (folder / "STOP").unlink(missing_ok=True)
    if foreground:
        from .driver import drive

        drive(folder, on_progress=on_progress)
    else:
        spawn_driver(folder)
    return folder.name


def _unfinished(data: dict) -> bool:
    counts = (data.get("progress") or {}).get("counts", {})
    return any(counts.get(s) for s in ("failed", "stopped", "interrupted", "pending"))


def delete_experiment(exp, runs_dir=None, keep_runs: bool = False) -> list[str]:
    """Remove the experiment folder and (unless `keep_runs`) its member runs; a shared source run
    stays. Refuses an experiment that is still running. Returns the member runs deleted."""
    folder = experiment_dir(exp, runs_dir)
    data = read_experiment(folder)
    if data["state"] in ACTIVE_STATES:
        raise RunError(f"experiment {folder.name} is still {data['state']}", "stop it first")
    deleted = []
    if not keep_runs:
        for member in data.get("members") or []:
            run_folder = members_runs_dir(data) / (member.get("run_id") or "")
            if member.get("run_id") and run_folder.is_dir():
                runs.delete(run_folder)
                deleted.append(member["run_id"])
    shutil.rmtree(folder)
    return deleted


def list_experiments(runs_dir=None) -> list[dict]:
    """One row per experiment, newest first: id, name, kind, state, members done/total."""
    out = []
    for exp_id in experiment_ids(runs_dir):
        try:
            data = read_experiment(experiments_root(runs_dir) / exp_id)
        except RunError as exc:
            out.append({"id": exp_id, "state": "corrupt", "error": str(exc)})
            continue
        progress = data.get("progress") or {}
        out.append({"id": exp_id, "name": data.get("name"), "kind": data.get("kind"), "state": data.get("state"),
                    "done": progress.get("done", 0), "total": progress.get("total", len(data.get("members") or [])),
                    "created": data.get("created"), "error": data.get("error")})
    return out
