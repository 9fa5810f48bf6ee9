"""Apply a `TransferPlan` to a model: what is copied, what is re-initialised, what trains, how fast.

The plan is resolved per *unit*: a module that owns parameters or buffers itself (a conv, a
linear layer, a BatchNorm). Each unit belongs to the block whose module name is its longest
prefix (blocks come from `models.blocks()`, ordered input -> output, the last one the head). The
preset gives every block a setting; `plan.rules` then override it, in order, for the units they
match (a block name, a module name, or an `fnmatch` glob on a module name or any of its parents).

Conventions (documented here because users rely on them):
- The head: `plan.head` "auto" keeps the source's head (transferred, like every other layer)
  when the target's classes are the source's (`decide_head`), "new" re-initialises it, "keep"
  insists. Without a decision (`head=None`) the head is new. A rule on "head" still wins.
- Transferred layers that train learn at `transferred_lr_mult(plan)` x the base rate (a preset
  default, `presets.TRANSFERRED_LR_MULT`); a new head at the base rate.
- A frozen BatchNorm runs in eval mode (running statistics frozen) when `plan.bn_mode == "eval"`.
  A frozen Dropout keeps its train-mode behaviour: it regularises what trains after it, as in
  torchvision's fine-tuning recipe. The feature cache computes features in eval mode anyway.
- Gradual unfreezing unfreezes, from the head down, the blocks the *preset* froze; a unit frozen
  by an explicit rule stays frozen. Each newly unfrozen block becomes a new optimizer param group
  at `base_lr * plan.unfreeze_lr_mult * lr_mult` (the Lightning `BaseFinetuning` recipe).
- Weight decay skips biases and normalisation weights (every tensor with fewer than 2 dims), as
  timm does: decaying a scale or a shift towards zero only hurts.

The pieces: `PlanResult` is the plan table (a setting per block and per unit, what is frozen
now); `param_groups_of` is the optimizer grouping rule; `bn_eval_modules` the BatchNorm policy;
`GradualUnfreezing` the callback that releases blocks while training; `bn_stat_warnings` and
`estimate_cost` look at the model through `probe.probe`. The presets live in `presets`.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .callbacks import Callback
from .config import TransferPlan
from .errors import ConfigError, KTError, RunError
from .presets import PRESETS, TRANSFERRED_LR_MULT, Layout, Setting, transferred_lr_mult  # noqa: F401 (re-exported)
from .probe import first_device, probe

log = logging.getLogger(__name__)


class BlockLike(Protocol):
    """`kt_core.models.Block`: a named group of modules, ordered input -> output."""

    name: str
    modules: list[str]


# --- resolution ---------------------------------------------------------------------------------

@dataclass
class _Unit:
    """A module's own parameters and buffers within one block, and what the plan does with them.

    Usually a whole module (a conv, a BatchNorm); a container holding parameters directly that
    belong to different blocks (ViT's class token and positional embedding) is split per block.
    """

    key: str  # the module name, or "module[block]" when the module is split
    name: str  # qualified module name, "" for the root
    block: str
    setting: Setting
    pinned: bool  # its freeze came from a rule: gradual unfreezing leaves it alone
    params: list[str]  # qualified names of its own parameters
    is_norm: bool  # a BatchNorm-style module with running statistics


def _ancestry(name: str) -> list[str]:
    """"a.b.c" -> ["a", "a.b", "a.b.c"]: a rule on a parent applies to its children."""
    parts = name.split(".") if name else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))] or [""]


def _rule_matches(pattern: str, block: str, module_names: Iterable[str]) -> bool:
    return pattern == block or any(fnmatch.fnmatchcase(m, pattern) for m in module_names)


def _override(setting: Setting, rule) -> Setting:
    return Setting(
        transfer=setting.transfer if rule.transfer is None else bool(rule.transfer),
        freeze=setting.freeze if rule.freeze is None else bool(rule.freeze),
        lr_mult=setting.lr_mult if rule.lr_mult is None else float(rule.lr_mult),
    )


def _apply_rules(setting: Setting, rules, block: str, module_names: list[str]) -> tuple[Setting, bool]:
    """The setting after the matching rules, in order; and whether a rule decided `freeze`."""
    pinned = False
    for rule in rules:
        if _rule_matches(rule.pattern, block, module_names):
            setting = _override(setting, rule)
            pinned = pinned or rule.freeze is not None
    return setting, pinned


def _check_blocks(model: nn.Module, blocks: Sequence[BlockLike]) -> None:
    if not blocks:
        raise ConfigError("the model has no blocks to plan over",
                          "the architecture needs a layer tree; pick a registered architecture")
    names = dict(model.named_modules())
    names.update(model.named_parameters())  # a block may name a parameter held by a container
    seen: set[str] = set()
    for block in blocks:
        if block.name in seen:
            raise ConfigError(f"block {block.name!r} appears twice", "block names must be unique")
        seen.add(block.name)
        for module in block.modules:
            if module not in names:
                close = difflib.get_close_matches(module, [n for n in names if n], n=3)
                raise ConfigError(f"block {block.name!r} names module {module!r}, which the model does not have",
                                  f"did you mean {', '.join(close)}?" if close else "check the architecture's blocks")


def _block_of(name: str, owners: list[tuple[str, str]]) -> str | None:
    """The block whose entry (a module or parameter name) is the longest prefix of `name`
    (a parameter or module name); owners: (entry, block)."""
    best, best_len = None, -1
    for module, block in owners:
        if (module == "" or name == module or name.startswith(module + ".")) and len(module) > best_len:
            best, best_len = block, len(module)
    return best


def _classifier_start(model: nn.Module, blocks: Sequence[BlockLike]) -> int:
    """Index of the first of the trailing blocks whose parametrised layers are all nn.Linear
    (the classifier block); the head alone when the layer before it is anything else."""
    modules = dict(model.named_modules())
    start = len(blocks) - 1
    for index in range(len(blocks) - 2, -1, -1):
        layers = [m for name in blocks[index].modules if name in modules
                  for m in modules[name].modules() if any(True for _ in m.parameters(recurse=False))]
        if not layers or not all(isinstance(m, nn.Linear) for m in layers):
            break
        start = index
    return start


# --- the head: keep the source's or put on a new one -------------------------------------------

@dataclass(frozen=True)
class HeadDecision:
    """Whether the source's head (its classifier weights) is kept, and why, in words for the plan."""

    keep: bool
    reason: str


def decide_head(plan: TransferPlan, target_classes: Sequence[str] | None, source_classes: Sequence[str] | None,
                source_num_classes: int | None, pretrained: bool = True) -> HeadDecision:
    """`plan.head` resolved for this source and target.

    auto keeps the source's head when the target's class names are the source's, in the same
    order (a run source and torchvision weights know their names), or, where the source's names
    are unknown (a bare checkpoint), when the class counts agree. Measured on the demo story, K=1:
    0.791 with a new head, 0.841 with the source's; a CIFAR ResNet-20 fine-tuned at lr 1e-4 on
    20 images per class: 0.147 with a new head, 0.818 with its own.
    """
    if plan.preset == "scratch" or not pretrained:
        return HeadDecision(False, "new head: the model starts from random weights")
    target = [str(c) for c in target_classes] if target_classes is not None else None
    source = [str(c) for c in source_classes] if source_classes else None
    count = len(target) if target is not None else None
    if plan.head == "new":
        return HeadDecision(False, "new head (chosen): the source's classifier is re-initialised")
    if plan.head == "keep":
        if count is not None and source_num_classes is not None and count != source_num_classes:
            raise ConfigError(f"plan.head is \"keep\" but the target has {count} classes and the source's head "
                              f"{source_num_classes}", "use head \"auto\" or \"new\", or select the source's classes")
        return HeadDecision(True, "source head kept (chosen)")
    if target is None:
        return HeadDecision(False, "new head: the target's classes are not known yet")
    if source is not None:
        if source == target:
            return HeadDecision(True, f"source head kept: the target's {count} classes are the source's")
        shared = len(set(source) & set(target))
        return HeadDecision(False, f"new head: the target's classes are not the source's "
                                   f"({shared} of {count} names shared{', another order' if sorted(source) == sorted(target) else ''})")
    if source_num_classes is not None and source_num_classes == count:
        return HeadDecision(True, f"source head kept: the source's class names are unknown and its head has "
                                  f"{count} outputs, as many as the target's classes (choose a new head if they differ in meaning)")
    return HeadDecision(False, f"new head: the source's head has {source_num_classes} outputs, the target {count} classes")



UNASSIGNED = "(unassigned)"


def _resolve(model: nn.Module, plan: TransferPlan, blocks: Sequence[BlockLike],
             head: HeadDecision | None = None) -> "PlanResult":
    plan.validate()
    _check_blocks(model, blocks)
    n = len(blocks)
    layout = Layout(n, _classifier_start(model, blocks), keep_head=bool(head and head.keep))
    if plan.preset == "freeze_first_n" and plan.freeze_first_n > n - 1:
        raise ConfigError(f"plan.freeze_first_n is {plan.freeze_first_n} but the model has only {n - 1} blocks before the head",
                          f"use at most {n - 1}, or the feature_extraction preset to freeze everything but the head")
    order = [b.name for b in blocks]
    block_modules = {b.name: list(b.modules) for b in blocks}
    units, unassigned = _units(model, plan, blocks, layout)
    warnings = []
    if unassigned:
        order.insert(max(n - 1, 0), UNASSIGNED)
        block_modules[UNASSIGNED] = unassigned
        warnings.append(f"modules outside every block follow the block before the head: {', '.join(unassigned)}")
        log.warning(warnings[-1])
    block_setting = {block: _block_setting(block, blocks, block_modules[block], units, plan, layout)
                     for block in order}
    _check_rules(model, plan, order)
    result = PlanResult(model, plan, order, block_modules, block_setting, units, warnings)
    result.head_decision = head
    # in `order`, an unassigned pseudo-block may sit before the head
    result.classifier_start = order.index(blocks[layout.classifier_start].name)
    return result


def _preset_setting(block: str, blocks: Sequence[BlockLike], plan: TransferPlan, layout: Layout) -> Setting:
    """The preset's setting of `block`; parts outside every block are treated as the part just
    below the head, which is what a classifier's stray parameters usually are."""
    n = len(blocks)
    index = max(n - 2, 0) if block == UNASSIGNED else [b.name for b in blocks].index(block)
    return PRESETS.get(plan.preset)(index, layout, plan)


def _units(model: nn.Module, plan: TransferPlan, blocks: Sequence[BlockLike],
           layout: Layout) -> tuple[list[_Unit], list[str]]:
    """Every module's own parameters and buffers, per block, with the plan's setting for them;
    and the names of modules no block covers."""
    owners = [(m, b.name) for b in blocks for m in b.modules]
    units: list[_Unit] = []
    unassigned = []
    seen_params: set[int] = set()  # tied weights count once, with their first owner
    for name, module in model.named_modules():
        own_params = [(p_name, p) for p_name, p in module.named_parameters(recurse=False) if id(p) not in seen_params]
        own_buffers = list(module.named_buffers(recurse=False))
        if not own_params and not own_buffers:
            continue
        seen_params.update(id(p) for _, p in own_params)
        by_block: dict[str | None, list[str]] = {}
        for p_name, _ in own_params:
            full = f"{name}.{p_name}" if name else p_name
            by_block.setdefault(_block_of(full, owners), []).append(full)
        if not own_params:  # buffers only (a BatchNorm without affine parameters)
            by_block[_block_of(name, owners)] = []
        for block, params in by_block.items():
            if block is None:
                unassigned.append(name or "(root)")
                block = UNASSIGNED
            setting, pinned = _apply_rules(_preset_setting(block, blocks, plan, layout), plan.rules, block,
                                           _ancestry(name) + params)
            units.append(_Unit(
                key=name if len(by_block) == 1 else f"{name}[{block}]", name=name, block=block,
                setting=setting, pinned=pinned, params=params,
                is_norm=isinstance(module, _NormBase) and module.track_running_stats,
            ))
    return units, unassigned


def _block_setting(block: str, blocks: Sequence[BlockLike], modules: list[str], units: list[_Unit],
                   plan: TransferPlan, layout: Layout) -> Setting:
    """A block's row on the Layers page: the preset, then the rules that cover the whole block
    (its name, or a pattern matching every unit of it). A rule on part of a block shows up as
    that row's overrides instead."""
    members = [_ancestry(u.name) + u.params for u in units if u.block == block] or [_ancestry(m) for m in modules]
    setting = _preset_setting(block, blocks, plan, layout)
    for rule in plan.rules:
        if rule.pattern == block or all(any(fnmatch.fnmatchcase(name, rule.pattern) for name in names)
                                        for names in members):
            setting = _override(setting, rule)
    return setting


def _check_rules(model: nn.Module, plan: TransferPlan, order: list[str]) -> None:
    """A rule that matches nothing is a typo: say so, with the names it was probably meant for."""
    all_names = [name for name, _ in model.named_modules() if name] + [name for name, _ in model.named_parameters()]
    for rule in plan.rules:
        if rule.pattern not in order and not any(fnmatch.fnmatchcase(m, rule.pattern) for m in all_names):
            close = difflib.get_close_matches(rule.pattern, order + all_names, n=3)
            raise ConfigError(f"plan rule {rule.pattern!r} matches no block or module",
                              f"did you mean {', '.join(close)}?" if close else f"blocks are {', '.join(order)}")


# --- the plan table -----------------------------------------------------------------------------

class PlanResult:
    """A plan applied to one model: one setting per block and per unit, and which units are
    frozen now. What the engine asks of a plan: `param_groups`, `train_mode`, `head_only`,
    `head`, `state`, `callbacks`.

    It keeps a reference to the model and looks parameters up by name on every call, so moving
    the model to another device after `apply_plan` is fine.
    """

    def __init__(self, model, plan, order, block_modules, block_setting, units, warnings):
        self.model = model
        self.plan = plan
        self.block_names: list[str] = order
        self._block_modules = block_modules
        self._block_setting: dict[str, Setting] = block_setting
        self._units: list[_Unit] = units
        self.warnings: list[str] = list(warnings)
        self.head: str = self._head_module()
        self._frozen: set[str] = {u.key for u in units if u.setting.freeze}
        self.released: list[str] = []  # blocks gradual unfreezing has released, in order
        self.unfreeze_candidates: list[str] = self._unfreeze_candidates()
        self.head_decision: HeadDecision | None = None  # set by apply_plan / preview_plan
        self.classifier_start = len(order) - 1  # index in block_names of the classifier block's start

    def _head_module(self) -> str:
        """The head block's last module with parameters (the classifier), not a trailing
        activation: the engine caches the features that go into this module."""
        modules = dict(self.model.named_modules())
        entries = self._block_modules[self.block_names[-1]]
        with_params = [m for m in entries if m in modules and any(True for _ in modules[m].parameters())]
        return (with_params or entries)[-1]

    def _unfreeze_candidates(self) -> list[str]:
        """The blocks gradual unfreezing releases, in order: from the head down, those the preset
        froze (a unit frozen by an explicit rule stays frozen)."""
        if self.plan.preset != "gradual_unfreeze":
            return []
        below_head = [b for b in self.block_names[:-1]][::-1]
        return [b for b in below_head if self._releasable(b)]

    def _releasable(self, block: str) -> list[_Unit]:
        return [u for u in self._units if u.block == block and u.setting.freeze and not u.pinned]

    def _params(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def is_frozen(self, unit: _Unit) -> bool:
        return unit.key in self._frozen

    def module_trains(self, module_name: str) -> bool:
        """Whether any parameter the module owns itself trains now."""
        return any(u.params and u.key not in self._frozen for u in self._units if u.name == module_name)

    def _sync_requires_grad(self) -> None:
        params = self._params()
        for unit in self._units:
            for p in unit.params:
                params[p].requires_grad_(unit.key not in self._frozen)

    @property
    def total_parameters(self) -> int:
        params = self._params()
        return sum(params[p].numel() for u in self._units for p in u.params)

    @property
    def trainable_parameters(self) -> int:
        params = self._params()
        return sum(params[p].numel() for u in self._units if u.key not in self._frozen for p in u.params)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per block, input -> output, for the Layers page and `--json` output.

        `overrides` lists the units whose setting differs from their block's (rules that name
        one module); `unfreeze_epoch` is when gradual unfreezing releases the block.
        """
        params = self._params()
        rows = []
        for b in self.block_names:
            s = self._block_setting[b]
            units = [u for u in self._units if u.block == b]
            frozen_now = s.freeze and b not in self.released
            overrides = [
                {"module": u.key, "transfer": u.setting.transfer, "freeze": u.key in self._frozen,
                 "lr_mult": u.setting.lr_mult}
                for u in units
                if (u.setting.transfer, u.key in self._frozen, u.setting.lr_mult) != (s.transfer, frozen_now, s.lr_mult)
            ]
            rows.append({
                "name": b,
                "modules": list(self._block_modules[b]),
                "transfer": s.transfer,
                "freeze": frozen_now,
                "lr_mult": s.lr_mult * (self.plan.unfreeze_lr_mult if b in self.released else 1.0),
                "num_parameters": sum(params[p].numel() for u in units for p in u.params),
                "trainable_parameters": sum(params[p].numel() for u in units if u.key not in self._frozen for p in u.params),
                "unfreeze_epoch": self.unfreeze_epoch(b),
                "overrides": overrides,
            })
        return rows

    def unfreeze_epoch(self, block: str) -> int | None:
        """The (0-based) epoch at whose start gradual unfreezing releases `block`, or None."""
        if block not in self.unfreeze_candidates:
            return None
        return (self.unfreeze_candidates.index(block) + 1) * self.plan.unfreeze_every

    def head_only(self) -> bool:
        """True when only the head trains, for the whole run, and the frozen part is a fixed
        function (no frozen BatchNorm in train mode): its features can be computed once and cached."""
        return self.cached_suffix() == [self.head]

    def cached_suffix(self) -> list[str] | None:
        """The modules that train, as a run of whole blocks at the output end (the head, or the
        classifier block: mnist_net's fc1, relu3, fc2), when what comes before them is a fixed
        function for the whole run: the feature cache stores the input of the first one and
        trains these alone. None when something else trains or will (gradual unfreezing), or
        frozen BatchNorm trains."""
        if len(self.released) < len(self.unfreeze_candidates):
            return None
        if self.plan.bn_mode == "train" and any(u.is_norm and u.key in self._frozen for u in self._units):
            return None
        blocks = self.cached_blocks()
        if blocks is None:
            return None
        if blocks == [self.block_names[-1]]:
            return [self.head]
        return [m for b in blocks for m in self._block_modules[b]]

    def cached_blocks(self) -> list[str] | None:
        """The blocks `cached_suffix` trains (from the first block that trains to the head)."""
        trains = [b for b in self.block_names if any(u.block == b and u.params and u.key not in self._frozen
                                                     for u in self._units)]
        if not trains:
            return None
        first = self.block_names.index(trains[0])
        suffix = self.block_names[first:]
        if UNASSIGNED in suffix or first == 0:
            return None
        # only the classifier's Linear layers: the inputs of a conv stage would be feature maps,
        # far too big to hold for a whole dataset
        if suffix != [self.block_names[-1]] and first < self.classifier_start:
            return None
        return suffix

    # -- what changes while it trains: released blocks ------------------------------------------

    def release(self, block: str) -> list[_Unit]:
        """Gradual unfreezing releases `block`: its units train from now on. Returns them."""
        if block in self.released:
            return []
        units = self._releasable(block)
        self.released.append(block)
        self._frozen -= {u.key for u in units}
        self._sync_requires_grad()
        return units

    def state(self) -> dict[str, Any]:
        return {"unfrozen": list(self.released)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore which blocks gradual unfreezing has released (for resume)."""
        blocks = list((state or {}).get("unfrozen", []))
        if blocks != self.unfreeze_candidates[: len(blocks)]:
            raise RunError(f"the checkpoint's unfrozen blocks {blocks} do not fit this plan "
                           f"(order {self.unfreeze_candidates})", "resume with the run's own config.json")
        for block in blocks:
            self.release(block)

    # -- what the engine asks of a plan -------------------------------------------------------

    def param_groups(self, base_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """The optimizer's param groups: trainable parameters only.

        The initially trainable parameters come first, then one set of groups per block that
        gradual unfreezing has released so far, in release order: after `load_state`, this
        rebuilds exactly the groups a checkpointed optimizer had.
        """
        released = {u.key for b in self.released for u in self._releasable(b)}
        initial = [u for u in self._units if u.params and u.key not in self._frozen and u.key not in released]
        groups = param_groups_of(self, initial, base_lr, weight_decay)
        for block in self.released:
            groups += param_groups_of(self, self._releasable(block), base_lr, weight_decay, self.plan.unfreeze_lr_mult)
        if not groups:
            raise ConfigError("the transfer plan trains no parameters",
                              "unfreeze at least the head (a rule with \"freeze\": false), or pick another preset")
        return groups

    def train_mode(self, model: nn.Module | None = None) -> None:
        """`model.train()`, with the frozen BatchNorm layers back in eval mode (`bn_eval_modules`)."""
        model = self.model if model is None else model
        model.train()
        modules = dict(model.named_modules())
        for name in bn_eval_modules(self):
            modules[name].eval()

    def callbacks(self) -> list[Callback]:
        """The callbacks training under this plan needs: gradual unfreezing, when it unfreezes."""
        return [GradualUnfreezing(self)] if self.unfreeze_candidates else []


def param_groups_of(table: PlanResult, units: list[_Unit], base_lr: float, weight_decay: float,
                    lr_scale: float = 1.0) -> list[dict]:
    """Optimizer groups for `units`: one per (block, lr_mult), split into decay / no-decay when
    weight decay is on (no decay on tensors with fewer than 2 dims, as timm does), in block order
    (stable for resume). Each group carries `lr_mult` and `initial_lr`, the base the schedule scales."""
    params = table._params()
    grouped: dict[tuple[str, float, bool], list[nn.Parameter]] = {}
    for unit in units:
        for p_name in unit.params:
            p = params[p_name]
            decay = weight_decay > 0 and p.ndim >= 2
            grouped.setdefault((unit.block, unit.setting.lr_mult, decay), []).append(p)
    mults_per_block: dict[str, set[float]] = {}
    for block, mult, _ in grouped:
        mults_per_block.setdefault(block, set()).add(mult)
    groups = []
    for block in table.block_names:
        for (b, mult, decay), ps in grouped.items():
            if b != block:
                continue
            name = block + (f"[x{mult:g}]" if len(mults_per_block[block]) > 1 else "")
            if weight_decay > 0 and not decay:
                name += ".no_decay"
            lr = base_lr * mult * lr_scale
            groups.append({"params": ps, "lr": lr, "initial_lr": lr, "lr_mult": mult * lr_scale,
                           "name": name, "weight_decay": weight_decay if decay else 0.0})
    return groups


def bn_eval_modules(table: PlanResult) -> list[str]:
    """The BatchNorm policy: with `bn_mode == "eval"`, frozen BatchNorm layers run in eval mode
    (their running statistics stay the source's). A frozen Dropout keeps train-mode behaviour."""
    if table.plan.bn_mode != "eval":
        return []
    return [u.name for u in table._units if u.is_norm and table.is_frozen(u)]


# --- gradual unfreezing: a callback ---------------------------------------------------------------

class GradualUnfreezing(Callback):
    """Lightning's `BaseFinetuning` for a plan: at the start of (0-based) epochs `unfreeze_every`,
    `2 * unfreeze_every`, ... the next candidate block (from the head down) trains, and its
    parameters join the optimizer as new param groups at `base_lr * unfreeze_lr_mult * lr_mult`.

    On resume it replays the releases of the epochs already started, so the optimizer has its
    groups in the order they were added before its checkpointed state is loaded into them.
    """

    def __init__(self, table: PlanResult):
        self.table = table

    def release_due(self, epoch: int, optimizer: torch.optim.Optimizer | None, base_lr: float,
                    weight_decay: float = 0.0) -> list[str]:
        """Release every block due by the start of `epoch` (idempotent); returns those released now."""
        table, released = self.table, []
        for block in table.unfreeze_candidates:
            if table.unfreeze_epoch(block) > epoch or block in table.released:
                continue
            units = table.release(block)
            if optimizer is not None:
                for group in param_groups_of(table, units, base_lr, weight_decay, table.plan.unfreeze_lr_mult):
                    optimizer.add_param_group(group)
            released.append(block)
            log.info("gradual unfreezing: block %s trains from epoch %d", block, epoch)
        return released

    def on_epoch_start(self, ctx) -> None:
        self.release_due(ctx.epoch, ctx.optimizer, ctx.cfg.train.lr, ctx.cfg.train.weight_decay)

    def on_resume(self, ctx, state: dict) -> None:
        last_started = ctx.epoch if ctx.batch_in_epoch else ctx.epoch - 1
        for epoch in range(1, last_started + 1):  # epoch by epoch, as they happened (and were logged)
            self.release_due(epoch, ctx.optimizer, ctx.cfg.train.lr, ctx.cfg.train.weight_decay)


# --- diagnostics --------------------------------------------------------------------------------

def bn_stat_warnings(table: PlanResult, model: nn.Module | None, batch: torch.Tensor,
                     max_shift: float = 1.0, max_log_var_ratio: float = math.log(4.0)) -> list[str]:
    """Warn about frozen BatchNorm layers whose stored statistics do not fit the target data.

    Runs `batch` through the model in eval mode and compares, per channel, the batch mean
    with the running mean (in units of the running std) and the batch variance with the
    running variance (mean absolute log ratio). A frozen BN in eval mode then normalises
    with the wrong numbers; training those layers or `bn_mode: "train"` lets them adapt.
    """
    model = table.model if model is None else model
    modules = dict(model.named_modules())
    watched = [name for name in bn_eval_modules(table) if modules[name].running_mean is not None]
    if not watched:
        return []
    found: dict[str, tuple[float, float]] = {}

    def hook(name):
        def record(module, inputs):
            x = inputs[0].detach().float()
            dims = [d for d in range(x.ndim) if d != 1]
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            std = (module.running_var.float() + module.eps).sqrt()
            shift = ((mean - module.running_mean.float()).abs() / std).mean().item()
            ratio = ((var + module.eps) / (module.running_var.float() + module.eps)).log().abs().mean().item()
            found[name] = (shift, ratio)
        return record

    with probe(model, before={name: hook(name) for name in watched}):
        model(batch.to(first_device(model)))
    messages = []
    for name, (shift, ratio) in found.items():
        if shift > max_shift or ratio > max_log_var_ratio:
            messages.append(
                f"frozen BatchNorm {name}: the target data's statistics differ from the stored ones "
                f"(mean shift {shift:.2f} std, variance ratio x{math.exp(ratio):.2f}); "
                f"consider bn_mode \"train\" or training this block")
    return messages


# --- entry points -------------------------------------------------------------------------------

def preview_plan(model: nn.Module, plan: TransferPlan, blocks: Sequence[BlockLike],
                 head: HeadDecision | None = None) -> PlanResult:
    """The plan's table and counts without touching the model (for the Layers page)."""
    return _resolve(model, plan, blocks, head)


def apply_plan(model: nn.Module, plan: TransferPlan, blocks: Sequence[BlockLike], seed: int = 0,
               head: HeadDecision | None = None) -> PlanResult:
    """Re-initialise what the plan does not transfer (seeded), freeze what it freezes.

    `model` holds the source weights already (`sources.load_source`). Units with
    `transfer=False` get `reset_parameters()` under a private RNG seeded with `seed`, so the
    same seed gives the same initialisation and the caller's RNG stream is left untouched.
    """
    result = _resolve(model, plan, blocks, head)
    if head is not None:
        log.info("transfer plan: %s", head.reason)
    if result.trainable_parameters == 0:  # checked before anything on the model changes
        raise ConfigError("the transfer plan trains no parameters",
                          "unfreeze at least the head (a rule with \"freeze\": false), or pick another preset")
    modules = dict(model.named_modules())
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for unit in result._units:
            if unit.setting.transfer:
                continue
            module = modules[unit.name]
            split = unit.key != unit.name  # reset_parameters() would reset other blocks' parameters too
            if hasattr(module, "reset_parameters") and not split:
                module.reset_parameters()
            elif unit.params:
                message = (f"module {unit.name or '(root)'} ({type(module).__name__}) has no reset_parameters(); "
                           "it keeps its source values")
                result.warnings.append(message)
                log.warning(message)
    result._sync_requires_grad()
    log.info("transfer plan %s: %d of %d parameters trainable, %d units re-initialised",
             plan.preset, result.trainable_parameters, result.total_parameters,
             sum(not u.setting.transfer for u in result._units))
    return result


# --- cost estimate for the Layers page ----------------------------------------------------------

def _forward_flops(module: nn.Module, output: torch.Tensor) -> float:
    """FLOPs (2 x multiply-adds) of one conv or linear call, per image in the batch."""
    if not isinstance(output, torch.Tensor) or output.ndim == 0:
        return 0.0
    per_image = output.numel() / output.shape[0]
    if isinstance(module, nn.modules.conv._ConvNd):
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
        return 2.0 * per_image * fan_in
    if isinstance(module, nn.Linear):
        return 2.0 * per_image * module.in_features
    return 0.0


def estimate_cost(plan_result: PlanResult, model: nn.Module | None, input_size: Sequence[int],
                  augment: str = "none", feature_cache: bool = True) -> dict[str, Any]:
    """What the plan saves compared with fine-tuning everything, per training image.

    FLOPs are counted from conv and linear layer shapes in a dry run with forward hooks (other
    layers are cheap by comparison). Backward costs about twice the forward of a layer: one
    forward's worth for the gradient of its input, needed when anything before it trains, and
    one for the gradient of its weights, needed when it trains itself. A frozen prefix thus
    costs its forward pass only; with the feature cache, not even that after the first epoch.
    """
    model = plan_result.model if model is None else model
    owners = {}
    for u in plan_result._units:  # module -> its block (the first, for a split container)
        owners.setdefault(u.name, u)
    calls: list[tuple[str, float]] = []  # (unit, flops) in execution order

    def hook(name):
        def record(module, inputs, output):
            calls.append((name, _forward_flops(module, output)))
        return record

    try:
        with probe(model, after={name: hook(name) for name in owners}):
            model(torch.zeros(2, *input_size, device=first_device(model)))
    except (RuntimeError, ValueError) as exc:
        raise KTError(f"the model does not accept input of size {tuple(input_size)}: {exc}",
                      "check the dataset's image size and channels against the source model") from None

    forward = full = planned = 0.0
    anything_before_trains = anything_before_has_params = head_before_trains = False
    cached_blocks = set(plan_result.cached_blocks() or [plan_result.block_names[-1]])
    head_flops = 0.0
    for name, flops in calls:
        unit = owners[name]
        has_params = any(u.params for u in plan_result._units if u.name == name)
        trains = plan_result.module_trains(name)
        forward += flops
        full += flops + flops * has_params + flops * anything_before_has_params
        planned += flops + flops * trains + flops * anything_before_trains
        if unit.block in cached_blocks:  # on cached features these are the whole network
            head_flops += flops + flops * trains + flops * head_before_trains
            head_before_trains = head_before_trains or trains
        anything_before_trains = anything_before_trains or trains
        anything_before_has_params = anything_before_has_params or has_params

    cache = bool(feature_cache and augment == "none" and plan_result.cached_suffix())
    return {
        "trainable_parameters": plan_result.trainable_parameters,
        "total_parameters": plan_result.total_parameters,
        "trainable_fraction": plan_result.trainable_parameters / max(plan_result.total_parameters, 1),
        "forward_flops": forward,
        "train_flops_full": full,  # forward + backward per image when everything trains
        "train_flops_plan": planned,
        "work_saved_fraction": 1.0 - planned / full if full else 0.0,
        "feature_cache": cache,
        # after the first epoch the cache leaves only the head's forward and backward
        "train_flops_cached": head_flops if cache else None,
        "work_saved_fraction_cached": (1.0 - head_flops / full if full else 0.0) if cache else None,
        "method": "FLOPs of conv/linear layers from a dry run; backward = 1x forward per input gradient + 1x per weight gradient",
    }
