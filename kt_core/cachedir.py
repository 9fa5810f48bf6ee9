"""The cache folder's size: what it holds, a limit it keeps to, and clearing it.

`KT_CACHE_DIR` holds areas of two kinds:
- rebuildable, evicted least recently used first once the folder passes `KT_CACHE_MAX_BYTES`:
  `datasets/` (decoded dataset tensors, one file per selection: rebuilt from the data in seconds),
  `outputs/` (a frozen source's features and a teacher's outputs that runs share, one file per
  content key: `shared_outputs`; computed again by the next run that needs them)
  and `zips/` (uploaded zips extracted, one folder per zip: extracted again from the upload);
- the user's, never evicted, cleared only when named: `uploads/` (the uploaded files themselves:
  run configs point at them), `torchvision/` (datasets downloaded on request: offline they cannot
  come back) and `drafts/` (setups not yet started: `drafts delete` removes them, not this).

"Used" is the entry's mtime: a cache hit touches it (`touch`), so a dataset read every day stays
however old its file is. Two things keep an entry whatever the limit: having been used in the last
`RECENT_S` (a run that just loaded it, another process about to read it) and, for an extracted
zip, an active run whose dataset is that zip (a large folder is read lazily, epoch after epoch).
When only such entries are left the folder stays above the limit for now, and the log says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import rundir
from .errors import KTError
from .settings import get_settings

log = logging.getLogger(__name__)

EVICTABLE = ("datasets", "outputs", "zips")
KEPT = ("uploads", "torchvision")  # cleared only when named; drafts/ is never touched here
RECENT_S = 3600.0


@dataclass(frozen=True)
class Entry:
    area: str
    path: Path
    bytes: int
    used: float  # last use (mtime), seconds since the epoch


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while we counted
                pass
    return total


def entries(areas: tuple[str, ...] = EVICTABLE + KEPT) -> list[Entry]:
    """What the cache holds, per area, oldest use first. Temp files of writes in flight are skipped."""
    found = []
    for area in areas:
        folder = get_settings().cache_dir / area
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") or path.suffix == ".tmp":
                continue
            try:
                found.append(Entry(area, path, _size(path), path.stat().st_mtime))
            except OSError:
                continue
    return sorted(found, key=lambda e: e.used)


def usage() -> dict:
    """Bytes and entries per area, the total and the limit (the `cache` command's table)."""
    listed = entries()
    areas = {area: {"bytes": sum(e.bytes for e in listed if e.area == area),
                    "entries": sum(1 for e in listed if e.area == area), "evictable": area in EVICTABLE}
             for area in EVICTABLE + KEPT}
    return {"cache_dir": str(get_settings().cache_dir), "limit_bytes": get_settings().cache_max_bytes,
            "total_bytes": sum(a["bytes"] for a in areas.values()), "areas": areas}


def touch(path: Path) -> None:
    """Mark a cache entry as used now (its place in the least-recently-used order)."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache only loses its order
        pass


def _zips_in_use() -> set[str]:
    """The extracted-zip folders (by name: the zip's content hash, as `datasets.sources` names
    them) that queued or running runs train from. Hashing reads those zips: paid only when a zip
    folder is about to be evicted while such runs exist."""
    names = set()
    for run_id in rundir.run_ids():
        try:
            if rundir.read_status_file(rundir.runs_root() / run_id).get("state") not in rundir.ACTIVE_STATES:
                continue
            dataset = rundir.read_config_dict(rundir.runs_root() / run_id).get("dataset") or {}
            if dataset.get("name") == "zip" and dataset.get("root"):
                digest = hashlib.sha256()
                with open(dataset["root"], "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                names.add(digest.hexdigest()[:24])
        except (KTError, OSError):  # a corrupt run or a moved zip: nothing of ours to protect
            continue
    return names


def enforce_limit(keep: Path | None = None) -> list[Entry]:
    """Evict rebuildable entries, least recently used first, until the cache fits its limit.
    `keep`: the entry just written (never its own victim). Returns what was removed."""
    limit = get_settings().cache_max_bytes
    listed = entries()
    total = sum(e.bytes for e in listed)
    if total <= limit:
        return []
    now, removed, in_use = time.time(), [], None
    for entry in listed:
        if total <= limit:
            break
        if entry.area not in EVICTABLE or (keep is not None and entry.path == keep) or now - entry.used < RECENT_S:
            continue
        if entry.area == "zips":
            in_use = _zips_in_use() if in_use is None else in_use
            if entry.path.name in in_use:
                continue
        if _remove(entry.path):
            total -= entry.bytes
            removed.append(entry)
    if removed:
        log.info("cache over its limit (KT_CACHE_MAX_BYTES=%d): removed %d least recently used entries, %d bytes",
                 limit, len(removed), sum(e.bytes for e in removed))
    if total > limit:
        log.warning("the cache %s holds %d bytes, over KT_CACHE_MAX_BYTES=%d: what is left is in use, recent "
                    "or the user's own (see `python -m kt_core cache`)", get_settings().cache_dir, total, limit)
    return removed


def clear(areas: tuple[str, ...] = EVICTABLE) -> list[Entry]:
    """Remove every entry of `areas` (the `cache clear` command), recent ones included."""
    unknown = [a for a in areas if a not in EVICTABLE + KEPT]
    if unknown:
        raise KTError(f"no cache area {unknown[0]!r}", f"choose from {', '.join(EVICTABLE + KEPT)}")
    return [e for e in entries(areas) if _remove(e.path)]


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:  # another process evicted it first
        return True
    except OSError as exc:
        log.warning("could not remove cache entry %s: %s", path, exc)
        return False
