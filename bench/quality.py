"""Transfer quality (`--only quality`): what a user gets by pressing Start with every default.

B8/B9: the demo story (the demo's MNIST-5k source run, scikit-learn's digits as target) at
K = 1, 5, 10 labelled images per class, trained as the dashboard trains it (a run folder, the
worker, the defaults of `kt_core.defaults` / `transfer`: source head kept, auto epochs, a held-out
test split carved from the labelled data, images framed as the source's), for each K over
`SEEDS` (the seed picks the K images, the splits and the initialisation). The figure is each
K's mean *headline* (held-out test accuracy of the best-on-validation checkpoint) minus the
careful plain PyTorch loop's figure measured for issue #19 (3 seeds each, on its own 50 %
validation split of the same data); the worst K counts, and every K's mean, spread (min-max)
and the loop's figure are printed.

B10/B11: zero-shot figures, free once the head is kept: `mnist_cnn.pt` on USPS (framed as MNIST
frames digits, and with the target's own geometry beside it) and the CIFAR ResNet-20 on
`cifar10_jpg/test`, when `../shared/data` (or `KT_REAL_DATA`) is there; SKIP otherwise.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

from .harness import FIGURES, Context, Skip, Target

SEEDS = (0, 1, 2)
KS = (1, 5, 10)
# The careful plain loop's held-out accuracy on the demo story (issue #19, 3 seeds each)
PLAIN_LOOP = {"feature_extraction": {1: 0.848, 5: 0.921, 10: 0.940},
              "fine_tune": {1: 0.864, 5: 0.911, 10: 0.932}}
QUICK_SEEDS, QUICK_KS = (0,), (1, 10)


def _demo_source(ctx: Context) -> Path:
    """The demo's source run (trained once per bench run, in this process)."""
    from kt_core import demo, rundir
    from kt_core.worker import run_worker

    runs_dir = ctx.workdir / "quality_runs"
    cfg = demo.source_config(device=ctx.device.type)
    found = demo.find_source_run(cfg, runs_dir)
    if found:
        return rundir.run_dir(found, runs_dir)
    folder = rundir.create_run(cfg, runs_dir)
    if run_worker(folder)["state"] != "completed":
        raise RuntimeError(f"the demo source run failed: {rundir.read_status(folder).get('error')}")
    return folder


def default_config(source: Path, preset: str, per_class: int, seed: int, device: str) -> RunConfig:
    """What the dashboard launches for this source, target and K when nothing else is touched."""
    return RunConfig(
        name=f"quality {preset} k{per_class} s{seed}",
        source=SourceConfig(kind="run", path=str(source)),
        dataset=DatasetConfig(name="sklearn_digits", per_class=per_class, seed=seed),
        plan=TransferPlan(preset=preset),
        train=TrainConfig(seed=seed, device=device),
    ).validate()


def _headline(cfg: RunConfig, runs_dir: Path) -> tuple[float, dict]:
    from kt_core import headline, rundir
    from kt_core.worker import run_worker

    folder = rundir.create_run(cfg, runs_dir)
    status = run_worker(folder)
    if status["state"] != "completed":
        raise RuntimeError(f"run {folder.name} {status['state']}: {status.get('error')}")
    summary = rundir.read_summary(folder)
    head = headline.headline(summary)
    if not head.held_out:
        raise RuntimeError(f"run {folder.name} has no held-out figure ({head.label})")
    return head.value, summary


def story_gap(preset: str, ctx: Context) -> tuple[float, str]:
    quick = ctx.scale.name != "full"
    seeds, ks = (QUICK_SEEDS, QUICK_KS) if quick else (SEEDS, KS)
    source = _demo_source(ctx)
    gaps, parts = [], []
    for k in ks:
        values, epochs, before = [], [], []
        for seed in seeds:
            value, summary = _headline(default_config(source, preset, k, seed, ctx.device.type),
                                       ctx.workdir / "quality_runs")
            values.append(value)
            epochs.append(summary["epochs"])
            if (summary.get("before_training") or {}).get("test_acc") is not None:
                before.append(summary["before_training"]["test_acc"])
        mean, loop = statistics.mean(values), PLAIN_LOOP[preset][k]
        gaps.append(mean - loop)
        parts.append(f"K={k}: {mean:.3f} (min {min(values):.3f}, max {max(values):.3f}; epochs "
                     f"{min(epochs)}-{max(epochs)}) vs loop {loop:.3f}"
                     + (f", before training {statistics.mean(before):.3f}" if before else ""))
    seeds_text = ",".join(map(str, seeds))
    return 100 * min(gaps), (f"held-out test accuracy, mean of seeds {seeds_text}; worst K's gap in points; "
                             + "; ".join(parts))


