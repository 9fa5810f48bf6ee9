"""Image grids: tensors (C,H,W, any normalisation) to something a person can look at."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import streamlit as st
import torch


def to_display(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float image tensor (C,H,W), normalised or not, as HxW or HxWx3 floats in [0, 1].

    Min-max per image undoes any mean/std normalisation well enough to see the content, and
    needs no knowledge of which normalisation was used. Numpy arrays (already HxW[xC] pixels,
    e.g. from `kt_core.data.preview`) pass through.
    """
    if isinstance(image, np.ndarray):
        return image
    img = image.detach().float().cpu()
    if img.dim() == 2:
        img = img.unsqueeze(0)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    array = img.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[2] == 1 else array[..., :3]


def image_grid(items: list[tuple[torch.Tensor, str]], columns: int = 8, width: int = 72) -> None:
    """Images with captions, `columns` per row."""
    for start in range(0, len(items), columns):
        row = items[start:start + columns]
        for col, (image, caption) in zip(st.columns(columns), row):
            col.image(to_display(image), caption=caption, width=width, clamp=True)


def grid_by_class(items: list[tuple[torch.Tensor, str]], per_class: int = 8, width: int = 56) -> None:
    """One row per class: the class name, then up to `per_class` of its images."""
    groups: dict[str, list[torch.Tensor]] = defaultdict(list)
    for image, name in items:
        groups[str(name)].append(image)
    for name, images in groups.items():
        label, *cols = st.columns([2] + [1] * per_class)
        label.markdown(f"**{name}**")
        for col, image in zip(cols, images[:per_class]):
            col.image(to_display(image), width=width, clamp=True)
