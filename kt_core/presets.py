"""Transfer presets: what a preset says about each block of a model (the registry owns the names).

A preset maps (block index, number of blocks, plan) to the block's `Setting`; blocks are ordered
input -> output and the head is the last one (index n - 1). `config.TransferPlan` validates its
`preset` against this registry; `transfer` resolves a plan with it. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Registry


@dataclass(frozen=True)
class Setting:
    """What the plan says about one block or unit."""

    transfer: bool  # keep the source weights (True) or re-initialise them (False)
    freeze: bool
    lr_mult: float = 1.0


# `plan` below is a config.TransferPlan; not imported, as config imports this module.
PRESETS: Registry = Registry("transfer preset")


@PRESETS.register("feature_extraction", description="everything frozen but the new head")
def _feature_extraction(index: int, n: int, plan) -> Setting:
    head = index == n - 1
    return Setting(transfer=not head, freeze=not head)


@PRESETS.register("fine_tune", description="every layer trains, starting from the source weights")
def _fine_tune(index: int, n: int, plan) -> Setting:
    return Setting(transfer=index < n - 1, freeze=False)


@PRESETS.register("freeze_first_n", description="the first N blocks frozen, the rest trains")
def _freeze_first_n(index: int, n: int, plan) -> Setting:
    return Setting(transfer=index < n - 1, freeze=index < plan.freeze_first_n)


@PRESETS.register("gradual_unfreeze", description="feature extraction first, then one more block every N epochs")
def _gradual_unfreeze(index: int, n: int, plan) -> Setting:
    return _feature_extraction(index, n, plan)


@PRESETS.register("discriminative", description="every layer trains; the learning rate decays block by block from the head")
def _discriminative(index: int, n: int, plan) -> Setting:
    return Setting(transfer=index < n - 1, freeze=False, lr_mult=plan.layer_decay ** (n - 1 - index))


@PRESETS.register("scratch", description="random initialisation, everything trains: the baseline")
def _scratch(index: int, n: int, plan) -> Setting:
    return Setting(transfer=False, freeze=False)
