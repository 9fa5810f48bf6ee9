"""Train: hyperparameters, Start/Stop, live curves, log tail, config and CLI command."""

import json

import streamlit as st

from kt_core import launcher, rundir
from kt_core.config import PRECISIONS, TrainConfig
from kt_core.optim import OPTIMIZERS, SCHEDULERS
from ui import state
from ui.curves import ACTIVE_STATES, live_curves
from ui.errors import guard, show_error
from ui.system import devices

st.title("Train")
source, dataset, plan = state.get_source(), state.get_dataset(), state.get_plan()
st.caption(f"Source **{source.arch or source.path}** ({source.kind}) · dataset **{dataset.name}** "
           f"(K per class: {dataset.per_class or 'all'}) · plan **{plan.preset}**"
           f"{f' + {len(plan.rules)} layer rules' if plan.rules else ''}. "
           "Change them on the Source, Layers and Dataset pages.")


def train_form(cfg: TrainConfig) -> TrainConfig:
    """The hyperparameter widgets, filled from (and returning) a TrainConfig."""
    present = [name for name, _ in devices()]
    options = ["auto"] + present
    c1, c2, c3, c4 = st.columns(4)
    cfg.device = c1.selectbox("Device", options, index=options.index(cfg.device) if cfg.device in options else 0,
                              key="train_device", help="Only the devices found on this machine are offered.")
    cfg.epochs = int(c2.number_input("Epochs", 1, 1000, cfg.epochs, key="train_epochs"))
    cfg.batch_size = int(c3.number_input("Batch size", 1, 4096, cfg.batch_size, key="train_batch_size"))
    cfg.lr = float(c4.number_input("Learning rate", 1e-6, 10.0, cfg.lr, format="%.5f", key="train_lr"))
    with st.expander("More hyperparameters"):
        c1, c2, c3, c4 = st.columns(4)
        optimizers, schedulers = OPTIMIZERS.names(), SCHEDULERS.names()
        cfg.optimizer = c1.selectbox("Optimizer", optimizers, optimizers.index(cfg.optimizer), key="train_optimizer")
        cfg.scheduler = c2.selectbox("Scheduler", schedulers, schedulers.index(cfg.scheduler), key="train_scheduler")
        cfg.weight_decay = float(c3.number_input("Weight decay", 0.0, 1.0, cfg.weight_decay, format="%.5f",
                                                 key="train_wd"))
        cfg.label_smoothing = float(c4.number_input("Label smoothing", 0.0, 0.9, cfg.label_smoothing,
                                                    key="train_ls"))
        cfg.seed = int(c1.number_input("Seed", 0, 2**31 - 1, cfg.seed, key="train_seed"))
        cfg.precision = c2.selectbox("Precision", PRECISIONS, PRECISIONS.index(cfg.precision), key="train_precision",
                                     help="bf16/fp16 mixed precision pays off on CUDA; fp32 is right for CPU.")
        patience = int(c3.number_input("Early stopping patience (0 = off)", 0, 100, cfg.early_stopping or 0,
                                       key="train_patience"))
        cfg.early_stopping = patience or None
        cfg.log_every = int(c4.number_input("Log every N steps", 1, 10000, cfg.log_every, key="train_log_every",
                                            help="Step rows of the live loss curve; epoch rows come anyway."))
        cfg.feature_cache = c4.checkbox("Feature cache", cfg.feature_cache, key="train_feature_cache",
                                        help="Frozen layers run once per image instead of once per epoch.")
    return cfg


train_cfg = train_form(state.get_train())
state.set_train(train_cfg)
c1, c2 = st.columns([3, 2])
name = c1.text_input("Run name", value=state.recall("run_name", ""), key="train_name", placeholder="optional")
state.remember("run_name", name)
baseline = c2.checkbox("Also train a from-scratch baseline", value=state.recall("baseline", True),
                       key="train_baseline", help="Same architecture, data and schedule, random weights: "
                                                  "the gap is what transfer bought you.")
state.remember("baseline", baseline)

run_id, baseline_id = state.current_run(), state.current_baseline()
status = {}
if run_id:
    with guard("Reading the watched run"):
        status = rundir.read_status(run_id)
running = status.get("state") in ACTIVE_STATES

b1, b2, _ = st.columns([1, 1, 4])
if b1.button("Start", type="primary", key="train_start", disabled=running, icon=":material/play_arrow:"):
    try:
        cfg = state.run_config(name)
        if baseline:
            run_id, baseline_id = launcher.launch_with_baseline(cfg)
        else:
            run_id, baseline_id = launcher.launch(cfg), None
        state.watch_run(run_id, baseline_id)
        st.rerun()
    except Exception as exc:  # a bad config or a failed launch: say so, keep the page
        show_error(exc, "Could not start the run")
if b2.button("Stop", key="train_stop", disabled=not running, icon=":material/stop:"):
    with guard("Stopping"):
        with st.spinner("Stopping: the run finishes its batch and saves a checkpoint..."):
            for rid in filter(None, (run_id, baseline_id)):
                if rundir.is_active(rid):
                    launcher.stop(rid, timeout=10)
        st.rerun()

if not run_id:
    with st.expander("The config that Start will launch"):
        with guard():
            st.json(state.run_config(name).to_dict(), expanded=False)
    st.info("Press **Start** to launch a run in its own process. Curves appear here live; "
            "closing the browser never stops or slows it.")
    st.stop()

st.subheader(f"Run {run_id}")


def log_tail() -> None:
    failed = rundir.read_status(run_id).get("state") in ("failed", "interrupted")
    with st.expander("Log (last lines)", expanded=failed):
        lines = rundir.log_tail(run_id, 20)
        st.code("\n".join(lines) or "(empty)", language="text")


with guard("Drawing the curves"):
    series = [("transfer" if baseline_id else "run", run_id)]
    if baseline_id:
        series.append(("from scratch", baseline_id))
    live_curves(series, key="train_curves", extra=log_tail)

with st.expander("Config and the command that reproduces this run"):
    with guard():
        st.code(rundir.reproduce_command(run_id), language="bash")
        st.json(json.loads(rundir.config_text(run_id)), expanded=False)
