"""The torchrun command of a run config: PyTorch's own launcher starts a data-parallel run.

Torch-free (the launcher and the dashboard build the command without importing torch). One
node trains `--standalone` (torchrun picks a free local port); several meet through torchrun's
c10d rendezvous at `train.rdzv_endpoint`, every node running the same command.
"""

from __future__ import annotations

import shlex
import sys


def torchrun_args(train_cfg, run_id: str | None = None) -> list[str]:
    """torchrun's own flags for a config's processes (`--nproc-per-node`, `--nnodes`, ...)."""
    args = [f"--nproc-per-node={train_cfg.nproc_per_node}"]
    if train_cfg.nnodes == 1 and not train_cfg.rdzv_endpoint:
        args.append("--standalone")
    else:
        args += [f"--nnodes={train_cfg.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={train_cfg.rdzv_endpoint}"]
        if run_id:  # every node must name the same job; the run id is one they all know
            args.append(f"--rdzv-id={run_id}")
    return args


def torchrun_command(train_cfg, worker_args: list[str], run_id: str | None = None,
                     python: str | None = None) -> list[str]:
    """`python -m torch.distributed.run FLAGS -m kt_core worker ARGS`: torchrun as a module of
    this interpreter, so it runs in our environment wherever a `torchrun` script is (or is not)."""
    return [python or sys.executable, "-m", "torch.distributed.run", *torchrun_args(train_cfg, run_id),
            "-m", "kt_core", "worker", *worker_args]


def shown(command: list[str]) -> str:
    """A command as a user would type it (`torchrun` for the interpreter's module form)."""
    if command[1:3] == ["-m", "torch.distributed.run"]:
        command = ["torchrun", *command[3:]]
    return shlex.join(command)
