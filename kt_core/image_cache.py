"""Functions of the image that do not change during a run, computed once per image.

A frozen backbone's features (the engine's feature cache) and a teacher's outputs (distillation)
are the same thing: a fixed function of each training image. When nothing augments the images,
it is computed once, in eval mode and without gradients, for every image of a split in split
order, and kept on the device; a training batch then looks its rows up by the indices
`iter_batches(..., with_index=True)` gives. The cost is one forward pass over the split and the
cached tensor's memory (N x feature size), instead of one forward pass per image per epoch.

Between runs (an experiment's members: one source, one split, several seeds or methods) the same
tensor is looked up by content in a store the caller hands in (`shared`, below).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any, Callable, Protocol

import torch
from torch import nn

from . import progress
from .datasets.containers import TensorSplit, iter_batches

log = logging.getLogger(__name__)

# A cache larger than this is not kept (a teacher's feature maps of a big dataset): the caller
# falls back to computing the function per batch, which costs time, not memory.
MAX_CACHE_BYTES = 1 << 30


@torch.no_grad()
def compute_once(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None], split, device: torch.device,
                 batch_size: int = 256, autocast: Callable[[], Any] = contextlib.nullcontext,
                 max_bytes: int | None = MAX_CACHE_BYTES, describe: str = "caching per-image outputs"
                 ) -> torch.Tensor | None:
    """`fn(x)` for every image of `split`, in order, concatenated (float32, on `device`).

    `model` (the module `fn` runs) is put in eval mode for the pass and restored after. Returns
    None when `fn` returns None for a batch (it cannot be cached), when the split is empty, or
    when the result would exceed `max_bytes`. `describe` names the pass for a progress display.
    """
    was_training = model.training
    model.eval()
    try:
        with progress.task(describe, len(split)) as shown:
            return _compute(fn, split, device, batch_size, autocast, max_bytes, shown)
    finally:
        model.train(was_training)


def _compute(fn, split, device, batch_size, autocast, max_bytes, shown) -> torch.Tensor | None:
    # Batch by batch into the result, allocated once the first batch tells its shape: the batches
    # kept and concatenated at the end would hold the cache twice at that moment (2.05x the cache
    # at the peak, now 1.07x: `tests/test_cache_memory.py`; a whole run's feature cache at 16,000
    # images, B28: 2.2x before, 1.0x now), halving the dataset whose cache fits.
    whole, done = None, 0
    for x, _ in iter_batches(split, batch_size):
        with autocast():
            out = fn(x.to(device, non_blocking=True))
        if out is None:
            return None
        out = out.detach().float()
        if whole is None:
            need = out[0].numel() * 4 * len(split)
            if max_bytes is not None and need > max_bytes:
                log.info("not cached: %s floats per image would take %.2f GiB for %d images (limit %.2f GiB)",
                         tuple(out.shape[1:]), need / 2**30, len(split), max_bytes / 2**30)
                return None
            whole = torch.empty((len(split), *out.shape[1:]), device=out.device)
        whole[done:done + len(out)] = out
        done += len(out)
        shown.advance(len(out))
    return whole


# --- shared between runs ----------------------------------------------------------------------
# What two runs compute alike (the features of one frozen source over one split, one teacher's
# outputs over one split) is looked up by the content it depends on in a store the caller hands
# in (`shared_outputs.OutputStore`, files under the cache folder): the engine knows no files.

KEY_VERSION = 1  # bump when what the same inputs compute changes


class Store(Protocol):
    def load(self, key: str) -> torch.Tensor | None: ...

    def save(self, key: str, value: torch.Tensor) -> None: ...


def content_key(*parts: Any) -> str:
    """A digest of `parts`: tensors by dtype, shape and bytes; dicts, lists and tuples by their
    items; anything else by its repr. Hashing costs ~1 s per GB (a ResNet-50's weights: 0.1 s)."""
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, (KEY_VERSION, torch.__version__, parts))
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        digest.update(b"{")
        for key in sorted(obj, key=str):
            _feed(digest, key)
            _feed(digest, obj[key])
        digest.update(b"}")
    elif isinstance(obj, (list, tuple)):
        digest.update(b"[")
        for item in obj:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def split_content(split) -> torch.Tensor | None:
    """What a split's outputs depend on: its images, for a split held in memory. A split read
    from files item by item would have to be read whole to be hashed: None (never shared)."""
    return split.x if isinstance(split, TensorSplit) else None


def shared(store: Store | None, key: str | None, rows: int, compute: Callable[[], torch.Tensor | None],
           what: str, device: torch.device, ranks=None) -> torch.Tensor | None:
    """`compute()`, or what an earlier run stored under `key` (`rows` rows, else ignored).

    Under several processes every rank looks up alike and all compute (their shares, inside
    `compute`) unless every one found it; rank 0 alone stores. Without a store or a key it is
    `compute()`. The stored tensor is the computed one, bit for bit: a run that finds it trains
    exactly as one that computed it."""
    if store is None or key is None:
        return compute()
    found = store.load(key)
    if found is not None and (len(found) != rows or found.dtype != torch.float32):
        found = None
    if ranks is not None and ranks.any(found is None, device):
        found = None
    if found is not None:
        log.info("%s: found in the shared cache (entry %s, computed by an earlier run), not computed again",
                 what, key)
        return found.to(device)
    out = compute()
    if out is not None and (ranks is None or ranks.is_main):
        store.save(key, out.detach().cpu())
    return out
