"""Durable runs: the run folder contract, the launcher, stop, resume, list and compare.

A run is a folder `runs/<run_id>/` and nothing else: the worker process writes it, the UI and the
CLI only read it, so a page refresh, a second tab or a crashed server lose nothing.

| file | written | content |
|---|---|---|
| `config.json` | once, at launch | `RunConfig.to_dict()`: enough to re-run it exactly |
| `status.json` | atomically (temp + rename) | state, pid, heartbeat, epoch, step, total_steps, error |
| `metrics.jsonl` | appended, flushed per row | step rows (`kind: "step"`) and epoch rows (`kind: "epoch"`) |
| `log.txt` | appended | the worker's log, warnings, the traceback of a failure |
| `checkpoints/last.pt`, `best.pt` | atomically | `engine.checkpoint_state`: model, optimizer, counters, config |
| `summary.json` | at the end | state, best/final val acc, test acc, epochs, train_s, params |
| `STOP` | by `stop()` | asks the worker to finish its batch, checkpoint and exit |

States: queued -> running -> completed | stopped | failed. A queued or running run whose
worker process is gone, or whose heartbeat is older than `STALE_AFTER_S`, is reported as
`interrupted` (the file still says running; nobody else could correct it). Stopped, failed and
interrupted runs can be resumed from `checkpoints/last.pt`.

Run ids are readable and sort by creation time: `20261128-113000-quick-3f2a`.
"""

from __future__ import annotations

import dataclasses
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .config import RunConfig
from .errors import AmbiguousRunError, KTError, RunError
from .settings import get_settings, user_path

log = logging.getLogger(__name__)

STALE_AFTER_S = 15.0  # a heartbeat older than this means the worker is gone
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("completed", "stopped", "failed")
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Workers started by this process: polling them reaps them, so a dead worker is never mistaken
# for a live one (a zombie still answers os.kill(pid, 0)).
_children: dict[int, subprocess.Popen] = {}


# --- small file helpers ----------------------------------------------------------------------

def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise RunError(f"{path} is corrupt: {exc}", "delete the run, or fix the file by hand") from None


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of a text file (the end of the log, for a failed run)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


# --- run ids and folders -------------------------------------------------------------------

def runs_root(runs_dir: str | os.PathLike | None = None) -> Path:
    return Path(runs_dir) if runs_dir is not None else get_settings().runs_dir


def slug(text: str, max_len: int = 24) -> str:
    words = re.findall(r"[a-z0-9]+", (text or "").lower())
    return "-".join(words)[:max_len].strip("-") or "run"


