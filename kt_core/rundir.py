"""The run folder: its layout, and the only module that names, reads or writes its files.

A run is a folder `runs/<run_id>/` and nothing else: the worker process writes it, the UI and
the CLI only read it, so a page refresh, a second tab or a crashed server lose nothing.

| file | written | content |
|---|---|---|
| `config.json` | once, at launch | `RunConfig.to_dict()`: enough to re-run it exactly |
| `status.json` | atomically (temp + rename) | state, pid, heartbeat, epoch, step, total_steps, error |
| `metrics.jsonl` | appended, flushed per row | step rows (`kind: "step"`) and epoch rows (`kind: "epoch"`) |
| `log.txt` | appended | the worker's log, warnings, the traceback of a failure |
| `checkpoints/last.pt`, `best.pt` | atomically | `engine.checkpoint_state`: model, optimizer, counters, config |
| `summary.json` | at the end | state, best/final val acc, test acc, epochs, train_s, params |
| `eval/<split>.json` | by `evaluate_run` | the evaluation report of a split |
| `exports/` | by `export_run` | exported models, a copy of config.json |
| `STOP` | by `request_stop()` | asks the worker to finish its batch, checkpoint and exit |
| `worker.lock` | by the worker | the pid of the process holding the folder's exclusive lock |

States: queued -> running -> completed | stopped | failed. A queued or running run whose
worker process is gone, or whose heartbeat is older than `STALE_AFTER_S`, is reported as
`interrupted` (the file still says running; nobody else could correct it). Stopped, failed and
interrupted runs can be resumed from `checkpoints/last.pt`.

One owner: the worker holds `RunLock` (an exclusive `fcntl.flock`) for its whole life, and the
launcher holds it while it starts a worker, so a second worker, a resume race, a forced stop or
a delete while the run trains is refused with `RunBusyError`.

Run ids are readable and sort by creation time: `20261128-113000-quick-3f2a`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from . import coderef
from .config import RunConfig
from .errors import AmbiguousRunError, RunBusyError, RunError
from .procs import pid_alive
from .settings import checked_path, get_settings, user_path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the run lock is then advisory only
    fcntl = None

log = logging.getLogger(__name__)

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
CHECKPOINT_DIR = "checkpoints"
SUMMARY = "summary.json"
EVAL_DIR = "eval"
EXPORTS_DIR = "exports"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files (kt_core/tensorboard_log.py)
STOP = "STOP"
LOCK = "worker.lock"

STALE_AFTER_S = 15.0  # a heartbeat older than this means the worker is gone
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("completed", "stopped", "failed")
CHECKPOINTS = ("best", "last")
RUNS_HINT = "`python -m kt_core runs` lists the runs (id and name), or see the Runs page"


# --- small file helpers ----------------------------------------------------------------------

def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file
        raise


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


# --- the layout --------------------------------------------------------------------------------

def config_path(folder: Path) -> Path:
    return Path(folder) / CONFIG


def log_path(folder: Path) -> Path:
    return Path(folder) / LOG


def metrics_path(folder: Path) -> Path:
    return Path(folder) / METRICS


def checkpoint_dir(folder: Path) -> Path:
    return Path(folder) / CHECKPOINT_DIR


def checkpoint_path(folder: Path, tag: str) -> Path:
    """checkpoints/<tag>.pt (`tag`: "last" or "best")."""
    return checkpoint_dir(folder) / f"{tag}.pt"


def eval_path(folder: Path, split: str) -> Path:
    return Path(folder) / EVAL_DIR / f"{split}.json"


def tensorboard_dir(folder: Path) -> Path:
    return Path(folder) / TENSORBOARD_DIR


def exports_dir(folder: Path) -> Path:
    return Path(folder) / EXPORTS_DIR


def log_tail(run: str | os.PathLike, lines: int = 20) -> list[str]:
    """The last lines of a run's log.txt."""
    return tail(log_path(run_dir(run)), lines)


def config_text(run: str | os.PathLike) -> str:
    """config.json as written at launch (the Train page shows it, downloads offer it)."""
    return config_path(run_dir(run)).read_text()


