"""What a reader hands over before selection and transforms: labelled images, still raw.

A reader either decodes everything into one tensor (IDX, npz, package datasets: small and
uniform) or lists image files with a `reader(i)` that decodes one of them with PIL (image
folders, CSV manifests, torchvision's file datasets). The preparation step decides later whether
files are decoded into memory or stay lazy behind a DataLoader.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..errors import DatasetError

log = logging.getLogger(__name__)

# torchvision's ImageFolder set, so our counts agree with what users get from torchvision
# (hymenoptera's `imageNotFound.gif` is not one of its ants, and it is not counted there either).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not Path(name).name.startswith(".")


@dataclass
class RawSplit:
    """Labelled images of one split: a tensor, or files decoded on demand."""

    labels: torch.Tensor  # int64 (N,), indices into RawData.class_names
    images: torch.Tensor | None = None  # (N,C,H,W) uint8 0..255 or float in [0,1]
    reader: Callable[[int], Image.Image] | None = None  # decodes image i (file-based splits)
    names: list[str] | None = None  # per-image file names, for messages about bad files
    index: torch.Tensor | None = None  # which of the reader's items this split holds

    def __post_init__(self) -> None:
        if (self.images is None) == (self.reader is None):
            raise ValueError("a RawSplit holds either images or a reader")
        if self.reader is not None and self.index is None:
            self.index = torch.arange(len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "RawSplit":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return RawSplit(
            labels=self.labels[idx],
            images=self.images[idx] if self.images is not None else None,
            reader=self.reader,
            names=[self.names[i] for i in idx.tolist()] if self.names is not None else None,
            index=self.index[idx] if self.index is not None else None,
        )

    def open(self, i: int) -> Image.Image:
        """Decode item i of a file-based split (the caller wraps errors with the file name)."""
        return self.reader(int(self.index[i]))

    def name(self, i: int) -> str:
        return self.names[i] if self.names is not None else f"item {i}"


@dataclass
class RawData:
    class_names: list[str]
    splits: dict[str, RawSplit]  # "train" always; "val" and/or "test" when the source has them
    channels: int | None = None  # native channels (None: decided per file, RGB by default)
    warnings: list[str] = field(default_factory=list)
    flip: bool = False  # horizontal flips keep the label


# The most pixels one image may decode to. PIL's own limit (89 MP, refused only past 179 MP) let a
# 12000x12000 PNG inside a 6 KB zip take 1.2 GB; every image here is resized to at most 1024 px,
# so 40 MP (a 7300x5500 photo, 160 MB decoded as RGBA) is ample. KT_MAX_IMAGE_PIXELS changes it.
MAX_IMAGE_PIXELS = 40_000_000


def max_image_pixels() -> int:
    value = os.environ.get("KT_MAX_IMAGE_PIXELS", "").strip().replace("_", "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_IMAGE_PIXELS


def open_image(path: Path) -> Image.Image:
    """`Image.open` with the pixel limit enforced at the header, before any decoding: an image
    over it raises DecompressionBombError saying its size and the limit."""
    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # the same value every time: safe for the UI's threads
    with warnings.catch_warnings():  # PIL only warns between 1x and 2x its limit: refuse there too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)):,} pixels" if found else "its size"
    raise Image.DecompressionBombError(
        f"{size} is over this app's limit of {limit:,} pixels per image (KT_MAX_IMAGE_PIXELS); "
        "resize it, or raise the limit if such images are expected")


class PILReader:
    """Decodes file i with PIL. A class, not a closure, so DataLoader workers can pickle it."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __call__(self, i: int) -> Image.Image:
        # opened, not decoded: fit_pil can still ask JPEG for a cheap reduced-size decode (draft)
        return open_image(self.paths[i])

    def size(self, i: int) -> tuple[str, int, int]:
        """(mode, width, height) from the header only."""
        with open_image(self.paths[i]) as img:
            return img.mode, img.width, img.height

    def check(self, i: int) -> str | None:
        return check_image(self.paths[i])


def check_image(path: Path) -> str | None:
    """Why `path` cannot be used as an image (None when it can): a cheap header check."""
    try:
        with open_image(path) as img:
            img.verify()
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return str(exc) or type(exc).__name__


def describe_skipped(what: str, items: list[tuple[str, str]], limit: int = 5) -> str:
    """One warning line naming the first few skipped files and why."""
    shown = "; ".join(f"{name}: {why}" for name, why in items[:limit])
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    if len(items) == 1:  # "1 files that are not images" -> "1 file that is not an image"
        what = what.replace("files that are not images", "file that is not an image").replace("images", "image").replace("rows", "row")
    return f"skipped {len(items)} {what}: {shown}{more}"


def file_fingerprint(root: Path) -> list:
    """(relative path, size, mtime) of every file under root: changes when any file changes."""
    root = Path(root)
    if root.is_file():
        st = root.stat()
        return [[root.name, st.st_size, st.st_mtime_ns]]
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rows.append([os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns])
    if not rows:
        raise DatasetError(f"{root} holds no files", "point root at the dataset's folder")
    return rows
