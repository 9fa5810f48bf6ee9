"""DatasetConfig -> PreparedData: read, select classes, split, pick K per class, shape, normalise.

The order matters and is fixed:
1. read the raw labelled images (registry reader), keep the chosen classes (relabelled 0..k-1);
2. decode or check files, dropping unreadable ones (named in the warnings) *before* any
   counting, so K per class is exact;
3. split: the dataset's own val split if it has one, else a stratified `val_fraction` of the
   training data; the validation set does not depend on K, so runs with different K compare on
   the same images; then K training images per class from the rest;
4. shape to the source's input (channels, resize to cover + centre crop, pad) and normalise.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .. import progress
from ..errors import DatasetError, KTError
from ..settings import checked_path, confine_path, get_settings
from . import cache
from .containers import PreparedData, Split, TensorSplit, split_labels
from .raw import RawData, RawSplit, describe_skipped
from .selection import (carve_test, check_classes, few_shot, resolve_classes, select_classes, stratified_split,
                        test_fraction)
from .sources import DATASETS, LoadRequest
from .transforms import (IMAGENET_NORMALIZATION, Geometry, Normalization, adapt_normalization, dataset_statistics,
                         denormalize, fit_pil, fit_tensor, make_augment, normalize, resolve_geometry)
from . import torchvision_sets  # noqa: F401  (registers torchvision's datasets)

log = logging.getLogger(__name__)

IN_MEMORY_MAX_IMAGES = 100_000  # more images than this stay on disk behind a DataLoader
IN_MEMORY_MAX_SIDE = 64  # image files are decoded into memory when shaped to at most this side
IN_MEMORY_MAX_BYTES = 2 << 30  # float32 tensors of all splits together
STATS_SAMPLE = 512  # images decoded to estimate a lazy dataset's mean/std
IMBALANCE_RATIO = 1.5  # largest / smallest training class above this: warn
TINY_VAL = 50  # fewer validation images than this: accuracy steps of 2 % or more
UPSCALE_WARN = 4.0  # images enlarged this many times or more: blurry, and slow for nothing


# --- lazy splits -----------------------------------------------------------------------------

class ImageDataset(Dataset):
    """A split decoded per item (big images, or too many to hold): for a DataLoader with workers."""

    def __init__(self, raw: RawSplit, geometry: Geometry, normalization: Normalization | None):
        self.raw, self.geometry, self.normalization = raw, geometry, normalization
        self.targets = raw.labels

    def __len__(self) -> int:
        return len(self.raw)

    def image(self, i: int) -> torch.Tensor:
        """Image i as floats in [0,1], shaped but not normalised."""
        if self.raw.images is not None:
            return fit_tensor(self.raw.images[i:i + 1], self.geometry)[0]
        try:
            decoded = fit_pil(self.raw.open(i), self.geometry)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"cannot decode {self.raw.name(i)}: {exc}",
                               "the file changed or is damaged since the dataset was checked; remove it") from None
        return fit_tensor(decoded[None], self.geometry)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return normalize(self.image(i)[None], self.normalization)[0], int(self.raw.labels[i])


# --- the pipeline ----------------------------------------------------------------------------

def load_dataset(cfg, input_size=None, normalization=None, roots: tuple[Path, ...] | None = None,
                 framing: float | None = None) -> PreparedData:
    """Prepare `cfg` (a DatasetConfig) for a model of `input_size` (C,H,W) whose weights expect
    `normalization` ((mean,), (std,)) or None. `roots` set: server paths must lie under them.
    `framing`: the share of the frame the source's images filled (`resolve_geometry`)."""
    cfg.validate()
    entry = DATASETS.entry(cfg.name)
    root = _resolve_root(cfg, entry.meta, roots)
    req = LoadRequest(root=root, options=dict(cfg.options), download=cfg.download, roots=roots,
                      cache_dir=get_settings().cache_dir)
    input_size = tuple(int(v) for v in input_size) if input_size else None
    normalization = _plain_normalization(normalization)

    fingerprint = entry.obj.fingerprint(req)
    key = None
    if fingerprint is not None:
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("download", "root")}
        key = cache.cache_key([cfg.name, str(root), fingerprint, settings, input_size, normalization, framing])
        payload = cache.load_cached(key)
        if payload is not None:
            log.info("dataset %s: loaded from cache %s", cfg.name, cache.cache_file(key))
            return _from_payload(payload, cfg)

    raw = entry.obj.load(req)
    data = prepare(raw, cfg, input_size, normalization, flip=raw.flip, framing=framing,
                   convention=float(entry.meta.get("framing") or 1.0))
    if key is not None and _in_memory(data):
        cache.save_cached(key, _to_payload(data))
    return data


