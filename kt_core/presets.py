"""Transfer presets: what a preset says about each block of a model (the registry owns the names).

A preset maps (block index, the model's `Layout`, plan) to the block's `Setting`; blocks are ordered
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


@dataclass(frozen=True)
class Layout:
    """What a preset needs to know of the model: its block count, where the classifier starts
    (the trailing blocks whose parametrised layers are all Linear: mnist_net's fc1 + fc2, a
    ResNet's fc), and whether the source's head is kept (`transfer.decide_head`)."""

    n: int
    classifier_start: int
    keep_head: bool = False

    def is_head(self, index: int) -> bool:
        return index == self.n - 1

    def transferred(self, index: int) -> bool:
        return not self.is_head(index) or self.keep_head


# What transferred layers that train learn at, relative to the base rate, per preset (a new
# head always trains at the base rate). Measured on the demo story (MNIST -> digits, K=1): one
# rate of 1e-3 for a fine-tuned mnist_net gave 0.720, 3e-4 gave 0.875; a CIFAR ResNet-20 fine-tuned
# at 1e-3 fell below its zero-shot accuracy. Presets that freeze the whole feature extractor train
# only the classifier, at the base rate, as a careful plain loop does.
TRANSFERRED_LR_MULT = {"fine_tune": 0.3, "freeze_first_n": 0.3, "feature_extraction": 1.0,
                       "linear_probe": 1.0, "gradual_unfreeze": 1.0, "discriminative": 1.0, "scratch": 1.0}


def transferred_lr_mult(plan) -> float:
    """The plan's multiplier for transferred layers that train (its own, else the preset's)."""
    if plan.transferred_lr_mult is not None:
        return float(plan.transferred_lr_mult)
    return TRANSFERRED_LR_MULT.get(plan.preset, 1.0)


def _trained(index: int, layout: Layout, plan, lr_mult: float = 1.0) -> Setting:
    """A block that trains: transferred ones at the plan's fraction of the rate, a new head at it."""
    transfer = layout.transferred(index)
    return Setting(transfer=transfer, freeze=False, lr_mult=lr_mult * (transferred_lr_mult(plan) if transfer else 1.0))


# `plan` below is a config.TransferPlan; not imported, as config imports this module.
PRESETS: Registry = Registry("transfer preset")


@PRESETS.register("feature_extraction",
                  description="the feature extractor frozen; the classifier block (its Linear layers) trains")
def _feature_extraction(index: int, layout: Layout, plan) -> Setting:
    if index >= layout.classifier_start:
        return _trained(index, layout, plan)
    return Setting(transfer=True, freeze=True)


@PRESETS.register("linear_probe", description="everything frozen but the last layer (the head); feature extraction, "
                                               "which trains the whole classifier block, reached 0.860 vs 0.791 on the demo story, K=1")
def _linear_probe(index: int, layout: Layout, plan) -> Setting:
    if layout.is_head(index):
        return _trained(index, layout, plan)
    return Setting(transfer=True, freeze=True)


@PRESETS.register("fine_tune", description="every layer trains, starting from the source weights")
def _fine_tune(index: int, layout: Layout, plan) -> Setting:
    return _trained(index, layout, plan)


@PRESETS.register("freeze_first_n", description="the first N blocks frozen, the rest trains")
def _freeze_first_n(index: int, layout: Layout, plan) -> Setting:
    if index < plan.freeze_first_n:
        return Setting(transfer=True, freeze=True)
    return _trained(index, layout, plan)


@PRESETS.register("gradual_unfreeze", description="only the head first, then one more block every N epochs")
def _gradual_unfreeze(index: int, layout: Layout, plan) -> Setting:
    return _linear_probe(index, layout, plan)


@PRESETS.register("discriminative", description="every layer trains; the learning rate decays block by block from the head")
def _discriminative(index: int, layout: Layout, plan) -> Setting:
    return _trained(index, layout, plan, lr_mult=plan.layer_decay ** (layout.n - 1 - index))


@PRESETS.register("scratch", description="random initialisation, everything trains: the baseline")
def _scratch(index: int, layout: Layout, plan) -> Setting:
    return Setting(transfer=False, freeze=False)
