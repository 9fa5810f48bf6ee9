"""The measured distillation stories of the README, reproducible: `python examples/distill_story.py digits`.

digits (offline): the demo's MNIST source (examples/source_mnist.json, trained first if its run is
  missing) teaches a from-scratch mnist_net on scikit-learn's digits with K labelled images per
  class and the rest of the training pool unlabelled (examples/distill_digits.json), against the
  same student fine-tuned from the source and trained from scratch on the K labelled images alone.
The CIFAR story (needs ../shared/data) is examples/distill_cifar_story.py, which reuses `train` and
`table` from here.

Protocol, fixed before any result was seen: every arm gets about the same number of optimizer
steps as the distillation arm (whose epochs also go through the unlabelled images), the reported
accuracy is the last epoch's (no selection on the evaluation set); seeds choose the K images, the split and the
initialisation. Prints a markdown table (mean and standard deviation over seeds) and writes the
per-run results as JSON beside the runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kt_core import rundir  # noqa: E402
from kt_core.config import DistillConfig, RunConfig  # noqa: E402
from kt_core.data import load_dataset  # noqa: E402
from kt_core.worker import run_worker  # noqa: E402

log = logging.getLogger("distill_story")


def train(cfg: RunConfig, runs_dir: Path) -> dict:
    folder = rundir.create_run(cfg, runs_dir)
    status = run_worker(folder)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    return {"run": folder.name, "state": status["state"], **summary}


def steps_per_epoch(images: int, batch: int) -> int:
    return math.ceil(images / batch)


def digits_arms(k: int, seed: int, kd_epochs: int) -> dict[str, RunConfig]:
    base = RunConfig.from_file(ROOT / "examples" / "distill_digits.json")
    base.dataset.per_class, base.dataset.seed, base.train.seed = k, seed, seed
    base.train.epochs, base.name = kd_epochs, f"distill-digits-k{k}-s{seed}"
    everything = dataclasses.replace(base.dataset, per_class=None, unlabelled=False)
    pool = len(load_dataset(everything, input_size=(1, 28, 28)).train)  # what a distillation epoch goes through
    kd_steps = kd_epochs * steps_per_epoch(pool, base.train.batch_size)
    labelled_epochs = math.ceil(kd_steps / steps_per_epoch(10 * k, base.train.batch_size))
    arms = {"teacher KD (scratch student, rest unlabelled)": base}
    for name, preset in (("fine-tuned from the source (labels only)", "fine_tune"),
                         ("from scratch (labels only)", "scratch")):
        cfg = copy.deepcopy(base)
        cfg.name = f"{preset}-digits-k{k}-s{seed}"
        cfg.plan.preset, cfg.distill, cfg.dataset.unlabelled = preset, DistillConfig(), False
        cfg.train.epochs = labelled_epochs
        cfg.train.log_every = 1000
        arms[name] = cfg
    return arms


def table(results: list[dict], metric: str, group_keys: tuple[str, ...]) -> str:
    groups: dict[tuple, list[float]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in group_keys), []).append(r.get(metric) or float("nan"))
    lines = [f"| {' | '.join(group_keys)} | {metric} mean | std | runs |", "|" + "---|" * (len(group_keys) + 3)]
    for key, values in groups.items():
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| {' | '.join(map(str, key))} | {statistics.mean(values):.3f} | {std:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in values)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("story", choices=("digits",), help="the CIFAR story is examples/distill_cifar_story.py")
    p.add_argument("--runs-dir", default="runs-distill-story")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", type=int, nargs="+", default=[1, 5])
    p.add_argument("--epochs", type=int, default=10, help="epochs of the distillation arm")
    p.add_argument("--arm", default="", help="only the arms whose name contains this text (to run arms side by side)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    runs_dir = Path(args.runs_dir)
    results = []
    try:
        rundir.run_dir("demo-source", runs_dir)
    except Exception:  # noqa: BLE001 - not trained yet: train it, as the README's set-up does
        print("training the MNIST source (examples/source_mnist.json) first", flush=True)
        train(RunConfig.from_file(ROOT / "examples" / "source_mnist.json"), runs_dir)
    for k in args.k:
        for seed in args.seeds:
            for arm, cfg in digits_arms(k, seed, args.epochs).items():
                if args.arm not in arm:
                    continue
                r = train(cfg, runs_dir)
                results.append({"K": k, "arm": arm, "seed": seed, **r})
                print(f"K={k} seed={seed} {arm}: final_val_acc={r.get('final_val_acc')}", flush=True)
    (runs_dir / f"story-{args.story}{'-' + args.arm if args.arm else ''}.json").write_text(json.dumps(results, indent=1, default=str))
    print(table(results, "final_val_acc", ("K", "arm")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
