"""The Runs page's parts: the runs table, one run's evaluation, and its downloads."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from kt_core import rundir, runs
from kt_core.config import RunConfig
from kt_core.experiments.results import pair_verdict
from ui.images import image_grid

SUMMARY_COLUMNS = ("id", "name", "state", "epoch", "epochs", "best_val_acc", "test_acc", "preset", "source",
                   "arch", "dataset", "baseline_of", "created", "error")


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """The columns worth a glance, in a stable order (whatever else list_runs adds stays out)."""
    return table[[c for c in SUMMARY_COLUMNS if c in table.columns]]


def labels(table: pd.DataFrame) -> dict[str, str]:
    """run id -> "name (state)" for selectors; the id when a run has no name."""
    out = {}
    for row in table.to_dict("records"):
        state = row.get("state") or "?"
        out[row["id"]] = f"{row['name']} · {row['id']} ({state})" if row.get("name") else f"{row['id']} ({state})"
    return out


def curve_labels(run_ids: list[str], names: dict[str, str]) -> list[str]:
    """A short legend label per run: its name, with its id where two overlaid runs share a name
    (a re-run config), so their lines never merge into one legend entry."""
    short = [names.get(r) or r for r in run_ids]
    return [f"{s} · {r}" if short.count(s) > 1 else s for s, r in zip(short, run_ids)]


CONFIG_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
RESULT_ROWS = ("state", "best_val_acc", "final_val_acc", "test_acc", "epochs", "train_s", "images_per_s",
               "trainable_params")


def comparison(run_ids: list[str], labels: dict[str, str]) -> pd.DataFrame:
    """Runs as columns; their results first, then every config value that differs between them."""
    frame = runs.compare(run_ids, differing_only=True).set_index("run_id")
    results = [c for c in RESULT_ROWS if c in frame.columns]
    config = [c for c in frame.columns if c.split(".")[0] in CONFIG_FIELDS]
    shown = frame[results + config].T
    shown.columns = [labels.get(r, r) for r in shown.columns]
    return shown.map(_cell)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@st.cache_resource(max_entries=4, show_spinner="Evaluating the run...")
def _evaluate(run_id: str, split: str, stamp: str):
    """The report and the evaluated split's images, prepared exactly as the evaluation saw them:
    one load of the run's model and data for both."""
    from kt_core.evaluate import evaluate_run, load_run

    loaded = load_run(run_id, device="cpu")
    return evaluate_run(loaded, split=split), loaded.data.splits().get(split)


def evaluation(run_id: str, split: str):
    """(report, split images) of `run_id`, cached until its checkpoints change."""
    return _evaluate(run_id, split, rundir.stamp(run_id, "checkpoints"))


