"""The Runs page's parts: the runs table, one run's evaluation, and its downloads."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from kt_core import rundir, runs
from kt_core.config import RunConfig
from kt_core.errors import KTError
from kt_core.headline import Headline, headline
from ui.errors import plain
from kt_core.settings import get_settings
from kt_core.experiments.results import pair_verdict
from ui.images import image_grid

def summaries(run_ids) -> dict[str, dict]:
    """run id -> its summary.json ({} while it has none)."""
    out = {}
    for run_id in run_ids:
        try:
            out[run_id] = rundir.read_summary(run_id)
        except KTError:
            out[run_id] = {}
    return out


def headlines(run_ids) -> dict[str, Headline]:
    """run id -> the one figure it is judged by (`kt_core.headline`), everywhere the same."""
    return {run_id: headline(summary) for run_id, summary in summaries(run_ids).items()}


def measured_on(head: Headline) -> str:
    """Which split and checkpoint a headline figure comes from, in a few words."""
    if not head.split:
        return ""
    split = {"test": "test split", "val": "validation split"}.get(head.split, head.split)
    checkpoint = {"best": "best-on-validation checkpoint", "last": "last epoch"}.get(head.checkpoint, head.checkpoint)
    return f"{split}, {checkpoint}"


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """The runs as a person reads them: name, state, the headline figure and what it measures,
    progress, what was trained on what, when (the id last: it is for the CLI)."""
    heads = headlines(table["id"])
    rows = []
    for row in table.to_dict("records"):
        row = {k: cell_text(v) if k != "created" else v for k, v in row.items()}
        head = heads[row["id"]]
        rows.append({
            "run": row.get("name") or row["id"], "state": row.get("state"),
            "accuracy": head.percent() if head.value is not None else "",
            "measured on": measured_on(head),
            "epochs": f"{row.get('epoch') or 0}/{row.get('epochs') or '?'}",
            "plan": (row.get("preset") or "").replace("_", " "),
            # what the run adds to its plan (distillation, L2-SP, unlabelled images), in words
            "method": _method_extras(row.get("method"), row.get("preset")),
            "source": row.get("arch") or row.get("source") or "",
            "dataset": row.get("dataset") or "", "created": _when(row.get("created")), "id": row["id"],
            "error": row.get("error") or "",
        })
    return pd.DataFrame(rows)


def _method_extras(method: str | None, preset: str | None) -> str:
    """`RunConfig.method()` without its leading preset (the plan column shows that): "" for a
    plain run, "logit KD from the source (T=4, ...) + unlabelled images" for a distilled one."""
    if not method:
        return ""
    parts = method.split(" + ")
    return " + ".join(parts[1:] if parts[0] == preset else parts)


def cell_text(value):
    """A list_runs cell with pandas' NaN for "none" (a corrupt run has no preset) as ""."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _when(created) -> str:
    """list_runs' `created` (naive UTC) as this server's local day and time."""
    try:
        return time.strftime("%d %b %H:%M", time.localtime(pd.Timestamp(created).timestamp()))
    except (TypeError, ValueError):
        return ""


def labels(table: pd.DataFrame) -> dict[str, str]:
    """run id -> "name · 01 Dec 09:12 · 93.4 % (state)" for pickers: what a person tells runs
    apart by. Two runs of one name and minute keep apart by their id's end."""
    heads = headlines(table["id"])
    out = {}
    for row in table.to_dict("records"):
        head = heads[row["id"]]
        parts = [cell_text(row.get("name")) or row["id"], _when(row.get("created"))]
        if head.value is not None:
            parts.append(head.percent())
        out[row["id"]] = " · ".join(p for p in parts if p) + f" ({row.get('state') or '?'})"
    seen: dict[str, int] = {}
    for label in out.values():
        seen[label] = seen.get(label, 0) + 1
    return {r: (f"{label} · {r[-4:]}" if seen[label] > 1 else label) for r, label in out.items()}


def curve_labels(run_ids: list[str], names: dict[str, str]) -> list[str]:
    """A short legend label per run: its name, with its id where two overlaid runs share a name
    (a re-run config), so their lines never merge into one legend entry."""
    short = [names.get(r) or r for r in run_ids]
    return [f"{s} · {r}" if short.count(s) > 1 else s for s, r in zip(short, run_ids)]


