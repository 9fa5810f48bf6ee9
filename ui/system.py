"""Facts about the machine the app runs on: versions, devices, CPU threads."""

from __future__ import annotations

import os

import torch
import torchvision


def devices() -> list[tuple[str, str]]:
    """Every device training can use here, as (device string, human description); CPU first."""
    found = [("cpu", f"CPU · {os.cpu_count() or '?'} cores")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append((f"cuda:{i}", f"{props.name} · {props.total_memory / 2**30:.0f} GiB"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append(("mps", "Apple GPU (MPS)"))
    return found


def gpu_count() -> int:
    """CUDA devices here: the Train page offers one process per GPU."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def best_device() -> str:
    """What `auto` picks (the engine decides, so the sidebar says what training will use)."""
    from kt_core.engine import resolve_device

    return str(resolve_device("auto"))


def facts() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "devices": ", ".join(name for name, _ in devices()),
        "CPU threads (torch)": str(torch.get_num_threads()),
        "CPU cores": str(os.cpu_count() or "?"),
    }
