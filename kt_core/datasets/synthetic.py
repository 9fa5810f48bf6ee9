"""Coloured shapes on backgrounds: a deterministic image dataset generated in a blink.

Two styles share the classes but not the look, so one can be the source domain and the other
the target: `clean` draws bright shapes on plain light backgrounds, `textured` draws muted
shapes on striped, noisy backgrounds. The same (style, seed, size) always gives the same pixels.
"""

from __future__ import annotations

import math

import torch

from ..errors import DatasetError
from ..registry import Registry

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


def _circle(x, y, r):
    return x * x + y * y <= r * r


def _square(x, y, r):
    return torch.maximum(x.abs(), y.abs()) <= 0.8 * r


def _triangle(x, y, r):  # pointing up (y grows downwards): apex (0,-r), base at y = r/2
    return (y <= 0.5 * r) & (y >= -r + math.sqrt(3) * x.abs())


def _cross(x, y, r):
    arm = 0.3 * r
    return ((x.abs() <= arm) & (y.abs() <= r)) | ((y.abs() <= arm) & (x.abs() <= r))


def _ring(x, y, r):
    d2 = x * x + y * y
    return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)


def _diamond(x, y, r):
    return x.abs() + y.abs() <= r


_MASKS = dict(zip(SHAPES, (_circle, _square, _triangle, _cross, _ring, _diamond)))


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) hue/saturation/value in [0,1] -> (N,3) RGB."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def _background_clean(n, size, gen):
    tone = 0.75 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    tint = 0.05 * torch.rand(n, 3, 1, 1, generator=gen)
    noise = 0.03 * torch.randn(n, 1, size, size, generator=gen)
    return (tone - tint + noise).expand(n, 3, size, size)


def _background_textured(n, size, gen):
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = math.pi * torch.rand(n, 1, 1, generator=gen)
    freq = 0.4 + 0.8 * torch.rand(n, 1, 1, generator=gen)
    stripes = 0.5 + 0.5 * torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)))
    colour_a = _hsv_to_rgb(torch.rand(n, generator=gen), 0.5 * torch.ones(n), 0.3 + 0.4 * torch.rand(n, generator=gen))
    colour_b = _hsv_to_rgb(torch.rand(n, generator=gen), 0.6 * torch.ones(n), 0.3 + 0.4 * torch.rand(n, generator=gen))
    bg = colour_a[:, :, None, None] * stripes[:, None] + colour_b[:, :, None, None] * (1 - stripes[:, None])
    return bg + 0.08 * torch.randn(n, 3, size, size, generator=gen)


def _shape_colour_clean(n, gen):
    return _hsv_to_rgb(torch.rand(n, generator=gen), 0.8 + 0.2 * torch.rand(n, generator=gen), 0.7 + 0.3 * torch.rand(n, generator=gen))


def _shape_colour_textured(n, gen):
    return _hsv_to_rgb(torch.rand(n, generator=gen), 0.3 + 0.3 * torch.rand(n, generator=gen), 0.85 + 0.15 * torch.rand(n, generator=gen))


# style -> (background, shape colour): add a style here to add a domain
STYLES: Registry = Registry("synthetic_shapes style")
STYLES.add("clean", (_background_clean, _shape_colour_clean))
STYLES.add("textured", (_background_textured, _shape_colour_textured))


def generate_shapes(per_class: int, size: int = 32, style: str = "clean", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` images of every shape: uint8 (N,3,size,size) and int64 labels (N,)."""
    if size < 8:
        raise DatasetError(f"synthetic_shapes size {size} is too small to draw shapes", "use size 8 or more")
    background, shape_colour = STYLES.get(style)
    # the style's name is part of the seed: clean and textured images differ in layout too
    gen = torch.Generator().manual_seed(int(seed) * 7919 + sum(map(ord, style)))
    n = per_class * len(SHAPES)
    labels = torch.arange(len(SHAPES)).repeat_interleave(per_class)
    images = background(n, size, gen)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    radius = size * (0.22 + 0.13 * torch.rand(n, generator=gen))
    margin = radius * 1.05
    cx = margin + (size - 2 * margin) * torch.rand(n, generator=gen)
    cy = margin + (size - 2 * margin) * torch.rand(n, generator=gen)
    angle = (torch.rand(n, generator=gen) - 0.5) * (math.pi / 6)  # +-15 degrees keeps squares != diamonds
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    x, y = cos * dx + sin * dy, -sin * dx + cos * dy
    r = radius[:, None, None]
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for c, shape in enumerate(SHAPES):
        rows = labels == c
        mask[rows] = _MASKS[shape](x[rows], y[rows], r[rows])
    colour = shape_colour(n, gen)[:, :, None, None]
    images = torch.where(mask[:, None], colour.expand_as(images), images)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels
