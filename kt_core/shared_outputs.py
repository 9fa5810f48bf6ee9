"""Per-image outputs shared between runs: files under `KT_CACHE_DIR/outputs/`, one per content key.

A frozen source's features over a split, and a teacher's outputs over the training images, are
the same for every run that feeds the same images through the same weights (an experiment's
feature-extraction members of one seed differ only in K, their validation split is one). The
engine computes the key from that content (`image_cache.content_key`) and asks this store
first; the worker hands the store in, the engine knows no files.

Written atomically (a temp file in the folder, then a rename): two members that compute the same
entry at once each write a whole file and the last rename wins, with identical bytes; a reader
never sees half a file. Read with `torch.load(weights_only=True)`: a tensor, never code. The
folder is a rebuildable area of `cachedir` (evicted least recently used first past
`KT_CACHE_MAX_BYTES`; a hit touches the entry). An entry larger than the whole limit is not kept.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from . import cachedir
from .settings import get_settings

log = logging.getLogger(__name__)

AREA = "outputs"


class OutputStore:
    """`load(key)` / `save(key, tensor)` over the cache folder's `outputs/` area."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else get_settings().cache_dir / AREA

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged or evicted-while-read entry is computed again
            log.warning("ignoring unreadable shared cache entry %s: %s", path, exc)
            return None
        if not torch.is_tensor(value):
            return None
        cachedir.touch(path)  # its place in the least-recently-used order
        return value

    def save(self, key: str, value: torch.Tensor) -> Path | None:
        size = value.numel() * value.element_size()
        if size > get_settings().cache_max_bytes:
            log.info("not kept in the shared cache: %d bytes, over KT_CACHE_MAX_BYTES", size)
            return None
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    torch.save(value if _owns_storage(value) else value.contiguous().clone(), fh)
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        except OSError as exc:  # a read-only or full disk only costs the next run the computation
            log.warning("could not write the shared cache entry %s: %s", path, exc)
            return None
        cachedir.enforce_limit(keep=path)
        return path


def _owns_storage(value: torch.Tensor) -> bool:
    """Whether `value` is its whole storage. torch.save writes a tensor's storage whole, so a view
    (a slice of a bigger batch) is cloned first; a tensor that owns its memory is written as it
    is: a clone of the feature cache would double its memory while it is saved."""
    return (value.is_contiguous() and value.storage_offset() == 0
            and value.untyped_storage().nbytes() == value.numel() * value.element_size())


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
