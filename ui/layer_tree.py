"""The layer tree editor: a preset, then per-block and per-layer transfer / freeze / LR multiplier.

The editor shows the *effective* settings (preset + the user's rules) and turns every cell the
user changes into a `LayerRule` of the plan: block rows become rules naming the block, layer rows
rules naming the module (after the block rules, so they win). Nothing here touches the model:
`kt_core.transfer.preview_plan` resolves the plan on the cached source model read-only.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from kt_core.config import BN_MODES, HEAD_CHOICES, LayerRule, TransferPlan
from kt_core.presets import PRESETS
from kt_core.errors import ConfigError
from kt_core.transfer import UNASSIGNED, HeadDecision, preview_plan

FIELDS = ("transfer", "freeze", "lr_mult")
HEAD_LABELS = {"auto": "auto (the source's when the classes match)", "keep": "keep the source's", "new": "new"}


def preset_form(plan: TransferPlan) -> TransferPlan:
    """The preset and its parameters; changing the preset clears the per-layer rules."""
    c1, c2, c3 = st.columns([2, 1, 1])
    presets = PRESETS.names()
    preset = c1.selectbox("Preset", presets, index=presets.index(plan.preset), key="layers_preset",
                          format_func=lambda p: f"{p} — {PRESETS.meta(p).get('description', '')}")
    if preset != plan.preset:
        # L2-SP carries over between presets that start from the source; from scratch there is no source to stay near
        keep = {"l2sp_alpha": plan.l2sp_alpha, "l2sp_beta": plan.l2sp_beta} if preset != "scratch" else {}
        plan = TransferPlan(preset=preset, bn_mode=plan.bn_mode, head=plan.head, **keep)
    if preset == "freeze_first_n":
        plan.freeze_first_n = int(c2.number_input("Blocks frozen from the input", 0, 100, plan.freeze_first_n,
                                                  key="layers_freeze_n"))
    elif preset == "gradual_unfreeze":
        plan.unfreeze_every = int(c2.number_input("Unfreeze a block every N epochs", 1, 100, plan.unfreeze_every,
                                                  key="layers_unfreeze_every"))
        plan.unfreeze_lr_mult = float(c3.number_input("LR multiplier of unfrozen blocks", 0.0, 10.0,
                                                      plan.unfreeze_lr_mult, key="layers_unfreeze_lr"))
    elif preset == "discriminative":
        plan.layer_decay = float(c2.slider("LR decay per block", 0.05, 1.0, plan.layer_decay, key="layers_decay"))
    plan.bn_mode = c3.selectbox("Frozen BatchNorm", BN_MODES, BN_MODES.index(plan.bn_mode), key="layers_bn",
                                help="eval: running statistics stay the source's; train: they adapt to the target")
    if preset != "scratch":
        plan.head = c1.radio("Head", HEAD_CHOICES, HEAD_CHOICES.index(plan.head), key="layers_head", horizontal=True,
                             format_func=HEAD_LABELS.get,
                             help="Auto keeps the source's classifier when the target's classes are the source's "
                                  "(it already knows them: 0.841 vs 0.791 with a new head on the demo story, K=1), "
                                  "and puts on a new one otherwise.")
        with st.expander("L2-SP: stay near the source", expanded=bool(plan.l2sp_alpha or plan.l2sp_beta)):
            st.caption("Li et al. 2018: a penalty alpha/2·‖w − w_source‖² on the trained weights that come from the "
                       "source, beta/2·‖w‖² on the trained new ones (a fresh head). 0 = off; use it instead of "
                       "weight decay. For presets that train transferred layers.")
            c1, c2 = st.columns(2)
            plan.l2sp_alpha = float(c1.number_input("alpha (toward the source)", 0.0, 100.0, plan.l2sp_alpha,
                                                    format="%.4f", key="layers_l2sp_alpha"))
            plan.l2sp_beta = float(c2.number_input("beta (new weights toward zero)", 0.0, 100.0, plan.l2sp_beta,
                                                   format="%.4f", key="layers_l2sp_beta"))
    return plan


def _units(model, block_rows: list[dict]) -> list[tuple[str, str, int]]:
    """(module name, block, own parameter count) of every module that owns parameters."""
    owners = sorted(((m, r["name"]) for r in block_rows for m in r["modules"]), key=lambda o: -len(o[0]))
    found = []
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if not own or not name:
            continue
        block = next((b for m, b in owners if name == m or name.startswith(m + ".") or m == ""), UNASSIGNED)
        found.append((name, block, own))
    return found


def block_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "block": r["name"], "params": r["num_parameters"], "transfer": r["transfer"], "freeze": r["freeze"],
        "lr_mult": float(r["lr_mult"]), "unfreeze at epoch": r.get("unfreeze_epoch"),
    } for r in rows])


def layer_frame(model, rows: list[dict]) -> pd.DataFrame:
    """One row per parameter-owning module, with its effective setting (block's or override)."""
    by_block = {r["name"]: r for r in rows}
    overrides = {o["module"]: o for r in rows for o in r["overrides"]}
    data = []
    for name, block, own in _units(model, rows):
        src = overrides.get(name) or by_block.get(block) or {}
        data.append({"layer": name, "block": block, "params": own, "transfer": bool(src.get("transfer", True)),
                     "freeze": bool(src.get("freeze", False)), "lr_mult": float(src.get("lr_mult", 1.0))})
    return pd.DataFrame(data)


def rules_from_edits(edited: pd.DataFrame, reference: pd.DataFrame, name_col: str) -> list[LayerRule]:
    """One rule per row whose cells differ from the reference, naming only the changed fields."""
    rules = []
    ref = reference.set_index(name_col)
    for _, row in edited.iterrows():
        name = row[name_col]
        if name not in ref.index or name == UNASSIGNED:
            continue
        changed = {f: _plain(row[f]) for f in FIELDS if _plain(row[f]) != _plain(ref.loc[name, f])}
        if changed:
            rules.append(LayerRule(pattern=name, **changed))
    return rules


def _plain(value):
    """numpy scalars -> Python (so rules serialise to JSON and compare cleanly)."""
    value = value.item() if hasattr(value, "item") else value
    return round(value, 6) if isinstance(value, float) else value


def _editor_config():
    return {
        "params": st.column_config.NumberColumn("params", format="%d", disabled=True),
        "transfer": st.column_config.CheckboxColumn("transfer", help="keep the source weights (off: re-initialise)"),
        "freeze": st.column_config.CheckboxColumn("freeze", help="frozen layers do not train"),
        # No min/max: the editor would quietly change what was typed (a negative multiplier came
        # back positive); kt_core's plan validation refuses it with a message instead.
        "lr_mult": st.column_config.NumberColumn("LR ×", step=0.1, format="%.3g"),
    }


def _overlay(rows: list[dict], rules: list[LayerRule]) -> list[dict]:
    """The preset's block rows with the block rules' cells written over them, unresolved."""
    out = [dict(r) for r in rows]
    for rule in rules:
        for row in out:
            if row["name"] == rule.pattern:
                row.update({f: getattr(rule, f) for f in FIELDS if getattr(rule, f) is not None})
    return out


def layer_tree_editor(model, blocks, plan: TransferPlan, head: HeadDecision | None = None) -> TransferPlan:
    """Draw the editor; return the plan with the user's rules (the page resolves its preview:
    an invalid rule is saved as typed and refused there, with its message). `head`: the head
    decision for this target (`transfer.decide_head`), so a kept head shows as transferred."""
    preset_rows = preview_plan(model, dataclasses.replace(plan, rules=[]), blocks, head).rows
    block_names = {row["name"] for row in preset_rows}
    stored_block_rules = [r for r in plan.rules if r.pattern in block_names]
    stored_layer_rules = [r for r in plan.rules if r.pattern not in block_names]

    # The widget key carries the preset, so switching presets starts the editors afresh.
    signature = f"{plan.preset}-{plan.freeze_first_n}-{plan.layer_decay}-{plan.unfreeze_every}-{plan.head}"
    st.markdown("**Blocks** (input → output; the last is the head)")
    try:
        shown = preview_plan(model, dataclasses.replace(plan, rules=stored_block_rules), blocks, head).rows
    except ConfigError:  # a refused cell (a negative LR ×) stays as typed, with its message below
        shown = _overlay(preset_rows, stored_block_rules)
    edited_blocks = st.data_editor(block_frame(shown), hide_index=True, key=f"layers_blocks_{signature}",
                                   disabled=["block", "params", "unfreeze at epoch"], column_config=_editor_config())
    block_rules = rules_from_edits(edited_blocks, block_frame(preset_rows), "block")

    with st.expander("Per layer (overrides its block)"):
        try:
            after_blocks = preview_plan(model, dataclasses.replace(plan, rules=block_rules), blocks, head).rows
            current = preview_plan(model, dataclasses.replace(plan, rules=block_rules + stored_layer_rules),
                                   blocks, head).rows
        except ConfigError:  # an invalid block cell: said below the editors; the layer rules wait
            st.caption("Fix the block table first: the per-layer settings follow from it.")
            return dataclasses.replace(plan, rules=block_rules + stored_layer_rules)
        edited_layers = st.data_editor(layer_frame(model, current), hide_index=True, key=f"layers_units_{signature}",
                                       disabled=["layer", "block", "params"], column_config=_editor_config())
        layer_rules = rules_from_edits(edited_layers, layer_frame(model, after_blocks), "layer")

    return dataclasses.replace(plan, rules=block_rules + layer_rules)
