"""An experiment's results, gathered from its members' summaries, and the conclusion they support.

`member_table(data)` is one row per member (its coordinates, state and accuracy);
`aggregate(data, members)` one row per point of the chart (mean, spread over seeds, count);
`conclude(data, points)` the verdict: sentences written from those numbers, and the points
where a transfer method lost to scratch by more than the seeds' spread (negative transfer).

Which accuracy: each member's headline (`kt_core.headline`, the figure every page shows for a
run): the held-out test accuracy of the best-on-validation checkpoint when the target has a test
split (one is carved out when it has none), else the last epoch's validation accuracy; named in
every table, and the same for every member, so methods are compared like for like.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .. import rundir
from ..headline import headline
from .spec import ALL, METHODS, ExperimentSpec, k_label

ONE_SEED_MARGIN = 0.01  # with one seed there is no spread: a difference under one point is a tie


def member_accuracy(summary: dict) -> tuple[float | None, str | None]:
    """The accuracy an experiment reports for one member (its headline), and which metric it is."""
    figure = headline(summary)
    if figure.value is None or not math.isfinite(figure.value):
        return None, None
    return float(figure.value), "test_acc" if figure.held_out else "final_val_acc"


# Ended members' (state, summary), keyed by their run folder and checked against the stat of both
# files at each use: the Experiments page's live view re-reads the table every 2 s, and reading
# every member's files cost ~0.4 ms a member (0.4 s CPU a poll at 1,000 members); two stats cost a
# tenth of that, and a member still training is read as before. Bounded: the oldest go first.
_ENDED: OrderedDict[str, tuple] = OrderedDict()
ENDED_KEPT = 20_000


def _stamp(path: Path):
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def member_state(folder: Path) -> tuple[str, dict]:
    """A member run's state and summary (`{}` while it has none); an ended run's are kept (above)."""
    stamp = (_stamp(folder / rundir.STATUS), _stamp(folder / rundir.SUMMARY))
    kept = _ENDED.get(str(folder))
    if kept is not None and kept[0] == stamp:
        return kept[1], kept[2]
    state, summary = rundir.read_status(folder)["state"], rundir.read_summary(folder)
    if state in rundir.FINAL_STATES:  # a final state does not depend on the clock (an active one does)
        _ENDED[str(folder)] = (stamp, state, summary)
        _ENDED.move_to_end(str(folder))
        while len(_ENDED) > ENDED_KEPT:
            _ENDED.popitem(last=False)
    return state, summary


def member_table(data: dict):
    """One row per member: key, coordinates, run_id, state, accuracy, metric, train_s."""
    import pandas as pd  # here, not at the top: ~0.5 s to import, which listing experiments never needs

    runs_dir = Path(data["runs_dir"])
    rows = []
    for m in data.get("members") or []:
        row = {"key": m["key"], **(m.get("coords") or {}), "run_id": m.get("run_id"), "state": m.get("state", "pending")}
        summary = {}
        if m.get("run_id") and (runs_dir / m["run_id"]).is_dir():
            row["state"], summary = member_state(runs_dir / m["run_id"])
        accuracy, metric = member_accuracy(summary) if row["state"] == "completed" else (None, None)
        num_classes = summary.get("num_classes")
        row.update(accuracy=accuracy, metric=metric, train_s=summary.get("train_s"),
                   train_per_class=(summary["train_images"] / num_classes
                                    if summary.get("train_images") and num_classes else None))
        rows.append(row)
    return pd.DataFrame(rows)


def group_columns(data: dict) -> list[str]:
    """What a chart point is, by kind: (method, per_class), (variant, n), or the grid's keys."""
    kind = data.get("kind")
    if kind == "sample_efficiency":
        return ["method", "per_class"]
    if kind == "layer_transfer":
        return ["variant", "n"]
    return list((data.get("spec") or {}).get("grid") or {})


