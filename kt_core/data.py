"""Target datasets: the façade other modules import.

`load_dataset(cfg, input_size, normalization, roots)` turns a `DatasetConfig` into
`PreparedData`: the chosen classes (relabelled 0..k-1), K images per class, a stratified
train/val split, the dataset's own test split, shaped and normalised for the source model.
The readers, selection, transforms and cache live in `kt_core.datasets`; this module keeps the
public names stable.
"""

from __future__ import annotations

from .datasets.containers import PreparedData, Split, TensorSplit, iter_batches, loader_workers, split_labels
from .datasets.idx import read_idx
from .datasets.prepare import (IN_MEMORY_MAX_BYTES, IN_MEMORY_MAX_IMAGES, IN_MEMORY_MAX_SIDE, ImageDataset,
                               available_datasets, load_dataset, prepare, preview)
from .datasets.raw import IMG_EXTENSIONS, RawData, RawSplit
from .datasets.selection import few_shot, resolve_classes, stratified_split
from .datasets.sources import DATASETS, DatasetSource, LoadRequest
from .datasets.synthetic import SHAPES, generate_shapes
from .datasets.torchvision_sets import TORCHVISION_SETS
from .datasets.transforms import AUGMENTS, IMAGENET_NORMALIZATION, make_augment

__all__ = [
    "AUGMENTS", "DATASETS", "DatasetSource", "IMAGENET_NORMALIZATION", "IMG_EXTENSIONS", "IN_MEMORY_MAX_BYTES",
    "IN_MEMORY_MAX_IMAGES", "IN_MEMORY_MAX_SIDE", "ImageDataset", "LoadRequest", "PreparedData", "RawData", "RawSplit",
    "SHAPES", "Split", "TORCHVISION_SETS", "TensorSplit", "available_datasets", "few_shot", "generate_shapes",
    "iter_batches", "load_dataset", "loader_workers", "make_augment", "prepare", "preview", "read_idx", "resolve_classes",
    "split_labels", "stratified_split",
]
