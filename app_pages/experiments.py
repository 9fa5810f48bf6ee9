"""Experiments: one question answered by many runs; set one up, watch it, read the verdict, take the report."""

import json

import streamlit as st

from kt_core import experiments as ex
from kt_core.experiments import results
from kt_core import rundir
from kt_core.errors import ConfigError
from ui import experiment_view as view
from ui import state
from ui.errors import guard

st.title("Experiments")
st.markdown(
    "Does transfer pay, and where? An experiment trains every method at every number of labelled images per "
    "class (K), with several seeds, and draws accuracy against K with the spread over seeds. Where transfer "
    "loses to training from scratch it says so. Members are ordinary runs (see Runs); the experiment keeps "
    "going when you close the browser, and can be stopped and resumed."
)

with guard("Reading the experiments folder") as listing:
    experiments = ex.list_experiments()
with st.expander("New sample-efficiency experiment", expanded=not experiments, icon=":material/science:"):
    with guard("Setting up the experiment"):
        spec = view.setup_form()
        if spec is not None:
            count = view.members_count(spec)
            if st.button(f"Launch ({count} runs)", type="primary", key="exp_launch", icon=":material/rocket_launch:"):
                view.launch(spec)
                st.rerun()
            with st.popover("Edit as JSON (any kind: sample_efficiency, layer_transfer, grid)"):
                text = st.text_area("Spec", json.dumps(spec, indent=2), height=320, key="exp_spec_json")
                if st.button("Launch this spec", key="exp_launch_json"):
                    with guard("Launching the spec"):
                        try:
                            edited = json.loads(text)
                        except json.JSONDecodeError as exc:
                            raise ConfigError(f"the spec is not valid JSON: {exc.msg} at line {exc.lineno}",
                                                      "fix the JSON; examples/sample_efficiency.json is a complete spec") from None
                        view.launch(edited)
                        st.rerun()

if not listing.ok or not experiments:
    st.info("No experiments yet: set one up above, or press *Run the full experiment* on Home.")
    st.stop()

ids = [e["id"] for e in experiments]
names = {e["id"]: f"{e.get('name') or e['id']} · {e['id']} ({e.get('state')}, {e.get('done', 0)}/{e.get('total', 0)})"
         for e in experiments}
watched = state.current_experiment()
exp_id = st.selectbox("Experiment", ids, format_func=names.get, key="exp_pick",
                      index=ids.index(watched) if watched in ids else 0)
if exp_id != watched:
    state.watch_experiment(exp_id)

with guard("Reading the experiment") as reading:
    data = ex.read_experiment(exp_id)
if not reading.ok:
    st.stop()
exp_state = data.get("state")
st.markdown(f"**{data.get('name')}** · {data.get('kind')} · state **{exp_state}**"
            + (f" · error: {data['error']}" if data.get("error") else ""))

c1, c2, c3, c4 = st.columns([1, 1, 1, 3])
active = exp_state in rundir.ACTIVE_STATES
if c1.button("Stop", key="exp_stop", disabled=not active and exp_state != "interrupted", icon=":material/stop:"):
    with guard("Stopping"):
        with st.spinner("Stopping: every member finishes its batch and saves a checkpoint..."):
            ex.stop_experiment(exp_id)
        st.rerun()
progress = data.get("progress") or {}
finished = exp_state == "completed" and (progress.get("counts") or {}).get("completed") == progress.get("total")
if c2.button("Resume", key="exp_resume", disabled=active or finished, icon=":material/play_arrow:"):
    with guard("Resuming"):
        ex.resume_experiment(exp_id)
        st.rerun()
confirm = c4.checkbox("Yes, delete this experiment and its member runs", key="exp_delete_confirm")
if c3.button("Delete", key="exp_delete", disabled=not confirm or active, icon=":material/delete:"):
    with guard("Deleting"):
        ex.delete_experiment(exp_id)
        state.watch_experiment(None)
        st.rerun()

with guard("Drawing the results"):
    if active:
        view.live(exp_id)
    else:
        view.progress(data)
        view.results_view(data, "exp")
        view.downloads(data)

with st.expander("Members"):
    with guard("Listing the members"):
        if data.get("members"):
            st.dataframe(results.member_table(data), hide_index=True, key="exp_members")
        else:
            st.caption("The members are created once the source is ready.")
