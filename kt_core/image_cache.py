"""Functions of the image that do not change during a run, computed once per image.

A frozen backbone's features (the engine's feature cache) and a teacher's outputs (distillation)
are the same thing: a fixed function of each training image. When nothing augments the images,
it is computed once, in eval mode and without gradients, for every image of a split in split
order, and kept on the device; a training batch then looks its rows up by the indices
`iter_batches(..., with_index=True)` gives. The cost is one forward pass over the split and the
cached tensor's memory (N x feature size), instead of one forward pass per image per epoch.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
from torch import nn

from . import progress
from .datasets.containers import iter_batches

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
            outs = _compute(fn, split, device, batch_size, autocast, max_bytes, shown)
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else None


def _compute(fn, split, device, batch_size, autocast, max_bytes, shown) -> list[torch.Tensor] | None:
    outs: list[torch.Tensor] = []
    for x, _ in iter_batches(split, batch_size):
        with autocast():
            out = fn(x.to(device, non_blocking=True))
        if out is None:
            return None
        out = out.detach().float()
        if not outs and max_bytes is not None:  # the first batch tells the size of the whole
            need = out[0].numel() * 4 * len(split)
            if need > max_bytes:
                log.info("not cached: %s floats per image would take %.2f GiB for %d images (limit %.2f GiB)",
                         tuple(out.shape[1:]), need / 2**30, len(split), max_bytes / 2**30)
                return None
        outs.append(out)
        shown.advance(len(out))
    return outs