CONFIG_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
RESULT_ROWS = {"state": "state", "method": "method", "best_val_acc": "best validation accuracy",
               "final_val_acc": "last-epoch validation accuracy", "test_acc": "test accuracy", "epochs": "epochs",
               "train_s": "training time (s)", "images_per_s": "images/s", "trainable_params": "trainable parameters"}
HEADLINE_ROW = "accuracy (headline)"


def comparison(run_ids: list[str], names: dict[str, str]) -> pd.DataFrame:
    """Runs as columns (short names); the headline figure and what it measures first, the other
    results in words, then only the config values that differ between the runs."""
    frame = runs.compare(run_ids, differing_only=True).set_index("run_id")
    heads = headlines(run_ids)
    results = [c for c in RESULT_ROWS if c in frame.columns]
    config = [c for c in frame.columns if c.split(".")[0] in CONFIG_FIELDS]
    shown = frame[results + config].T.map(_cell)
    shown.index = [RESULT_ROWS.get(c, c) for c in shown.index]
    top = pd.DataFrame([[heads[r].percent() for r in frame.index], [measured_on(heads[r]) for r in frame.index]],
                       index=[HEADLINE_ROW, "measured on"], columns=frame.index)
    shown = pd.concat([top, shown])
    shown.columns = curve_labels(list(frame.index), names)
    return shown


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def task_names(run_id: str) -> list[str]:
    """A multi-task run's tasks, the target first; [] for a single-task run (or an unreadable config)."""
    try:
        cfg = rundir.load_config(run_id)
    except KTError:
        return []
    return cfg.task_names() if cfg.tasks else []


ALL_TASKS, ALL_LABEL = "every task", "every task (a file each)"  # a space: no task's name (letters, digits, _, -)


def task_label(names: list[str]):
    """How a task is offered: the target says it is the target."""
    return lambda name: f"{name} (the target)" if name == names[0] else ALL_LABEL if name == ALL_TASKS else name


def task_splits(summary: dict, task: str | None) -> list[str]:
    """The splits a task of a run can be evaluated on: val, and test where it has a test split."""
    if task is None:
        return ["val", "test"] if summary.get("test_acc") is not None else ["val"]
    entry = next((t for t in summary.get("tasks") or [] if t.get("name") == task), {})
    return ["val", "test"] if entry.get("test_split") or entry.get("test_acc") is not None else ["val"]


@st.cache_resource(max_entries=4, show_spinner="Evaluating the run...")
def _evaluate(run_id: str, split: str, checkpoint: str, stamp: str, task: str | None = None):
    """The report and the evaluated split's images, prepared exactly as the evaluation saw them:
    one load of the run's model and data for both."""
    from kt_core.evaluate import evaluate_run, load_run

    loaded = load_run(run_id, checkpoint=checkpoint, device="cpu", roots=get_settings().dashboard_roots, task=task)
    return evaluate_run(loaded, split=split), loaded.data.splits().get(split)


def evaluation(run_id: str, split: str, checkpoint: str = "best", task: str | None = None):
    """(report, split images) of `run_id` (of its task `task`: a multi-task run's extra task, its
    head on the shared trunk and its own data; None: the target), cached until its checkpoints change."""
    return _evaluate(run_id, split, checkpoint, rundir.stamp(run_id, "checkpoints"), task)


