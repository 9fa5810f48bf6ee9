"""An experiment's chart (Plotly), its CSV, and the HTML report to hand over.

The report is one self-contained file: Plotly's JavaScript is embedded (`include_plotlyjs=True`,
~4.5 MB), so it opens offline, charts interactive; then the conclusion, the table, the source and
the target described, the exact command that reproduces the experiment and the spec itself.
The UI shows the same figure (`figure(data, points, verdict)`) and offers the same file.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from .. import rundir
from ..headline import headline
from .folder import SPEC, experiment_dir, read_experiment
from .results import aggregate, baseline_label, conclude, group_columns, member_table

PALETTE = ("#636efa", "#00a36c", "#ef553b", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
BASELINE_COLOR = "#7f7f7f"
NEGATIVE_COLOR = "#d62728"


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def figure(data: dict, points=None, verdict=None):
    """The experiment's chart: a line per method (or variant) with a band of +-1 standard
    deviation over seeds; points of negative transfer marked with a red X."""
    import pandas as pd  # here, not at the top: pandas and plotly cost ~1 s to import, which
    import plotly.graph_objects as go  # listing or stopping experiments never needs

    points = aggregate(data) if points is None else points
    verdict = conclude(data, points) if verdict is None else verdict
    fig = go.Figure()
    kind = data.get("kind")
    if kind in ("sample_efficiency", "layer_transfer"):
        series_col = "method" if kind == "sample_efficiency" else "variant"
        at_col = "per_class" if kind == "sample_efficiency" else "n"
        baseline = baseline_label(data)
        scratch_row = None
        if kind == "layer_transfer":
            scratch = points[points["variant"] == "scratch"]
            scratch_row = scratch.iloc[0] if len(scratch) else None
        colors = iter(PALETTE)
        for label in dict.fromkeys(points[series_col]):
            rows = points[(points[series_col] == label) & points["x"].notna()]
            if kind == "layer_transfer" and label == "scratch":
                continue
            if scratch_row is not None:  # every curve starts from n = 0: all re-initialised
                rows = pd.concat([scratch_row.to_frame().T, rows]).astype({"x": float, "mean": float, "std": float,
                                                                           "count": int})
            color = BASELINE_COLOR if label == baseline else next(colors, "#333333")
            x, mean, std = list(rows["x"]), list(rows["mean"]), list(rows["std"])
            text = [f"{at_col}={k}" for k in rows[at_col]]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=[m + s for m, s in zip(mean, std)] + [m - s for m, s in zip(mean, std)][::-1],
                                     fill="toself", fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                                     showlegend=False, legendgroup=str(label), name=f"{label} spread"))
            fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=str(label), legendgroup=str(label),
                                     line={"color": color, "dash": "dash" if label == baseline else "solid"},
                                     text=text, customdata=list(zip(std, rows["count"])),
                                     hovertemplate="%{text}<br>accuracy %{y:.1%} ± %{customdata[0]:.1%}"
                                                   "<br>%{customdata[1]} seed(s)<extra>" + str(label) + "</extra>"))
        if kind == "layer_transfer" and scratch_row is not None:
            fig.add_hrect(y0=scratch_row["mean"] - scratch_row["std"], y1=scratch_row["mean"] + scratch_row["std"],
                          fillcolor=_rgba(BASELINE_COLOR, 0.12), line_width=0)
            fig.add_hline(y=scratch_row["mean"], line={"color": BASELINE_COLOR, "dash": "dash"},
                          annotation_text="from scratch (n = 0)", annotation_position="bottom right")
        negative = verdict.negative
        if negative:
            means = {(r[series_col], r[at_col]): r["mean"] for r in points.to_dict(orient="records")}
            fig.add_trace(go.Scatter(
                x=[p["x"] for p in negative], y=[means.get((p["series"], p["at"])) for p in negative],
                mode="markers", name="negative transfer", marker={"symbol": "x", "size": 14, "color": NEGATIVE_COLOR},
                text=[f"{p['series']} at {p['x_label']}: {p['delta'] * 100:+.1f} points vs scratch" for p in negative],
                hovertemplate="%{text}<extra>negative transfer</extra>"))
        if kind == "sample_efficiency":
            ticks = points.drop_duplicates("per_class")[["x", "per_class"]].dropna()
            fig.update_xaxes(type="log", title="labelled images per class (K, log scale)",
                             tickvals=list(ticks["x"]), ticktext=[_k_tick(k, x) for k, x in zip(ticks["per_class"], ticks["x"])])
        else:
            fig.update_xaxes(title="blocks transferred from the source (n)", dtick=1)
    else:
        cols = group_columns(data)
        labels = [", ".join(f"{c}={r[c]}" for c in cols) for r in points.to_dict(orient="records")]
        fig.add_trace(go.Bar(x=labels, y=list(points["mean"]), error_y={"type": "data", "array": list(points["std"])},
                             marker_color=PALETTE[0], name="accuracy",
                             hovertemplate="%{x}<br>accuracy %{y:.1%}<extra></extra>"))
        fig.update_xaxes(title=" x ".join(cols))
    fig.update_yaxes(title="accuracy (mean ± std over seeds)", tickformat=".0%")
    fig.update_layout(title=data.get("name"), template="plotly_white", height=480, legend={"orientation": "h", "y": -0.2},
                      margin={"l": 60, "r": 20, "t": 60, "b": 60}, hovermode="closest")
    return fig


def _k_tick(k, x) -> str:
    return f"all (~{x:.0f})" if k == "all" else str(k)


def members_csv(data: dict) -> str:
    """The members' results, one row each: the raw data behind the chart."""
    table = member_table(data)
    return table.to_csv(index=False)


