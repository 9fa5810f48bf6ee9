"""What the app needs to know about an architecture, without building it: `ArchSpec`.

A leaf module at run time (torch and `Normalization` are type names only), so the registry (`models`), the
providers of other packages' architectures (`providers`) and the user's model code
(`usercode`) can all build specs without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # type names only: at run time this module imports nothing of kt_core or torch
    import torch
    from torch import nn

    from .datasets.transforms import Normalization


@dataclass(frozen=True)
class ArchSpec:
    """What the app needs to know about an architecture, without building it."""

    name: str
    family: str
    builder: Callable[[int, int], "nn.Module"]  # (num_classes, in_channels) -> randomly initialised model
    input_size: tuple[int, int, int]  # (C, H, W) the architecture is designed for
    num_classes: int  # the class count of its usual weights
    head: str  # qualified name of the classifier module ("fc", "classifier.1")
    # qualified name of the first convolution ("conv1", "features.0.0"); None for an architecture
    # without one (an MLP: its first Linear fixes the input's size and channels when it is built,
    # so another channel count cannot be adapted into trained weights)
    first_conv: str | None = None
    weights: tuple[str, ...] = ()  # torchvision weight names; empty for our own models
    normalization: Normalization | None = None  # mean/std the weights were trained with
    description: str = ""
    stages: str | None = None  # container whose children are the stages (its blocks), if any
    # A provider's own weights (timm, an entry-point package): weights name -> state_dict.
    load_weights: Callable[[str], dict[str, "torch.Tensor"]] | None = field(default=None, compare=False)
    provider: str = ""  # "" = ours or torchvision's; "timm"; the package of an entry point
