"""Train: the setup being drafted (hyperparameters, Start), then the run being watched, apart."""

import json
import time

import streamlit as st

from kt_core import defaults, drafts, launcher, rundir
from kt_core.config import PRECISIONS, TrainConfig, field_error
from kt_core.optim import OPTIMIZERS, SCHEDULERS
from ui import dataset_view, source_view, state, tasks_view
from ui.curves import ACTIVE_STATES, live_curves
from kt_core.errors import KTError
from ui.errors import error_line, guard, plain, show_error
from ui.distill_view import distill_form
from ui.system import devices, gpu_count

st.title("Train")

# --- the setup (a draft on disk: a refresh, a bookmark or a second tab opens the same one) ----
draft = state.draft()
st.subheader("Your setup")
st.caption(f"**{drafts.describe(draft.config)}**"
           f"{f' + {len(draft.config.plan.rules)} layer rules' if draft.config.plan.rules else ''}. "
           "Change the source, layers and dataset on their pages. This setup is saved as you edit it "
           f"(draft `{draft.id}`{', last saved ' + time.strftime('%H:%M:%S', time.localtime(draft.updated)) if draft.updated else ''}): "
           "bookmark this page to come back to it.")

LABELS = {"epochs": "Epochs", "batch_size": "Batch size", "lr": "Learning rate", "weight_decay": "Weight decay",
          "label_smoothing": "Label smoothing", "seed": "Seed", "early_stopping": "Early stopping patience",
          "log_every": "Log every N steps", "warmup_epochs": "Warmup epochs", "grad_clip": "Gradient clipping",
          "step_size": "Step size (epochs)", "gamma": "Gamma (decay factor)", "momentum": "Momentum"}
STEPS = {"lr": 0.0001, "weight_decay": 0.0001, "momentum": 0.01, "label_smoothing": 0.05, "warmup_epochs": 0.5,
         "grad_clip": 0.5, "gamma": 0.05}  # what the +/- buttons add
problems: dict[str, str] = {}


def checked(col, cfg: TrainConfig, name: str) -> None:
    """kt_core's verdict on one field, shown right under it; an invalid field blocks Start."""
    exc = field_error(cfg, name)
    if exc is not None:
        text = error_line(exc).replace(f"train.{name}", LABELS.get(name, name))
        problems[name] = text
        col.error(plain(text), icon=":material/error:")


def number(col, cfg: TrainConfig, name: str, cast=int, fmt: str | None = None, help=None, value=None):
    """A number field with no widget limits: what the user typed is what the form holds (a
    browser-side limit would keep the old value and launch it silently); kt_core judges it."""
    current = getattr(cfg, name) if value is None else value
    # None (epochs, early stopping on auto: kt_core.defaults) shows as an empty field
    got = col.number_input(LABELS[name], value=None if current is None else cast(current), step=STEPS.get(name, cast(1)),
                           format=fmt, key=f"train_{name}", help=help, placeholder="auto")
    return None if got is None else cast(got)


def processes(col, cfg: TrainConfig, gpus: int) -> None:
    """How many processes train the run (torchrun + DDP): "GPUs" on a machine with CUDA devices,
    CPU processes otherwise (a try-out: the same results, each process taking its share)."""
    on_gpus = bool(gpus) and (cfg.device.startswith("cuda") or cfg.device == "auto")
    label = f"GPUs (of {gpus})" if on_gpus else "Processes"
    LABELS["nproc_per_node"] = label
    got = col.number_input(label, value=int(cfg.nproc_per_node), step=1, key="train_nproc_per_node",
                           help=("One process per GPU under torchrun and DistributedDataParallel; the batch size "
                                 "stays the global batch." if on_gpus else
                                 "CPU processes under torchrun and DistributedDataParallel (gloo): the batch size "
                                 "stays the global batch, each process trains its share; the results match one "
                                 "process's. More processes than cores only slow it down."))
    cfg.nproc_per_node = 1 if got is None else int(got)
    if cfg.nproc_per_node > 1 and cfg.device.startswith("cuda:"):
        cfg.device = "cuda"  # several processes take one GPU each, not all the one named
    if on_gpus and cfg.nproc_per_node > gpus:
        problems["nproc_per_node"] = f"{label}: {cfg.nproc_per_node} is more than this machine has"
        col.error(problems["nproc_per_node"], icon=":material/error:")
    checked(col, cfg, "nproc_per_node")


