"""Live training curves from the run folder's `metrics.jsonl`.

The worker appends metric rows; the page never trains. One `@st.fragment(run_every=...)` per
page polls the run folder, reads only the rows it has not seen (`read_metrics(run, since=n)`),
and redraws the live chart (`ui.live_chart`, a canvas: cheap to redraw beside a training run).
When every watched run has ended the fragment triggers one full rerun and the page draws the
final Plotly figure, with zoom and hover: polling stops by itself.

`traces`, `build_figure` and `progress_info` are pure functions of metric rows and status
dicts, so they are tested without a browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from kt_core import rundir
from ui import live_chart

ACTIVE_STATES = rundir.ACTIVE_STATES
# Every poll re-reads the run folder and re-sends the lines to the live chart: 2 s keeps the
# curves live while the dashboard costs a training run little CPU (bench B4).
POLL_SECONDS = 2.0
MAX_STEP_POINTS = 400  # per run: a long run's per-step trace is thinned, not sent whole each poll
CHART_HEIGHT = 380
# The named terms of a multi-term objective (distillation, L2-SP), drawn dashed beside the total.
LOSS_TERMS = {"loss_ce": "hard (CE)", "loss_kd": "soft (KD)", "loss_feat": "feature", "loss_l2sp": "L2-SP"}
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#c026d3")


@dataclass
class Series:
    """The rows of one run as it is drawn: a label ("transfer", "baseline", a run name)."""

    label: str
    rows: list[dict] = field(default_factory=list)
    steps_per_epoch: float | None = None  # places step rows between epoch points


def is_step_row(row: dict) -> bool:
    """Step rows carry `step` and no epoch-level accuracies (the run folder contract)."""
    if "kind" in row:
        return row["kind"] == "step"
    return "step" in row and "val_loss" not in row and "train_acc" not in row and "val_acc" not in row


def split_rows(rows: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    steps, epochs = [], []
    for row in rows:
        (steps if is_step_row(row) else epochs).append(row)
    return steps, epochs


def _steps_per_epoch(epoch_rows: list[dict]) -> float | None:
    """Epoch rows carry the global step at the end of the epoch: steps per epoch follow."""
    for row in epoch_rows:
        if row.get("step") and row.get("epoch"):
            return row["step"] / row["epoch"]
    return None


def _step_x(row: dict, steps_per_epoch: float | None) -> float:
    """A step row's position on the epoch axis: its global step in units of epochs.

    Epoch rows count finished epochs (1 = after the first epoch) and step rows carry the global
    step, so both share one axis. Without steps-per-epoch a step row sits mid-way in its epoch.
    """
    if steps_per_epoch:
        return row["step"] / steps_per_epoch
    return float(row.get("epoch", 1)) - 0.5


@dataclass
class Trace:
    """One line of the chart, as both the live view and the final Plotly figure draw it."""

    name: str
    panel: int  # 0: loss, 1: accuracy
    x: list[float]
    y: list[float]
    color: str
    group: str  # the run's label: one legend group per run
    dash: str = "solid"  # "solid" train, "dot" val, "dash" a term of the training loss
    width: float = 2
    opacity: float = 1.0
    markers: bool = True  # epoch points are marked; the per-step loss is a thin line


def traces(series: list[Series]) -> list[Trace]:
    """Loss and accuracy against epochs: one colour per run, solid train, dotted val.

    Step rows are drawn thin and translucent behind the epoch points, so the noisy per-step loss
    and the smoothed per-epoch trend read together.
    """
    out = []
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        every_step, epochs = split_rows(s.rows)
        steps = _thin([r for r in every_step if _finite(r.get("train_loss"))], MAX_STEP_POINTS)
        per_epoch = s.steps_per_epoch or _steps_per_epoch(epochs)
        if steps:
            out.append(Trace(f"{s.label} · train loss (step)", 0, [_step_x(r, per_epoch) for r in steps],
                             [r["train_loss"] for r in steps], color, s.label, width=1, opacity=0.35,
                             markers=False))
        for metric, panel, dash in (("train_loss", 0, "solid"), ("val_loss", 0, "dot"),
                                    ("train_acc", 1, "solid"), ("val_acc", 1, "dot")):
            points = [r for r in epochs if _finite(r.get(metric))]
            if points:
                split, what = metric.split("_")
                out.append(Trace(f"{s.label} · {split} {what}", panel, [r["epoch"] for r in points],
                                 [r[metric] for r in points], color, s.label, dash=dash))
        for term, shown in LOSS_TERMS.items():  # each term of the total, per epoch
            points = [r for r in epochs if _finite(r.get(term))]
            if points:
                out.append(Trace(f"{s.label} · {shown}", 0, [r["epoch"] for r in points], [r[term] for r in points],
                                 color, s.label, dash="dash", width=1.5, opacity=0.8))
        out += _task_traces(s, epochs, len(series) + i)
        out += _weight_traces(s, every_step, epochs, per_epoch, color, len(series) + i)
    return out


WEIGHT_PANEL = 2  # a third panel, drawn only when a run's task weights are learnt


def _weight_traces(s: Series, steps: list[dict], epochs: list[dict], per_epoch: float | None, color: str,
                   colour_index: int) -> list[Trace]:
    """A multi-task run's learnt loss weights over time (`weight/<task>`: uncertainty weighting
    writes them in every row, DWA's change once an epoch), each in its task's colour."""
    names: list[str] = []
    for row in steps[:1] + epochs[-1:]:  # every row of a run carries the same tasks' weights
        names += [k.split("/", 1)[1] for k in row if k.startswith("weight/") and k.split("/", 1)[1] not in names]
    out = []
    for j, task in enumerate(names):
        key = f"weight/{task}"
        stepped = _thin([r for r in steps if _finite(r.get(key))], MAX_STEP_POINTS)
        points = sorted([(_step_x(r, per_epoch), r[key]) for r in stepped]
                        + [(float(r["epoch"]), r[key]) for r in epochs if _finite(r.get(key))])
        if not points:
            continue
        task_color = color if j == 0 else PALETTE[(colour_index + j - 1) % len(PALETTE)]  # as _task_traces
        group = s.label if j == 0 else f"{s.label} · {task}"
        out.append(Trace(f"{s.label} · {task} weight", WEIGHT_PANEL, [x for x, _ in points], [y for _, y in points],
                         task_color, group, width=1.5, markers=not stepped))
    return out


def task_names(epoch_rows: list[dict]) -> list[str]:
    """A multi-task run's tasks, the target first, from its epoch rows' `train_acc/<task>` keys."""
    for row in epoch_rows:
        names = [k.split("/", 1)[1] for k in row if k.startswith("train_acc/")]
        if names:
            return names
    return []


def _task_traces(s: Series, epochs: list[dict], colour_index: int) -> list[Trace]:
    """The extra tasks of a multi-task run (the target is the run's own lines): each task's train
    loss and val accuracy in a colour of its own, legend-grouped as `<run> · <task>`."""
    out = []
    for j, task in enumerate(task_names(epochs)[1:]):
        color, group = PALETTE[(colour_index + j) % len(PALETTE)], f"{s.label} · {task}"
        for metric, panel, dash in (("train_loss", 0, "solid"), ("val_loss", 0, "dot"),
                                    ("train_acc", 1, "solid"), ("val_acc", 1, "dot")):
            points = [r for r in epochs if _finite(r.get(f"{metric}/{task}"))]
            if points:
                split, what = metric.split("_")
                out.append(Trace(f"{group} {split} {what}", panel, [r["epoch"] for r in points],
                                 [r[f"{metric}/{task}"] for r in points], color, group, dash=dash))
    return out


def build_figure(series: list[Series], uirevision: str, title: str | None = None) -> go.Figure:
    """The final, interactive chart of `series` (zoom, hover, legend toggles): loss | accuracy,
    and | task weights when a multi-task run's weights are learnt."""
    lines = traces(series)
    titles = ("Loss", "Accuracy") + (("Task weights",) if any(t.panel == WEIGHT_PANEL for t in lines) else ())
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.08)
    for t in lines:
        fig.add_trace(go.Scatter(x=t.x, y=t.y, name=t.name, mode="lines+markers" if t.markers else "lines",
                                 legendgroup=t.group, line=dict(color=t.color, dash=t.dash, width=t.width),
                                 opacity=t.opacity), row=1, col=t.panel + 1)
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    if len(titles) > 2:
        fig.update_yaxes(rangemode="tozero", row=1, col=3)
    fig.update_layout(
        uirevision=uirevision,  # keeps zoom and legend toggles across redraws of this run
        # The legend sits below the x axes' title ("epoch"), in a margin of its own: at y=-0.18
        # it was drawn over that title.
        height=CHART_HEIGHT + 90 + (20 if title else 0), margin=dict(l=40, r=20, t=80 if title else 30, b=130),
        title=dict(text=title, y=0.97) if title else None,
        legend=dict(orientation="h", yanchor="top", y=-0.17, xanchor="left", x=0),
    )
    return fig


