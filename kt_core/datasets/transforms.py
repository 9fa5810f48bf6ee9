"""Shaping target images to what the source model expects, and batched augmentation.

Everything works on whole batches of tensors (N,C,H,W) so in-memory datasets are transformed
once, and augmentation costs a few tensor ops per batch instead of a PIL call per image.
Images are floats in [0,1] until `normalize`; padding is black (0), as torchvision pads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DatasetError
from ..registry import Registry

log = logging.getLogger(__name__)

# (mean per channel, std per channel): the one definition; models and sources import it from here.
Normalization = tuple[tuple[float, ...], tuple[float, ...]]
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, what PIL's convert("L") uses
# Bytes of float32 pixels per chunk when transforming a whole dataset: what shaping holds beside
# the result, whatever the images' size (4,096 images of 224x224 RGB were 2.4 GB a chunk).
_CHUNK_BYTES = 2 << 20


@dataclass(frozen=True)
class Geometry:
    """Where images end up: `content` is the resized image, padded (centred) to `size`."""

    channels: int
    content: tuple[int, int]
    size: tuple[int, int]

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def framing(self, convention: float = 1.0) -> float:
        """The share of the frame the images' content fills, as a source run records it."""
        return round(self.content[0] / self.size[0] * convention, 4)


def resolve_geometry(cfg, input_size, native: tuple[int, int, int] | None, framing: float | None = None,
                     convention: float = 1.0) -> Geometry:
    """cfg.channels / image_size / content_size win, then the source model's input size, then
    the images' own size (224x224 RGB for photos of mixed sizes, like torchvision's models).

    Without a content_size the images are framed as the source's were: `framing` is the share of
    the frame its content filled (a digit model trained on MNIST: 20/28), unless this dataset is
    framed by a convention of its own already (`convention` < 1: MNIST itself), else they fill it.
    Measured: scikit-learn's digits stretched to 28x28 lose 5-7 points on the demo story, and
    USPS zero-shot on an MNIST model drops from 0.935 to 0.800, against digits framed 20-in-28."""
    channels = cfg.channels or (input_size[0] if input_size else None) or (native[0] if native else 3)
    if cfg.image_size:
        size = (cfg.image_size, cfg.image_size)
    elif input_size:
        size = (int(input_size[1]), int(input_size[2]))
    elif native:
        size = (native[1], native[2])
    else:
        size = (224, 224)
    if cfg.content_size:
        content = (cfg.content_size, cfg.content_size)
    elif framing and framing < 1.0 and convention >= 1.0:
        content = (max(1, round(size[0] * framing)), max(1, round(size[1] * framing)))
    else:
        content = size
    if content[0] > size[0] or content[1] > size[1]:
        raise DatasetError(f"content_size {cfg.content_size} is larger than the image size {size[0]}x{size[1]}",
                           "content_size is the size before padding: make it at most image_size")
    return Geometry(int(channels), content, size)


# --- tensors ---------------------------------------------------------------------------------

def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    if c == 4:  # RGBA arrays: drop alpha
        return convert_channels(x[:, :3], channels)
    raise DatasetError(f"images have {c} channels", "use images with 1 (grayscale) or 3 (RGB) channels")


def resize_cover(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize so the image covers `size`, then centre-crop: no distortion of non-square images."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    scale = max(size[0] / h, size[1] / w)
    new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]].clamp_(0.0, 1.0)


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    return F.pad(x, (left, size[1] - w - left, top, size[0] - h - top))


