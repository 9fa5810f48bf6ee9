"""The Train page's Distillation section: a teacher, a mode and its settings -> DistillConfig."""

from __future__ import annotations

import copy

import streamlit as st

from kt_core import runs as kt_runs
from kt_core.config import ADAPTERS, DISTILL_MODES, DistillConfig, SourceConfig
from kt_core.settings import get_settings

MODES = {"off": "Off (labels only)", "logit": "Logit distillation (Hinton KD)",
         "feature": "Feature distillation (FitNets hint)"}
TEACHERS = {"source": "The source model (default)", "run": "A completed run", "file": "A checkpoint file on the server",
            "arch": "An architecture with named weights"}


def _completed_runs() -> list[str]:
    table = kt_runs.list_runs()
    done = table[table["state"] == "completed"]
    return [f"{row['name']} · {row['id']}" if row["name"] else row["id"] for row in done.to_dict("records")]


def _teacher_form(current: SourceConfig | None) -> SourceConfig | None:
    kinds = list(TEACHERS)
    kind = "source" if current is None else current.kind
    kind = st.radio("Teacher", kinds, kinds.index(kind), format_func=TEACHERS.get, horizontal=True,
                    key="distill_teacher_kind",
                    help="Loaded with the same loaders and safety rules as a source; it keeps its own head.")
    if kind == "source":
        return None
    if kind == "run":
        options = _completed_runs()
        if not options:
            st.info("No completed run yet: train one (e.g. a large model fine-tuned on the target) first.")
            return None
        ids = [o.rsplit(" · ", 1)[-1] for o in options]
        chosen = current.path if current is not None and current.kind == "run" and current.path in ids else ids[0]
        picked = st.selectbox("Teacher run", options, ids.index(chosen), key="distill_teacher_run")
        return SourceConfig(kind="run", path=picked.rsplit(" · ", 1)[-1])
    if kind == "file":
        path = st.text_input("Teacher checkpoint (server path)", value=(current.path or "") if current else "",
                             key="distill_teacher_path").strip()
        trust = False
        if get_settings().allow_trust:  # the same switch as the Source page's
            trust = st.checkbox("Trust this file (allows code execution when unpickling)",
                                value=bool(current and current.trust), key="distill_teacher_trust")
        return SourceConfig(kind="file", path=path or None, trust=trust) if path else None
    arch = st.text_input("Architecture", value=(current.arch or "") if current else "", key="distill_teacher_arch")
    weights = st.text_input("Weights (torchvision name)", value=(current.weights or "") if current else "",
                            key="distill_teacher_weights")
    return SourceConfig(kind="arch", arch=arch.strip() or None, weights=weights.strip() or None) if arch.strip() else None


def distill_form(current: DistillConfig) -> DistillConfig:
    """The widgets of the Distillation section, filled from (and returning) a DistillConfig."""
    cfg = copy.deepcopy(current)
    modes = list(DISTILL_MODES)
    cfg.mode = st.radio("Distillation", modes, modes.index(cfg.mode), format_func=MODES.get, horizontal=True,
                        key="distill_mode",
                        help="A teacher model teaches the trained model (the student) through an extra loss term.")
    if cfg.mode == "off":
        return cfg
    cfg.teacher = _teacher_form(cfg.teacher)
    if cfg.mode == "logit":
        c1, c2 = st.columns(2)
        cfg.temperature = float(c1.number_input("Temperature T", 0.1, 100.0, cfg.temperature, key="distill_T"))
        cfg.alpha = float(c2.slider("Soft weight alpha", 0.0, 1.0, cfg.alpha, 0.05, key="distill_alpha",
                                    help="alpha weights the SOFT (teacher) term; 1 - alpha weights the labels."))
        st.caption(f"loss = {1 - cfg.alpha:.2f} × CE(labels) + {cfg.alpha:.2f} × T² × KL(teacher ‖ student) — "
                   "alpha weights the **soft (teacher)** term. The teacher must predict the target's classes.")
    else:
        c1, c2, c3, c4 = st.columns(4)
        cfg.student_layer = c1.text_input("Student layer", value=cfg.student_layer or "", key="distill_student_layer",
                                          placeholder="head input").strip() or None
        cfg.teacher_layer = c2.text_input("Teacher layer", value=cfg.teacher_layer or "", key="distill_teacher_layer",
                                          placeholder="head input").strip() or None
        cfg.adapter = c3.selectbox("Adapter", ADAPTERS, ADAPTERS.index(cfg.adapter), key="distill_adapter",
                                   help="auto: a 1x1 conv for feature maps, a linear layer for vectors.")
        cfg.feature_weight = float(c4.number_input("Weight", 0.0, 1000.0, cfg.feature_weight, key="distill_weight"))
        st.caption("loss = CE(labels) + weight × MSE(adapter(student layer), teacher layer). Empty layers: each "
                   "model's penultimate features. The adapter trains with the student and is never exported.")
    st.caption("The teacher runs in eval mode without gradients; when nothing augments the images its outputs "
               "are computed once per training image (the feature cache switch covers both). Unlabelled images "
               "are chosen on the Dataset page.")
    return cfg