def prepare(raw: RawData, cfg, input_size=None, normalization=None, flip: bool = False,
            framing: float | None = None, convention: float = 1.0) -> PreparedData:
    """The selection and transform steps on already-read data (no cache, no registry).
    `convention`: the share of the frame this dataset's own content fills (registry `framing`)."""
    warnings = list(raw.warnings)
    raw = select_classes(raw, resolve_classes(cfg.classes, raw.class_names))
    native, max_side = _native_size(raw)
    geometry = resolve_geometry(cfg, input_size, native, framing, convention)
    total = sum(len(s) for s in raw.splits.values())
    # files are decoded once into memory when the result is small (decoding is the slow part:
    # once beats every epoch); big results stay lazy behind a DataLoader
    files_in_memory = max(geometry.size) <= IN_MEMORY_MAX_SIDE
    bytes_needed = total * 4 * geometry.channels * geometry.size[0] * geometry.size[1]
    in_memory = bytes_needed <= IN_MEMORY_MAX_BYTES and total <= IN_MEMORY_MAX_IMAGES and (
        files_in_memory or all(s.images is not None for s in raw.splits.values()))

    splits = {name: _materialize(split, name, geometry, in_memory, warnings) for name, split in raw.splits.items()}
    pool = splits["train"]
    check_classes(pool, raw.class_names)

    test, test_origin = splits.get("test"), "dataset" if "test" in splits else None
    carve = test_fraction(cfg, "test" in splits, "val" in splits)
    if carve > 0:  # before the validation split: nothing that chooses a checkpoint ever sees it
        rest_idx, test_idx = carve_test(pool.labels, carve, cfg.seed)
        pool, test, test_origin = pool.subset(rest_idx), pool.subset(test_idx), "carved"

    if "val" in splits:
        train, val = pool, splits["val"]
    elif cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(pool.labels, cfg.val_fraction, cfg.seed)
        train, val = pool.subset(train_idx), pool.subset(val_idx)
    else:
        train, val = pool, None
    unlabelled = None
    if cfg.per_class:
        chosen = few_shot(train.labels, cfg.per_class, cfg.seed, raw.class_names)
        if getattr(cfg, "unlabelled", False):
            # The rest of the training pool, its labels hidden (-1) here, so no later step can
            # use them: only a distillation term (a teacher's outputs) learns from these images.
            rest = torch.ones(len(train), dtype=torch.bool)
            rest[chosen] = False
            unlabelled = train.subset(torch.nonzero(rest).flatten())
            unlabelled.labels = torch.full_like(unlabelled.labels, -1)
        train = train.subset(chosen)

    parts = {"train": train, "val": val, "test": test, "unlabelled": unlabelled}
    if in_memory:
        shaped = {name: fit_tensor(s.images, geometry) for name, s in parts.items() if s is not None}
        norm = _resolve_normalization(cfg.normalize, normalization, geometry.channels, lambda: shaped["train"])
        out = {name: TensorSplit(normalize(x, norm), parts[name].labels) for name, x in shaped.items()}
    else:
        probe = ImageDataset(train, geometry, None)
        norm = _resolve_normalization(cfg.normalize, normalization, geometry.channels, lambda: _sample(probe))
        out = {name: ImageDataset(s, geometry, norm) for name, s in parts.items() if s is not None}

    data = PreparedData(train=out["train"], val=out.get("val"), test=out.get("test"), unlabelled=out.get("unlabelled"),
                        class_names=list(raw.class_names),
                        input_size=geometry.input_size, normalization=norm, augment=cfg.augment, warnings=warnings,
                        name=cfg.name, flip=flip, native_size=native, test_origin=test_origin,
                        framing=geometry.framing(convention), content_size=geometry.content[0])
    data.warnings += _quality_warnings(data, native, geometry, cfg)
    for w in data.warnings:
        log.info("dataset %s: %s", cfg.name, w)  # callers show data.warnings themselves
    return data


# --- steps -----------------------------------------------------------------------------------

def _resolve_root(cfg, meta: dict, roots) -> Path | None:
    if not cfg.root:
        if meta.get("needs_root"):
            raise DatasetError(f"dataset {cfg.name!r} reads files and no root was given",
                               "give the file or folder as root (CLI: --root PATH)")
        return None
    if roots is not None:
        return confine_path(cfg.root, roots)
    try:
        return checked_path(cfg.root, "dataset root").resolve()
    except (OSError, RuntimeError):
        raise DatasetError(f"dataset root {cfg.root} cannot be resolved (a symlink loop or an unreadable link)",
                           "give a real file or folder") from None


