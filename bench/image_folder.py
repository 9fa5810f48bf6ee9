"""B31: a folder of photos too big to hold decoded, through kt_core's loading path and torchvision's.

The bench writes a folder of JPEGs once (`jpeg_folder`: seeded sizes from 200x130 to 2600x1900,
the range of a phone's photos and of the hymenoptera set, 4 classes; 2,000 at full scale), kept under the system's
temp folder so that later runs reuse it. Decoded at full size it would take gigabytes (the
detail says how many), so neither side can hold it: every epoch decodes every file.

- kt_core: `load_dataset` (the image_folder reader, a header check of every file) shaping each
  image for a 224x224 RGB source with ImageNet's mean/std, then the engine's training batches
  (`iter_batches`, shuffled by the engine's (seed, epoch) generator) with the workers
  `loader_workers` picks when `train.num_workers` is left at auto;
- torchvision: `ImageFolder` + `DataLoader` (shuffled), with the transforms that do the same:
  `Resize(224)` (the shorter side; kt_core resizes to cover too), `CenterCrop(224)`, `ToTensor`,
  `Normalize(ImageNet)`, and the same number of workers.

No model trains: the figure is the data path alone. The two sides take turns epoch by epoch
(kt_core, torchvision, then torchvision, kt_core, ...), timed in wall time (the decoding happens
in the worker processes: the main process's CPU time would not see it); the first epoch of each
is warm-up and reported beside the figure with the one-time costs (kt_core's `load_dataset`, which
lists and checks every file; `ImageFolder`'s listing). The figure is the median of the per-epoch
ratios of images/s.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path

import torch

from .harness import FIGURES, Context, Target, median

log = logging.getLogger(__name__)

SIDE = 224  # the input of an ImageNet source (resnet18, mobilenet, ...)
CLASSES = ("ants", "bees", "cats", "dogs")
WIDTHS, HEIGHTS = (200, 2600), (130, 1900)
# Images in the folder and timed epochs per side (after one warm-up epoch), per bench scale. A
# full epoch decodes 2,000 photos (~9 GB at full size) per side: about a minute each with one
# worker on a quiet 2-core machine; --quick is for the shape of the figure, not its value.
FOLDER_IMAGES = {"tiny": 24, "quick": 120, "full": 2000}
EPOCHS = {"tiny": 1, "quick": 1, "full": 2}
BATCH = 64
CACHE = Path(tempfile.gettempdir()) / "kt-bench-cache"  # survives a bench run: the folder is made once


def jpeg_folder(n: int, seed: int = 0, root: Path | None = None) -> Path:
    """A folder of `n` JPEGs in `CLASSES` subfolders, made once per (n, seed) and reused.

    Each image is a smooth random field (a small random image enlarged) with fine noise on top
    (a 5 MP image is ~1 MB, as a camera's),
    so that its file size and decoding cost are those of a photo rather than of a flat colour;
    quality 90, as cameras write them. A `DONE` marker says the folder is complete (a run killed
    while writing makes it again).
    """
    from PIL import Image

    folder = (CACHE if root is None else root) / f"jpeg-folder-v2-{n}-{seed}"
    if (folder / "DONE").is_file():
        return folder
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tile = Image.fromarray(torch.randint(0, 256, (256, 256, 3), generator=gen, dtype=torch.uint8).numpy())
    started = time.perf_counter()
    for i in range(n):
        w, h = rng.randint(*WIDTHS), rng.randint(*HEIGHTS)
        base = torch.randint(0, 256, (max(2, h // 64), max(2, w // 64), 3), generator=gen, dtype=torch.uint8)
        img = Image.fromarray(base.numpy()).resize((w, h), Image.BILINEAR)
        noise = Image.new("RGB", (w, h))
        for left in range(0, w, 256):  # one noise tile repeated: 10x cheaper than fresh noise per image
            for top in range(0, h, 256):
                noise.paste(tile, (left, top))
        img = Image.blend(img, noise, 0.1)
        path = folder / CLASSES[i % len(CLASSES)] / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
    (folder / "DONE").write_text(f"{n} images, seed {seed}\n")
    log.info("bench: wrote %d JPEGs to %s in %.0f s", n, folder, time.perf_counter() - started)
    return folder


def full_size_bytes(folder: Path) -> int:
    """What the folder takes decoded at full size (RGB uint8), from the headers alone."""
    from PIL import Image

    total = 0
    for path in folder.rglob("*.jpg"):
        with Image.open(path) as img:
            total += img.width * img.height * 3
    return total


def kt_core_side(folder: Path):
    """(the training split as kt_core prepares it, seconds it took)."""
    from kt_core.config import DatasetConfig
    from kt_core.data import IMAGENET_NORMALIZATION, load_dataset

    cfg = DatasetConfig(name="image_folder", root=str(folder), val_fraction=0.0, test_fraction=0.0,
                        normalize="imagenet")
    started = time.perf_counter()
    data = load_dataset(cfg, input_size=(3, SIDE, SIDE), normalization=IMAGENET_NORMALIZATION)
    return data.train, time.perf_counter() - started


def torchvision_side(folder: Path):
    """(torchvision's ImageFolder with the transforms that shape images as kt_core does, seconds)."""
    from torchvision import datasets, transforms

    from kt_core.data import IMAGENET_NORMALIZATION

    mean, std = IMAGENET_NORMALIZATION
    shape = transforms.Compose([transforms.Resize(SIDE), transforms.CenterCrop(SIDE), transforms.ToTensor(),
                                transforms.Normalize(mean, std)])
    started = time.perf_counter()
    dataset = datasets.ImageFolder(str(folder), transform=shape)
    return dataset, time.perf_counter() - started


def epoch_seconds(batches) -> tuple[float, int]:
    """Wall time to draw every batch of an epoch, and the images drawn."""
    started, seen = time.perf_counter(), 0
    for x, y in batches:
        if tuple(x.shape[1:]) != (3, SIDE, SIDE):  # both sides must deliver what a 224-px model takes
            raise RuntimeError(f"a batch of shape {tuple(x.shape)}, not (N, 3, {SIDE}, {SIDE})")
        seen += len(y)
    return time.perf_counter() - started, seen


@FIGURES.register("B31", title="image folder (JPEGs of 200x130 to 2600x1900, too big to hold decoded): kt_core's "
                               "loading path / torchvision ImageFolder + DataLoader, same transforms and workers, "
                               "images/s", target=Target(">=", 0.95))
def image_folder(ctx: Context) -> tuple[float, str]:
    from torch.utils.data import DataLoader

    from kt_core.data import iter_batches, loader_workers
    from kt_core.engine import epoch_generator

    n, epochs = FOLDER_IMAGES[ctx.scale.name], EPOCHS[ctx.scale.name]
    started = time.perf_counter()
    folder = jpeg_folder(n)
    made_s = time.perf_counter() - started
    ours, ours_setup_s = kt_core_side(folder)
    theirs, theirs_setup_s = torchvision_side(folder)
    if len(ours) != len(theirs):
        raise RuntimeError(f"kt_core sees {len(ours)} images, torchvision {len(theirs)}: not the same data")
    workers = loader_workers(ours)  # what a run with train.num_workers at auto uses

    def kt_epoch(epoch: int) -> float:
        took, seen = epoch_seconds(iter_batches(ours, BATCH, shuffle=True, generator=epoch_generator(0, epoch),
                                                num_workers=None))
        return seen / took

    def tv_epoch(epoch: int) -> float:
        loader = DataLoader(theirs, batch_size=BATCH, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(epoch))
        took, seen = epoch_seconds(loader)
        return seen / took

    first = {"kt_core": kt_epoch(0), "torchvision": tv_epoch(0)}  # warm-up: page cache, worker start
    ratios, rates = [], {"kt_core": [], "torchvision": []}
    for epoch in range(1, 1 + epochs):
        order = [("kt_core", kt_epoch), ("torchvision", tv_epoch)]
        got = {name: fn(epoch) for name, fn in (order if epoch % 2 else order[::-1])}
        ratios.append(got["kt_core"] / got["torchvision"])
        for name in rates:
            rates[name].append(got[name])
    decoded_gb = full_size_bytes(folder) / 1e9
    return median(ratios), (
        f"median of {len(ratios)} epoch pairs (range {min(ratios):.2f}-{max(ratios):.2f}); {n} JPEGs "
        f"({decoded_gb:.1f} GB decoded at full size), batch {BATCH}, {workers} loader worker(s) (auto); "
        f"median kt_core {median(rates['kt_core']):.0f} img/s, torchvision {median(rates['torchvision']):.0f} img/s; "
        f"first epoch (warm-up) {first['kt_core']:.0f} vs {first['torchvision']:.0f} img/s; one-time: kt_core's "
        f"load_dataset {ours_setup_s:.1f} s (lists and checks every file), ImageFolder {theirs_setup_s:.1f} s; "
        f"nothing cached decoded: every epoch decodes every file; the folder {'written in ' + format(made_s, '.0f') + ' s' if made_s > 1 else 'reused'} ({folder})")
