"""torchvision's built-in datasets, registered from one table.

Online they download with `download=true`; offline they read `root`, and when the files are
missing the error names the folder and the files torchvision looks for, instead of torchvision's
bare "Dataset not found".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError
from ..settings import get_settings
from .raw import RawData, RawSplit, file_fingerprint
from .sources import DATASETS, OFFLINE_HINT, DatasetSource, LoadRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchvisionSet:
    cls: str  # class name in torchvision.datasets
    folder: str  # where under root torchvision keeps the files
    expects: str  # the files, in words, for the offline message
    splits: dict[str, dict[str, Any]]  # our split name -> constructor kwargs
    num_classes: int
    image_size: int | None
    channels: int
    flip: bool
    description: str
    marker: str = ""  # a path under root whose presence means "downloaded" (default: folder)
    transpose: bool = False  # EMNIST's arrays are stored transposed
    extra: dict[str, Any] = field(default_factory=dict)  # constructor kwargs from options, with defaults
    framing: float = 1.0  # share of the frame the content fills (MNIST: 20-in-28)


_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
# MNIST's digits were size-normalised to a 20x20 box and centred in the 28x28 frame (LeCun et al.)
MNIST_FRAMING = 20 / 28
_MNIST_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"

TORCHVISION_SETS = {
    "MNIST": TorchvisionSet("MNIST", "MNIST/raw", _MNIST_FILES, _TRAIN_TEST, 10, 28, 1, False,
                            "MNIST handwritten digits, 60k/10k 28x28 (torchvision)", framing=MNIST_FRAMING),
    "FashionMNIST": TorchvisionSet("FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, _TRAIN_TEST, 10, 28, 1, False,
                                   "Fashion-MNIST clothing, 60k/10k 28x28 (torchvision)"),
    "KMNIST": TorchvisionSet("KMNIST", "KMNIST/raw", _MNIST_FILES, _TRAIN_TEST, 10, 28, 1, False,
                             "Kuzushiji-MNIST cursive Japanese, 60k/10k 28x28 (torchvision)"),
    "EMNIST": TorchvisionSet("EMNIST", "EMNIST/raw", "emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte",
                             _TRAIN_TEST, 47, 28, 1, False,
                             "EMNIST letters and digits, 28x28; option split=balanced|byclass|bymerge|digits|letters|mnist",
                             transpose=True, extra={"split": "balanced"}),
    "CIFAR10": TorchvisionSet("CIFAR10", "cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta",
                              _TRAIN_TEST, 10, 32, 3, True, "CIFAR-10, 50k/10k 32x32 colour (torchvision)"),
    "CIFAR100": TorchvisionSet("CIFAR100", "cifar-100-python", "train, test, meta", _TRAIN_TEST, 100, 32, 3, True,
                               "CIFAR-100, 50k/10k 32x32 colour (torchvision)"),
    "SVHN": TorchvisionSet("SVHN", "", "train_32x32.mat and test_32x32.mat directly in the root",
                           {"train": {"split": "train"}, "test": {"split": "test"}}, 10, 32, 3, False,
                           "Street View House Numbers, 73k/26k 32x32 colour (torchvision)", marker="train_32x32.mat"),
    "STL10": TorchvisionSet("STL10", "stl10_binary", "train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt",
                            {"train": {"split": "train"}, "test": {"split": "test"}}, 10, 96, 3, True,
                            "STL-10, 5k/8k 96x96 colour (torchvision)"),
    "Flowers102": TorchvisionSet("Flowers102", "flowers-102", "jpg/, imagelabels.mat, setid.mat",
                                 {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                                 102, None, 3, True, "Oxford 102 Flowers, photos of varying size (torchvision)"),
    "OxfordIIITPet": TorchvisionSet("OxfordIIITPet", "oxford-iiit-pet", "images/, annotations/",
                                    {"train": {"split": "trainval"}, "test": {"split": "test"}}, 37, None, 3, True,
                                    "Oxford-IIIT Pets, 37 breeds, photos of varying size (torchvision)"),
}


def _root(req_root: Path | None) -> Path:
    return req_root if req_root is not None else get_settings().cache_dir / "torchvision"


def _labels(ds) -> torch.Tensor:
    for attr in ("targets", "labels", "_labels"):
        values = getattr(ds, attr, None)
        if values is not None:
            return torch.as_tensor(np.asarray(values), dtype=torch.long)
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.long)


class _ItemReader:
    """Image i of a torchvision dataset (a picklable callable, for DataLoader workers)."""

    def __init__(self, ds):
        self.ds = ds

    def __call__(self, i: int):
        return self.ds[i][0]


def _as_raw_split(ds, spec: TorchvisionSet) -> RawSplit:
    labels = _labels(ds)
    data = getattr(ds, "data", None)
    if data is None or isinstance(data, list):  # file-based (Flowers102, Pets): decode on demand
        return RawSplit(labels, reader=_ItemReader(ds), names=[f"{spec.cls}[{i}]" for i in range(len(ds))])
    x = torch.as_tensor(np.asarray(data))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if spec.transpose:
        x = x.transpose(2, 3)
    return RawSplit(labels, x.contiguous().to(torch.uint8))


def _loader(name: str, spec: TorchvisionSet):
    def load(req: LoadRequest) -> RawData:
        import torchvision.datasets  # here, not at the top: torchvision costs ~1.5 s to import

        root = _root(req.root)
        cls = getattr(torchvision.datasets, spec.cls)
        kwargs = {k: req.options.get(k, v) for k, v in spec.extra.items()}
        splits, class_names = {}, None
        for split, split_kwargs in spec.splits.items():
            try:
                ds = cls(root=str(root), download=req.download, **split_kwargs, **kwargs)
            except (RuntimeError, OSError, ValueError) as exc:  # "Dataset not found", network errors
                where = f"{root} (torchvision looks for {spec.folder + '/ with ' if spec.folder else ''}{spec.expects})"
                if req.download:
                    raise DatasetError(f"could not download {name} into {root}: {exc}",
                                       f"check the network, or copy the files into {where}; "
                                       f"or use {OFFLINE_HINT}") from None
                raise DatasetError(f"{name} is not in {where}",
                                   f"set download=true (--download) when online, copy the files there, "
                                   f"or use {OFFLINE_HINT}") from None
            splits[split] = _as_raw_split(ds, spec)
            class_names = class_names or [str(c) for c in getattr(ds, "classes", None) or []]
        n = max(int(s.labels.max()) for s in splits.values()) + 1
        if len(class_names or []) < n:
            class_names = [str(i) for i in range(n)]
        return RawData(class_names, splits, channels=spec.channels, flip=spec.flip)

    return load


def _fingerprint(spec: TorchvisionSet):
    def fingerprint(req: LoadRequest) -> Any:
        where = _root(req.root) / spec.folder
        if not spec.folder or not where.exists():  # SVHN keeps loose files in root: nothing specific to stat
            return None  # not there yet (a download may follow): do not cache on a guess
        files = file_fingerprint(where) if spec.image_size else [str(where)]  # photo folders: too many files to stat
        return [spec.cls, files, sorted(req.options.items(), key=str)]

    return fingerprint


def _present(spec: TorchvisionSet):
    def present(root: Path | None) -> bool:
        where = _root(root) / (spec.marker or spec.folder)
        return where.is_file() or (where.is_dir() and any(where.iterdir()))

    return present


for _name, _spec in TORCHVISION_SETS.items():
    DATASETS.add(_name, DatasetSource(_loader(_name, _spec), _fingerprint(_spec), _present(_spec)),
                 description=_spec.description, num_classes=_spec.num_classes, image_size=_spec.image_size,
                 channels=_spec.channels, offline=False, needs_root=False, has_test=True, flip=_spec.flip,
                 torchvision=True, expects=_spec.expects, framing=_spec.framing)