def reproduce_command(run: str | os.PathLike) -> str:
    """The command that trains this run again from its config.json."""
    config = config_path(run_dir(run))
    try:
        shown = config.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = config.resolve()
    return f"python -m kt_core train {shown}"


def read_config_json(folder: Path) -> dict[str, Any]:
    """config.json as a dict, for a folder given as a source run: a clear error when it is not one."""
    path = config_path(folder)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path.parent.name} is not a KT Studio run: {path.name} is missing",
                       "give a run folder (it holds config.json and checkpoints/)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} cannot be read ({exc})", "the run folder is damaged; pick another run") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a JSON object", "the run folder is damaged; pick another run")
    return data


# --- run ids and folders -------------------------------------------------------------------

def runs_root(runs_dir: str | os.PathLike | None = None) -> Path:
    return Path(runs_dir) if runs_dir is not None else get_settings().runs_dir


def slug(text: str, max_len: int = 24) -> str:
    words = re.findall(r"[a-z0-9]+", (text or "").lower())
    return "-".join(words)[:max_len].strip("-") or "run"


def new_run_id(cfg: RunConfig) -> str:
    """Sortable and readable: creation time, the config's name, a short random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(cfg.name)}-{secrets.token_hex(2)}"


def is_run(folder: str | os.PathLike) -> bool:
    return config_path(Path(folder)).is_file()


def run_ids(runs_dir: str | os.PathLike | None = None) -> list[str]:
    root = runs_root(runs_dir)
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if is_run(p)), reverse=True)


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
    path = checked_path(text, "run") if paths else user_path(text)
    if paths and is_run(path):
        return path
    root = runs_root(runs_dir)
    if is_run(root / text):
        return root / text
    ids = run_ids(root)
    prefixed = [i for i in ids if i.startswith(text)]
    if len(prefixed) == 1:
        return root / prefixed[0]
    named = [i for i in ids if _config_name(root / i) == text]
    if named:
        completed = [i for i in named if (read_json(root / i / STATUS) or {}).get("state") == "completed"]
        return root / (completed or named)[0]
    if len(prefixed) > 1:
        shown = ", ".join(prefixed[:3]) + (", ..." if len(prefixed) > 3 else "")
        raise AmbiguousRunError(f"{text!r} matches {len(prefixed)} runs ({shown})", "give more of the run id")
    if paths and path.is_dir():
        raise RunError(f"{path.name or text} is not a KT Studio run: config.json is missing",
                       "give a run folder (it holds config.json and checkpoints/), or a run id or name; " + RUNS_HINT)
    raise RunError(f"no run {text!r} in {root} (no run folder, id, id prefix or name matches)",
                   f"{RUNS_HINT}; or pass --runs-dir")


def _config_name(folder: Path) -> str | None:
    try:
        return json.loads(config_path(folder).read_text()).get("name")
    except (OSError, json.JSONDecodeError):
        return None


def load_config(run: str | os.PathLike) -> RunConfig:
    return RunConfig.from_file(config_path(run_dir(run)))


def read_config_dict(run: str | os.PathLike) -> dict:
    """config.json as plain JSON ({} when missing), for listings that must not fail on one bad run."""
    return read_json(config_path(run_dir(run))) or {}


def unique_folder(root: Path, new_name: Callable[[], str], what: str) -> Path:
    """A new, empty folder under `root` (made if need be) named by `new_name()`, a time stamp
    with a random suffix: retried on the rare collision, never reusing a folder (runs and
    experiments alike)."""
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        folder = root / new_name()
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RunError(f"could not create a unique {what} folder", f"check {root}")  # pragma: no cover


def create_run(cfg: RunConfig, runs_dir: str | os.PathLike | None = None, confined: bool = False) -> Path:
    """A new run folder with config.json and a queued status; nothing runs yet. `confined`: a
    dashboard run, whose worker holds its paths to the server's roots and refuses trust where
    KT_ALLOW_TRUST=0 (recorded in status.json, which only the server writes).

    A source or distillation teacher of user model code is saved with the code's absolute path
    and its file's hash, so eval, export and resume can say when the file changed or is gone."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, source=coderef.record(cfg.source))  # hashing the file runs none of it
    if cfg.distill.mode != "off" and cfg.distill.teacher is not None:  # resume rebuilds the teacher: from which code?
        teacher = coderef.record(cfg.distill.teacher)
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher=teacher))
    root = runs_root(runs_dir)
    try:
        folder = unique_folder(root, lambda: new_run_id(cfg), "run")
    except OSError as exc:
        raise RunError(f"cannot create a run folder in {root} ({exc.strerror or exc})",
                       "use a writable runs folder: --runs-dir DIR or KT_RUNS_DIR") from None
    try:
        checkpoint_dir(folder).mkdir()
        config_path(folder).write_text(cfg.to_json())
        metrics_path(folder).touch()
        now = time.time()
        write_status(folder, {"state": "queued", "pid": None, "heartbeat": now, "created": now,
                              "epoch": 0, "step": 0, "total_steps": None, "error": None, "confined": confined})
    except OSError as exc:  # a full disk: no half-made run folder stays behind
        shutil.rmtree(folder, ignore_errors=True)
        raise RunError(f"cannot write the run folder {folder} ({exc.strerror or exc})",
                       "free disk space or use a writable runs folder (--runs-dir DIR or KT_RUNS_DIR)") from None
    return folder


