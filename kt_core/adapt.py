"""Fitting trained weights to another shape: tensor helpers with no knowledge of models or files.

A leaf module (torch only), as timm keeps its `adapt_input_conv`: both the checkpoint loader
(mapping a file's first conv onto a model with other input channels) and the model builders
(swapping a model's first conv) use it, and neither has to import the other for it.
"""

from __future__ import annotations

import torch


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv weights for `in_channels` inputs from weights trained on another channel count.

    To one channel: sum over the input channels, so a grey image gives the response the colour
    model gave to the same grey image in colour. From fewer channels: repeat them and scale by
    old/new, which keeps the activations' magnitude (the idea of timm's adapt_input_conv).
    """
    old = weight.shape[1]
    if old == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // old)  # ceil
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (old / in_channels)