def fit_tensor(x: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Images (N,C,H,W) uint8 or [0,1] floats -> float32 (N, channels, *size) in [0,1].

    Chunk by chunk into the result, allocated once: shaped chunks concatenated at the end would
    hold the whole dataset twice at that moment (2.05x the result at the peak, now 1.06x with
    40,000 digits: `tests/test_cache_memory.py`; B28 measures whole runs)."""
    out = torch.empty((len(x), *geometry.input_size))
    per_image = 4 * max(x[0].numel(), out[0].numel()) if len(x) else 1
    step = max(1, _CHUNK_BYTES // per_image)
    for start in range(0, len(x), step):
        chunk = convert_channels(to_float(x[start:start + step]), geometry.channels)
        out[start:start + len(chunk)] = pad_to(resize_cover(chunk, geometry.content), geometry.size)
    return out


# --- PIL images ------------------------------------------------------------------------------

def fit_pil(img: Image.Image, geometry: Geometry) -> torch.Tensor:
    """One decoded file -> uint8 (C, *content), resized to cover and centre-cropped.

    `draft` lets JPEG decode straight at a reduced scale: big photos become cheap to load.
    """
    mode = "L" if geometry.channels == 1 else "RGB"
    ch, cw = geometry.content
    with img:  # closes the file of a lazily opened image once decoded
        img.draft(mode, (cw, ch))
        if img.mode in ("P", "LA", "PA") or "transparency" in img.info:
            img = img.convert("RGBA")  # palette/alpha -> RGB/L via RGBA: no PIL transparency warning
        img = img.convert(mode)
    w, h = img.size
    scale = max(cw / w, ch / h)
    new = (max(cw, round(w * scale)), max(ch, round(h * scale)))
    if new != (w, h):
        img = img.resize(new, Image.BILINEAR)
    left, top = (new[0] - cw) // 2, (new[1] - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    array = np.asarray(img, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


# --- normalisation ---------------------------------------------------------------------------

def adapt_normalization(norm: Normalization | None, channels: int) -> Normalization | None:
    """Give `norm` one mean/std per channel, the way `adapt.adapt_input_conv` adapts a first conv:
    for one channel the values average (the adapted conv sums the colour channels of a grey
    image); for more, channel i takes the values of source channel i mod n (the adapted conv
    repeats the source's filters so): a grayscale source's stats repeat for RGB data, and an odd
    count such as 2 -> 3 gives (m0, m1, m0).

    The one rule for both the data (`normalize` source/imagenet) and `LoadedSource.adapt`.
    """
    if norm is None:
        return None
    try:
        mean, std = tuple(float(v) for v in norm[0]), tuple(float(v) for v in norm[1])
    except (TypeError, ValueError, IndexError):
        raise DatasetError(f"normalization {norm!r} is not (mean, std)", "give ((m1, ...), (s1, ...))") from None
    if not mean or len(mean) != len(std):
        raise DatasetError(f"normalization has {len(mean)} means and {len(std)} stds",
                           "give one mean and one std per channel")
    if channels < 1:
        raise DatasetError(f"images with {channels} channels cannot be normalised", "use 1 or 3 channels")
    if len(mean) == channels:
        return mean, std
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(mean[i % len(mean)] for i in range(channels)), tuple(std[i % len(std)] for i in range(channels))


def dataset_statistics(x: torch.Tensor) -> Normalization:
    """Per-channel mean and std of images in [0,1] (computed in float64: sums of millions of pixels)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-3)  # an all-black channel must not divide by zero
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def normalize(x: torch.Tensor, norm: Normalization | None) -> torch.Tensor:
    if norm is None:
        return x
    mean = torch.tensor(norm[0], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(norm[1], dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def denormalize(x: torch.Tensor, norm: Normalization | None) -> torch.Tensor:
    if norm is None:
        return x.clamp(0, 1)
    mean = torch.tensor(norm[0], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(norm[1], dtype=x.dtype).view(1, -1, 1, 1)
    return (x * std + mean).clamp_(0, 1)


# --- augmentation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentSpec:
    pad_fraction: float  # random crop with this fraction of the side as padding (0 = off)
    flip: bool  # horizontal flips, where the dataset says they keep the label
    jitter: float  # brightness/contrast jitter strength (0 = off)
    description: str


AUGMENTS: Registry[AugmentSpec] = Registry("augmentation preset")
AUGMENTS.add("none", AugmentSpec(0.0, False, 0.0, "no augmentation"))
AUGMENTS.add("light", AugmentSpec(1 / 16, True, 0.0, "small random shifts (crop with padding), flips where sensible"))
AUGMENTS.add("standard", AugmentSpec(1 / 8, True, 0.2,
                                     "random crop with padding, flips where sensible, brightness/contrast jitter"))


class BatchAugment:
    """Random crop with padding, horizontal flip and colour jitter on a normalised batch.

    Works in pixel space internally (pads black, jitters brightness in [0,1] units) so it does
    the same to an image whatever normalisation the data uses.
    """

    def __init__(self, spec: AugmentSpec, image_hw: tuple[int, int], normalization: Normalization | None,
                 flip: bool, generator: torch.Generator | None = None):
        self.pad = max(1, round(min(image_hw) * spec.pad_fraction)) if spec.pad_fraction else 0
        self.flip = spec.flip and flip
        self.jitter = spec.jitter
        self.normalization = normalization
        self.generator = generator

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = denormalize(x, self.normalization)
        if self.pad:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))
            top = (self._rand(n) * (2 * p + 1)).long()
            left = (self._rand(n) * (2 * p + 1)).long()
            rows = (top[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (left[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
            x = x.gather(3, cols)
        if self.flip:
            flipped = self._rand(n) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        if self.jitter:
            contrast = 1 + (self._rand(n, 1, 1, 1) * 2 - 1) * self.jitter
            brightness = (self._rand(n, 1, 1, 1) * 2 - 1) * self.jitter
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean + brightness).clamp_(0, 1)
        return normalize(x, self.normalization)


def make_augment(preset: str, input_size: tuple[int, int, int], normalization: Normalization | None,
                 flip: bool = False, generator: torch.Generator | None = None) -> Callable | None:
    spec = AUGMENTS.get(preset)
    if not (spec.pad_fraction or spec.jitter or (spec.flip and flip)):
        return None
    return BatchAugment(spec, tuple(input_size[1:]), normalization, flip, generator)
