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
    loaded_source = source_view.load(state.get_source())
    input_size, framing = loaded_source.input_size, loaded_source.framing
except KTError as exc:
    input_size = framing = None
    st.caption(f"Images are shown at their own size: the source could not be loaded ({exc.message}).")
with guard("Reading the dataset") as reading:
    everything = dataset_view.load(dataclasses.replace(cfg, classes=None, per_class=None), input_size, framing)
if not reading.ok:
    st.stop()
all_classes = list(everything.class_names)

c1, c2, c3 = st.columns([3, 1, 1])
chosen = c1.multiselect("Classes (empty = all)", all_classes, key="dataset_classes",
                        default=[c for c in (cfg.classes or []) if c in all_classes])
cfg.classes = chosen or None
k = int(c2.number_input("Labelled images per class (0 = all)", 0, 100000, cfg.per_class or 0, key="dataset_k"))
cfg.per_class = k or None
keep_rest = st.checkbox(
    "Keep the rest of the training images as unlabelled (for a teacher)", value=cfg.unlabelled and bool(k),
    disabled=not k, key="dataset_unlabelled",
    help="With K per class, the other training images join training with their labels hidden: only a "
         "distillation term (Train page) learns from them.")
cfg.unlabelled = bool(keep_rest and cfg.per_class)
cfg.val_fraction = float(c3.slider("Validation share", 0.0, 0.5, cfg.val_fraction, 0.05, key="dataset_val"))
c1, c2, c3 = st.columns(3)
cfg.augment = c1.selectbox("Augmentation", AUGMENT_CHOICES, AUGMENT_CHOICES.index(cfg.augment), key="dataset_augment")
cfg.normalize = c2.selectbox("Normalisation", NORMALIZE_CHOICES, NORMALIZE_CHOICES.index(cfg.normalize),
                             key="dataset_normalize")
cfg.seed = int(c3.number_input("Seed (few-shot choice and split)", 0, 2**31 - 1, cfg.seed, key="dataset_seed"))
c1, c2, c3 = st.columns(3)
size = c1.number_input("Image size (empty = the source's input)", 1, 1024, cfg.image_size, key="dataset_image_size",
                       placeholder="the source's")
cfg.image_size = int(size) if size is not None else None
content = c2.number_input("Content size (empty = framed as the source's images)", 1, 1024, cfg.content_size,
                          key="dataset_content_size", placeholder="auto",
                          help="Images are resized to this side, then padded to the image size: MNIST frames its "
                               "digits 20-in-28. Auto follows how the source's training images were framed (a "
                               "source run records it); the same size as the image fills the frame.")
cfg.content_size = int(content) if content is not None else None
test_share = c3.slider("Held-out test share (when the dataset has no test split)", 0.0, 0.4,
                       0.2 if cfg.test_fraction is None else cfg.test_fraction, 0.05, key="dataset_test",
                       help="Carved out before the validation split; the headline figure is measured on it.")
cfg.test_fraction = None if cfg.test_fraction is None and test_share == 0.2 else float(test_share)

with guard("Preparing the selection") as preparing:
    data = dataset_view.load(cfg, input_size, framing)
if not preparing.ok:
    st.stop()
state.set_dataset(cfg)

counts = data.counts()
c, h, w = data.input_size
st.markdown(f"**{len(data.class_names)} classes** · images **{h}×{w}**, **{c}** channel(s)"
            + (f" (matched to the source's input {tuple(input_size)})" if input_size else "")
            + (f" · content **{data.content_size}×{data.content_size}**, padded" if data.content_size
               and data.content_size < h else "")
            + (" (framed as the source's images)" if cfg.content_size is None and framing and framing < 1 else ""))
if data.test_origin == "carved":
    st.caption(f"A test split of {len(data.test)} images is held out of the labelled data (stratified, before the "
               "validation split): the run's headline figure is measured on it, never on the split that chose "
               "the checkpoint.")
elif data.test_origin == "dataset":
    st.caption("The dataset's own test split is held out: the run's headline figure is measured on it.")
for warning in data.warnings:
    st.warning(warning)
left, right = st.columns([2, 1])
left.plotly_chart(dataset_view.histogram(counts, data.class_names), key="dataset_histogram")
right.dataframe(dataset_view.size_table(counts, len(data.unlabelled) if data.unlabelled is not None else None),
                hide_index=True)
if data.unlabelled is not None:
    right.caption(f"**{len(data.unlabelled)} unlabelled** training images (labels hidden) feed only a teacher's "
                  "term: turn distillation on on the Train page.")

st.markdown(f"**Preview** (training images after transforms{', augmentation shown' if cfg.augment != 'none' else ''})")
with guard("Drawing the preview"):
    from kt_core.data import preview

    augment = data.augmenter(torch.Generator().manual_seed(cfg.seed)) if cfg.augment != "none" else None
    grid_by_class(preview(data.train, data.class_names, per_class=8, normalization=data.normalization,
                          augment=augment, seed=cfg.seed))
st.page_link("app_pages/train.py", label="Next: train", icon=":material/arrow_forward:")