def _thin(rows: list[dict], limit: int) -> list[dict]:
    """At most about `limit` evenly spaced rows, always keeping the newest."""
    if len(rows) <= limit:
        return rows
    stride = -(-len(rows) // limit)
    return rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Progress:
    fraction: float
    text: str


def progress_info(status: dict, rows: list[dict], batch_size: int | None = None,
                  epochs: int | None = None) -> Progress:
    """Progress bar value and its caption: state, epoch, step, ETA and images/s."""
    state = status.get("state", "unknown")
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    fraction = min(1.0, step / total) if total else (1.0 if state == "completed" else 0.0)
    parts = [state]
    if status.get("note"):  # e.g. "waiting for source run ..." while a chained run is queued
        parts.append(str(status["note"]))
    if status.get("epoch") is not None and epochs:
        parts.append(f"epoch {status['epoch']}/{epochs}")
    elif status.get("epoch") is not None:
        parts.append(f"epoch {status['epoch']}")
    if total:
        parts.append(f"step {step}/{total}")
    speed = next((r["images_per_s"] for r in reversed(rows) if _finite(r.get("images_per_s"))), None)
    if speed:
        parts.append(f"{speed:,.0f} images/s")
    if state in ACTIVE_STATES:
        eta = _eta(status, rows, speed, batch_size, epochs)
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
    return Progress(fraction, " · ".join(parts))


def _eta(status: dict, rows: list[dict], speed: float | None, batch_size: int | None,
         epochs: int | None) -> float | None:
    """Seconds left at the pace of the epochs so far (wall time: validation and checkpoints
    included, as the CLI's ETA), else, before the first epoch ends, at the step rows' speed."""
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    durations = [r["epoch_s"] for r in rows
                 if not is_step_row(r) and (r.get("epoch") or 0) > 0 and _finite(r.get("epoch_s"))]
    if durations and total and epochs:
        return max(0.0, (total - step) * sum(durations) / (len(durations) * total / epochs))
    if speed and total and batch_size:
        return (total - step) * batch_size / speed
    return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# --- reading the run folder incrementally ----------------------------------------------------

class RowDigest:
    """The rows of one metrics.jsonl that a chart and a progress caption need, at a size that
    does not grow with the file: every epoch row (one per epoch), the step rows thinned to at
    most `2 * limit` evenly spaced ones (the stride doubles when they pass it), and the newest
    step row. Adding rows costs time in proportion to the rows added, so a poll of a run with a
    million step rows costs what a poll of a run with a thousand does (bench B26).
    """

    def __init__(self, limit: int = MAX_STEP_POINTS // 2):  # 2 * limit: no more step rows than a chart draws
        self.limit = limit
        self.stride = 1
        self.steps_seen = 0
        self._kept: list[tuple[int | None, dict]] = []  # (step row's index, row); epoch rows: None
        self._steps_kept = 0
        self._newest_step: dict | None = None

    def extend(self, rows: Iterable[dict]) -> None:
        for row in rows:
            if not is_step_row(row):
                self._kept.append((None, row))
                continue
            index, self.steps_seen = self.steps_seen, self.steps_seen + 1
            self._newest_step = row
            if index % self.stride == 0:
                self._kept.append((index, row))
                self._steps_kept += 1
                if self._steps_kept > 2 * self.limit:
                    self._decimate()

    def _decimate(self) -> None:
        """Every other kept step row goes: what is left is still evenly spaced (O(kept), and it
        happens once per doubling of the file's step rows)."""
        self.stride *= 2
        self._kept = [(i, r) for i, r in self._kept if i is None or i % self.stride == 0]
        self._steps_kept = sum(1 for i, _ in self._kept if i is not None)

    @property
    def rows(self) -> list[dict]:
        """The kept rows in file order, then the newest step row if thinning left it out."""
        rows = [r for _, r in self._kept]
        if self._newest_step is not None and (self.steps_seen - 1) % self.stride:
            rows.append(self._newest_step)
        return rows


# Read this much of a metrics.jsonl at a time: the first look at a long run parses it in pieces,
# so its memory is a piece's rows and the digest, not the whole file's rows.
READ_CHUNK_BYTES = 4 << 20


@dataclass
class _Seen:
    """What this browser session has read of one run: its digest, byte offset, schedule facts."""

    digest: RowDigest = field(default_factory=RowDigest)
    offset: int = 0
    file_id: str = ""  # rundir.stamp(run, "metrics"): which metrics.jsonl was read so far
    epochs: int | None = None
    batch_size: int | None = None

    @classmethod
    def of(cls, run_id: str) -> "_Seen":
        cfg = rundir.load_config(run_id)
        return cls(epochs=cfg.train.epochs, batch_size=cfg.train.batch_size)

    def read(self, run_id: str) -> list[dict]:
        """The digest's rows of `run_id` so far; only the bytes appended since the last call are read.

        A resume (from any tab or the CLI) rewrites metrics.jsonl as a new file cut back to its
        checkpoint: a new file means reading from the start again, never from a stale offset.
        """
        file_id = rundir.stamp(run_id, "metrics")
        if file_id != self.file_id:
            self.digest, self.offset, self.file_id = RowDigest(), 0, file_id
        while True:  # piece by piece, until a read finds no complete line
            rows, offset = rundir.read_metrics(run_id, since=self.offset, max_bytes=READ_CHUNK_BYTES)
            if offset == self.offset:
                return self.digest.rows
            self.digest.extend(rows)
            self.offset = offset


def _seen(run_id: str) -> _Seen:
    cache = st.session_state.setdefault("kt_metric_cache", {})
    if run_id not in cache:
        cache[run_id] = _Seen.of(run_id)
    return cache[run_id]


def new_rows(run_id: str) -> list[dict]:
    """The rows of `run_id` a chart needs (`RowDigest`); only new bytes are read (`_Seen.read`)."""
    return _seen(run_id).read(run_id)


def forget(run_id: str) -> None:
    """Drop the cached rows of a deleted or restarted run."""
    st.session_state.get("kt_metric_cache", {}).pop(run_id, None)


def _planned(seen: _Seen, status: dict) -> int | None:
    """The run's epochs: its config's, or what the worker resolved for `epochs: null` (auto)."""
    if seen.epochs is None and status.get("planned_epochs"):
        seen.epochs = int(status["planned_epochs"])
    return seen.epochs


def _series_for(label: str, run_id: str, status: dict) -> Series:
    rows, seen = new_rows(run_id), _seen(run_id)
    _planned(seen, status)
    total = status.get("total_steps")
    return Series(label, rows, total / seen.epochs if total and seen.epochs else None)


def run_progress(label: str, run_id: str, status: dict | None = None, rows: list[dict] | None = None) -> dict:
    """One progress bar with its caption (state, epoch, step, images/s, ETA); returns the status.
    `status` and `rows` are read from the run folder unless the caller has just read them."""
    status = rundir.read_status(run_id) if status is None else status
    seen = _seen(run_id)
    info = progress_info(status, new_rows(run_id) if rows is None else rows, seen.batch_size, _planned(seen, status))
    st.progress(info.fraction, text=f"**{label}** · {info.text}")
    if status.get("state") in ("failed", "interrupted"):
        st.error(f"{label}: {status['state']} — {status.get('error') or 'see the log'}. "
                 "Resume it on the Runs page once the cause is fixed.", icon=":material/error:")
    return status


def render_runs(runs: list[tuple[str, str]], key: str, title: str | None = None,
                show_progress: bool = True, live: bool = False) -> list[dict]:
    """Draw progress bars and the one chart for `runs` = [(label, run_id)]; return the statuses.

    `live`: the light canvas chart that a poll can redraw cheaply; otherwise the Plotly figure.
    """
    statuses, series = [], []
    for label, run_id in runs:
        status = rundir.read_status(run_id)
        statuses.append(status)
        series.append(_series_for(label, run_id, status))
        if show_progress:
            run_progress(label, run_id, status, series[-1].rows)
    if live:
        planned = [_seen(run_id).epochs for _, run_id in runs]
        live_chart.show(traces(series), max(filter(None, planned), default=None), title,
                        CHART_HEIGHT, key=f"{key}_live")
    else:
        uirevision = "+".join(run_id for _, run_id in runs)
        # Same runs, same rows: the figure of the last rerun (building it is ~0.3 s of Plotly's
        # validation, most of a Runs page rerun). The rows' count and last time identify them.
        drawn = tuple((s.label, s.steps_per_epoch, len(s.rows), s.rows[-1].get("time") if s.rows else None)
                      for s in series)
        st.plotly_chart(_static_figure(drawn, uirevision, title, series), key=key, width="stretch")
    return statuses


@st.cache_resource(max_entries=16, show_spinner=False)  # the object itself: unpickling a copy re-validates it
def _static_figure(drawn: tuple, uirevision: str, title: str | None, _series: list[Series]) -> go.Figure:
    return build_figure(_series, uirevision, title)


@st.fragment(run_every=POLL_SECONDS)
def _live(runs: list[tuple[str, str]], key: str, title: str | None, show_progress: bool, extra) -> None:
    statuses = render_runs(runs, key, title, show_progress, live=True)
    if extra is not None:
        extra()
    if not any(s.get("state") in ACTIVE_STATES for s in statuses):
        st.rerun()  # the whole page redraws once, statically: polling ends here


def live_curves(runs: list[tuple[str, str]], key: str, title: str | None = None,
                show_progress: bool = True, extra=None) -> None:
    """Curves of `runs`, polled live while any of them is queued or running, static otherwise.

    `extra` is an optional callable drawn inside the same fragment (e.g. the log tail), so it
    refreshes with the curves without rerunning the page.
    """
    active = any(rundir.read_status(run_id).get("state") in ACTIVE_STATES for _, run_id in runs)
    if active:
        _live(runs, key, title, show_progress, extra)
    else:
        render_runs(runs, key, title, show_progress)
        if extra is not None:
            extra()
