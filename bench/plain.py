"""The plain reference: the training loop anyone would write by hand from the PyTorch tutorials.

It is the yardstick kt_core is measured against, so it must be short and obviously fair:
- the same model and initial weights (the caller hands both sides a copy of one state_dict),
- the same data and batch order (one `torch.Generator` seeded like the engine's, one
  `randperm` per epoch: exactly the order `kt_core.data.iter_batches` draws),
- the same optimizer and loss, and the same device,
- and nothing else: no callbacks, no metrics, no logging.

`python -m bench.plain CONFIG.json` trains a run config with this loop in a fresh process, the
reference side of the memory figure (B6).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kt_core.registry import Registry

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

OPTIMIZERS: Registry[Callable] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda params, lr, momentum, wd: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd))
OPTIMIZERS.add("adam", lambda params, lr, momentum, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd))
OPTIMIZERS.add("adamw", lambda params, lr, momentum, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd))


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    return OPTIMIZERS.get(name)([p for p in params if p.requires_grad], lr, momentum, weight_decay)


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> Batches:
    """One epoch in the engine's order: a fresh permutation from the shared generator, sliced."""
    order = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
               frozen: nn.Module | None = None) -> torch.Tensor:
    """One SGD step. With `frozen`, that prefix runs under no_grad: no graph, no activations kept."""
    if frozen is not None:
        with torch.no_grad():
            xb = frozen(xb)
    loss = F.cross_entropy(model(xb), yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, device: torch.device,
                frozen: nn.Module | None = None) -> Iterator[torch.Tensor]:
    """One pass over `batches`, yielding each step's loss: a caller may pause between steps (the
    bench's lock-step turns, `harness.LockstepTurn`). A yield costs ~0.1 us, nothing beside a step."""
    model.train()
    if frozen is not None:
        frozen.eval()  # frozen BatchNorm keeps its statistics, like the engine's bn_mode "eval"
    for xb, yb in batches:
        yield train_step(model, optimizer, xb.to(device, non_blocking=True), yb.to(device, non_blocking=True), frozen)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, device: torch.device,
                frozen: nn.Module | None = None) -> torch.Tensor:
    """One pass over `batches`; returns the last batch's loss."""
    loss = torch.zeros(())
    for loss in train_steps(model, optimizer, batches, device, frozen):
        pass
    return loss


def train_kd_epoch(model: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                   device: torch.device, temperature: float, alpha: float) -> torch.Tensor:
    """One pass of Hinton's logit distillation as the tutorials write it: the teacher in eval mode
    under no_grad, loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) on softened logits."""
    model.train()
    teacher.eval()
    t2 = temperature * temperature
    loss = torch.zeros(())
    for xb, yb in batches:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with torch.no_grad():
            soft_targets = F.log_softmax(teacher(xb) / temperature, dim=1)
        out = model(xb)
        kd = F.kl_div(F.log_softmax(out / temperature, dim=1), soft_targets, reduction="batchmean", log_target=True)
        loss = (1 - alpha) * F.cross_entropy(out, yb) + alpha * (kd * t2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.detach()
    return loss


def train(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: Iterable[Batches],
          device: torch.device, frozen: nn.Module | None = None,
          on_epoch_end: Callable[[int, float], None] | None = None) -> float:
    """Train over `epochs` (an iterable of epochs, each an iterable of batches); the last loss."""
    loss = torch.zeros(())
    for epoch, batches in enumerate(epochs):
        loss = train_epoch(model, optimizer, batches, device, frozen)
        if on_epoch_end is not None:
            on_epoch_end(epoch, float(loss))
    return float(loss)


def split_sequential(model: nn.Module, frozen_children: int, probe: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """Cut a model whose forward is its children in order into (frozen prefix, trainable rest).

    Checked, not assumed: the two halves together must reproduce `model(probe)` exactly, otherwise
    the model's forward does more than chain its children and the cut would not be the same network.
    """
    children = list(model.children())
    if not 0 < frozen_children < len(children):
        raise ValueError(f"cannot freeze {frozen_children} of {len(children)} children")
    prefix, rest = nn.Sequential(*children[:frozen_children]), nn.Sequential(*children[frozen_children:])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        same = torch.allclose(rest(prefix(probe)), model(probe), atol=1e-5)
    model.train(was_training)
    if not same:
        raise ValueError(f"{type(model).__name__}.forward is not its children in order")
    for p in prefix.parameters():
        p.requires_grad_(False)
    return prefix, rest


# --- the reference side of B6: a fresh process that trains a run config with the plain loop ---

def _train_config(path: str) -> int:
    """Build model and data exactly as a run does (`kt_core.assemble.prepare`), then train plainly."""
    from kt_core.config import RunConfig
    from kt_core.engine import resolve_device
    from kt_core.assemble import prepare

    cfg = RunConfig.from_file(path)
    t = cfg.train
    device = resolve_device(t.device)
    prepared = prepare(cfg, device)
    x, y = prepared.data.train.x, prepared.data.train.y
    optimizer = make_optimizer(t.optimizer, prepared.model.parameters(), t.lr, t.momentum, t.weight_decay)
    epochs = (shuffled_batches(x, y, t.batch_size, torch.Generator().manual_seed(t.seed * 1_000_003 + e))
              for e in range(t.epochs))
    loss = train(prepared.model, optimizer, epochs, device)
    print(f"plain loop: {t.epochs} epochs, last loss {loss:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain",
                                     description="train a run config with the plain reference loop")
    parser.add_argument("config", help="a run config JSON (the same file `python -m kt_core train` takes)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return _train_config(args.config)


def fresh_copy(model: nn.Module) -> nn.Module:
    """An independent model with the same initial weights: what each timed side starts from."""
    return copy.deepcopy(model)


if __name__ == "__main__":
    sys.exit(main())
