"""Loading the chosen target dataset once (cached) and showing it: histogram, sizes, preview."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from kt_core.config import DatasetConfig
from ui.source_view import allowed_roots


@st.cache_resource(max_entries=4, show_spinner="Preparing the dataset...")
def _load(cfg_json: str, input_size: tuple | None, roots: tuple[Path, ...], framing: float | None = None):
    from kt_core.data import load_dataset

    cfg = DatasetConfig(**json.loads(cfg_json))
    return load_dataset(cfg, input_size=input_size, roots=roots, framing=framing)


def load(cfg: DatasetConfig, input_size: tuple | None, framing: float | None = None):
    """`kt_core.data.load_dataset`, confined to the allowed roots and cached per config.
    `framing`: the source's (`LoadedSource.framing`), so the images look as training will see them."""
    cfg.validate()
    data = json.dumps(cfg.__dict__, sort_keys=True, default=str)
    return _load(data, tuple(input_size) if input_size else None, allowed_roots(), framing)


def histogram(counts: dict[str, list[int]], class_names: list[str]) -> go.Figure:
    """Images per class and split, grouped bars."""
    fig = go.Figure()
    for split, per_class in counts.items():
        fig.add_trace(go.Bar(name=split, x=[str(c) for c in class_names], y=list(per_class)))
    fig.update_layout(barmode="group", height=300, margin=dict(l=40, r=10, t=40, b=40),
                      title="Images per class", yaxis_title="images",
                      # class names like "0".."9" are names, not numbers: one tick each
                      xaxis=dict(title="class", type="category"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


def size_table(counts: dict[str, list[int]], unlabelled: int | None = None) -> list[dict]:
    rows = [{"split": split, "images": int(sum(c)), "smallest class": int(min(c)) if c else 0,
             "largest class": int(max(c)) if c else 0} for split, c in counts.items()]
    if unlabelled is not None:  # labels hidden: no per-class counts to show
        rows.append({"split": "unlabelled (train)", "images": int(unlabelled), "smallest class": None,
                     "largest class": None})
    return rows


def for_source(cfg: DatasetConfig, loaded_source):
    """The target dataset as training will see it with `loaded_source` (cached), or None when it
    cannot be loaded yet: the Dataset page says why; pages that only need its facts (the class
    names for the head, the training split's size for auto epochs) go on without them."""
    from kt_core.errors import KTError

    try:
        return load(cfg, loaded_source.input_size, loaded_source.framing)
    except (KTError, OSError):
        return None
