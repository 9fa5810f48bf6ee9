"""Layers: what to transfer, what to freeze, and how fast each part learns."""

import streamlit as st

from ui import dataset_view, source_view, state
from ui.errors import guard
from ui.layer_tree import layer_tree_editor, preset_form

st.title("Layers")
st.caption("Start from a preset, then override any block or layer: keep its source weights or re-initialise it, "
           "freeze it or train it, and scale its learning rate. The head is the source's when the target's classes "
           "are the source's, a new one otherwise (choose it below).")

source = state.get_source()
with guard("Loading the source") as loading:
    from kt_core.models import blocks as model_blocks

    loaded = source_view.load(source)
    blocks = model_blocks(loaded.model, loaded.spec)
if not loading.ok:
    st.page_link("app_pages/source.py", label="Choose another source", icon=":material/arrow_back:")
    st.stop()

st.markdown(f"Source: **{loaded.arch or source.path}** · {len(blocks)} blocks")
plan = preset_form(state.get_plan())
with guard("Deciding the head") as deciding:
    from kt_core.transfer import decide_head, preview_plan

    # As the run will decide it, from the target's classes when the dataset loads (cached: the
    # Dataset page loaded it already); without them auto says it cannot tell yet.
    target = dataset_view.for_source(state.get_dataset(), loaded)
    head = decide_head(plan, target.class_names if target is not None else None, loaded.class_names,
                       loaded.num_classes, loaded.pretrained)
if not deciding.ok:
    state.set_plan(plan)  # the choice is kept as made; Start refuses it with the same message (preflight)
    st.stop()
st.markdown(f"**Head:** {head.reason}.")
with guard("Resolving the plan") as resolving:
    plan = layer_tree_editor(loaded.model, blocks, plan, head)
if not resolving.ok:
    st.stop()
state.set_plan(plan)  # saved as shown, valid or not: Train blocks Start on an invalid plan
with guard("Checking the plan") as checking:
    plan.validate()
    preview = preview_plan(loaded.model, plan, blocks, head)
if not checking.ok:
    st.stop()

# --- what it costs ---------------------------------------------------------------------------
with guard("Estimating the cost"):
    from kt_core.transfer import estimate_cost

    dataset, train = state.get_dataset(), state.get_train()
    cost = estimate_cost(preview, None, tuple(loaded.input_size), augment=dataset.augment,
                         feature_cache=train.feature_cache)
    c1, c2, c3 = st.columns(3)
    c1.metric("Trainable parameters", f"{cost['trainable_parameters']:,}",
              f"{cost['trainable_fraction']:.1%} of {cost['total_parameters']:,}", delta_color="off")
    c2.metric("Training work saved", f"{cost['work_saved_fraction']:.0%}",
              help="Forward + backward FLOPs per image, compared with fine-tuning everything. " + cost["method"])
    cached = cost.get("feature_cache")
    c3.metric("Feature cache", "on" if cached else "off",
              f"{cost['work_saved_fraction_cached']:.0%} saved after epoch 1" if cached else None, delta_color="off",
              help="Only the head trains and the frozen part is a fixed function: its features are computed once.")
    st.progress(min(1.0, cost["trainable_fraction"]), text="share of parameters that train")
for warning in preview.warnings:
    st.warning(warning)
if plan.rules:
    with st.expander(f"Your {len(plan.rules)} override rule(s), as saved in the run config"):
        st.json([r.__dict__ for r in plan.rules])
st.page_link("app_pages/dataset.py", label="Next: the target dataset", icon=":material/arrow_forward:")