def confusion_figure(report) -> go.Figure:
    """The heatmap, with one invisible marker per cell on top: a click selects that marker
    (Plotly selects points, not heatmap cells), and its customdata names the cell."""
    names = [str(n) for n in report.class_names]
    fig = go.Figure(go.Heatmap(z=report.confusion, x=names, y=names, colorscale="Blues",
                               text=report.confusion, texttemplate="%{text}", hoverinfo="skip", showscale=True))
    cells = [(i, j) for i in range(len(names)) for j in range(len(names))]
    fig.add_trace(go.Scatter(
        x=[names[j] for _, j in cells], y=[names[i] for i, _ in cells], mode="markers",
        customdata=[[i, j, report.confusion[i][j]] for i, j in cells],
        marker=dict(symbol="square", size=max(8, min(40, 420 // max(1, len(names)))), opacity=0.01, color="#000"),
        hovertemplate="true %{y} → predicted %{x}: %{customdata[2]} (click to see them)<extra></extra>",
        showlegend=False, name="cells"))
    fig.update_layout(title=f"Confusion matrix ({report.split}, {report.num_samples:,} images) · click a cell",
                      xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                      xaxis=dict(type="category"), yaxis=dict(type="category"), clickmode="event+select",
                      height=min(700, 160 + 36 * len(names)), margin=dict(l=60, r=20, t=50, b=50))
    return fig


def cells(report) -> list[tuple[int, int, int]]:
    """Off-diagonal cells with images, the largest first: (true index, predicted index, count)."""
    found = [(i, j, n) for i, row in enumerate(report.confusion) for j, n in enumerate(row) if i != j and n]
    return sorted(found, key=lambda c: -c[2])


def clicked_cell(event) -> tuple[int, int] | None:
    """(true, predicted) of the cell a click selected, from st.plotly_chart's selection event."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        data = point.get("customdata")
        if data and len(data) >= 2:
            return int(data[0]), int(data[1])
    return None


def _image(split, index: int):
    return split.x[index] if hasattr(split, "x") else split[index][0]


def _label(split, index: int):
    return split.y[index] if hasattr(split, "y") else split[index][1]


def sample_predictions(report, split, count: int = 16) -> list[tuple[int, str]]:
    """(index, caption) of images drawn across the classes: each class in turn gives its most
    confident mistake, then a correct image, so every class shows (not the first class only)."""
    names = report.class_names
    wrong_by_class: dict[int, list[dict]] = {}
    for m in report.misclassified:
        wrong_by_class.setdefault(int(m["true_index"]), []).append(m)
    # Correct images are known only when every mistake is listed (evaluate caps the list).
    complete = report.num_misclassified == len(report.misclassified)
    wrong = {m["index"] for m in report.misclassified}
    right_by_class: dict[int, list[int]] = {}
    if complete:
        for i in range(len(split)):
            if i not in wrong:
                right_by_class.setdefault(int(_label(split, i)), []).append(i)
    picks: list[tuple[int, str]] = []
    queues = {c: ([("x", m) for m in wrong_by_class.get(c, [])[:2]] + [("v", i) for i in right_by_class.get(c, [])])
              for c in range(len(names))}
    while len(picks) < count and any(queues.values()):
        for c in range(len(names)):
            if queues[c] and len(picks) < count:
                kind, item = queues[c].pop(0)
                if kind == "x":
                    picks.append((item["index"], f"{item['true']} → {item['predicted']} ✗"))
                else:
                    picks.append((item, f"{names[c]} ✓"))
    return picks


def show_evaluation(report, split, checkpoint: str = "best") -> None:
    """Metrics, the clickable confusion matrix and the images of the clicked cell, per-class
    table, sample predictions across classes."""
    where = f"{'test' if report.split == 'test' else 'validation'} split" \
            f"{' of task ' + report.task if report.task else ''}, " \
            f"{'best-on-validation checkpoint' if checkpoint == 'best' else 'last epoch'}"
    c1, c2, c3 = st.columns(3)
    # Written as the headline figure is (Headline.percent), so the two read the same.
    c1.metric("Accuracy", Headline(report.accuracy, "", report.split, checkpoint).percent(), help=f"On the {where}.")
    c2.metric("Macro F1", f"{report.macro_f1:.3f}")
    c3.metric("Misclassified", f"{report.num_misclassified:,} / {report.num_samples:,}")
    st.caption(f"Measured on the {where}.")
    names = report.class_names
    event = st.plotly_chart(confusion_figure(report), key="runs_confusion", on_select="rerun",
                            selection_mode="points")
    options = cells(report)
    cell = clicked_cell(event) or (options[0][:2] if options else None)
    if cell is None:
        st.success("No misclassified images in this split.")
    elif cell[0] == cell[1]:
        st.caption(f"{names[cell[0]]}: {report.confusion[cell[0]][cell[1]]:,} images classified correctly. "
                   "Click a cell off the diagonal to see mistakes.")
    else:
        wrong = [m for m in report.misclassified if (m["true_index"], m["predicted_index"]) == tuple(cell)]
        n = report.confusion[cell[0]][cell[1]]
        st.markdown(f"**True {plain(names[cell[0]])} → predicted {plain(names[cell[1]])}**: "
                    f"{n:,} image{'s' if n != 1 else ''}" + (", the most confident first" if n > 1 else ""))
        if split is not None:
            image_grid([(_image(split, m["index"]), f"{m['confidence']:.0%} sure") for m in wrong[:24]])
    st.markdown("**Per-class metrics**")
    st.dataframe(pd.DataFrame(report.per_class), hide_index=True)
    if split is not None:
        st.markdown("**Sample predictions** (across the classes: mistakes first, then correct ones)")
        image_grid([(_image(split, i), caption) for i, caption in sample_predictions(report, split)])


# --- downloads -------------------------------------------------------------------------------

def download_stem(run_id: str) -> str:
    """Downloads are named after the run (its name, else its id), not "model" or a hash."""
    try:
        name = rundir.load_config(run_id).name
    except KTError:
        name = ""
    return rundir.slug(name, max_len=48) if name else run_id


def downloads(run_id: str) -> None:
    folder = rundir.run_dir(run_id)
    stem = download_stem(run_id)
    c1, c2 = st.columns(2)
    c1.download_button(rundir.CONFIG, rundir.config_text(folder).encode(), f"{stem}-config.json",
                       "application/json", key="runs_dl_config")
    # Made when clicked, not at every rerun of the page: a long run's metrics are millions of rows.
    def metrics_csv() -> bytes:
        return pd.DataFrame(rundir.read_metrics(folder)[0]).to_csv(index=False).encode()

    has_rows = rundir.metrics_path(folder).is_file() and rundir.metrics_path(folder).stat().st_size > 0
    c2.download_button("metrics.csv", metrics_csv, f"{stem}-metrics.csv", "text/csv", key="runs_dl_metrics",
                       disabled=not has_rows)

    from kt_core.export import EXPORTERS, export_run, export_run_tasks

    fmt = st.selectbox("Model format", EXPORTERS.names(), key="runs_export_format",
                       format_func=lambda n: f"{n} — {EXPORTERS.meta(n).get('description', '')}")
    names, task = task_names(run_id), None
    if names:  # a multi-task run: the target's network, another task's (the trunk with its head), or all
        task = st.selectbox("Network", names + [ALL_TASKS], key="runs_export_task", format_func=task_label(names),
                            help="A task's network is the shared trunk with that task's head; "
                                 "the target's is the run's model (model.EXT), another task's model-TASK.EXT.")
    if st.button("Export", key="runs_export", help="Written to the run's exports/ folder and checked by reading "
                                                   "it back: it must predict what the model predicts."):
        roots = get_settings().dashboard_roots
        with st.spinner(f"Exporting as {fmt} and checking it by reading it back..."):
            if task == ALL_TASKS:
                paths = export_run_tasks(run_id, fmt, roots=roots)
            else:
                paths = [export_run(run_id, fmt, roots=roots, task=task if names and task != names[0] else None)]
        files = []
        for path in paths:  # model.EXT / model-TASK.EXT, downloaded as RUN.EXT / RUN-TASK.EXT
            meta = json.loads((path.parent / f"{path.name}.json").read_text())
            files.append((f"{stem}{path.name[len('model'):]}", path.read_bytes(), meta.get("verified_max_diff")))
        st.session_state["kt_export"] = (run_id, fmt, task, files)
    ready = st.session_state.get("kt_export")
    if ready and ready[:3] == (run_id, fmt, task):
        for i, (name, data, diff) in enumerate(ready[3]):
            if diff is not None:
                st.success(f"Verified: {name} was read back and predicts what the model predicts "
                           f"(largest difference {diff:.1e}).", icon=":material/verified:")
            st.download_button(f"Download {name}", data, name, "application/octet-stream",
                               key="runs_dl_model" if i == 0 else f"runs_dl_model_{i}", type="primary")


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
