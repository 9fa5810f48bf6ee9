"""Runs: every run as a table, overlaid curves, and one run in depth (evaluation, downloads, actions)."""

import streamlit as st

from kt_core import launcher, rundir, runs
from ui import run_view, state
from ui.curves import ACTIVE_STATES, forget, live_curves
from ui.errors import guard

st.title("Runs")
with guard("Reading the runs folder") as listing:
    table = runs.list_runs()
if not listing.ok:
    st.stop()
if table is None or not len(table):
    st.info("No runs yet. Start one on the Train page, or the demo on Home.")
    st.stop()

st.dataframe(run_view.summary_table(table), hide_index=True, key="runs_table")
ids = table["id"].tolist()
labels = run_view.labels(table)

watched = state.current_run()
overlay = st.multiselect("Overlay the curves of", ids, format_func=labels.get, key="runs_overlay",
                         default=[r for r in (watched, state.current_baseline()) if r in ids] or ids[:1])
if overlay:
    with guard("Drawing the curves"):
        names = dict(zip(table["id"], table["name"]))
        live_curves(list(zip(run_view.curve_labels(overlay, names), overlay)), key="runs_overlay_chart",
                    show_progress=False)
if len(overlay) > 1:
    with guard("Comparing the runs"):
        st.markdown("**What sets them apart**: results, and the config values that differ")
        st.dataframe(run_view.comparison(overlay, labels), key="runs_compare")
        run_view.show_verdicts(run_view.baseline_verdicts(overlay, table))

st.divider()
run_id = st.selectbox("One run in depth", ids, format_func=labels.get, key="runs_one",
                      index=ids.index(watched) if watched in ids else 0)
with guard("Reading the run") as reading:
    status = rundir.read_status(run_id)
if not reading.ok:
    st.stop()
run_state = status.get("state")
st.markdown(f"**{labels[run_id]}** · state **{run_state}**"
            + (f" · error: {status['error']}" if status.get("error") else ""))
with guard("Comparing with its baseline"):
    run_view.show_verdicts(run_view.baseline_verdicts([run_id], table))

# --- actions ---------------------------------------------------------------------------------
c1, c2, c3, c4, c5 = st.columns([1, 1, 1.4, 1, 2.6])
if c1.button("Stop", key="runs_stop", disabled=run_state not in ACTIVE_STATES, icon=":material/stop:"):
    with guard("Stopping"):
        with st.spinner("Stopping: the run finishes its batch and saves a checkpoint..."):
            launcher.stop(run_id, timeout=10)
        st.rerun()
if c2.button("Resume", key="runs_resume", disabled=run_state in ACTIVE_STATES or run_state == "completed",
             icon=":material/play_arrow:"):
    with guard("Resuming"):
        launcher.resume(run_id)
        forget(run_id)
        state.watch_run(run_id)
        st.switch_page("app_pages/train.py", query_params={"run": run_id})
if c3.button("Edit and re-run", key="runs_edit", icon=":material/edit:",
             help="Loads this run's source, dataset, layers and training choices into the pages."):
    with guard("Loading the run's config"):
        state.load_run_config(rundir.load_config(run_id))
        state.watch_run(None)
        st.switch_page("app_pages/train.py")
confirm = c5.checkbox("Yes, delete this run folder", key="runs_delete_confirm")
if c4.button("Delete", key="runs_delete", disabled=not confirm or run_state in ACTIVE_STATES,
             icon=":material/delete:"):
    with guard("Deleting"):
        launcher.delete(run_id)
        forget(run_id)
        if watched == run_id:
            state.watch_run(None)
        st.rerun()

# --- evaluation ------------------------------------------------------------------------------
tab_eval, tab_files = st.tabs(["Evaluation", "Downloads"])
with tab_eval:
    if run_state != "completed" and run_state != "stopped":
        st.caption("Evaluation needs a finished run (completed or stopped).")
    else:
        split = st.radio("Split", ["val", "test"], horizontal=True, key="runs_eval_split")
        with guard("Evaluating") as evaluating:
            report, images = run_view.evaluation(run_id, split)
        if evaluating.ok:
            run_view.show_evaluation(report, images)

with tab_files:
    with guard("Preparing downloads"):
        run_view.downloads(run_id)
