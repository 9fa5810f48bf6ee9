"""Target datasets: containers and batching.

Small datasets (up to ~100k images of up to 64x64) are decoded once into tensors and batched by
slicing: a DataLoader's per-sample overhead would dominate a CPU epoch of a small CNN. Larger and
image-folder datasets stay torch Datasets and go through a DataLoader with workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .datasets.idx import read_idx  # noqa: F401  (public: evaluating MNIST checkpoints)

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


@dataclass
class PreparedData:
    """A dataset ready for training: splits after selection and transforms, plus what it is."""

    train: Split
    val: Split | None
    test: Split | None
    class_names: list[str]
    input_size: tuple[int, int, int]  # (C, H, W) after transforms
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    augment: str = "none"
    warnings: list[str] = field(default_factory=list)
    name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def splits(self) -> dict[str, Split]:
        return {k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None}


def iter_batches(
    split: Split,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment=None,
    num_workers: int = 0,
    skip_batches: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(x, y)` batches. `augment` is a callable on a batch of images (or None).

    The order depends only on `generator`'s state, so a run resumed mid-epoch with the same
    generator state skips `skip_batches` and sees exactly the batches it had not seen.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None
    if isinstance(split, TensorSplit):
        for start in range(skip_batches * batch_size, n, batch_size):
            if order is None:
                x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                x, y = split.x[idx], split.y[idx]
            yield (augment(x) if augment else x), y
        return
    indices = order.tolist() if order is not None else list(range(n))
    indices = indices[skip_batches * batch_size:]
    loader = DataLoader(torch.utils.data.Subset(split, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, persistent_workers=False)
    for x, y in loader:
        yield (augment(x) if augment else x), torch.as_tensor(y, dtype=torch.long)