# --- status ------------------------------------------------------------------------------------

def read_status_file(folder: Path) -> dict:
    """status.json exactly as written ({} when missing): for the run's single writer."""
    return read_json(Path(folder) / STATUS) or {}


def write_status(folder: Path, status: dict) -> None:
    """Replace status.json (atomic). Only the run's single writer should call this. A write the
    filesystem refuses (full, read-only, the folder deleted) is one RunError line."""
    try:
        write_json_atomic(Path(folder) / STATUS, status)
    except OSError as exc:
        raise write_failed(STATUS, exc, folder) from None


def update_status(run: str | os.PathLike, **fields: Any) -> dict:
    """Merge `fields` into status.json (atomic). Only the run's single writer should call this."""
    folder = run_dir(run)
    status = read_status_file(folder)
    status.update(fields)
    write_status(folder, status)
    return status


def read_status(run: str | os.PathLike) -> dict:
    """status.json, with `interrupted` for a run whose worker is gone, plus `run_id`."""
    folder = run_dir(run)
    status = read_json(folder / STATUS) or {"state": "queued", "pid": None, "heartbeat": None}
    status["run_id"] = folder.name
    if status.get("state") in ACTIVE_STATES and not _worker_alive(status):
        status["state"] = "interrupted"
        ranks = status.get("ranks") or []
        ended = (f"rank 0 (pid {status.get('pid')}) of this {len(ranks)}-process run, the one that writes the run "
                 "folder, ended without finishing the run (torchrun then stops the others)" if len(ranks) > 1
                 else "the worker process ended without finishing the run")
        status["error"] = status.get("error") or ended
        status["log_tail"] = tail(log_path(folder))
    return status


def _worker_alive(status: dict) -> bool:
    ranks = status.get("ranks") or []
    if ranks and ranks[0].get("host") not in (None, socket.gethostname()):
        # rank 0 of a run of several nodes trains on another host: its heartbeat is the only sign
        return time.time() - (status.get("heartbeat") or 0) < STALE_AFTER_S
    if not pid_alive(status.get("pid")):
        return False
    if status.get("state") == "queued":  # still importing torch: no heartbeat yet
        return True
    heartbeat = status.get("heartbeat") or 0
    return time.time() - heartbeat < STALE_AFTER_S


def is_active(run: str | os.PathLike) -> bool:
    return read_status(run)["state"] in ACTIVE_STATES


# --- summary and evaluations -----------------------------------------------------------------

def read_summary(run: str | os.PathLike) -> dict:
    """summary.json ({} while the run has not ended)."""
    return read_json(Path(run_dir(run)) / SUMMARY) or {}


def write_summary(folder: Path, summary: dict) -> None:
    try:
        write_json_atomic(Path(folder) / SUMMARY, summary)
    except OSError as exc:
        raise write_failed(SUMMARY, exc, folder) from None


def write_eval(folder: Path, split: str, report: dict) -> Path:
    path = eval_path(folder, split)
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, report)
    return path


# --- STOP --------------------------------------------------------------------------------------

