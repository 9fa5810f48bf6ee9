"""B28: the dataset cache and the feature cache against the dataset's size (issue #18, section 4).

Memory is what a user meets here: a cache that grows faster than the data, or a copy that
doubles it for a moment, is an out-of-memory kill at a size that should fit. The figure measures
peak resident memory in fresh processes, one per size and side, at three sizes of a generated
image folder (PNGs drawn from `synthetic_shapes`, 32x32 colour, shaped to mnist_net's 1x28x28
input as a run does):

- *prepare*: `assemble.prepare` of a run config on a cold cache folder: the files listed,
  decoded, split, shaped and normalised, and the decoded tensors written to the dataset cache;
- *cache read*: the same in a fresh process, the tensors now read back from that cache;
- *feature cache*: in that second process, `engine.fit` as the worker calls it (the shared
  outputs store, `KT_FEATURE_CACHE_MAX_BYTES`'s budget), one epoch of `feature_extraction`: the
  frozen convolutions' output (800 floats per image) extracted once for the training and
  validation images, kept in memory and written to the shared-outputs cache.

Each phase's memory is its peak RSS over the RSS it started from (the kernel's high-water mark,
reset at the phase's start through /proc/self/clear_refs), per image, beside what the data
itself takes: C*H*W*4 bytes per decoded image (+8 for its int64 label), 800*4 per cached feature
vector. Disk bytes per image of the two on-disk caches are reported beside them. The figure is
the worst phase's memory per image at the largest size over the same at the middle one (the
smallest is dominated by fixed costs: the model, a batch's activations, the allocator's arenas):
about 1 when memory grows as the data does.

Before the build, the warm process runs the same fit with `KT_FEATURE_CACHE_MAX_BYTES` at half
what the cache needs: the cache must be refused with its message (else the figure is an ERROR) and
the run train on through the frozen layers; its peak is reported beside what the cache would have
held. That run also pays the fit's fixed costs (lazy imports, the optimizer's state, the
allocator's arenas) before the build is measured; the build may reuse heap it freed, which moves
the middle size's feature figure by ~+-10 MB between runs.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from .harness import FIGURES, Context, Target

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"tiny": (60, 120, 240), "quick": (250, 1000, 4000), "full": (1000, 4000, 16000)}
SIDE = 32  # the generated PNGs' side; shaped to the source's 28x28 as a run shapes any folder
ARCH = "mnist_net"  # frozen convolutions of 800 features per image: a cheap pass, a sizeable cache
FEATURES = 800 * 4  # bytes of one cached feature vector: 50 channels x 4 x 4, float32
REFUSED = "feature cache not made"  # the engine's log line when the budget is too small


# --- the generated image folder -------------------------------------------------------------

def make_folder(root: Path, images: int, chunk: int = 1200) -> Path:
    """`images` PNGs in ROOT/<shape>/, classes taking turns (made once per size and bench run)."""
    import numpy as np
    from PIL import Image

    from kt_core.datasets.synthetic import SHAPES, generate_shapes

    if (root / ".complete").is_file():
        return root
    for name in SHAPES:
        (root / name).mkdir(parents=True, exist_ok=True)
    written = 0
    for seed in range(math.ceil(images / chunk)):  # in pieces: generating draws ~10 floats a pixel
        per_class = math.ceil(min(chunk, images - written) / len(SHAPES))
        pixels, labels = generate_shapes(per_class, SIDE, style="textured", seed=seed)
        order = [c * per_class + i for i in range(per_class) for c in range(len(SHAPES))]
        for j in order[:images - written]:
            array = np.ascontiguousarray(pixels[j].permute(1, 2, 0).numpy())
            Image.fromarray(array).save(root / SHAPES[int(labels[j])] / f"{seed:03d}_{j:05d}.png")
        written = min(images, written + len(order))
    (root / ".complete").touch()
    return root


def _config_json(folder: Path, refuse: bool = False) -> str:
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

    return RunConfig(name="b28", source=SourceConfig(kind="arch", arch=ARCH),
                     dataset=DatasetConfig(name="image_folder", root=str(folder)),
                     plan=TransferPlan(preset="feature_extraction"),
                     train=TrainConfig(epochs=1, batch_size=64, seed=0, feature_cache=True)).validate().to_json()


# --- the measuring process ------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class Peak:
    """The peak RSS a block of code adds over the RSS it starts from (`.bytes`), from the kernel's
    high-water mark, reset at the start (`.reset` False where /proc/self/clear_refs cannot be
    written: then the mark is the process's peak since it started, an upper bound)."""

    def __enter__(self):
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS to the current RSS (Linux 4.0)
            self.reset = True
        except OSError:
            self.reset = False
        self.start_kb = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.bytes = max(0, _status_kb("VmHWM") - self.start_kb) * 1024
        return False


def _area_bytes(area: str) -> int:
    from kt_core.settings import get_settings

    folder = get_settings().cache_dir / area
    return sum(p.stat().st_size for p in folder.glob("*.pt")) if folder.is_dir() else 0


def child(side: str, config_path: str) -> dict:
    """One side in this fresh process: `prepare` (cold cache) or `features` (the dataset cache
    warm: read it; then a run whose feature cache is refused, then one that builds it, both
    through `fit` as the worker calls it). Returns what it measured."""
    import torch

    from kt_core import assemble
    from kt_core.config import RunConfig
    from kt_core.engine import fit
    from kt_core.settings import get_settings
    from kt_core.shared_outputs import OutputStore

    torch.set_num_threads(1)
    cfg = RunConfig.from_file(config_path)
    out = {"side": side}
    started = time.perf_counter()
    with Peak() as load:
        prepared = assemble.prepare(cfg)
    data = prepared.data
    cached_images = len(data.train) + (len(data.val) if data.val is not None else 0)
    out.update(load_bytes=load.bytes, reset=load.reset, load_s=time.perf_counter() - started,
               from_cache=bool(data.from_cache), images=sum(len(s) for s in data.splits(unlabelled=True).values()),
               cached_images=cached_images,
               image_bytes=data.train.x[0].numel() * data.train.x.element_size() + data.train.y.element_size(),
               dataset_disk=_area_bytes("datasets"))
    if side != "features":
        return out

    def run(budget: int | None) -> tuple[bool, int]:
        """A run's fit as the worker's (the shared store, the settings' budget), its peak."""
        with mock.patch.dict(os.environ, {"KT_FEATURE_CACHE_MAX_BYTES": str(budget)} if budget else {}):
            with Peak() as peak:
                result = fit(prepared.model, data, cfg, prepared.plan, device="cpu", **prepared.fit_options(),
                             store=OutputStore(), cache_budget=get_settings().feature_cache_max_bytes)
        return bool(result.feature_cache), peak.bytes

    # First with the budget at half what the cache needs: refused, the run trains through the
    # frozen layers. It also pays the run's fixed costs (torch's lazy imports, the optimizer's
    # first step, the allocator's arenas: 210-230 MB here at every size) before the build is measured.
    out["refused_made"], out["refused_bytes"] = run(max(1, cached_images * FEATURES // 2))
    started = time.perf_counter()
    out["feature_cache"], out["feature_bytes"] = run(None)
    out.update(fit_s=time.perf_counter() - started, feature_disk=_area_bytes("outputs"))
    return out


def _run_child(side: str, config: Path, cache_dir: Path) -> tuple[dict, str]:
    env = {**os.environ, "KT_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("KT_FEATURE_CACHE_MAX_BYTES", None)  # the default budget: half the memory available
    done = subprocess.run([sys.executable, "-m", "bench.cache_growth", side, str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} process exited {done.returncode}: {done.stderr[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


# --- B28 -------------------------------------------------------------------------------------

@FIGURES.register("B28", title="growth: peak memory per image of preparing + caching a dataset and of building "
                               "the feature cache, 16,000 images / 4,000 (fresh processes, the worst phase)",
                  target=Target("<=", 1.5))
def cache_growth(ctx: Context) -> tuple[float, str]:
    sizes = SIZES[ctx.scale.name]
    measured = {}
    for n in sizes:
        folder = make_folder(ctx.workdir / f"b28_images_{n}", n)
        config = ctx.workdir / f"b28_config_{n}.json"
        config.write_text(_config_json(folder))
        cache_dir = ctx.workdir / f"b28_cache_{n}"
        shutil.rmtree(cache_dir, ignore_errors=True)  # cold: the first process decodes
        prepared, _ = _run_child("prepare", config, cache_dir)
        warm, log_text = _run_child("features", config, cache_dir)
        if prepared["from_cache"] or not warm["from_cache"] or not warm["feature_cache"]:
            raise RuntimeError(f"{n} images: the processes did not take the paths measured (cold "
                               f"{prepared['from_cache']}, warm {warm['from_cache']}, "
                               f"features {warm['feature_cache']})")
        if warm["refused_made"] or REFUSED not in log_text:
            raise RuntimeError(f"{n} images: a feature cache over KT_FEATURE_CACHE_MAX_BYTES was not refused with "
                               f"its message (made: {warm['refused_made']})")
        measured[n] = (prepared, warm)

    largest, middle = sizes[-1], sizes[1]
    image_bytes = measured[largest][0]["image_bytes"]

    def per_image(n):  # bytes per image of each phase
        prepared, warm = measured[n]
        return {"prepare": prepared["load_bytes"] / prepared["images"],
                "cache read": warm["load_bytes"] / warm["images"],
                "feature cache": warm["feature_bytes"] / warm["cached_images"]}

    per = {n: per_image(n) for n in sizes}
    ratios = {phase: per[largest][phase] / per[middle][phase] for phase in per[largest]}
    worst = max(ratios, key=ratios.get)

    def kb(value, data):
        return f"{value / 1e3:.1f} KB ({value / data:.1f}x)"

    shown = []
    for n in sizes:
        prepared, warm = measured[n]
        shown.append(
            f"{prepared['images']} images: prepare {kb(per[n]['prepare'], image_bytes)} in {prepared['load_s']:.1f} s, "
            f"cache read {kb(per[n]['cache read'], image_bytes)}, the dataset cache file "
            f"{kb(prepared['dataset_disk'] / prepared['images'], image_bytes)}; feature cache "
            f"{kb(per[n]['feature cache'], FEATURES)} for {warm['cached_images']} train+val images, its file "
            f"{kb(warm['feature_disk'] / warm['cached_images'], FEATURES)}; refused: peak "
            f"+{warm['refused_bytes'] / 1e6:.0f} MB against the {warm['cached_images'] * FEATURES / 1e6:.1f} MB it "
            f"would have held")
    note = "" if all(m[0]["reset"] and m[1]["reset"] for m in measured.values()) else \
        " (peaks since each process started: /proc/self/clear_refs could not be written)"
    detail = (f"per image, peak RSS over the RSS at the phase's start{note}, x = over the data itself "
              f"({image_bytes / 1e3:.2f} KB per decoded image: 1x28x28 float32 + an int64 label; "
              f"{FEATURES / 1e3:.1f} KB per cached feature vector); "
              + "; ".join(shown)
              + f"; memory per image {largest}/{middle}: " + ", ".join(f"{p} {r:.2f}" for p, r in ratios.items())
              + f" (the figure: {worst}); every size's feature cache refused first with its message "
              f"(KT_FEATURE_CACHE_MAX_BYTES at half its need: '{REFUSED}'), the run training on without it")
    return ratios[worst], detail


if __name__ == "__main__":  # python -m bench.cache_growth prepare|features CONFIG (one measuring process)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    print(json.dumps(child(sys.argv[1], sys.argv[2])))