def _plain_normalization(norm) -> Normalization | None:
    if norm is None:
        return None
    try:
        mean, std = norm
        return tuple(float(v) for v in np.atleast_1d(mean)), tuple(float(v) for v in np.atleast_1d(std))
    except (TypeError, ValueError):
        raise DatasetError(f"normalization {norm!r} is not (mean, std)", "give ((m1, ...), (s1, ...)) or None") from None


def _native_size(raw: RawData) -> tuple[tuple[int, int, int] | None, int | None]:
    """(C,H,W) of the images when they share one size, and the largest side seen."""
    train = raw.splits["train"]
    if train.images is not None:
        c, h, w = train.images.shape[1:]
        return (int(c), int(h), int(w)), max(int(h), int(w))
    sizes = set()
    reader = train.reader
    for i in range(min(16, len(train))):  # headers only: cheap even for big photos
        try:
            mode, w, h = reader.size(int(train.index[i])) if hasattr(reader, "size") else _pil_size(train.open(i))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # reported when the file is checked
        sizes.add((1 if mode in ("1", "L", "I", "I;16", "F") else 3, h, w))
    if not sizes:
        return None, None
    max_side = max(max(h, w) for _, h, w in sizes)
    if len(sizes) == 1:
        return next(iter(sizes)), max_side
    return None, max_side  # mixed sizes: no native size; the source's input size decides


def _pil_size(img: Image.Image) -> tuple[str, int, int]:
    return img.mode, img.width, img.height


def _materialize(split: RawSplit, name: str, geometry: Geometry, in_memory: bool, warnings: list[str]) -> RawSplit:
    """Decode files into a tensor (in memory) or check them (lazy); drop and report bad ones."""
    if split.images is not None:
        return split
    good, bad = [], []
    # Decoded straight into one tensor: a list of per-image tensors stacked at the end held the
    # pixels twice, and its thousands of small blocks stayed in the process's heap after it (B28
    # measures the whole preparation against the dataset's size).
    images = torch.empty((len(split) if in_memory else 0, geometry.channels, *geometry.content), dtype=torch.uint8)
    with progress.task(f"{'decoding' if in_memory else 'checking'} {name} images", len(split)) as shown:
        for i in range(len(split)):
            try:
                if in_memory:
                    images[len(good)] = fit_pil(split.open(i), geometry)
                else:
                    reason = split.reader.check(int(split.index[i])) if hasattr(split.reader, "check") else None
                    if reason:
                        raise OSError(reason)
                good.append(i)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                bad.append((split.name(i), str(exc) or type(exc).__name__))
            shown.advance()
    if bad:
        warnings.append(describe_skipped(f"unreadable images in {name}", bad))
    kept = split.subset(torch.tensor(good, dtype=torch.long))
    if in_memory:  # without the rows of the files dropped (a copy only when there were any)
        kept = RawSplit(kept.labels, images if len(good) == len(split) else images[:len(good)].clone(),
                        names=kept.names)
    return kept


def _sample(dataset: ImageDataset) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(dataset), generator=gen)[:STATS_SAMPLE].tolist()
    return torch.stack([dataset.image(i) for i in idx])


def _resolve_normalization(mode: str, source: Normalization | None, channels: int, train_images) -> Normalization | None:
    if mode == "none":
        return None
    if mode == "imagenet":
        return adapt_normalization(IMAGENET_NORMALIZATION, channels)
    if mode == "source" or (mode == "auto" and source is not None):
        if source is None:
            raise DatasetError("normalize is 'source' but the source model has no known normalization",
                               "use normalize auto (dataset statistics), dataset, imagenet or none")
        return adapt_normalization(source, channels)
    return dataset_statistics(train_images())  # "dataset", or "auto" without a source