def request_stop(folder: Path) -> None:
    """Ask the worker to finish its batch, checkpoint and exit."""
    (Path(folder) / STOP).touch()


def stop_requested(folder: Path) -> bool:
    return os.path.exists(Path(folder) / STOP)


def clear_stop(folder: Path) -> None:
    (Path(folder) / STOP).unlink(missing_ok=True)


# --- metrics ----------------------------------------------------------------------------------

class MetricsAppender:
    """Appends rows to metrics.jsonl, flushed per row so a reader sees each at once."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = open(metrics_path(folder), "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as exc:
            raise write_failed(METRICS, exc, self.folder) from None

    def close(self) -> None:
        self.file.close()


def read_metrics(run: str | os.PathLike, since: int = 0, max_bytes: int | None = None) -> tuple[list[dict], int]:
    """Rows appended after byte offset `since`, and the offset to pass next time.

    Only complete lines are returned, so a row being written right now is read on the next call.
    `max_bytes`: read at most this much (the complete lines in it; at least one line), for a
    reader that goes through a long file in pieces.
    """
    path = metrics_path(run_dir(run))
    try:
        with open(path, "rb") as f:
            f.seek(since)
            chunk = f.read() if max_bytes is None else f.read(max_bytes)
            while max_bytes is not None and b"\n" not in chunk:  # one line longer than a piece
                more = f.read(max_bytes)
                if not more:
                    break
                chunk += more
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
    path = metrics_path(run_dir(run))
    rows, _ = read_metrics(path.parent)
    kept = [r for r in rows if int(r.get("step", 0)) <= max_step]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    if len(kept) != len(rows):
        log.info("metrics: dropped %d rows after step %d (they will be recomputed)", len(rows) - len(kept), max_step)
    return len(kept)


# --- checkpoints ------------------------------------------------------------------------------

def run_checkpoint(folder: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file of run folder `folder` to use when `which` ("best" or "last") is asked:
    that one if it exists, else the other (a stopped run may have no best.pt yet, a hand-copied
    run only best.pt). Callers compare the returned name with `which` to say when it differs."""
    if which not in CHECKPOINTS:
        raise RunError(f"unknown checkpoint {which!r}", f"use one of {', '.join(CHECKPOINTS)}")
    folder = Path(folder)
    other = CHECKPOINTS[1 - CHECKPOINTS.index(which)]
    for name in (which, other):
        path = checkpoint_path(folder, name)
        if path.is_file():
            return path
    raise RunError(f"run {folder.name} has no checkpoint yet ({which}.pt and {other}.pt are missing)",
                   "wait for its first epoch to finish, or resume it; or pick a run that completed an epoch")


def load_checkpoint(path: Path) -> dict:
    """A run checkpoint (the whole `engine.checkpoint_state` dict), loaded safely (weights_only)
    onto the CPU. The one reader of run checkpoints: resume, evaluation, export and run sources
    (`checkpoints.interpret` turns it into a source's weights) all read them here."""
    import torch  # here, not at the top: listing, status and stop (CLI, dashboard) never pay torch's ~2 s import

    try:
        with warnings.catch_warnings(record=True) as caught:  # torch's UserWarnings go to the log
            warnings.simplefilter("always")
            state = torch.load(path, map_location="cpu", weights_only=True)
        for w in caught:
            log.debug("%s: %s", w.category.__name__, str(w.message).splitlines()[0] if str(w.message) else "")
        return state
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem to the user
        # Never code: a TorchScript archive or a pickled class in its place is refused, not run.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RunError(f"checkpoint {path} cannot be read as a KT Studio checkpoint ({first})",
                       "delete it to restart the run from the beginning") from None


