"""Dataset: the target data, which classes, how many labelled images, and how it is shaped."""

import dataclasses

import streamlit as st
import torch

from kt_core.config import AUGMENT_CHOICES, NORMALIZE_CHOICES, DatasetConfig
from kt_core.errors import KTError
from kt_core.settings import get_settings
from ui import dataset_view, source_view, state
from ui.errors import guard
from ui.images import grid_by_class

st.title("Dataset")
st.caption("The target task. Transfer pays off most when labels are scarce: try a few images per class.")
current = state.get_dataset()

with guard("Listing datasets") as listing:
    from kt_core.data import available_datasets
    catalog = {d["name"]: d for d in available_datasets()}
if not listing.ok:
    st.stop()

ORIGINS = {"registered": "A dataset, or your files on the server", "upload": "Upload a zip (ImageFolder)"}
saved_origin = state.get_extra("dataset_origin", "registered")
origin = st.radio("Data", list(ORIGINS), format_func=ORIGINS.get, horizontal=True, key="dataset_origin",
                  index=list(ORIGINS).index(saved_origin) if saved_origin in ORIGINS else 0)
cfg = dataclasses.replace(current)
if origin != saved_origin:
    # Switching between a dataset and an upload: each keeps its own choice, so going back to
    # "A dataset" restores the one picked before, never the internal path of the uploaded zip.
    state.set_extra(f"dataset_{saved_origin}", dataclasses.asdict(cfg))
    earlier = state.get_extra(f"dataset_{origin}")
    cfg = DatasetConfig(**earlier) if earlier else DatasetConfig()
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith("dataset_")
                and k not in ("dataset_origin", "dataset_zip")]:
        del st.session_state[key]  # the widgets below start from the restored choice
    state.set_extra("dataset_origin", origin)
    if origin == "registered":
        state.set_dataset(cfg)
if origin == "registered":
    names = list(catalog)
    cfg.name = st.selectbox("Dataset", names, index=names.index(cfg.name) if cfg.name in names else 0,
                            key="dataset_name", format_func=lambda n: f"{n}{' (not present offline)' if catalog[n].get('present') is False else ''}")
    info = catalog[cfg.name]
    st.caption(info.get("description", ""))
    if info.get("needs_root") or not info.get("offline", True):
        cfg.root = st.text_input("Path on the server", value=cfg.root or "", key="dataset_root",
                                 help="Confined to " + ", ".join(map(str, get_settings().allowed_roots))).strip() or None
        if not info.get("offline", True):
            cfg.download = st.checkbox("Download when missing (needs internet)", value=cfg.download,
                                       key="dataset_download")
        if not cfg.root and info.get("needs_root"):
            st.info("Give the path of your files: an image folder tree (class/image), MNIST IDX files, "
                    "an .npz or a CSV manifest (path,label), matching the format chosen above.")
            st.stop()
    else:
        cfg.root = None
elif origin == "upload":
    uploaded = st.file_uploader("A .zip of class folders (class_name/image.png)", type=["zip"], key="dataset_zip")
    if uploaded is not None:
        cfg.name, cfg.root = "zip", str(source_view.save_upload(uploaded))
        state.set_extra("dataset_upload_name", uploaded.name)
    elif cfg.name == "zip" and cfg.root:  # uploaded earlier (a refresh forgets the widget, not the file)
        st.caption(f"Using the zip uploaded earlier: **{state.get_extra('dataset_upload_name', 'upload')}**. "
                   "Upload another to replace it.")
    else:
        st.stop()

try:  # shape the images for the chosen source, as training will
    input_size = source_view.load(state.get_source()).input_size
except KTError as exc:
    input_size = None
    st.caption(f"Images are shown at their own size: the source could not be loaded ({exc.message}).")
with guard("Reading the dataset") as reading:
    everything = dataset_view.load(dataclasses.replace(cfg, classes=None, per_class=None), input_size)
if not reading.ok:
    st.stop()
all_classes = list(everything.class_names)

c1, c2, c3 = st.columns([3, 1, 1])
chosen = c1.multiselect("Classes (empty = all)", all_classes, key="dataset_classes",
                        default=[c for c in (cfg.classes or []) if c in all_classes])
cfg.classes = chosen or None
k = int(c2.number_input("Labelled images per class (0 = all)", 0, 100000, cfg.per_class or 0, key="dataset_k"))
cfg.per_class = k or None
cfg.val_fraction = float(c3.slider("Validation share", 0.0, 0.5, cfg.val_fraction, 0.05, key="dataset_val"))
c1, c2, c3 = st.columns(3)
cfg.augment = c1.selectbox("Augmentation", AUGMENT_CHOICES, AUGMENT_CHOICES.index(cfg.augment), key="dataset_augment")
cfg.normalize = c2.selectbox("Normalisation", NORMALIZE_CHOICES, NORMALIZE_CHOICES.index(cfg.normalize),
                             key="dataset_normalize")
cfg.seed = int(c3.number_input("Seed (few-shot choice and split)", 0, 2**31 - 1, cfg.seed, key="dataset_seed"))

with guard("Preparing the selection") as preparing:
    data = dataset_view.load(cfg, input_size)
if not preparing.ok:
    st.stop()
state.set_dataset(cfg)

counts = data.counts()
c, h, w = data.input_size
st.markdown(f"**{len(data.class_names)} classes** · images **{h}×{w}**, **{c}** channel(s)"
            + (f" (matched to the source's input {tuple(input_size)})" if input_size else ""))
for warning in data.warnings:
    st.warning(warning)
left, right = st.columns([2, 1])
left.plotly_chart(dataset_view.histogram(counts, data.class_names), key="dataset_histogram")
right.dataframe(dataset_view.size_table(counts), hide_index=True)

st.markdown(f"**Preview** (training images after transforms{', augmentation shown' if cfg.augment != 'none' else ''})")
with guard("Drawing the preview"):
    from kt_core.data import preview

    augment = data.augmenter(torch.Generator().manual_seed(cfg.seed)) if cfg.augment != "none" else None
    grid_by_class(preview(data.train, data.class_names, per_class=8, normalization=data.normalization,
                          augment=augment, seed=cfg.seed))
st.page_link("app_pages/train.py", label="Next: train", icon=":material/arrow_forward:")
