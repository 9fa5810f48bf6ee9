"""What a prepared dataset is: splits held in memory or as torch Datasets, and batching.

Small datasets (up to ~100k images of up to 64x64) are decoded once into tensors and batched by
slicing: a DataLoader's per-sample overhead would dominate a CPU epoch of a small CNN. Larger and
image-folder datasets stay torch Datasets and go through a DataLoader with workers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .transforms import make_augment

log = logging.getLogger(__name__)


@dataclass
class TensorSplit:
    """One split held in memory: images `x` (N,C,H,W float) and labels `y` (N, int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)


Split = TensorSplit | Dataset


class LabelledConcat(torch.utils.data.ConcatDataset):
    """Datasets one after the other, with `targets` (so `split_labels` never decodes images)."""

    @property
    def targets(self) -> torch.Tensor:
        return torch.cat([split_labels(d) for d in self.datasets])


def split_labels(split: Split) -> torch.Tensor:
    """All labels of a split (int64) without decoding its images where the split knows them."""
    if isinstance(split, TensorSplit):
        return split.y
    targets = getattr(split, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long)
    return torch.as_tensor([int(split[i][1]) for i in range(len(split))], dtype=torch.long)


@dataclass
class PreparedData:
    """A dataset ready for training: splits after selection and transforms, plus what it is.

    `augment` is the preset name; `augmenter(generator)` turns it into the batched callable that
    `iter_batches` applies to training batches (never to evaluation batches).
    """

    train: Split
    val: Split | None
    test: Split | None
    class_names: list[str]
    input_size: tuple[int, int, int]  # (C, H, W) after transforms
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    augment: str = "none"
    warnings: list[str] = field(default_factory=list)
    name: str = ""
    flip: bool = False  # whether horizontal flips keep the label (photos, shapes; not digits)
    native_size: tuple[int, int, int] | None = None  # (C, H, W) of the source images when uniform
    from_cache: bool = False  # True when the tensors came from the on-disk cache
    # where `test` comes from: "dataset" (its own test split), "carved" (held out of the labelled
    # data, DatasetConfig.test_fraction), None without one
    test_origin: str | None = None
    framing: float = 1.0  # share of the frame the content fills (20/28 for MNIST-framed digits)
    content_size: int | None = None  # side of the content before padding (None: unknown)
    # Training images whose labels are hidden (all -1): with K per class, the rest of the pool.
    # Not one of `splits()`: only `training_split()` (for a distillation term) uses them.
    unlabelled: Split | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def splits(self, unlabelled: bool = False) -> dict[str, Split]:
        """The labelled splits by name (and the unlabelled images as "unlabelled" if asked)."""
        named = [("train", self.train), ("val", self.val), ("test", self.test)]
        if unlabelled:
            named.append(("unlabelled", self.unlabelled))
        return {k: v for k, v in named if v is not None}

    def training_split(self) -> Split:
        """What a training epoch goes through: the labelled training images, then the unlabelled
        ones (label -1), if any. Indices into it are stable for the whole run (the teacher cache
        is indexed by them)."""
        if self.unlabelled is None or len(self.unlabelled) == 0:
            return self.train
        if isinstance(self.train, TensorSplit) and isinstance(self.unlabelled, TensorSplit):
            return TensorSplit(torch.cat([self.train.x, self.unlabelled.x]), torch.cat([self.train.y, self.unlabelled.y]))
        return LabelledConcat([self.train, self.unlabelled])

    def counts(self) -> dict[str, list[int]]:
        """Images per class in each split, in `class_names` order (the Dataset page's histogram)."""
        return {name: torch.bincount(split_labels(split), minlength=self.num_classes).tolist()
                for name, split in self.splits().items()}

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits(unlabelled=True).items()}

    def augmenter(self, generator: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The batched augmentation of the `augment` preset (None for "none")."""
        return make_augment(self.augment, self.input_size, self.normalization, flip=self.flip, generator=generator)

    def summary(self) -> dict:
        """Plain data for the CLI's JSON and the Dataset page."""
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "native_size": list(self.native_size) if self.native_size else None,
            "normalization": [list(self.normalization[0]), list(self.normalization[1])] if self.normalization else None,
            "augment": self.augment,
            "in_memory": all(isinstance(s, TensorSplit) for s in self.splits().values()),
            "sizes": self.sizes(),
            "counts": self.counts(),
            "warnings": list(self.warnings),
            "from_cache": self.from_cache,
            "test_origin": self.test_origin,
            "framing": self.framing,
            "content_size": self.content_size,
        }


# The most DataLoader workers `loader_workers` picks by itself. Each worker is a process holding the
# dataset's file list and decoding a batch ahead; past a few, a CPU run's training process, not
# the decoding, is what the epoch waits for, and every worker costs its memory and start-up.
MAX_AUTO_WORKERS = 4


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or `taskset`'s share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(split: Split, requested: int | None = None, cpus: int | None = None) -> int:
    """The DataLoader workers for `split`: `requested` when given (`train.num_workers`), else auto:
    0 for a split held in memory (batches are slices of a tensor: a worker would only add the
    cost of sending them back), else one worker per usable CPU but one (the training process
    keeps a CPU for itself), at most MAX_AUTO_WORKERS, none on a single CPU."""
    if requested is not None:
        return int(requested)
    if isinstance(split, TensorSplit):
        return 0
    cpus = usable_cpus() if cpus is None else cpus
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def iter_batches(
    split: Split,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_workers: int | None = 0,
    skip_batches: int = 0,
    with_index: bool = False,
    share: Callable[[int], slice] | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield `(x, y)` batches, or `(x, y, index)` with `with_index` (the positions of the batch's
    images in `split`: what per-image caches are looked up by). `augment` is a callable on a
    batch of images (or None): pass `data.augmenter(generator)` for training batches.

    The order depends only on `generator`'s state, so a run resumed mid-epoch with the same
    generator state skips `skip_batches` and sees exactly the batches it had not seen.
    `share` (a data-parallel process: `distributed.Ranks.share`) maps a batch's length to the
    slice of it this process takes: the same batches, each cut into the processes' pieces, and
    only this process's piece is gathered (and augmented); `index` is then the piece's.
    `num_workers`: DataLoader workers for a split decoded from files; None = `loader_workers`' choice.
    """
    if isinstance(augment, str):  # a preset name needs the data's normalization: see PreparedData.augmenter
        raise TypeError("iter_batches(augment=...) takes a callable; use PreparedData.augmenter(generator)")
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None
    if isinstance(split, TensorSplit):
        for start in range(skip_batches * batch_size, n, batch_size):
            if order is None and share is None:
                x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
                idx = torch.arange(start, min(start + batch_size, n)) if with_index else None
            else:
                idx = order[start:start + batch_size] if order is not None else torch.arange(start, min(n, start + batch_size))
                if share is not None:
                    idx = idx[share(len(idx))]
                x, y = split.x[idx], split.y[idx]
            x = augment(x) if augment else x
            yield (x, y, idx) if with_index else (x, y)
        return
    num_workers = loader_workers(split, num_workers)
    indices = order.tolist() if order is not None else list(range(n))
    indices = indices[skip_batches * batch_size:]
    pieces = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if share is None:
        loader = DataLoader(torch.utils.data.Subset(split, indices), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, persistent_workers=False)
    else:  # each batch's piece for this process, read by the loader's workers as usual
        pieces = [p[share(len(p))] for p in pieces]
        loader = DataLoader(split, batch_sampler=pieces, num_workers=num_workers, persistent_workers=False)
    for piece, (x, y) in zip(pieces, loader):
        x, y = (augment(x) if augment else x), torch.as_tensor(y, dtype=torch.long)
        if with_index:
            yield x, y, torch.as_tensor(piece, dtype=torch.long)
        else:
            yield x, y
