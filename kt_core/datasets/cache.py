"""On-disk cache of prepared in-memory datasets, so a second load takes a fraction of a second.

Keyed by everything the tensors depend on: the dataset, its root, the files' sizes and times
(or the package versions), the selection and transform parameters. Stored with `torch.save`
and read back with `weights_only=True`: tensors, lists and strings only, never code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import cachedir
from ..settings import get_settings

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the preparation changes what the same key would produce


def cache_key(parts: Any) -> str:
    text = json.dumps([CACHE_VERSION, parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_file(key: str) -> Path:
    return get_settings().cache_dir / "datasets" / f"{key}.pt"


def load_cached(key: str) -> dict | None:
    path = cache_file(key)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged cache file is rebuilt, never fatal
        log.warning("ignoring unreadable dataset cache %s: %s", path, exc)
        return None
    cachedir.touch(path)  # its place in the size limit's least-recently-used order
    return payload if isinstance(payload, dict) else None


def save_cached(key: str, payload: dict) -> Path | None:
    """Write atomically (temp file + rename): a crash never leaves a half-written cache entry."""
    path = cache_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full disk only costs speed
        log.warning("could not write dataset cache %s: %s", path, exc)
        return None
    cachedir.enforce_limit(keep=path)
    return path
