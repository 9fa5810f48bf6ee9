"""B13: an experiment against the same member runs launched one after another with the CLI.

Both sides train exactly the same member configs (the spec's own expansion, written out as run
config files for the CLI side) from a warm dataset cache, each in fresh processes as a user would
start them: `python -m kt_core train MEMBER.json` per member, one after another, against one
`python -m kt_core experiment SPEC.json` (its driver trains `parallel` members at a time in
long-lived member processes). The figure is the ratio of wall times, sequential / experiment,
the sides interleaved (A B, then B A at the full scale) and the median taken.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .harness import FIGURES, Context, Target

ROOT = Path(__file__).resolve().parents[1]


def spec_for(ctx: Context) -> dict:
    """Small members of the kind the demo story has many of: mnist_net on 8x8 digits, 3 methods."""
    quick = ctx.scale.name != "full"
    return {
        "kind": "sample_efficiency", "name": "bench-b8",
        "base": {"name": "b8", "source": {"kind": "arch", "arch": "mnist_net"},
                 "dataset": {"name": "sklearn_digits", "val_fraction": 0.5, "image_size": 28, "content_size": 20,
                             "channels": 1},
                 "train": {"epochs": 2 if quick else 3, "batch_size": 32, "optimizer": "adam", "lr": 0.001,
                           "device": "cpu", "log_every": 5}},
        "methods": ["scratch", "feature_extraction", "fine_tune"],
        "per_class": [2, 10] if quick else [1, 2, 5, 10],
        "seeds": 1,
    }


def _env(ctx: Context, runs_dir: Path) -> dict[str, str]:
    env = dict(os.environ, KT_RUNS_DIR=str(runs_dir), KT_EXPERIMENTS_DIR=str(runs_dir.parent / (runs_dir.name + "-exp")),
               KT_CACHE_DIR=str(ctx.workdir / "b8_cache"), KT_WARM_WORKER="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("OMP_NUM_THREADS", None)  # each side shares out the cores its own way (the CLI: all of them)
    return env


def _timed(cmds: list[list[str]], env: dict[str, str]) -> float:
    start = time.perf_counter()
    for cmd in cmds:
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:5])} failed: {done.stderr[-500:]}")
    return time.perf_counter() - start


@FIGURES.register("B13", title="experiment: the same members one after another with the CLI / as one experiment, wall time",
                  target=Target(">=", 2.0))
def experiment_speed(ctx: Context) -> tuple[float, str]:
    from kt_core.experiments import ExperimentSpec
    from kt_core.experiments.driver import default_parallel

    spec_data = spec_for(ctx)
    spec = ExperimentSpec.from_dict(spec_data)
    members = spec.members()
    folder = ctx.workdir / "b8"
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec_data))
    configs = []
    for i, member in enumerate(members):
        path = folder / f"member{i}.json"
        path.write_text(member.config.to_json())
        configs.append(path)
    py = [sys.executable, "-m", "kt_core"]
    # a warm dataset cache for both sides (the first decode is nobody's figure)
    _timed([py + ["train", str(configs[0]), "--epochs", "1"]], _env(ctx, folder / "warmup"))

    sequential, together = [], []
    rounds = 2 if ctx.scale.name == "full" else 1
    for r in range(rounds):
        sides = [("cli", sequential), ("exp", together)]
        for name, out in (sides if r % 2 == 0 else sides[::-1]):
            runs_dir = folder / f"{name}{r}"
            if name == "cli":
                out.append(_timed([py + ["train", str(c), "--runs-dir", str(runs_dir)] for c in configs],
                                  _env(ctx, runs_dir)))
            else:
                out.append(_timed([py + ["experiment", str(spec_file), "--runs-dir", str(runs_dir), "--json"]],
                                  _env(ctx, runs_dir)))
    seq, exp = statistics.median(sequential), statistics.median(together)
    return seq / exp, (f"{len(members)} members (mnist_net on 8x8 digits; scratch, feature extraction, fine-tune; "
                       f"K {spec_data['per_class']}; {spec_data['base']['train']['epochs']} epochs): one after another "
                       f"with `train` {seq:.1f} s, as one experiment ({default_parallel()} at a time) {exp:.1f} s; "
                       f"{rounds} round(s), wall time on a shared machine")
