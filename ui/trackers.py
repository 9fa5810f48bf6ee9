"""The Runs page's Trackers tab: the run in TensorBoard, and logging it into MLflow.

The export is `kt_core.mlflow_export.export_runs`, the same as `export-tracking` on the CLI. On a
server, a local store typed here (sqlite:///..., file:...) must lie under the allowed roots, as
every server path typed into the UI does; remote servers (http(s)://, databricks) are the
server's to reach.
"""

from __future__ import annotations

import os
import shlex

import streamlit as st

from kt_core import mlflow_export, rundir
from kt_core.settings import get_settings
from kt_core.tensorboard_log import INSTALL_HINT, available

from .errors import guard


def trackers(run_id: str, run_state: str) -> None:
    folder = rundir.run_dir(run_id)
    st.markdown("**TensorBoard**")
    events = rundir.tensorboard_dir(folder)
    if events.is_dir():
        st.caption("This run's event files (step and epoch scalars, the config, the confusion matrix) are in "
                   f"`{events}`. Every run of this folder, beside your other work:")
        st.code(f"tensorboard --logdir {shlex.quote(str(folder.parent))}", language="bash")
    elif not available():
        st.caption(f"No TensorBoard event files: TensorBoard is not installed here ({INSTALL_HINT}); runs "
                   "trained after installing it write them.")
    else:
        st.caption("This run has no TensorBoard event files (it trained without them: an older run, "
                   "or KT_TENSORBOARD=0).")

    st.markdown("**MLflow**")
    uri = st.text_input("Tracking URI", os.environ.get("MLFLOW_TRACKING_URI", ""), key="runs_mlflow_uri",
                        placeholder="http://mlflow.example:5000 or sqlite:///mlflow.db",
                        help="Params (the config), every metric with its step, and the model (safetensors + config).")
    experiment = st.text_input("Experiment", mlflow_export.DEFAULT_EXPERIMENT, key="runs_mlflow_experiment")
    active = run_state in rundir.ACTIVE_STATES
    if st.button("Log to MLflow", key="runs_mlflow_export", disabled=active or not uri.strip(),
                 help="A run still training is logged once it has ended." if active else None):
        with guard("Logging to MLflow"), st.spinner("Logging to MLflow..."):
            mlflow_export.confine_tracking_uri(uri.strip(), get_settings().allowed_roots)
            (done,) = mlflow_export.export_runs([folder], uri.strip(), experiment.strip() or
                                                mlflow_export.DEFAULT_EXPERIMENT)
            if done.already:
                st.info(f"Already in MLflow as run {done.mlflow_run_id} (experiment {done.experiment_id}).")
            else:
                st.success(f"Logged as MLflow run {done.mlflow_run_id}: {done.params} params, "
                           f"{done.metrics} metric values and the model.")
    st.caption("The same from a terminal:")
    st.code(f"python -m kt_core export-tracking {run_id} --mlflow {shlex.quote(uri.strip() or 'URI')}",
            language="bash")
