"""B21: a two-task epoch of kt_core's multi-task training against a plain PyTorch two-head loop.

Both sides train the same trunk with two heads, one batch of one task per step, the tasks taking
turns (round robin), on the same batches in the same order, from the same weights; they take
turns epoch by epoch (`figures.lockstep`'s protocol), so a neighbour's burst of CPU hits both.
The plain loop is what one writes by hand: `head_t(trunk(x))`, cross-entropy, step. kt_core's
side pays for its router (the target's head also runs on the other task's batches, its output
thrown away), the per-task sums, and its rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kt_core.config import MultiTaskConfig, TaskConfig
from kt_core.data import PreparedData, TensorSplit

from . import plain
from .figures import NUM_CLASSES, planned_copy, run_config, synthetic_task, weight_gap
from .harness import FIGURES, Context, LockstepTurn, Target, best, median


def _second_task(data: PreparedData, seed: int = 1) -> PreparedData:
    gen = torch.Generator().manual_seed(seed)
    n = len(data.train)
    x = torch.randn(n, *data.input_size, generator=gen)
    y = torch.randint(0, 5, (n,), generator=gen)
    return PreparedData(train=TensorSplit(x, y), val=None, test=None, class_names=[str(i) for i in range(5)],
                        input_size=data.input_size, name="random, second task")


def _lockstep(arch: str, ctx: Context) -> tuple[list[float], list[float], float]:
    from kt_core import multitask
    from kt_core.engine import fit

    model, data = synthetic_task(arch, ctx)
    other = _second_task(data)
    cfg = run_config(arch, ctx)
    cfg.tasks = [TaskConfig(name="second", weight=1.0)]
    cfg.multitask = MultiTaskConfig(weighting="fixed", sampling="round_robin")
    t = cfg.train

    # the plain side: the same planned copy, its head swapped for Identity, and two heads
    ref, ref_plan = planned_copy(model, cfg)
    ref_tasks = multitask.attach(ref, ref_plan, data, cfg, [other])  # only for identical initial heads
    heads = nn.ModuleList([ref.get_submodule(ref_plan.head), ref_tasks.tasks[1].head])
    ref_tasks.router.remove()
    _set(ref, ref_plan.head, nn.Identity())
    ref.to(ctx.device)
    heads.to(ctx.device)
    optimizer = plain.make_optimizer(t.optimizer, list(ref.parameters()) + list(heads.parameters()), t.lr,
                                     t.momentum, t.weight_decay)
    images = 2 * len(data.train)
    engine_model, plan = planned_copy(model, cfg)
    tasks = multitask.attach(engine_model, plan, data, cfg, [other])
    turn = LockstepTurn(ctx.device, lambda epoch: _plain_epoch(ref, heads, optimizer, tasks.sampler, epoch, ctx.device))
    torch.manual_seed(t.seed)
    fit(engine_model, data, cfg, plan=tasks.plan, callbacks=[turn], device=ctx.device, **tasks.fit_options())
    gap = max(weight_gap(_trunk(engine_model, plan.head), ref), weight_gap(tasks.tasks[1].head, heads[1]))
    return [images / s for s in turn.kt_times], [images / s for s in turn.plain_times[1:]], gap


def _plain_epoch(trunk: nn.Module, heads: nn.ModuleList, optimizer, sampler, epoch: int, device) -> None:
    """The hand-written loop: the batches of each task in the order the sampler's rule gives,
    drawn with plain indexing (the same permutations), `heads[t](trunk(x))`, one step each."""
    from kt_core.multitask import _task_generator

    trunk.train()
    heads.train()
    splits = [task.data.train for task in sampler.tasks]
    bs = sampler.batch_size
    perms = [torch.randperm(len(s), generator=_task_generator(sampler.seed, epoch, i, 0)) for i, s in enumerate(splits)]
    for step, task in enumerate(sampler.order(epoch)):
        start = (step // len(splits)) * bs
        idx = perms[task][start:start + bs]
        x, y = splits[task].x[idx].to(device), splits[task].y[idx].to(device)
        loss = F.cross_entropy(heads[task](trunk(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _trunk(model: nn.Module, head: str) -> nn.Module:
    """The model's parameters without its head, in order: compared with the plain trunk's."""
    class View(nn.Module):
        def __init__(self):
            super().__init__()
            self.params = nn.ParameterList([p for n, p in model.named_parameters()
                                            if not (n == head or n.startswith(head + "."))])
    return View()


@FIGURES.register("B21", title="multi-task: a two-task round-robin epoch, kt_core / a plain two-head loop, "
                               "images/s (small_cnn)", target=Target(">=", 0.95))
def multitask_overhead(ctx: Context) -> tuple[float, str]:
    ratios, kt_rates, plain_rates, gaps = [], [], [], []
    for _ in range(ctx.scale.repeats):
        kt, ref, gap = _lockstep("small_cnn", ctx)
        ratios += [a / b for a, b in zip(kt, ref)]
        kt_rates += kt
        plain_rates += ref
        gaps.append(gap)
    gap = max(gaps)
    work = (f"same final weights (largest difference {gap:.1e})" if gap < 1e-4 else
            f"FINAL WEIGHTS DIFFER by {gap:.1e}: the sides did different work")
    return median(ratios), (f"median of {len(ratios)} epoch pairs; best kt_core {best(kt_rates):.0f} img/s, "
                            f"plain {best(plain_rates):.0f} img/s; {work}; {NUM_CLASSES} + 5 classes")
