"""Choosing what to train on: class subsets, stratified splits and K images per class.

All random choices draw from a `torch.Generator` seeded with the config's seed, one per purpose,
so the same config always selects the same images on any machine.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..errors import DatasetError
from .raw import RawData, RawSplit

log = logging.getLogger(__name__)

# Seed offsets: the split and the few-shot draw must not reuse one random stream.
_SPLIT_STREAM, _FEWSHOT_STREAM, _TEST_STREAM = 1, 2, 3
AUTO_TEST_FRACTION = 0.2


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1000 + stream)


def resolve_classes(selection: Sequence[Any] | None, class_names: list[str]) -> list[int]:
    """Class indices for `selection` (names or indices, in the order given); None = all."""
    if selection is None:
        return list(range(len(class_names)))
    by_name = {name: i for i, name in enumerate(class_names)}
    chosen: list[int] = []
    for item in selection:
        if isinstance(item, str) and item in by_name:
            index = by_name[item]
        elif isinstance(item, int) and not isinstance(item, bool) or (isinstance(item, str) and item.strip().lstrip("-").isdigit()):
            index = int(item)
            if not 0 <= index < len(class_names):
                raise DatasetError(f"class index {index} is out of range: the dataset has {len(class_names)} classes",
                                   f"use indices 0..{len(class_names) - 1} or names: {_preview(class_names)}")
        else:
            raise DatasetError(f"unknown class {item!r}", f"valid class names: {_preview(class_names)}")
        if index in chosen:
            raise DatasetError(f"class {class_names[index]!r} is selected twice", "list each class once")
        chosen.append(index)
    if len(chosen) < 2:
        raise DatasetError("fewer than two classes selected", "choose at least two classes")
    return chosen


def _preview(names: list[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def select_classes(raw: RawData, indices: list[int]) -> RawData:
    """Keep only the chosen classes, relabelled 0..k-1 in the order chosen, names kept."""
    if indices == list(range(len(raw.class_names))):
        return raw
    remap = torch.full((len(raw.class_names),), -1, dtype=torch.long)
    remap[torch.tensor(indices)] = torch.arange(len(indices))
    splits = {}
    for name, split in raw.splits.items():
        new_labels = remap[split.labels]
        kept = torch.nonzero(new_labels >= 0).flatten()
        sub = split.subset(kept)
        sub.labels = new_labels[kept]
        splits[name] = sub
    return RawData([raw.class_names[i] for i in indices], splits, raw.channels, list(raw.warnings), raw.flip)


def check_classes(split: RawSplit, class_names: list[str], what: str = "training data") -> None:
    """Refuse data a classifier cannot learn from: fewer than two classes, or an empty class."""
    if len(class_names) < 2:
        raise DatasetError(f"the dataset has {len(class_names)} class{'es' if len(class_names) != 1 else ''}"
                           f"{': ' + class_names[0] if class_names else ''}",
                           "a classifier needs at least two classes: add a folder per class")
    counts = torch.bincount(split.labels, minlength=len(class_names))
    empty = [class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DatasetError(f"class{'es' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
                           f"ha{'ve' if len(empty) > 1 else 's'} no images in the {what}",
                           "add images to it, or leave it out of the class selection")


def stratified_split(labels: torch.Tensor, fraction: float, seed: int,
                     stream: int = _SPLIT_STREAM) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): `fraction` of every class goes to val (at least one image of each
    class with two or more, so every class is validated), chosen with `seed`."""
    gen = _generator(seed, stream)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_val = round(len(members) * fraction) if fraction > 0 else 0
        if fraction > 0 and n_val == 0 and len(members) >= 2:
            n_val = 1
        n_val = min(n_val, len(members) - 1)  # never take a class's last training image
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def test_fraction(cfg, has_test: bool, has_val: bool) -> float:
    """The share of the labelled data held out as the test split: none when the dataset has its
    own; `cfg.test_fraction`, else (auto) AUTO_TEST_FRACTION when a validation split exists."""
    if has_test:
        return 0.0
    if cfg.test_fraction is not None:
        return float(cfg.test_fraction)
    return AUTO_TEST_FRACTION if (has_val or cfg.val_fraction > 0) else 0.0


def carve_test(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, test): a stratified `fraction` held out, on its own random stream, so
    the validation split and the K images are drawn from the rest."""
    return stratified_split(labels, fraction, seed, _TEST_STREAM)


def few_shot(labels: torch.Tensor, per_class: int, seed: int, class_names: list[str]) -> torch.Tensor:
    """Indices of exactly `per_class` images of every class, chosen with `seed`."""
    gen = _generator(seed, _FEWSHOT_STREAM)
    chosen = []
    for c in range(len(class_names)):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < per_class:
            smallest = int(torch.bincount(labels, minlength=len(class_names)).min())
            raise DatasetError(
                f"class {class_names[c]!r} has only {len(members)} training images, fewer than per_class={per_class}",
                f"use per_class {smallest} or less (the smallest class after the test and validation splits), or per_class null for all")
        chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.sort(torch.cat(chosen)).values