def new_run_id(cfg: RunConfig) -> str:
    """Sortable and readable: creation time, the config's name, a short random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(cfg.name)}-{secrets.token_hex(2)}"


RUNS_HINT = "`python -m kt_core runs` lists the runs (id and name), or see the Runs page"


def run_dir(run: str | os.PathLike, runs_dir: str | os.PathLike | None = None, paths: bool = True) -> Path:
    """The folder of `run`: a run folder path, a run id, a unique id prefix, or a run name
    (the newest run whose config has that name, completed ones first).

    The one place a run is looked up: the CLI, the UI and run sources (`sources.run_folder`,
    which adds the UI's path confinement) all resolve runs here. `paths=False` looks only in
    the runs folder: `run` is never tried as a path of its own.
    """
    text = str(run)
    if not text.strip():
        raise RunError("no run given", f"give a run id, id prefix, name or folder; {RUNS_HINT}")
    path = user_path(text)
    if paths and (path / "config.json").is_file():
        return path
    root = runs_root(runs_dir)
    if (root / text / "config.json").is_file():
        return root / text
    ids = run_ids(root)
    prefixed = [i for i in ids if i.startswith(text)]
    if len(prefixed) == 1:
        return root / prefixed[0]
    named = [i for i in ids if _config_name(root / i) == text]
    if named:
        completed = [i for i in named if (read_json(root / i / "status.json") or {}).get("state") == "completed"]
        return root / (completed or named)[0]
    if len(prefixed) > 1:
        shown = ", ".join(prefixed[:3]) + (", ..." if len(prefixed) > 3 else "")
        raise AmbiguousRunError(f"{text!r} matches {len(prefixed)} runs ({shown})", "give more of the run id")
    if paths and path.is_dir():
        raise RunError(f"{path.name or text} is not a KT Studio run: config.json is missing",
                       "give a run folder (it holds config.json and checkpoints/), or a run id or name; " + RUNS_HINT)
    raise RunError(f"no run {text!r} in {root} (no run folder, id, id prefix or name matches)",
                   f"{RUNS_HINT}; or pass --runs-dir")


CHECKPOINTS = ("best", "last")


def run_checkpoint(folder: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file of run folder `folder` to use when `which` ("best" or "last") is asked:
    that one if it exists, else the other (a stopped run may have no best.pt yet, a hand-copied
    run only best.pt). Callers compare the returned name with `which` to say when it differs."""
    if which not in CHECKPOINTS:
        raise RunError(f"unknown checkpoint {which!r}", f"use one of {', '.join(CHECKPOINTS)}")
    folder = Path(folder)
    other = CHECKPOINTS[1 - CHECKPOINTS.index(which)]
    for name in (which, other):
        path = folder / "checkpoints" / f"{name}.pt"
        if path.is_file():
            return path
    raise RunError(f"run {folder.name} has no checkpoint yet ({which}.pt and {other}.pt are missing)",
                   "wait for its first epoch to finish, or resume it; or pick a run that completed an epoch")


def _config_name(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("name")
    except (OSError, json.JSONDecodeError):
        return None


def load_config(run: str | os.PathLike) -> RunConfig:
    folder = run_dir(run)
    return RunConfig.from_file(folder / "config.json")


def create_run(cfg: RunConfig, runs_dir: str | os.PathLike | None = None) -> Path:
    """A new run folder with config.json and a queued status; nothing runs yet."""
    cfg.validate()
    root = runs_root(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        folder = root / new_run_id(cfg)
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - ten collisions of a random suffix within a second
        raise RunError("could not create a unique run folder", f"check {root}")
    (folder / "checkpoints").mkdir()
    (folder / "config.json").write_text(cfg.to_json())
    (folder / "metrics.jsonl").touch()
    now = time.time()
    write_json_atomic(folder / "status.json", {"state": "queued", "pid": None, "heartbeat": now, "created": now,
                                               "epoch": 0, "step": 0, "total_steps": None, "error": None})
    return folder


def update_status(run: str | os.PathLike, **fields: Any) -> dict:
    """Merge `fields` into status.json (atomic). Only the run's single writer should call this."""
    folder = run_dir(run)
    status = read_json(folder / "status.json") or {}
    status.update(fields)
    write_json_atomic(folder / "status.json", status)
    return status


# --- processes ------------------------------------------------------------------------------

def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # `-m kt_core` must import this very package, whatever the caller's working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Several workers share the cores (the demo's transfer run and its baseline train side by
    # side). OpenMP's default busy-waiting then makes each 5-10x slower than alone; passive
    # waiting keeps two 2-thread workers on 2 cores at ~90% of two 1-thread ones (measured).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _popen_worker(args: list[str], stdout, stdin) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kt_core", "worker", *args],
        stdout=stdout, stderr=subprocess.STDOUT, stdin=stdin,
        start_new_session=True,  # its own process group: Ctrl-C in a terminal or a server restart spare it
        env=_worker_env(), cwd=os.getcwd(),
    )


class _Standby:
    """One worker process started ahead of time (torch imported, optimizers ready), waiting on
    its stdin for the run folder to train. Starting Python and torch costs ~2 s and torch's first
    optimizer ~1.3 s more; the dashboard keeps a standby so Start shows a loss at once.

    A standby whose parent goes away reads end-of-file and exits; one started under another
    working directory or environment is retired, never reused.
    """

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._key: tuple | None = None

    @staticmethod
    def key() -> tuple:
        return os.getcwd(), tuple(sorted(_worker_env().items()))

    def take(self) -> subprocess.Popen | None:
        """The ready standby for the current environment (and a fresh one started behind it)."""
        if not self.enabled:
            return None
        with self._lock:
            proc, key = self._proc, self._key
            self._proc = None
            if proc is not None and (proc.poll() is not None or key != self.key()):
                self._retire(proc)
                proc = None
            self._start()
            return proc

    def _start(self) -> None:
        self._proc = _popen_worker(["--standby"], subprocess.DEVNULL, subprocess.PIPE)
        self._key = self.key()

    @staticmethod
    def _retire(proc: subprocess.Popen) -> None:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # end-of-file: the standby exits
        _children[proc.pid] = proc  # reaped by later polls

    def close(self) -> None:
        with self._lock:
            self.enabled = False
            if self._proc is not None:
                self._retire(self._proc)
                self._proc = None


_standby = _Standby()


def keep_worker_warm(enabled: bool = True) -> None:
    """Keep one worker process started ahead of time for the next launch (the dashboard does)."""
    if enabled and not _standby.enabled:
        _standby.enabled = True
        _standby.take()  # starts the first one
    elif not enabled:
        _standby.close()


def _spawn_worker(folder: Path) -> int:
    folder = folder.resolve()
    proc = _standby.take()
    if proc is not None:
        # The status names the worker before the worker learns its run: once it has the folder it
        # is the run's only writer, and a later write here could overwrite its `running` or `failed`.
        update_status(folder, state="queued", pid=proc.pid, heartbeat=time.time(), error=None)
        try:
            proc.stdin.write(f"{folder}\n".encode())
            proc.stdin.close()
        except OSError:  # it died in the meantime: start one the ordinary way
            proc = None
    if proc is None:
        with open(folder / "log.txt", "ab") as log_file:
            proc = _popen_worker([str(folder)], log_file, subprocess.DEVNULL)
        update_status(folder, state="queued", pid=proc.pid, heartbeat=time.time(), error=None)
    _children[proc.pid] = proc
    log.info("run %s: worker pid %d started", folder.name, proc.pid)
    return proc.pid


def preflight(cfg: RunConfig, runs_dir: str | os.PathLike | None = None) -> None:
    """What can fail before a run folder exists fails now, not later in a worker's log: a device
    that is not here, a source run that is not there."""
    from .engine import resolve_device

    cfg.validate()
    resolve_device(cfg.train.device)
    if cfg.source.kind == "run":
        try:
            run_dir(cfg.source.path, runs_dir)
        except AmbiguousRunError:
            raise
        except RunError:
            raise RunError(
                f"the source run {cfg.source.path!r} is not in {runs_root(runs_dir)}",
                "train it first (for the examples: python -m kt_core train examples/source_mnist.json), "
                "or give a run id, name or folder listed by `python -m kt_core runs`") from None


def launch(cfg: RunConfig, runs_dir: str | os.PathLike | None = None) -> str:
    """Create the run folder and start its worker process; returns the run id at once."""
    preflight(cfg, runs_dir)
    folder = create_run(cfg, runs_dir)
    _spawn_worker(folder)
    return folder.name


def launch_with_baseline(cfg: RunConfig, runs_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """The transfer run and its from-scratch twin (same architecture, data and schedule)."""
    run_id = launch(cfg, runs_dir)
    return run_id, launch(cfg.as_baseline(run_id), runs_dir)


# --- status, stop, resume, delete ----------------------------------------------------------

def read_status(run: str | os.PathLike) -> dict:
    """status.json, with `interrupted` for a run whose worker is gone, plus `run_id`."""
    folder = run_dir(run)
    status = read_json(folder / "status.json") or {"state": "queued", "pid": None, "heartbeat": None}
    status["run_id"] = folder.name
    if status.get("state") in ACTIVE_STATES and not _worker_alive(status):
        status["state"] = "interrupted"
        status["error"] = status.get("error") or "the worker process ended without finishing the run"
        status["log_tail"] = tail(folder / "log.txt")
    return status


def _worker_alive(status: dict) -> bool:
    if not pid_alive(status.get("pid")):
        return False
    if status.get("state") == "queued":  # still importing torch: no heartbeat yet
        return True
    heartbeat = status.get("heartbeat") or 0
    return time.time() - heartbeat < STALE_AFTER_S


def is_active(run: str | os.PathLike) -> bool:
    return read_status(run)["state"] in ACTIVE_STATES


def stop(run: str | os.PathLike, timeout: float = 10.0) -> dict:
    """Ask the worker to stop after its current batch (STOP file); SIGTERM, then SIGKILL, if it
    has not exited within `timeout` seconds. Returns the final status."""
    folder = run_dir(run)
    status = read_status(folder)
    if status["state"] not in ACTIVE_STATES:
        raise RunError(f"run {folder.name} is not running (state {status['state']})",
                       "nothing to stop; `python -m kt_core resume RUN` continues a stopped run")
    (folder / "STOP").touch()
    pid = status.get("pid")
    if _wait_exit(folder, pid, timeout):
        return read_status(folder)
    for sig, wait in ((signal.SIGTERM, max(2.0, timeout / 2)), (signal.SIGKILL, 5.0)):
        log.warning("run %s: worker %s did not stop within %.0f s; sending %s", folder.name, pid, timeout, sig.name)
        _signal_group(pid, sig)
        if _wait_exit(folder, pid, wait):
            break
    if read_status(folder)["state"] in ACTIVE_STATES + ("interrupted",):
        update_status(folder, state="stopped", error="stopped by force before a checkpoint; "
                      "resume continues from the last checkpoint")
    return read_status(folder)


def _signal_group(pid: int | None, sig: signal.Signals) -> None:
    if not pid:
        return
    try:  # the worker leads its own session: its DataLoader workers go with it
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_exit(folder: Path, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def resume(run: str | os.PathLike, foreground: bool = False) -> str:
    """Continue a stopped, failed or interrupted run from checkpoints/last.pt.

    The worker truncates metrics.jsonl to the checkpoint's step first, so the metrics continue
    with no gap and no duplicates. Without a checkpoint the run starts again from the beginning.
    `foreground=True` trains in this process (the CLI's `resume --foreground`).
    """
    folder = run_dir(run)
    status = read_status(folder)
    if status["state"] in ACTIVE_STATES:
        raise RunError(f"run {folder.name} is already {status['state']}", "stop it first, or watch it")
    if status["state"] == "completed":
        raise RunError(f"run {folder.name} has completed", "start a new run from its config.json to train again")
    preflight(load_config(folder), folder.parent)  # a broken config.json or a gone device fails here
    (folder / "STOP").unlink(missing_ok=True)
    update_status(folder, state="queued", error=None, heartbeat=time.time(), pid=os.getpid() if foreground else None)
    if foreground:
        from .worker import run_worker

        run_worker(folder)
    else:
        _spawn_worker(folder)
    return folder.name


def delete(run: str | os.PathLike) -> None:
    """Remove a run folder; refuses a run that is still training."""
    folder = run_dir(run)
    if is_active(folder):
        raise RunError(f"run {folder.name} is still {read_status(folder)['state']}", "stop it first")
    shutil.rmtree(folder)


def reproduce_command(run: str | os.PathLike) -> str:
    """The command that trains this run again from its config.json."""
    config = run_dir(run) / "config.json"
    try:
        shown = config.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = config.resolve()
    return f"python -m kt_core train {shown}"


# --- metrics ----------------------------------------------------------------------------------

def read_metrics(run: str | os.PathLike, since: int = 0) -> tuple[list[dict], int]:
    """Rows appended after byte offset `since`, and the offset to pass next time.

    Only complete lines are returned, so a row being written right now is read on the next call.
    """
    path = run_dir(run) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(since)
            chunk = f.read()
    except FileNotFoundError:
        return [], since
    end = chunk.rfind(b"\n") + 1
    rows = []
    for line in chunk[:end].splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping a corrupt line in %s", path)
    return rows, since + end


def truncate_metrics(run: str | os.PathLike, max_step: int) -> int:
    """Keep only rows up to `max_step` (atomic rewrite, a torn last line dropped); returns rows kept."""
    path = run_dir(run) / "metrics.jsonl"
    rows, _ = read_metrics(path.parent)
    kept = [r for r in rows if int(r.get("step", 0)) <= max_step]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    if len(kept) != len(rows):
        log.info("metrics: dropped %d rows after step %d (they will be recomputed)", len(rows) - len(kept), max_step)
    return len(kept)


# --- listing and comparing -------------------------------------------------------------------

LIST_COLUMNS = ["id", "name", "state", "created", "epoch", "epochs", "best_val_acc", "test_acc", "preset",
                "source", "arch", "dataset", "baseline_of", "step", "total_steps", "error"]


def run_ids(runs_dir: str | os.PathLike | None = None) -> list[str]:
    root = runs_root(runs_dir)
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if (p / "config.json").is_file()), reverse=True)


def _row(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text())
        status = read_status(folder)
        summary = read_json(folder / "summary.json") or {}
    except (KTError, OSError, json.JSONDecodeError) as exc:
        return {"id": folder.name, "state": "corrupt", "error": str(exc)}
    source = cfg.get("source", {})
    return {
        "id": folder.name,
        "name": cfg.get("name", ""),
        "state": status.get("state"),
        "created": status.get("created") or folder.stat().st_mtime,
        "epoch": status.get("epoch"),
        "epochs": cfg.get("train", {}).get("epochs"),
        "best_val_acc": summary.get("best_val_acc"),
        "test_acc": summary.get("test_acc"),
        "preset": cfg.get("plan", {}).get("preset"),
        "source": source.get("kind"),
        "arch": source.get("arch") or (summary.get("arch")),
        "dataset": cfg.get("dataset", {}).get("name"),
        "baseline_of": cfg.get("baseline_of"),
        "step": status.get("step"),
        "total_steps": status.get("total_steps"),
        "error": status.get("error"),
    }


def active_runs(runs_dir: str | os.PathLike | None = None) -> list[dict]:
    """Queued and running runs, newest first: id, name, state, epoch/epochs, step/total_steps.

    Reads each run's status.json and only the active runs' config.json, so every page of the
    dashboard can call it (`list_runs` reads every file of every run).
    """
    root, out = runs_root(runs_dir), []
    for run_id in run_ids(runs_dir):
        try:
            status = read_status(root / run_id)
            if status.get("state") not in ACTIVE_STATES:
                continue
            cfg = read_json(root / run_id / "config.json") or {}
        except RunError:  # a corrupt folder is listed (as corrupt) on the Runs page, not here
            continue
        out.append({"id": run_id, "name": cfg.get("name", ""), "state": status["state"],
                    "epoch": status.get("epoch"), "epochs": cfg.get("train", {}).get("epochs"),
                    "step": status.get("step"), "total_steps": status.get("total_steps")})
    return out


def list_runs(runs_dir: str | os.PathLike | None = None):
    """One row per run, newest first (pandas DataFrame with LIST_COLUMNS)."""
    import pandas as pd

    root = runs_root(runs_dir)
    frame = pd.DataFrame([_row(root / i) for i in run_ids(runs_dir)], columns=LIST_COLUMNS)
    frame["created"] = pd.to_datetime(frame["created"], unit="s")
    return frame


def compare(run_ids: Iterable[str], runs_dir: str | os.PathLike | None = None, differing_only: bool = False):
    """One row per run: state, summary and the flattened config (`train.lr`, `plan.preset`, ...).

    A run named twice (by id and by name, say) is one row. `differing_only` keeps, of the config,
    only the columns whose values differ between the runs: what sets the runs apart.
    """
    import pandas as pd

    rows, seen, config_columns = [], set(), set()
    for run in run_ids:
        folder = run_dir(run, runs_dir)
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        cfg = read_json(folder / "config.json") or {}
        summary = read_json(folder / "summary.json") or {}
        config = pd.json_normalize(cfg, sep=".").iloc[0].to_dict() if cfg else {}
        config_columns.update(config)
        rows.append({"run_id": folder.name, "state": read_status(folder)["state"],
                     **{k: v for k, v in summary.items() if k != "state"}, **config})
    frame = pd.DataFrame(rows, columns=None if rows else ["run_id", "state"])
    if differing_only and len(frame) > 1:
        same = [c for c in frame.columns if c in config_columns
                and frame[c].map(lambda v: json.dumps(v, sort_keys=True, default=str)).nunique() == 1]
        frame = frame.drop(columns=same)
    return frame


def metrics_long(run_ids: Iterable[str], runs_dir: str | os.PathLike | None = None):
    """The metric rows of several runs in one long table with a `run_id` column."""
    import pandas as pd

    frames = []
    for run in run_ids:
        folder = run_dir(run, runs_dir)
        rows, _ = read_metrics(folder)
        if rows:
            frames.append(pd.DataFrame(rows).assign(run_id=folder.name))
    if not frames:
        return pd.DataFrame(columns=["run_id", "kind", "step", "epoch"])
    frame = pd.concat(frames, ignore_index=True)
    return frame[["run_id"] + [c for c in frame.columns if c != "run_id"]]


# --- from a config to model + data + plan ------------------------------------------------------

@dataclass
class Prepared:
    """What a config builds: the model (source weights, adapted head, plan applied) and the data."""

    model: Any
    data: Any
    plan: Any
    source: Any
    blocks: list

    @property
    def arch(self) -> str | None:
        return getattr(self.source, "arch", None)

    @property
    def built_from(self) -> str:
        """"arch" when the model is a registered architecture (rebuilt from `arch` and the weights'
        shapes alone), "source" when it runs the source file's own code (TorchScript, a pickle)."""
        if self.arch is None or getattr(self.source, "own_module", False):
            return "source"
        return "arch"


def prepare(cfg: RunConfig, device=None, roots=None, runs_dir: str | os.PathLike | None = None) -> Prepared:
    """Build everything a run needs from its config (no training). `roots` confines paths (UI);
    a source run given by id or name is looked up in `runs_dir` (default: the settings')."""
    from . import data as data_module
    from . import models, sources, transfer

    source_cfg = cfg.source
    if source_cfg.kind == "run":  # a run id, prefix or name ("the newest completed run named X")
        source_cfg = dataclasses.replace(source_cfg, path=str(run_dir(source_cfg.path, runs_dir)))
    src = sources.load_source(source_cfg, pretrained=(cfg.plan.preset != "scratch"), roots=roots)
    data = data_module.load_dataset(cfg.dataset, input_size=src.input_size, normalization=src.normalization,
                                    roots=roots)
    src.adapt(data.num_classes, data.input_size[0])
    blocks = models.blocks(src.model, src.spec)
    plan = transfer.apply_plan(src.model, cfg.plan, blocks, seed=cfg.train.seed)
    if device is not None:
        src.model.to(device)
    return Prepared(model=src.model, data=data, plan=plan, source=src, blocks=blocks)
