"""Optimizers and learning-rate schedules: the registries that own their names.

`config.TrainConfig` validates `optimizer` and `scheduler` against these registries, and the UI
lists them from here, so a new optimizer or schedule is one registered function. Importing this
module costs no torch import (an optimizer builder imports torch when it is called), which keeps
the config, the run folder and the CLI's listing commands cheap to start.

A schedule maps (step, total_steps, steps_per_epoch, train config) to a multiplier of each param
group's own base lr (`initial_lr`), so per-block multipliers (discriminative lrs, gradual
unfreezing) survive any schedule. The engine sets every group's lr from it after each step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .registry import Registry

# `t` below is a config.TrainConfig; not imported, as config imports this module.
OPTIMIZERS: Registry[Callable[[list[dict], Any], Any]] = Registry("optimizer")


@OPTIMIZERS.register("sgd", description="SGD with (Nesterov-free) momentum")
def _sgd(groups: list[dict], t) -> Any:
    import torch  # here, not at the top: config imports this module and must not pay for torch

    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


@OPTIMIZERS.register("adam", description="Adam; weight decay added to the gradient (L2)")
def _adam(groups: list[dict], t) -> Any:
    import torch  # here, not at the top: config imports this module and must not pay for torch

    return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)


@OPTIMIZERS.register("adamw", description="AdamW; decoupled weight decay")
def _adamw(groups: list[dict], t) -> Any:
    import torch  # here, not at the top: config imports this module and must not pay for torch

    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)


Schedule = Callable[[int, int, int, Any], float]
SCHEDULERS: Registry[Schedule] = Registry("scheduler")


@SCHEDULERS.register("constant", description="the same learning rate throughout (after warmup)")
def _constant(step: int, total: int, per_epoch: int, t) -> float:
    return 1.0


@SCHEDULERS.register("step", description="multiply by gamma every step_size epochs")
def _step(step: int, total: int, per_epoch: int, t) -> float:
    return t.gamma ** (step // (per_epoch * t.step_size))


@SCHEDULERS.register("cosine", description="cosine decay to zero after warmup")
def _cosine(step: int, total: int, per_epoch: int, t) -> float:
    warm = warmup_steps(t, per_epoch)
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


@SCHEDULERS.register("onecycle", description="rise from lr/25 to lr (30% of steps or warmup), cosine down to ~0")
def _onecycle(step: int, total: int, per_epoch: int, t) -> float:
    # Smith's one-cycle: its own warm phase (warmup_epochs if set, else 30% of the run).
    rise = warmup_steps(t, per_epoch) or max(1, int(0.3 * total))
    start, end = 1 / 25, 1 / 25e4
    if step < rise:
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / rise))
    progress = min(1.0, (step - rise) / max(1, total - rise))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_steps(t, per_epoch: int) -> int:
    return int(round(t.warmup_epochs * per_epoch))


def lr_factor(step: int, total: int, per_epoch: int, t) -> float:
    """The multiplier of the base lrs at `step`: the schedule, times a linear warmup."""
    factor = SCHEDULERS.get(t.scheduler)(step, total, per_epoch, t)
    warm = warmup_steps(t, per_epoch)
    if warm and step < warm and t.scheduler != "onecycle":  # one-cycle warms up by itself
        factor *= (step + 1) / warm
    return factor


def lr_schedule(t, total_steps: int, steps_per_epoch: int) -> Callable[[int], float] | None:
    """step -> multiplier of every group's base lr; None when the lr never changes (the hot loop
    then touches no lr at all)."""
    if t.scheduler == "constant" and warmup_steps(t, steps_per_epoch) == 0:
        return None
    return lambda step: lr_factor(step, total_steps, steps_per_epoch, t)


# --- param groups --------------------------------------------------------------------------
#
# A plan groups parameters per block (names and lr multipliers the table shows), but a group is
# also a cost: torch's optimizers step group by group, ~100 us of Python each on this project's
# 2-core CI host, which is 3-4 % of a tiny MLP's step (bench B1: a plain loop given the engine's
# two groups read 0.95-0.97 of the same loop with one). Groups whose settings are all equal are
# one group to the optimizer: the same update for every parameter, bit for bit.

def merge_equal_groups(groups: list[dict]) -> tuple[list[dict], list[list[int]]]:
    """`groups` with those of equal settings (everything but params and name) merged, in order of
    first appearance, and the layout: for each merged group, the indices of the groups it holds."""
    merged: list[dict] = []
    layout: list[list[int]] = []
    by_settings: dict[str, int] = {}
    for i, group in enumerate(groups):
        settings = repr(sorted((k, v) for k, v in group.items() if k not in ("params", "name")))
        if settings in by_settings:
            k = by_settings[settings]
            merged[k]["params"] = [*merged[k]["params"], *group["params"]]
            merged[k]["name"] += f"+{group.get('name', i)}"
            layout[k].append(i)
        else:
            by_settings[settings] = len(merged)
            merged.append(dict(group, params=list(group["params"]), name=str(group.get("name", i))))
            layout.append([i])
    return merged, layout


def regroup_saved_state(saved: dict, layout: list[list[int]]) -> dict:
    """An optimizer state dict saved with the groups unmerged (checkpoints from before
    `merge_equal_groups`), in `layout`'s merged groups; groups past the layout's (added later,
    as gradual unfreezing does) stay as they are. The per-parameter state is keyed by the
    saved ids, which stay: only the groups' lists of ids change."""
    old = saved["param_groups"]
    count = sum(len(held) for held in layout)
    regrouped = [dict(old[held[0]], params=[pid for i in held for pid in old[i]["params"]],
                      name="+".join(str(old[i].get("name", i)) for i in held)) for held in layout]
    return {"state": saved["state"], "param_groups": regrouped + old[count:]}