@FIGURES.register("B8", title="quality: feature extraction with the dashboard's defaults on the demo story, "
                              "points vs a careful plain loop (worst of K=1,5,10)",
                  target=Target(">=", -2.0, "pts"), group="quality")
def feature_extraction_quality(ctx: Context) -> tuple[float, str]:
    return story_gap("feature_extraction", ctx)


@FIGURES.register("B9", title="quality: fine-tuning with the dashboard's defaults on the demo story, "
                              "points vs a careful plain loop (worst of K=1,5,10)",
                  target=Target(">=", -2.0, "pts"), group="quality")
def fine_tune_quality(ctx: Context) -> tuple[float, str]:
    return story_gap("fine_tune", ctx)


# --- zero-shot: what the source already knows ----------------------------------------------------

def real_data() -> Path:
    root = Path(os.environ.get("KT_REAL_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    if not root.is_dir():
        raise Skip(f"no real data at {root} (set KT_REAL_DATA)")
    return root.resolve()


def zero_shot(cfg: RunConfig) -> tuple[float, str]:
    """Accuracy on the test split of the source as prepared for the target, before any step."""
    from kt_core import assemble
    from kt_core.engine import evaluate

    prepared = assemble.prepare(cfg)
    if not prepared.plan.head_decision.keep:
        raise RuntimeError(f"the head is not kept: {prepared.plan.head_decision.reason}")
    _, acc = evaluate(prepared.model, prepared.data.test, "cpu")
    return acc, prepared.plan.head_decision.reason


@FIGURES.register("B10", title="zero-shot: mnist_cnn.pt on USPS test, digits framed 20-in-28 as MNIST frames them",
                  target=Target(">=", 0.90), group="quality")
def usps_zero_shot(ctx: Context) -> tuple[float, str]:
    root = real_data()
    files = root.joinpath("checkpoints", "mnist_cnn.pt"), root / "usps" / "usps.npz"  # the shared data's folder
    if not all(f.is_file() for f in files):
        raise Skip(f"missing {', '.join(str(f) for f in files if not f.is_file())}")

    def cfg(content):
        return RunConfig(source=SourceConfig(kind="file", path=str(files[0]), arch="mnist_net"),
                         dataset=DatasetConfig(name="npz", root=str(files[1]), image_size=28, content_size=content,
                                               val_fraction=0.0, normalize="none"),
                         plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(device="cpu")).validate()

    framed, reason = zero_shot(cfg(20))
    stretched, _ = zero_shot(cfg(28))
    return framed, f"{framed:.3f} framed 20-in-28, {stretched:.3f} stretched to 28x28; {reason}"


@FIGURES.register("B11", title="zero-shot: CIFAR ResNet-20 (resnet20-12fca82f.th) on cifar10_jpg/test",
                  target=Target(">=", 0.75), group="quality")
def cifar_zero_shot(ctx: Context) -> tuple[float, str]:
    root = real_data()
    ckpt, images = root.joinpath("checkpoints", "resnet20-12fca82f.th"), root / "cifar10_jpg"
    if not ckpt.is_file() or not (images / "test").is_dir():
        raise Skip(f"missing {ckpt} or {images / 'test'}")
    cfg = RunConfig(source=SourceConfig(kind="file", path=str(ckpt), arch="cifar_resnet20"),
                    dataset=DatasetConfig(name="image_folder", root=str(images), val_fraction=0.0, normalize="imagenet"),
                    plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(device="cpu")).validate()
    acc, reason = zero_shot(cfg)
    return acc, f"no training; ImageNet mean/std; {reason}"
