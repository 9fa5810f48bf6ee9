"""The experiment folder: `experiments/<id>/`, beside the runs folder, and nothing else.

| file | written | content |
|---|---|---|
| `experiment.json` | atomically (temp + rename), by the driver while it runs | `id`, `name`, `kind`, `spec` (the validated spec), `runs_dir`, `state`, `pid`, `heartbeat`, `created`, `error`, `parallel`, `source_run`, `progress` |
| `members.jsonl` | appended by the driver, one line per member state change; rewritten whole (atomically) when a driver starts | one JSON object a line: `key`, `coords`, `run_id`, `state`; a member's last line is its state |
| `spec.json` | once, at creation | the spec as given, validated: `python -m kt_core experiment spec.json` runs it again |
| `driver.log` | appended | the driver's log and its member processes' output |
| `STOP` | by `stop_experiment` | asks the driver to stop its members (each checkpoints) and exit |

Members are ordinary runs in the runs folder, each with `experiment` (this id) in its config.
States as for runs: queued -> running -> completed | stopped | failed, and `interrupted` for an
active experiment whose driver is gone (pid dead or heartbeat older than `rundir.STALE_AFTER_S`).
The experiment folder's files are named here only; a member's, by `rundir`.

Why a journal for the members: experiment.json used to hold them, and the driver rewrote it whole
at every member's state change, so an experiment of N members wrote (and its heartbeat rewrote)
N x N member entries: 18 kB per member with 100 members, 133 kB per member (133 MB) with 1,000
(bench B27). An appended line per change keeps the bytes per change constant (3.7 kB per member
at both sizes, the member's run folder included); experiment.json keeps only what does not grow
with the members.
Readers get `members` (and `progress`, counted from them) from `read_experiment` as before. A
line a kill cut short (no newline yet) is the change that was not made. A folder written before
the journal (its members in experiment.json, no members.jsonl) reads as it did, and the first
write of its members (a resume, a stop) moves them into the journal.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .. import procs, rundir
from ..errors import AmbiguousRunError, RunError
from .spec import ExperimentSpec

log = logging.getLogger(__name__)

ACTIVE_STATES = rundir.ACTIVE_STATES
RECORD = "experiment.json"
MEMBERS = "members.jsonl"
SPEC = "spec.json"
DRIVER_LOG = "driver.log"
EXPERIMENTS_HINT = "`python -m kt_core experiments` lists them, or see the Experiments page"


def experiments_root(runs_dir: str | os.PathLike | None = None) -> Path:
    """$KT_EXPERIMENTS_DIR, else `experiments/` beside the runs folder."""
    explicit = os.environ.get("KT_EXPERIMENTS_DIR")
    if explicit:
        return Path(explicit)
    return rundir.runs_root(runs_dir).parent / "experiments"


def experiment_ids(runs_dir=None) -> list[str]:
    root = experiments_root(runs_dir)
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if (p / RECORD).is_file()), reverse=True)


def experiment_dir(exp: str | os.PathLike, runs_dir=None) -> Path:
    """An experiment folder, id, unique id prefix, or name (the newest of that name)."""
    text = str(exp)
    path = Path(text)
    if text.strip() and (path / RECORD).is_file():
        return path
    root = experiments_root(runs_dir)
    ids = experiment_ids(runs_dir)
    if text in ids:
        return root / text
    prefixed = [i for i in ids if i.startswith(text)] if text else []
    if len(prefixed) == 1:
        return root / prefixed[0]
    named = [i for i in ids if (read_record(root / i) or {}).get("name") == text]
    if named:
        return root / named[0]
    if len(prefixed) > 1:
        raise AmbiguousRunError(f"{text!r} matches {len(prefixed)} experiments", "give more of the experiment id")
    raise RunError(f"no experiment {text!r} in {root}", EXPERIMENTS_HINT)


def read_record(folder: Path) -> dict | None:
    return rundir.read_json(folder / RECORD)


def write_experiment(folder: Path, data: dict) -> None:
    """The whole experiment: `members`, when `data` has them, replace members.jsonl (first, so a
    kill between the two files leaves them in both, never in neither); the rest is experiment.json."""
    if "members" in data:
        write_members(folder, data["members"] or [])
    rundir.write_json_atomic(folder / RECORD, {k: v for k, v in data.items() if k not in ("members", "dir")})


def write_members(folder: Path, members: list[dict]) -> None:
    """members.jsonl rewritten (atomically) with one line per member."""
    path = Path(folder) / MEMBERS
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("".join(_line(m) for m in members))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def append_members(folder: Path, members: list[dict]) -> None:
    """The members whose state changed, one line each, in one write (a kill can cut only the last)."""
    if members:
        with open(Path(folder) / MEMBERS, "a") as f:
            f.write("".join(_line(m) for m in members))


def _line(member: dict) -> str:
    return json.dumps(member, default=str, separators=(",", ":")) + "\n"


def read_members(folder: Path) -> list[dict] | None:
    """Each member's last line in members.jsonl, in the order they first appear; None for a
    folder without the journal (written before it: its members are in experiment.json)."""
    path = Path(folder) / MEMBERS
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}",
                       "check the experiment folder's permissions") from None
    lines = text.split(b"\n")
    lines.pop()  # after the last newline: nothing, or a line a kill cut short (a change not made)
    members: dict[str, dict] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            members[entry["key"]] = entry  # a key seen before keeps its place
        except (ValueError, TypeError, KeyError):
            raise RunError(f"{path} is corrupt at line {number}",
                           "delete the experiment, or remove that line by hand (a resume rewrites the file)") from None
    return list(members.values())


def progress_of(members: list[dict]) -> dict:
    """The members' progress: how many in each state, and how many have ended (done)."""
    counts: dict[str, int] = {}
    for m in members:
        state = m.get("state", "pending")
        counts[state] = counts.get(state, 0) + 1
    return {"total": len(members), "done": counts.get("completed", 0) + counts.get("failed", 0),
            "counts": counts, "phase": "members"}