def train_form(cfg: TrainConfig) -> TrainConfig:
    """The hyperparameter widgets, filled from (and returning) a TrainConfig."""
    present = [name for name, _ in devices()]
    gpus = gpu_count()
    options = ["auto"] + (["cuda"] if gpus else []) + present
    c1, c2, c3, c4 = st.columns(4)
    cfg.device = c1.selectbox("Device", options, index=options.index(cfg.device) if cfg.device in options else 0,
                              key="train_device", help="Only the devices found on this machine are offered; "
                                                       "cuda: one GPU per process.")
    processes(c1, cfg, gpus)
    cfg.epochs = number(c2, cfg, "epochs")
    checked(c2, cfg, "epochs")
    cfg.batch_size = number(c3, cfg, "batch_size")
    checked(c3, cfg, "batch_size")
    cfg.lr = number(c4, cfg, "lr", float, "%g")
    checked(c4, cfg, "lr")
    with st.expander("More hyperparameters", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        optimizers, schedulers = OPTIMIZERS.names(), SCHEDULERS.names()
        cfg.optimizer = c1.selectbox("Optimizer", optimizers, optimizers.index(cfg.optimizer), key="train_optimizer")
        if cfg.optimizer == "sgd":
            cfg.momentum = number(c1, cfg, "momentum", float, "%g")
            checked(c1, cfg, "momentum")
        cfg.scheduler = c2.selectbox("Scheduler", schedulers, schedulers.index(cfg.scheduler), key="train_scheduler",
                                     help="constant; step: multiply by gamma every step size epochs; cosine; one-cycle")
        cfg.warmup_epochs = number(c2, cfg, "warmup_epochs", float, "%g",
                                   help="Linear warmup from 0 over this many epochs (fractions allowed), then the schedule.")
        checked(c2, cfg, "warmup_epochs")
        if cfg.scheduler == "step":
            cfg.step_size = number(c2, cfg, "step_size")
            checked(c2, cfg, "step_size")
            cfg.gamma = number(c2, cfg, "gamma", float, "%g")
            checked(c2, cfg, "gamma")
        cfg.weight_decay = number(c3, cfg, "weight_decay", float, "%g")
        checked(c3, cfg, "weight_decay")
        cfg.label_smoothing = number(c3, cfg, "label_smoothing", float, "%g")
        checked(c3, cfg, "label_smoothing")
        clip = number(c3, cfg, "grad_clip", float, "%g", value=cfg.grad_clip or 0.0,
                      help="The largest gradient norm; 0 = no clipping.")
        cfg.grad_clip = clip or None
        checked(c3, cfg, "grad_clip")
        cfg.seed = number(c1, cfg, "seed")
        checked(c1, cfg, "seed")
        cfg.precision = c1.selectbox("Precision", PRECISIONS, PRECISIONS.index(cfg.precision), key="train_precision",
                                     help="bf16/fp16 mixed precision pays off on CUDA; fp32 is right for CPU.")
        patience = number(c4, cfg, "early_stopping", value=cfg.early_stopping or 0,
                          help="Stop after this many epochs without a better validation accuracy; 0 = off.")
        cfg.early_stopping = patience or None
        checked(c4, cfg, "early_stopping")
        cfg.log_every = number(c4, cfg, "log_every", help="Step rows of the live loss curve; epoch rows come anyway.")
        checked(c4, cfg, "log_every")
        cfg.feature_cache = c4.checkbox("Feature cache", cfg.feature_cache, key="train_feature_cache",
                                        help="Frozen layers run once per image instead of once per epoch.")
    return cfg


train_cfg = train_form(state.get_train())
state.set_train(train_cfg)
with st.expander("Distillation: a teacher model teaches this one", expanded=state.get_distill().mode != "off"):
    state.set_distill(distill_form(state.get_distill()))

with guard("Listing datasets for the tasks"):
    from kt_core.data import available_datasets  # the Dataset page's catalogue, for the task picker
    tasks_view.task_section({d["name"]: d for d in available_datasets()})

c1, c2 = st.columns([3, 2])
name = c1.text_input("Run name", value=state.get_extra("run_name", ""), key="train_name", placeholder="optional")
state.set_extra("run_name", name, default="")
baseline = c2.checkbox("Also train a from-scratch baseline", value=state.get_extra("baseline", True),
                       key="train_baseline", help="Same architecture, data and schedule, random weights: "
                                                  "the gap is what transfer bought you.")
state.set_extra("baseline", baseline, default=True)

# Everything Start would launch, judged once: the fields above, then the whole config.
launchable, invalid_reason = None, None
if problems:
    invalid_reason = f"{len(problems)} field(s) above need fixing first"
else:
    try:
        launchable = state.run_config(name)
    except Exception as exc:  # noqa: BLE001 - a ConfigError of another page's piece: shown, Start blocked
        invalid_reason = error_line(exc)


def setup_facts():
    """(training split size, whether the target's classes are the source's), each None when the
    source or the dataset does not load yet (their pages say why): for the auto line and hints."""
    try:
        loaded = source_view.load(state.get_source())
    except KTError:
        return None, None
    data = dataset_view.for_source(state.get_dataset(), loaded)
    if data is None:
        return None, None
    source_names = loaded.class_names
    match = None if not source_names else [str(c) for c in source_names] == [str(c) for c in data.class_names]
    return len(data.train), match


# What auto settles on and the choices known to hurt, for the setup as it would launch.
if launchable is not None:
    train_size, classes_match = setup_facts()
    if launchable.train.epochs is None:
        st.caption(f"Epochs {defaults.describe_auto(launchable, train_size)}.")
    for hint in defaults.hints(launchable, classes_match):
        st.warning(plain(hint[0].upper() + hint[1:]), icon=":material/lightbulb:")

run_id, baseline_id = state.current_run(), state.current_baseline()
status = {}
if run_id:
    try:
        rundir.run_dir(run_id)
    except KTError as exc:  # one message for a link to a run that is not here, then no run section
        st.warning(plain(f"The link names run {run_id}, which is not here ({exc.message}): it may have been "
                         "deleted. Nothing is being watched; your setup above is unaffected."),
                   icon=":material/link_off:")
        state.watch_run(None)
        run_id = baseline_id = None
if run_id:
    with guard("Reading the watched run"):
        status = rundir.read_status(run_id)
running = status.get("state") in ACTIVE_STATES

b1, b2 = st.columns([1, 5])
start_help = ("Stop the run being watched below, or stop watching it, to start another." if running
              else invalid_reason)
if b1.button("Start", type="primary", key="train_start", disabled=running or launchable is None,
             icon=":material/play_arrow:", help=start_help):
    try:
        if baseline:
            run_id, baseline_id = launcher.launch_with_baseline(launchable, confined=True)
        else:
            run_id, baseline_id = launcher.launch(launchable, confined=True), None
        state.record_launch(run_id, baseline_id)
        state.watch_run(run_id, baseline_id)
        st.rerun()
    except Exception as exc:  # a failed launch: say so, keep the page
        show_error(exc, "Could not start the run")
if invalid_reason:
    b2.error(plain(f"Start is blocked: {invalid_reason}."), icon=":material/block:")
if launchable is not None and launchable.train.world_size > 1:
    st.caption(f"Start runs {launchable.train.world_size} processes under torchrun:")
    st.code(launcher.shown_command_of(launchable.train, "runs/<new run>"), language="bash")
with st.expander("The config that Start will launch"):
    if launchable is not None:
        st.json(launchable.to_dict(), expanded=False)
    else:
        st.caption(f"Not launchable yet: {invalid_reason}.")

if not run_id:
    st.info("Press **Start** to launch a run in its own process. Curves appear here live; "
            "closing the browser never stops or slows it.")
    st.stop()

# --- the run being watched (its own config, whatever the setup above now says) ----------------
st.divider()
h1, h2, h3 = st.columns([4, 1, 1])
h1.subheader(f"Watching run {run_id}")
from_this = run_id in draft.runs
h1.caption(("Started from the setup above" if from_this else
            "Started from another setup: its own config is at the bottom, the setup above is not what it ran")
           + (" · with its from-scratch baseline" if baseline_id else "") + ".")
if h2.button("Stop", key="train_stop", disabled=not running, icon=":material/stop:"):
    with guard("Stopping"):
        with st.spinner("Stopping: the run finishes its batch and saves a checkpoint..."):
            for rid in filter(None, (run_id, baseline_id)):
                if rundir.is_active(rid):
                    launcher.stop(rid, timeout=10)
        st.rerun()
if h3.button("Stop watching", key="train_unwatch", icon=":material/visibility_off:",
             help="Detach this page from the run; it keeps training (the sidebar and Runs list it)."):
    state.watch_run(None)
    st.rerun()


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
        under_torchrun = launcher.shown_command(run_id)
        if under_torchrun:
            st.caption("It trains under torchrun, as:")
            st.code(under_torchrun, language="bash")
        st.json(json.loads(rundir.config_text(run_id)), expanded=False)