def _quality_warnings(data: PreparedData, native, geometry: Geometry, cfg) -> list[str]:
    out = []
    counts = data.counts()
    train = counts["train"]
    if min(train) and max(train) / min(train) > IMBALANCE_RATIO:
        big, small = train.index(max(train)), train.index(min(train))
        out.append(f"class imbalance: {data.class_names[big]!r} has {max(train)} training images, "
                   f"{data.class_names[small]!r} only {min(train)}; consider per_class to balance it")
    if data.val is None:
        out.append("no validation split (val_fraction is 0): accuracy during training is not measured")
    elif len(data.val) < TINY_VAL:
        out.append(f"tiny validation set: {len(data.val)} images, so validation accuracy moves in steps of "
                   f"{100 / max(len(data.val), 1):.1f} %; raise val_fraction or use more images")
    if native and native[1]:
        factor = min(geometry.content[0] / native[1], geometry.content[1] / native[2])
        if factor >= UPSCALE_WARN:
            out.append(f"images are upscaled {factor:.1f}x from {native[1]}x{native[2]} to "
                       f"{geometry.content[0]}x{geometry.content[1]}: the source expects much bigger images; "
                       "expect blur and slow epochs (a source for small images may suit better)")
    return out


def _in_memory(data: PreparedData) -> bool:
    return all(isinstance(s, TensorSplit) for s in data.splits(unlabelled=True).values())


def _to_payload(data: PreparedData) -> dict[str, Any]:
    return {
        "splits": {name: {"x": s.x, "y": s.y} for name, s in data.splits(unlabelled=True).items()},
        "class_names": list(data.class_names),
        "input_size": list(data.input_size),
        "normalization": [list(data.normalization[0]), list(data.normalization[1])] if data.normalization else None,
        "warnings": list(data.warnings),
        "flip": data.flip,
        "native_size": list(data.native_size) if data.native_size else None,
        "test_origin": data.test_origin,
        "framing": data.framing,
        "content_size": data.content_size,
    }


def _from_payload(payload: dict[str, Any], cfg) -> PreparedData:
    splits = {name: TensorSplit(s["x"], s["y"]) for name, s in payload["splits"].items()}
    norm = payload["normalization"]
    return PreparedData(
        train=splits["train"], val=splits.get("val"), test=splits.get("test"), unlabelled=splits.get("unlabelled"),
        class_names=list(payload["class_names"]),
        input_size=tuple(payload["input_size"]), normalization=(tuple(norm[0]), tuple(norm[1])) if norm else None,
        augment=cfg.augment, warnings=list(payload["warnings"]), name=cfg.name, flip=bool(payload["flip"]),
        native_size=tuple(payload["native_size"]) if payload["native_size"] else None, from_cache=True,
        test_origin=payload.get("test_origin"), framing=payload.get("framing", 1.0),
        content_size=payload.get("content_size"))


# --- what the Dataset page and the CLI show --------------------------------------------------

def preview(split: Split, class_names: list[str], per_class: int = 8, normalization: Normalization | None = None,
            augment=None, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """Up to `per_class` images of every class, grouped by class in `class_names` order, as
    (uint8 pixels, class name): HxW for grayscale, HxWx3 for colour, un-normalised, ready for
    `st.image` or `PIL.Image.fromarray`.

    `normalization` is the data's (`PreparedData.normalization`), to undo it. `augment` shows an
    augmentation's effect: a callable from `PreparedData.augmenter()` (applied before undoing
    the normalisation, as in training) or a preset name ("light", "standard").
    """
    labels = split_labels(split)
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in range(len(class_names)):
        members = torch.nonzero(labels == c).flatten()
        chosen += members[torch.randperm(len(members), generator=gen)[:per_class]].tolist()
    if not chosen:
        return []
    x = split.x[chosen] if isinstance(split, TensorSplit) else torch.stack([split[i][0] for i in chosen])
    if callable(augment):
        x = augment(x)
    x = denormalize(x.clone(), normalization)
    if isinstance(augment, str):  # a preset on [0,1] pixels: no normalisation to know
        augmenter = make_augment(augment, tuple(x.shape[1:]), None, flip=True, generator=gen)
        x = augmenter(x) if augmenter else x
    pixels = (x * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [(image[:, :, 0] if image.shape[2] == 1 else image, class_names[int(labels[i])])
            for image, i in zip(pixels, chosen)]


def available_datasets(root: str | Path | None = None) -> list[dict[str, Any]]:
    """Every registered dataset with its facts and whether it can be used offline right now
    (`present`: True/False, or None when it needs a path to tell)."""
    rows = []
    for entry in DATASETS:
        meta = entry.meta
        try:
            present = entry.obj.present(Path(root) if root else None)
        except (OSError, KTError):
            present = False
        rows.append({"name": entry.name, "description": meta.get("description", ""),
                     "num_classes": meta.get("num_classes"), "image_size": meta.get("image_size"),
                     "channels": meta.get("channels"), "offline": meta.get("offline", False),
                     "needs_root": meta.get("needs_root", False), "has_test": meta.get("has_test", False),
                     "present": present})
    return rows