def points_table(points):
    """The aggregated table as shown in the UI and the report (accuracies as percentages)."""
    shown = points.drop(columns=["x"], errors="ignore").copy()
    for c in ("mean", "std", "min", "max"):
        if c in shown:
            shown[c] = shown[c].map(lambda v: f"{v * 100:.1f}%")
    return shown.rename(columns={"mean": "accuracy (mean)", "std": "spread (std)", "count": "seeds"})


def reproduce_command(folder: Path) -> str:
    spec = folder / SPEC
    try:
        shown = spec.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = spec.resolve()
    return f"python -m kt_core experiment {shown}"


def _describe_config(cfg: dict | None, runs_dir: Path, run_id: str | None = None) -> list[tuple[str, str]]:
    if not cfg:
        return []
    src, ds, tr = cfg.get("source", {}), cfg.get("dataset", {}), cfg.get("train", {})
    rows = [("dataset", f"{ds.get('name')}" + (f" ({ds.get('root')})" if ds.get("root") else "")),
            ("classes", "all" if ds.get("classes") is None else ", ".join(map(str, ds["classes"]))),
            ("validation share", f"{ds.get('val_fraction')}"),
            ("images", f"{ds.get('image_size') or 'source size'} px, content {ds.get('content_size') or '-'} px, "
                       f"{ds.get('channels') or 'source'} channel(s), normalize {ds.get('normalize')}, augment {ds.get('augment')}"),
            ("training", f"{tr.get('epochs')} epochs, batch {tr.get('batch_size')}, {tr.get('optimizer')} lr {tr.get('lr')}, "
                         f"scheduler {tr.get('scheduler')}, device {tr.get('device')}")]
    if src.get("kind") == "arch":
        rows.insert(0, ("model", f"{src.get('arch')} ({src.get('weights') or 'random initialisation'})"))
    elif src.get("kind"):
        rows.insert(0, ("from", f"{src.get('kind')} {src.get('path')} ({src.get('checkpoint')} checkpoint)"))
    if run_id:
        summary = rundir.read_summary(runs_dir / run_id) if (runs_dir / run_id).is_dir() else {}
        figure = headline(summary)
        if figure.value is not None:
            rows.append(("its result", f"run {run_id}: {figure.format()}"))
    return rows


