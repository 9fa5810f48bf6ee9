"""Drafts: the run config a user is setting up, kept on disk until it is started.

The dashboard builds a config across four pages (source, layers, dataset, train). Held only in
a browser session it would be lost by a refresh and missing from a second tab or a bookmark, so
pressing Start could launch something other than what the user built. A draft is that config
as one JSON file, `<drafts_dir>/<id>.json`, with the id in the page URL (`?draft=<id>`):

    {"id": "3f2a9c1b04d5", "updated": 1764583200.1, "config": {... RunConfig.to_dict() ...},
     "extras": {"run_name": "...", "baseline": true, ...}, "runs": ["<run id>", ...]}

`config` may be invalid while it is edited (an epoch count of 0 typed and not yet fixed): it is
parsed with the strict key check (unknown keys fail) but not validated; Start validates.
`extras` are the form's choices that are not part of a run config (the run name field, the
baseline checkbox, which dataset was chosen before "Upload a zip"). `runs` are the runs started
from the draft, newest first. The CLI lists them (`python -m kt_core drafts`) and prints one as
a config file `train` accepts (`drafts show ID`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from .errors import ConfigError
from .settings import get_settings

log = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{6,32}$")  # ours are 12 hex digits; anything else never names a file


@dataclass
class Draft:
    id: str
    config: RunConfig = field(default_factory=lambda: default_config())
    extras: dict[str, Any] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    updated: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "updated": self.updated, "config": self.config.to_dict(),
                "extras": self.extras, "runs": self.runs}


def default_config() -> RunConfig:
    """What a new draft starts from: a small network on the bundled 8x8 digits, its epochs on auto
    (kt_core.defaults: enough steps for the method, with early stopping)."""
    return RunConfig(source=SourceConfig(kind="arch", arch="small_cnn"), dataset=DatasetConfig(name="sklearn_digits"),
                     plan=TransferPlan(preset="fine_tune"), train=TrainConfig())


def drafts_dir() -> Path:
    return get_settings().drafts_dir


def is_draft_id(text: str | None) -> bool:
    return bool(text) and bool(_ID.match(text))


def new_draft() -> Draft:
    """A draft with a fresh id and the default config (nothing is written until `save`)."""
    return Draft(id=secrets.token_hex(6))


def _path(draft_id: str) -> Path:
    if not is_draft_id(draft_id):
        raise ConfigError(f"{draft_id!r} is not a draft id", "a draft id is 12 hex digits, as in the page's URL")
    return drafts_dir() / f"{draft_id}.json"


def load(draft_id: str) -> Draft | None:
    """The saved draft, or None when there is none of that id (or it is unreadable: logged)."""
    try:
        data = json.loads(_path(draft_id).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("draft %s is unreadable (%s): starting it afresh", draft_id, exc)
        return None
    try:
        config = RunConfig.from_dict(data.get("config") or {}, validate=False)
    except ConfigError as exc:  # a draft written by another version: keep what the id names, say why
        log.warning("draft %s holds a config this version cannot read (%s): starting it afresh", draft_id, exc)
        config = default_config()
    return Draft(id=draft_id, config=config, extras=dict(data.get("extras") or {}),
                 runs=list(data.get("runs") or []), updated=float(data.get("updated") or 0.0))


def save(draft: Draft) -> Draft:
    """Write the draft atomically (a second tab reads the old file or the new one, never half)."""
    path = _path(draft.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    draft.updated = time.time()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(draft.to_dict(), indent=2, default=str))
    os.replace(tmp, path)
    return draft


def list_drafts() -> list[Draft]:
    """Every saved draft, the most recently edited first."""
    folder = drafts_dir()
    if not folder.is_dir():
        return []
    found = [load(p.stem) for p in folder.glob("*.json") if is_draft_id(p.stem)]
    return sorted((d for d in found if d is not None), key=lambda d: -d.updated)


def latest(exclude: str | None = None) -> Draft | None:
    """The most recently edited draft other than `exclude` (a new tab offers to continue it)."""
    return next((d for d in list_drafts() if d.id != exclude), None)


def describe(cfg: RunConfig) -> str:
    """One line a person reads: what the draft would train."""
    src = cfg.source
    what = {"arch": src.arch, "file": Path(src.path or "?").name, "run": f"run {src.path}"}.get(src.kind, src.kind)
    k = f"{cfg.dataset.per_class} per class" if cfg.dataset.per_class else "all images"
    extras = "".join((f", {cfg.distill.mode} distillation" if cfg.distill.mode != "off" else "",
                      " + unlabelled images" if cfg.dataset.unlabelled else "",
                      " + L2-SP" if cfg.plan.l2sp_alpha or cfg.plan.l2sp_beta else ""))
    return (f"{what} → {cfg.dataset.name} ({k}), {cfg.plan.preset.replace('_', ' ')}, {cfg.train.epochs or 'auto'} epochs"
            f"{extras}")