def confusion_figure(report) -> go.Figure:
    names = report.class_names
    fig = go.Figure(go.Heatmap(z=report.confusion, x=names, y=names, colorscale="Blues",
                               text=report.confusion, texttemplate="%{text}",
                               hovertemplate="true %{y} → predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=f"Confusion matrix ({report.split}, {report.num_samples} images)",
                      xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                      height=min(700, 160 + 36 * len(names)), margin=dict(l=60, r=20, t=50, b=50))
    return fig


def cells(report) -> list[tuple[int, int, int]]:
    """Off-diagonal cells with images, the largest first: (true index, predicted index, count)."""
    found = [(i, j, n) for i, row in enumerate(report.confusion) for j, n in enumerate(row) if i != j and n]
    return sorted(found, key=lambda c: -c[2])


def _image(split, index: int):
    return split.x[index] if hasattr(split, "x") else split[index][0]


def show_evaluation(report, split) -> None:
    """Metrics, confusion matrix, the images of a chosen cell, per-class table, sample predictions."""
    c1, c2, c3 = st.columns(3)
    c1.metric("Accuracy", f"{report.accuracy:.1%}")
    c2.metric("Macro F1", f"{report.macro_f1:.3f}")
    c3.metric("Misclassified", f"{report.num_misclassified} / {report.num_samples}")
    st.plotly_chart(confusion_figure(report), key="runs_confusion")
    names = report.class_names
    options = cells(report)
    if options:
        cell = st.selectbox("Show the images of a cell (true → predicted)", options, key="runs_cell",
                            format_func=lambda c: f"{names[c[0]]} → {names[c[1]]} ({c[2]} images)")
        wrong = [m for m in report.misclassified if (m["true_index"], m["predicted_index"]) == cell[:2]]
        if split is not None:
            image_grid([(_image(split, m["index"]), f"{m['confidence']:.0%} sure") for m in wrong[:24]])
    else:
        st.success("No misclassified images in this split.")
    st.markdown("**Per-class metrics**")
    st.dataframe(pd.DataFrame(report.per_class), hide_index=True)
    if split is not None:
        st.markdown("**Sample predictions** (the most confident mistakes first, then correct ones)")
        shown = {m["index"] for m in report.misclassified[:8]}
        samples = [(_image(split, m["index"]), f"{m['true']} → {m['predicted']} ✗") for m in report.misclassified[:8]]
        samples += [(_image(split, i), f"{names[int(_label(split, i))]} ✓")
                    for i in range(len(split)) if i not in shown][: 16 - len(samples)]
        image_grid(samples)


def _label(split, index: int):
    return split.y[index] if hasattr(split, "y") else split[index][1]


# --- downloads -------------------------------------------------------------------------------

def downloads(run_id: str) -> None:
    folder = rundir.run_dir(run_id)
    c1, c2 = st.columns(2)
    c1.download_button(rundir.CONFIG, rundir.config_text(folder).encode(), f"{run_id}-config.json",
                       "application/json", key="runs_dl_config")
    rows, _ = rundir.read_metrics(run_id)
    c2.download_button("metrics.csv", pd.DataFrame(rows).to_csv(index=False).encode(), f"{run_id}-metrics.csv",
                       "text/csv", key="runs_dl_metrics", disabled=not rows)

    from kt_core.export import EXPORTERS, export_run

    fmt = st.selectbox("Model format", EXPORTERS.names(), key="runs_export_format",
                       format_func=lambda n: f"{n} — {EXPORTERS.meta(n).get('description', '')}")
    if st.button("Export", key="runs_export", help="Written to the run's exports/ folder and checked by reading "
                                                   "it back: it must predict what the model predicts."):
        with st.spinner(f"Exporting as {fmt}..."):
            path = export_run(run_id, fmt)
        st.session_state["kt_export"] = (run_id, fmt, path.name, path.read_bytes())
    ready = st.session_state.get("kt_export")
    if ready and ready[:2] == (run_id, fmt):
        st.download_button(f"Download {ready[2]}", ready[3], ready[2], "application/octet-stream",
                           key="runs_dl_model", type="primary")


def baseline_verdicts(run_ids: list[str], table: pd.DataFrame) -> list[str]:
    """For each transfer run among `run_ids` with a from-scratch baseline (in `run_ids`, or any run
    when only one is given): one sentence on what transfer bought, negative transfer named."""
    pairs = []
    for row in table.to_dict("records"):
        transfer = row.get("baseline_of")
        if transfer in run_ids and (row["id"] in run_ids or len(run_ids) == 1):
            pairs.append((transfer, row["id"]))
    names = dict(zip(table["id"], table["name"]))
    out = []
    for transfer, baseline in pairs:
        summaries = [rundir.read_summary(r) for r in (transfer, baseline)]
        line = pair_verdict(*summaries, transfer_name=names.get(transfer) or transfer)
        if line:
            out.append(line)
    return out


def show_verdicts(lines: list[str]) -> None:
    for line in lines:
        (st.error if line.startswith("Negative transfer") else st.success)(line)
