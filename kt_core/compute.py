"""How a training process uses the CPU: the one place that sets it, for the spawned worker and
the foreground `train` alike.

Several workers share the cores (the demo's transfer run and its baseline train side by side).
OpenMP's default busy-waiting then makes each 5-10x slower than alone; passive waiting keeps
two 2-thread workers on 2 cores at ~90% of two 1-thread ones (measured). A foreground `train`
without it took 55 s for a run a spawned worker trains in 11.6 s on a busy machine (issue #19).
OpenMP reads these variables when torch loads it, so they are set before torch is imported:
in the environment of a spawned worker, and first thing in `python -m kt_core`.
"""

from __future__ import annotations

import os
from typing import MutableMapping

# a value the caller's environment already holds wins (an administrator's OMP_NUM_THREADS, say)
TRAINING_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Put the training settings into `env` (default: this process's environment) unless set."""
    env = os.environ if env is None else env
    for key, value in TRAINING_ENV.items():
        env.setdefault(key, value)
    return env


def describe() -> str:
    """The settings this process trains with, for the run's log."""
    import torch  # here, not at the top: `apply()` must run before anything loads torch

    shown = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in (*TRAINING_ENV, "OMP_NUM_THREADS"))
    return f"{shown}, torch threads {torch.get_num_threads()}"