def aggregate(data: dict, members=None):
    """Mean, standard deviation (over seeds, ddof=1; 0 for one seed), min, max and `count` of the
    completed members' accuracy, per chart point; `x` is the point's position on the chart."""
    import pandas as pd  # here, not at the top: as in member_table

    members = member_table(data) if members is None else members
    cols = group_columns(data)
    done = members[members["accuracy"].notna()] if len(members) else members
    if not len(done):
        return pd.DataFrame(columns=cols + ["mean", "std", "min", "max", "count", "x"])
    keyed = done.assign(**{c: done[c].map(_k_value if c == "per_class" else _hashable) for c in cols})
    grouped = keyed.groupby(cols, dropna=False, sort=False)
    # "count", not "n": a layer sweep's points are (variant, n)
    out = grouped["accuracy"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    if data.get("kind") == "sample_efficiency":
        all_k = grouped["train_per_class"].mean().reset_index(drop=True)
        out["x"] = [(float(all_k[i]) if all_k[i] == all_k[i] else None) if k == ALL else float(k)
                    for i, k in enumerate(out["per_class"])]
        out = out.sort_values(["method", "x"], key=lambda s: s.map(_order_key(data)) if s.name == "method" else s)
    elif data.get("kind") == "layer_transfer":
        out["x"] = out["n"].astype(float)
        out = out.sort_values(["variant", "n"])
    else:
        out["x"] = range(len(out))
    return out.reset_index(drop=True)


def _k_value(k):
    return ALL if _is_all(k) else int(k)  # a missing K (JSON null, NaN in a table) is "all"


def _hashable(value):
    """A grid value as a group key: lists and objects as their JSON, null as "null"."""
    if value is None or (isinstance(value, float) and value != value):
        return "null"
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _is_all(k) -> bool:
    return k is None or k == ALL or (isinstance(k, float) and k != k)


def _order_key(data: dict):
    labels = method_labels(data)
    return lambda label: labels.index(label) if label in labels else len(labels)


def method_labels(data: dict) -> list[str]:
    spec = ExperimentSpec.from_dict(data["spec"])
    return [m.label for m in spec.methods]


def baseline_label(data: dict) -> str | None:
    """The method transfer is judged against: the experiment's non-transfer method (scratch)."""
    if data.get("kind") == "layer_transfer":
        return "scratch"
    if data.get("kind") != "sample_efficiency":
        return None
    spec = ExperimentSpec.from_dict(data["spec"])
    return next((m.label for m in spec.methods if not METHODS.get(m.name).transfer), None)


# --- the verdict ------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """The conclusion: `lines` to show in this order, and the points of negative transfer."""

    lines: list[str] = field(default_factory=list)
    negative: list[dict] = field(default_factory=list)  # {"series", "x_label", "x", "delta", "margin"}
    wins: list[dict] = field(default_factory=list)
    metric: str | None = None
    complete: bool = True

    def to_dict(self) -> dict:
        return {"lines": self.lines, "negative": self.negative, "wins": self.wins, "metric": self.metric,
                "complete": self.complete}


def _pts(value: float) -> str:
    return f"{abs(value) * 100:.1f} points"


def compare_points(series: list[dict], baseline: dict[object, dict]) -> list[dict]:
    """Each point of a series against the baseline's point at the same x: delta, margin, outcome
    (win / loss / tie), judged by the seeds' spread (the larger standard deviation of the two)."""
    out = []
    for point in series:
        base = baseline.get(point["at"])
        if base is None:
            continue
        delta = point["mean"] - base["mean"]
        several = point["count"] > 1 and base["count"] > 1
        margin = max(point["std"], base["std"]) if several else ONE_SEED_MARGIN
        outcome = "win" if delta > margin else "loss" if delta < -margin else "tie"
        out.append({**point, "base": base["mean"], "delta": delta, "margin": margin, "outcome": outcome})
    return out


def conclude(data: dict, points=None) -> Verdict:
    """Sentences written from the aggregated results (see the module docstring)."""
    points = aggregate(data) if points is None else points
    members = data.get("members") or []
    verdict = Verdict()
    progress = data.get("progress") or {}
    verdict.complete = bool(members) and progress.get("done", 0) >= len(members)
    if not len(points):
        verdict.lines.append("No member has completed yet: nothing to conclude.")
        return verdict
    kind = data.get("kind")
    if kind == "sample_efficiency":
        _conclude_curves(verdict, points, "method", "per_class", baseline_label(data), lambda k: f"K={k}")
    elif kind == "layer_transfer":
        _conclude_layers(verdict, points)
    else:
        _conclude_grid(verdict, points, group_columns(data))
    if not verdict.complete:
        verdict.lines.append("The experiment has not finished: these conclusions are provisional.")
    return verdict


def _series(points, series_col: str, at_col: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in points.to_dict(orient="records"):
        out.setdefault(row[series_col], []).append({**row, "at": row[at_col]})
    return out


def _conclude_curves(verdict: Verdict, points, series_col: str, at_col: str, baseline: str | None,
                     name_at) -> None:
    series = _series(points, series_col, at_col)
    if baseline is None or baseline not in series:
        best = points.loc[points["mean"].idxmax()]
        verdict.lines.append(f"Best: {best[series_col]} at {name_at(best[at_col])}, {best['mean']:.1%}.")
        return
    base = {p["at"]: p for p in series[baseline]}
    for label, pts in series.items():
        if label == baseline:
            continue
        judged = compare_points(pts, base)
        if not judged:
            continue
        for p in judged:
            entry = {"series": label, "x_label": name_at(p["at"]), "at": p["at"], "x": p["x"],
                     "delta": p["delta"], "margin": p["margin"]}
            (verdict.negative if p["outcome"] == "loss" else verdict.wins if p["outcome"] == "win" else []).append(entry)
        verdict.lines.append(_curve_sentence(label, baseline, judged, name_at))
    # the headline: the best transfer method where data is scarcest
    first_at = points.sort_values("x")[at_col].iloc[0] if points["x"].notna().any() else None
    at_first = [p for label, pts in series.items() if label != baseline for p in compare_points(pts, base)
                if p["at"] == first_at]
    if at_first:
        top = max(at_first, key=lambda p: p["mean"])
        direction = "ahead" if top["delta"] > 0 else "behind"
        verdict.lines.insert(0, f"With the fewest labels ({name_at(first_at)}), {top[series_col]} reaches "
                                f"{top['mean']:.1%} against {top['base']:.1%} {baseline} "
                                f"({_pts(top['delta'])} {direction}).")


def _curve_sentence(label: str, baseline: str, judged: list[dict], name_at) -> str:
    outcomes = [p["outcome"] for p in judged]
    deltas = [p["delta"] for p in judged]
    if all(o == "win" for o in outcomes):
        biggest = max(judged, key=lambda p: p["delta"])
        return (f"{label} beats {baseline} at every point, by {_pts(min(deltas))} to {_pts(max(deltas))} "
                f"(most at {name_at(biggest['at'])}: {biggest['mean']:.1%} vs {biggest['base']:.1%}).")
    if all(o == "loss" for o in outcomes):
        return (f"Negative transfer: {label} lost to {baseline} at every point (by {_pts(max(deltas, key=abs))} at "
                f"worst): the source's features do not fit this target.")
    parts = []
    for outcome, word in (("win", "beats"), ("tie", "is level with (within the seeds' spread)"), ("loss", "loses to")):
        where = [name_at(p["at"]) for p in judged if p["outcome"] == outcome]
        if where:
            parts.append(f"{word} {baseline} at {', '.join(where)}")
    sentence = f"{label} " + "; ".join(parts) + "."
    crossings = [(a, b) for a, b in zip(judged, judged[1:]) if (a["delta"] > 0) != (b["delta"] > 0)
                 and (abs(a["delta"]) > a["margin"] or abs(b["delta"]) > b["margin"])]
    for a, b in crossings:
        sentence += f" The curves cross between {name_at(a['at'])} and {name_at(b['at'])}."
    losses = [p for p in judged if p["outcome"] == "loss"]
    if losses:
        sentence += (f" Negative transfer at {', '.join(name_at(p['at']) for p in losses)} "
                     f"(worse than {baseline} by more than the seeds' spread).")
    return sentence


def _conclude_layers(verdict: Verdict, points) -> None:
    scratch = points[points["variant"] == "scratch"]
    if not len(scratch):
        verdict.lines.append("The from-scratch baseline (n = 0) has not completed: nothing to compare against.")
        return
    base_row = scratch.iloc[0].to_dict()
    for variant in ("AnB", "AnB+"):
        rows = points[points["variant"] == variant].to_dict(orient="records")
        if not rows:
            continue
        pts = [{**r, "at": r["n"]} for r in rows]
        judged = compare_points(pts, {r["n"]: {**base_row} for r in rows})
        for p in judged:
            entry = {"series": variant, "x_label": f"n={p['n']}", "at": p["n"], "x": p["x"], "delta": p["delta"],
                     "margin": p["margin"]}
            (verdict.negative if p["outcome"] == "loss" else verdict.wins if p["outcome"] == "win" else []).append(entry)
        best = max(judged, key=lambda p: p["mean"])
        desc = "frozen" if variant == "AnB" else "fine-tuned"
        sentence = _curve_sentence(f"{variant} (first n blocks transferred, {desc})", "scratch", judged,
                                   lambda n: f"n={n}")
        verdict.lines.append(sentence + f" Best at n={best['n']}: {best['mean']:.1%} (scratch {best['base']:.1%}).")


def _conclude_grid(verdict: Verdict, points, cols: list[str]) -> None:
    ranked = points.sort_values("mean", ascending=False).to_dict(orient="records")
    def name(r):
        return ", ".join(f"{c}={r[c]}" for c in cols)
    best, worst = ranked[0], ranked[-1]
    verdict.lines.append(f"Best: {name(best)} with {best['mean']:.1%} (spread {best['std'] * 100:.1f} points, "
                         f"{best['count']} seed{'s' if best['count'] != 1 else ''}).")
    if len(ranked) > 1:
        verdict.lines.append(f"Worst: {name(worst)} with {worst['mean']:.1%}, {_pts(best['mean'] - worst['mean'])} behind.")
        runner = ranked[1]
        margin = max(best["std"], runner["std"]) if best["count"] > 1 and runner["count"] > 1 else ONE_SEED_MARGIN
        if best["mean"] - runner["mean"] <= margin:
            verdict.lines.append(f"The best two ({name(best)}; {name(runner)}) are within the seeds' spread of each other.")


# --- one run against its baseline (the Runs page's compare) ----------------------------------------------

def pair_verdict(transfer_summary: dict, baseline_summary: dict, transfer_name: str = "transfer") -> str | None:
    """One sentence on a transfer run against its from-scratch baseline, negative transfer named.
    A single pair has no seeds' spread: a difference under one point is called level."""
    a, metric = member_accuracy(transfer_summary)
    b, metric_b = member_accuracy(baseline_summary)
    if a is None or b is None or metric != metric_b:
        return None
    delta = a - b
    where = f"({metric}: {a:.1%} vs {b:.1%} from scratch)"
    if delta > ONE_SEED_MARGIN:
        return f"{transfer_name} beats its from-scratch baseline by {_pts(delta)} {where}."
    if delta < -ONE_SEED_MARGIN:
        return (f"Negative transfer: {transfer_name} is {_pts(delta)} worse than the same network trained from "
                f"scratch {where}: the source's features do not fit this target.")
    return f"{transfer_name} and its from-scratch baseline are level {where}: transfer bought nothing here."


__all__ = ["member_accuracy", "member_table", "aggregate", "conclude", "Verdict", "pair_verdict", "k_label"]