def read_experiment(exp: str | os.PathLike, runs_dir=None, members: bool = True) -> dict:
    """experiment.json, with `interrupted` for an active experiment whose driver is gone, and its
    `members` from members.jsonl (`members=False`: not read, for a listing); `progress` is then
    counted from the members read, so the two always agree."""
    folder = experiment_dir(exp, runs_dir)
    data = read_record(folder) or {}
    data["dir"] = str(folder)
    journal = read_members(folder) if members else None
    if journal is not None:
        data["members"] = journal
        if (data.get("progress") or {}).get("phase") == "members":
            data["progress"] = progress_of(journal)
    if data.get("state") == "queued" and not data.get("pid"):
        # Created, never driven (the driver has not been started yet, or failed to start): it is
        # waiting, not interrupted; `experiment resume` starts its driver.
        data["note"] = data.get("note") or "not started yet: `python -m kt_core experiment resume` starts it"
    elif data.get("state") in ACTIVE_STATES and not _driver_alive(data):
        data["state"] = "interrupted"
        data["error"] = data.get("error") or "the experiment's driver process ended before the experiment did"
    return data


def _driver_alive(data: dict) -> bool:
    if not procs.pid_alive(data.get("pid")):
        return False
    if data.get("state") == "queued":  # starting up: no heartbeat yet
        return True
    return time.time() - (data.get("heartbeat") or 0) < rundir.STALE_AFTER_S


def new_experiment_id(spec: ExperimentSpec) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{rundir.slug(spec.name)}-{secrets.token_hex(2)}"


def create_experiment(spec: ExperimentSpec, runs_dir=None, parallel: int | None = None,
                      spec_source: Any = None) -> Path:
    """A new experiment folder (queued); nothing runs yet. Members are created by the driver."""
    folder = rundir.unique_folder(experiments_root(runs_dir), lambda: new_experiment_id(spec), "experiment")
    (folder / SPEC).write_text(json.dumps(spec.to_dict(), indent=2))
    now = time.time()
    write_experiment(folder, {
        "id": folder.name, "name": spec.name, "kind": spec.kind, "spec": spec.to_dict(),
        "runs_dir": str(rundir.runs_root(runs_dir).resolve()), "state": "queued", "pid": None,
        "heartbeat": now, "created": now, "error": None, "parallel": parallel or spec.parallel,
        "source_run": None, "members": [], "progress": {},
    })
    return folder


def members_runs_dir(data: dict) -> Path:
    return Path(data["runs_dir"])


def list_experiments(runs_dir=None) -> list[dict]:
    """One row per experiment, newest first: id, name, kind, state, members done/total."""
    out = []
    for exp_id in experiment_ids(runs_dir):
        try:
            data = read_experiment(experiments_root(runs_dir) / exp_id, members=False)  # progress has the counts
        except RunError as exc:
            out.append({"id": exp_id, "state": "corrupt", "error": str(exc)})
            continue
        progress = data.get("progress") or {}
        out.append({"id": exp_id, "name": data.get("name"), "kind": data.get("kind"), "state": data.get("state"),
                    "done": progress.get("done", 0), "total": progress.get("total", len(data.get("members") or [])),
                    "created": data.get("created"), "error": data.get("error")})
    return out
