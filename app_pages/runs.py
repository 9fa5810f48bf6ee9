"""Runs: every run as a table, overlaid curves, and one run in depth (evaluation, downloads, actions)."""

import streamlit as st

from kt_core import launcher, rundir, runs
from ui import run_view, state
from ui.curves import ACTIVE_STATES, forget, live_curves
from ui.errors import guard, plain
from ui.trackers import trackers

st.title("Runs")
with guard("Reading the runs folder") as listing:
    table = runs.list_runs()
if not listing.ok:
    st.stop()
if table is None or not len(table):
    st.info("No runs yet. Start one on the Train page, or the demo on Home.")
    st.stop()

st.dataframe(run_view.summary_table(table), hide_index=True, key="runs_table",
             column_config={"accuracy": st.column_config.TextColumn(
                 "accuracy", help="The one figure a run is judged by, the same on every page: "
                                  "see 'measured on' for its split and checkpoint.")})
ids = table["id"].tolist()
labels = run_view.labels(table)
names = dict(zip(table["id"], table["name"]))

watched = state.current_run()
overlay = st.multiselect("Overlay the curves of", ids, format_func=labels.get, key="runs_overlay",
                         default=[r for r in (watched, state.current_baseline()) if r in ids] or ids[:1])
if overlay:
    with guard("Drawing the curves"):
        live_curves(list(zip(run_view.curve_labels(overlay, names), overlay)), key="runs_overlay_chart",
                    show_progress=False)
if len(overlay) > 1:
    with guard("Comparing the runs"):
        st.markdown("**What sets them apart**: results, and the config values that differ")
        compared = run_view.comparison(overlay, names)
        # Tall enough for every row: the differing config values are the point, not a scroll away.
        st.dataframe(compared, key="runs_compare", height=38 + 35 * len(compared),
                     column_config={"_index": st.column_config.TextColumn("", width="medium")})
        run_view.show_verdicts(run_view.baseline_verdicts(overlay, table))

st.divider()
run_id = st.selectbox("One run in depth", ids, format_func=labels.get, key="runs_one",
                      index=ids.index(watched) if watched in ids else 0)
with guard("Reading the run") as reading:
    status = rundir.read_status(run_id)
if not reading.ok:
    st.stop()
run_state = status.get("state")
head = run_view.headlines([run_id])[run_id]
st.markdown(f"**{plain(labels[run_id])}** · state **{run_state}**"
            + (f" · error: {plain(status['error'])}" if status.get("error") else ""))
if head.value is not None:
    st.markdown(f"Headline: **{head.percent()}** {plain(head.label)}")

# The transfer run and its from-scratch baseline go together: resuming one offers the other.
rows = {r["id"]: {k: run_view.cell_text(v) for k, v in r.items()} for r in table.to_dict("records")}
partner = rows[run_id].get("baseline_of") or next(
    (r["id"] for r in rows.values() if r.get("baseline_of") == run_id), None)
if partner not in rows:
    partner = None
resumable = {r for r, row in rows.items() if row.get("state") not in (*ACTIVE_STATES, "completed")}
pair = partner if partner in resumable and run_id in resumable else None
with guard("Comparing with its baseline"):
    run_view.show_verdicts(run_view.baseline_verdicts([run_id], table))

# --- actions ---------------------------------------------------------------------------------
c1, c2, c3, c4, c5 = st.columns([1, 1, 1.4, 1, 2.6])
if c1.button("Stop", key="runs_stop", disabled=run_state not in ACTIVE_STATES, icon=":material/stop:"):
    with guard("Stopping"):
        with st.spinner("Stopping: the run finishes its batch and saves a checkpoint..."):
            launcher.stop(run_id, timeout=10)
        st.rerun()
if c2.button("Resume both" if pair else "Resume", key="runs_resume",
             disabled=run_state in ACTIVE_STATES or run_state == "completed", icon=":material/play_arrow:",
             help="This run and its from-scratch twin continue from their last checkpoints." if pair else None):
    with guard("Resuming"):
        for rid in filter(None, (run_id, pair)):
            launcher.resume(rid, confined=True)
            forget(rid)
        if pair:  # the Train page watches the transfer run with its baseline overlaid
            transfer, base = (pair, run_id) if rows[run_id].get("baseline_of") else (run_id, pair)
        else:
            transfer, base = run_id, None
        state.watch_run(transfer, base)
        st.switch_page("app_pages/train.py", query_params={"run": transfer, **({"baseline": base} if base else {})})
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
tab_eval, tab_files, tab_trackers = st.tabs(["Evaluation", "Downloads", "Trackers"])
with tab_eval:
    if run_state != "completed" and run_state != "stopped":
        st.caption("Evaluation needs a finished run (completed or stopped).")
    else:
        # Only the splits the run has; the headline's split and checkpoint first, so the figure
        # evaluated here is the one the Runs list and Home show.
        summary = run_view.summaries([run_id])[run_id]
        names, task = run_view.task_names(run_id), None
        if names:  # a multi-task run: each task through its own head on the shared trunk, on its own data
            chosen = st.radio("Task", names, horizontal=True, key="runs_eval_task", format_func=run_view.task_label(names))
            task = None if chosen == names[0] else chosen
        splits = run_view.task_splits(summary, task)
        # the target: the headline's split first; another task: its held-out split, where it has one
        first = (head.split if head.split in splits else splits[0]) if task is None else splits[-1]
        c1, c2 = st.columns(2)
        split = c1.radio("Split", sorted(splits, key=lambda s: s != first), horizontal=True, key="runs_eval_split",
                         format_func={"val": "validation", "test": "test"}.get)
        checkpoints = sorted(["best", "last"], key=lambda c: c != (head.checkpoint or "best"))
        checkpoint = c2.radio("Checkpoint", checkpoints, horizontal=True, key="runs_eval_checkpoint",
                              format_func={"best": "best on validation", "last": "last epoch"}.get)
        with guard("Evaluating") as evaluating:
            report, images = run_view.evaluation(run_id, split, checkpoint, task)
        if evaluating.ok:
            run_view.show_evaluation(report, images, checkpoint)

with tab_files:
    with guard("Preparing downloads"):
        run_view.downloads(run_id)

with tab_trackers:  # TensorBoard and MLflow
    with guard("Showing the trackers"):
        trackers(run_id, run_state)
