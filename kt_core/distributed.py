"""Data-parallel training: the processes torchrun starts, and what the engine asks of them.

PyTorch's own launcher (`torchrun`, `python -m torch.distributed.run`) starts the processes and
DistributedDataParallel averages their gradients; this module only answers the engine's few
questions about the group it trains in:

- who am I (`Ranks.from_env`: torchrun's RANK / WORLD_SIZE / LOCAL_RANK), on which device, and
  through which backend (NCCL on GPUs, gloo on CPU), with a timeout on every collective so a
  dead process ends the run instead of hanging it;
- which share of a global batch is mine (`share`): the global batch is the config's batch size
  whatever the number of processes, cut into contiguous pieces in rank order, so the union of
  the shares is exactly the batch one process would have trained on;
- the sums every process must agree on (metrics, evaluation, the stop decision), the objects
  rank 0 hands the others (the checkpoint to resume from), and the gathering of per-image
  outputs computed in shards (the feature cache, the teacher cache);
(The command that starts the processes is `kt_core.torchrun`'s, torch-free for the launcher.)

One process (no torchrun) is no group at all: `Ranks.from_env()` is None and the engine runs the
loop it always ran, so a single process's metrics are unchanged byte for byte.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import KTError

log = logging.getLogger(__name__)

# torch 2.14 marks the differentiable all-reduce GlobalBatchNorm needs as deprecated in favour of a
# private module (`_functional_collectives`); the public one works, so its warning stays out of logs.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)

# Seconds a collective may wait for the slowest process. Long enough for the longest gap
# between two collectives (a feature-cache extraction, a validation pass), short enough that
# a process that stopped answering ends the run within minutes. `KT_DIST_TIMEOUT_S` overrides.
DEFAULT_TIMEOUT_S = 300.0


class DistributedError(KTError):
    """The processes of a data-parallel run could not start, or one of them stopped answering."""


@dataclass
class Ranks:
    """This process's place in a data-parallel run (torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int
    host: str = field(default_factory=socket.gethostname)
    backend: str | None = None  # set by `init`

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Ranks | None":
        """The group torchrun started this process in; None for a plain single process."""
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
        except ValueError:
            return None
        if world <= 1:
            return None
        return cls(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process (`cuda:LOCAL_RANK`); other devices as they are."""
        if device.type != "cuda":
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise DistributedError(f"process {self.local_rank} of this node has no GPU: the node has {count}",
                                   f"use at most {count} processes per node (--nproc-per-node {count})")
        return torch.device("cuda", self.local_rank)

    def init(self, device: torch.device, timeout_s: float | None = None) -> None:
        """Join the group (torchrun's rendezvous env): NCCL on GPUs, gloo otherwise."""
        if dist.is_initialized():
            return
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(seconds=timeout_s or timeout_from_env())
        try:
            dist.init_process_group(self.backend, timeout=timeout,
                                    device_id=device if device.type == "cuda" else None)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds here; all mean "could not join"
            raise DistributedError(f"process {self.rank} of {self.world_size} could not join the others ({exc})",
                                   "check that every node runs the same command and reaches the rendezvous endpoint"
                                   ) from None
        log.info("rank %d of %d on %s: %s backend, %s", self.rank, self.world_size, self.host, self.backend, device)

    def close(self) -> None:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a group whose peer died cannot always be torn down cleanly
                log.debug("process group not destroyed cleanly", exc_info=True)

    # --- shares -----------------------------------------------------------------------------

    def share(self, n: int) -> slice:
        """This rank's contiguous piece of `n` items (rank order; the first ones one item longer)."""
        return _share(n, self.rank, self.world_size)

    def shard(self, split):
        """This rank's piece of a split (a TensorSplit, or a dataset read item by item)."""
        piece = self.share(len(split))
        if hasattr(split, "x") and hasattr(split, "y"):
            return type(split)(split.x[piece], split.y[piece])
        return torch.utils.data.Subset(split, range(piece.start, piece.stop))

    # --- collectives --------------------------------------------------------------------------

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over every rank of `tensor` (a copy; `tensor` is left as it is)."""
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is True on any (the stop decision: all stop at one step)."""
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank (pickled by torch; only between our own processes)."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        boxes: list = [None] * self.world_size
        dist.all_gather_object(boxes, obj)
        return boxes

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """The `total` rows of which this rank holds its `share` (per-image outputs of its shard:
        the feature cache, the teacher cache), on every rank, in order."""
        counts = [_share(total, r, self.world_size).stop - _share(total, r, self.world_size).start
                  for r in range(self.world_size)]
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))  # all_gather wants equal shapes
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])


def end_process(code: int) -> None:
    """End a process of a data-parallel run now, without the interpreter's teardown.

    A two-process gloo DDP job that destroyed its group and then exited normally aborted in the
    interpreter's teardown in 2 of 36 tries here ("terminate called without an active exception",
    SIGABRT; torchrun then reports that rank crashed and the run ends `failed` after training to
    the end; CI saw it on 2026-12-03). Leaving with os._exit after the destroy: 0 of 72. The likely
    cause, not confirmed: DDP's reducer still holds the gloo group that teardown destroys. Nothing
    is left to do by then (the worker has closed its files and written the run's end), so the
    process flushes what it logged and leaves with `code`."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _share(n: int, rank: int, world: int) -> slice:
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def timeout_from_env() -> float:
    try:
        return float(os.environ.get("KT_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


# --- the model -------------------------------------------------------------------------------

def trains_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm layer of `model` (in its training mode already set) learns from batches."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Every BatchNorm layer of `model` normalised with the statistics of the global batch, in place.

    On GPUs torch's own `SyncBatchNorm`; torch has none for CPU, so there `GlobalBatchNorm`
    (below) does the same with two all-reduces per layer. The layers keep their parameters and
    buffers (state_dict keys unchanged): checkpoints load into a plain model. Returns how many."""
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, (nn.SyncBatchNorm, GlobalBatchNorm)):
            setattr(model, name, _synced(child, device))
            count += 1
        else:
            count += sync_batchnorm(child, device)
    return count


def _synced(bn: nn.modules.batchnorm._BatchNorm, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        new = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    else:
        new = GlobalBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:  # the very Parameter objects: the optimizer and the plan keep pointing at them
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var, new.num_batches_tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
    new.train(bn.training)
    return new


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU processes (torch's SyncBatchNorm is GPU-only).

    In training, each rank sums its share's per-channel count, sum and sum of squares (float64,
    so the variance matches one process's to ~1e-12), all-reduces them (differentiable:
    `torch.distributed.nn.functional.all_reduce`, whose backward sums the gradients back), and
    normalises with the global mean and biased variance; the running statistics take the
    unbiased variance, as `F.batch_norm` does. In eval mode, or outside a group, it is BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # here: only a CPU group with BatchNorm needs it

        dims = [0, *range(2, x.dim())]
        wide = x.double()
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)
        stats = all_reduce(torch.cat([count, wide.sum(dims), (wide * wide).sum(dims)]))
        n, c = stats[0], x.shape[1]
        mean = stats[1:1 + c] / n
        var = (stats[1 + c:] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (wide - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` under DistributedDataParallel (its trainable parameters' gradients averaged)."""
    from torch.nn.parallel import DistributedDataParallel  # here: only a data-parallel run needs it

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, output_device=device.index if ids else None)


def trainable_signature(module: nn.Module) -> tuple[int, ...]:
    """Which parameters train now: DDP syncs the ones that trained when it was built, so a plan
    that releases more (gradual unfreezing) needs a new wrapper when this changes."""
    return tuple(id(p) for p in module.parameters() if p.requires_grad)