def render_html(exp, runs_dir=None) -> str:
    """The report as one HTML document (see the module docstring)."""
    folder = experiment_dir(exp, runs_dir)
    data = read_experiment(folder)
    members = member_table(data)
    points = aggregate(data, members)
    verdict = conclude(data, points)
    fig = figure(data, points, verdict)
    chart = fig.to_html(include_plotlyjs=True, full_html=False, div_id="kt-experiment-chart",
                        config={"displaylogo": False, "responsive": True})
    spec = data.get("spec") or {}
    exp_runs = Path(data["runs_dir"])
    metrics = sorted(set(members["metric"].dropna())) if "metric" in members else []
    negative_ids = {(p["series"], p["at"]) for p in verdict.negative}
    lines = "".join(f"<li class='{'neg' if 'egative transfer' in line else ''}'>{html.escape(line)}</li>"
                    for line in verdict.lines)
    table = points_table(points).to_html(index=False, classes="results", border=0, na_rep="-")
    described = []
    if spec.get("source_run"):
        described.append(("Source (trained once for this experiment)", _describe_config(spec["source_run"], exp_runs,
                                                                                         data.get("source_run"))))
    elif spec.get("base"):
        described.append(("Source", _describe_config({"source": spec["base"]["source"]}, exp_runs)[:1]))
    base = spec.get("base") or {}
    described.append(("Target", [r for r in _describe_config(base, exp_runs) if r[0] not in ("from", "model")]))
    blocks = "".join(f"<h3>{html.escape(title)}</h3><table class='kv'>" +
                     "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) +
                     "</table>" for title, rows in described)
    progress = data.get("progress") or {}
    state = f"{data.get('state')}, {progress.get('done', 0)} of {progress.get('total', len(data.get('members') or []))} members done"
    css = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#666} ul.verdict li{margin:.4em 0} li.neg{color:#b00020;font-weight:600}
table.results,table.kv{border-collapse:collapse;margin:.5em 0} table.results td,table.results th,table.kv td,table.kv th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px} code{background:#f6f8fa;padding:2px 4px}
"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(str(data.get('name')))}: KT Studio experiment</title>
<style>{css}</style></head><body>
<h1>{html.escape(str(data.get('name')))}</h1>
<p class="meta">KT Studio experiment <code>{html.escape(str(data.get('id')))}</code> ({html.escape(str(data.get('kind')))}),
{html.escape(state)}. Report written {time.strftime('%Y-%m-%d %H:%M')}.</p>
<p>{html.escape(spec.get('description') or '')}</p>
<h2>Conclusion</h2><ul class="verdict">{lines}</ul>
{chart}
<h2>Results</h2>
<p class="meta">Accuracy: {html.escape(', '.join(metrics) or '-')} (each run's headline: held-out test accuracy of the best-on-validation
checkpoint, else the last epoch's validation accuracy), mean and standard deviation over {len(spec.get('seeds') or [])} seed(s).
{'Marked points lost to scratch by more than the seeds&#39; spread.' if negative_ids else ''}</p>
{table}
<h2>What was compared</h2>{blocks}
<h2>Reproduce</h2>
<p>With KT Studio installed: <code>{html.escape(reproduce_command(folder))}</code> (that file is the spec below; saved as
<code>spec.json</code> anywhere, <code>python -m kt_core experiment spec.json</code>).</p>
<pre>{html.escape(json.dumps(spec, indent=2))}</pre>
</body></html>
"""


def write_report(exp, out: str | Path, csv: str | Path | None = None, runs_dir=None) -> Path:
    """Write the HTML report to `out` (and the members' CSV to `csv`); returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(exp, runs_dir), encoding="utf-8")
    if csv is not None:
        Path(csv).write_text(members_csv(read_experiment(experiment_dir(exp, runs_dir))), encoding="utf-8")
    return out