def write_checkpoint(folder: Path, tag: str, state: dict, same_as: Path | None = None) -> Path:
    """Write checkpoints/<tag>.pt atomically (temp file + rename).

    `same_as`: a checkpoint file just written from this very state (a best epoch is also the
    last): a hard link costs nothing, where a second torch.save of model + optimizer costs an
    epoch's worth of time on small runs. A later rename of that file leaves the link intact.
    """
    import torch  # here, not at the top: listing, status and stop (CLI, dashboard) never pay torch's ~2 s import

    path = checkpoint_path(folder, tag)
    try:
        # Never parents=True: a run folder deleted while it trained must stay deleted, not come
        # back as an empty folder holding one checkpoint and no config.
        path.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise write_failed(f"{CHECKPOINT_DIR}/{path.name}", exc, folder) from None
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    if same_as is not None and same_as.is_file():
        try:
            os.link(same_as, tmp)
            os.replace(tmp, path)
            return path
        except OSError:
            pass  # a filesystem without hard links: write it out
    failure = None
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's zip writer raises RuntimeError on a full disk
        failure = write_failed(f"{CHECKPOINT_DIR}/{path.name}", exc, folder)
    if failure is not None:
        # Outside the except block, so the failed writer (held by the traceback) is freed and its
        # file closed: only then does removing it give the disk its space back.
        gc.collect()
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # no half-written file left; the previous checkpoint stays
        raise failure
    return path


def write_failed(what: str, exc: BaseException, folder: Path) -> RunError:
    """One line for a write the filesystem refused during training: full, read-only, or gone."""
    if not is_run(folder):  # gone, or re-created empty by a library's writer: either way deleted
        return RunError(f"the run folder {folder} was deleted while the run trained",
                        "nothing is left to resume; start the run again from its config")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:  # torch: "PytorchStreamWriter failed writing file data/0: file write failed", "unexpected pos"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        torn = any(w in text.lower() for w in ("write", "inline_container", "unexpected pos"))
        reason = "the disk is full or not writable" if torn else text[:200]
    return RunError(f"could not write {what} in {Path(folder).name} ({reason})",
                    f"free disk space on {Path(folder).parent} or make it writable, then resume "
                    f"(python -m kt_core resume {Path(folder).name}): the last good checkpoint is intact")


# --- the change stamp the UI caches on -------------------------------------------------------

def stamp(run: str | os.PathLike, part: str = "checkpoints") -> str:
    """A string that changes when `part` of the run folder changes: a cache key for what is
    computed from it.

    `part`: "checkpoints" (every checkpoint file: an evaluation is stale once one is rewritten),
    "best" or "last" (the file `run_checkpoint` would use for it, named, as it may switch), or
    "metrics" (the identity of metrics.jsonl: a resume rewrites it as a new file, so rows read
    so far are to be dropped, not continued from a stale offset). "" when there is nothing yet.
    """
    folder = run_dir(run)
    try:
        if part == "metrics":
            stat = metrics_path(folder).stat()
            return f"{stat.st_dev}:{stat.st_ino}"
        if part in CHECKPOINTS:
            path = run_checkpoint(folder, part)
            stat = path.stat()
            return f"{path.name}:{stat.st_mtime_ns}:{stat.st_size}"
        if part == "checkpoints":
            paths = sorted(checkpoint_dir(folder).glob("*.pt"))
            return ";".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in paths)
    except (OSError, RunError):
        return ""
    raise ValueError(f"unknown part {part!r} of a run folder")


# --- the exclusive lock: one owner per run folder ----------------------------------------------

class RunLock:
    """The exclusive lock of one run folder: `fcntl.flock` on RUN/worker.lock.

    The worker holds it for its whole life (in-process `train` and `resume --foreground`
    included); the launcher holds it while it checks a run's state and starts its worker, and
    `stop` and `delete` take it before they change a folder a worker could own. The kernel
    drops it when its process dies, however it dies, so a crash never leaves a stale lock. The
    file holds the holder's pid, for the refusal message.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0, what: str = "use") -> "RunLock":
        """Take the lock, waiting up to `wait` seconds for it; `RunBusyError` if another holds it."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = self.holder()
                    by = f" by process {holder}" if holder else ""
                    raise RunBusyError(
                        f"run {self.folder.name} is held{by}: its worker is training it, or another "
                        f"process is starting one, so it cannot {what} now",
                        "wait for it to end, or stop it first (`python -m kt_core stop RUN`)") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def holder(self) -> int | None:
        """The pid written by the last holder (it may have released the lock since)."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(folder: str | os.PathLike) -> bool:
    """Whether some process holds the run folder's lock right now (nothing is created to ask)."""
    path = Path(folder) / LOCK
    if fcntl is None or not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return False
