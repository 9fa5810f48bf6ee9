"""The measuring side of the suite: fair timing, figures, the results table, machine facts.

Absolute times on a shared machine are noise, so every figure is a *ratio* of two things measured
in the same process run, interleaved (A B B A ...) so that a neighbour's burst of CPU hits both
sides alike, and summarised by the median of several repeats.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kt_core.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A pass condition such as `>= 0.95` or `<= 3 s`."""

    op: str  # ">=" or "<="
    value: float
    unit: str = ""

    def passed(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.op} {self.value:g}{unit}"


@dataclass
class Result:
    """One row of the table. `measured=None` with a `skip_reason` is a SKIP, never a number."""

    id: str
    title: str
    target: Target
    measured: float | None = None
    detail: str = ""
    skip_reason: str = ""
    error: str = ""  # the figure itself broke: a bug to fix, reported as ERROR

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.measured is None:
            return "SKIP"
        return "PASS" if self.target.passed(self.measured) else "FAIL"

    def measured_text(self) -> str:
        if self.measured is None:
            return "-"
        unit = f" {self.target.unit}" if self.target.unit else ""
        return f"{self.measured:.2f}{unit}"

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "measured": self.measured, "target": str(self.target),
                "verdict": self.verdict, "detail": self.detail, "skip_reason": self.skip_reason,
                "error": self.error}


@dataclass(frozen=True)
class Scale:
    """How big each measurement is: `--quick` shrinks everything, the figures stay the same."""

    name: str
    train_images: int  # images per training epoch
    epochs: int  # timed epochs come after one warm-up epoch
    repeats: int  # interleaved repeats per side; the median is reported
    batch_size: int = 64
    launches: int = 3  # B5: fresh worker launches
    ui_epochs: int = 4  # B4: epochs of the run watched in the browser


SCALES = {
    # tiny: the smoke test's size; checks that every figure runs, its numbers mean little.
    "tiny": Scale("tiny", train_images=128, epochs=1, repeats=1, batch_size=32, launches=1, ui_epochs=2),
    "quick": Scale("quick", train_images=512, epochs=2, repeats=3, launches=1, ui_epochs=3),
    "full": Scale("full", train_images=2048, epochs=3, repeats=5, launches=3, ui_epochs=6),
}


@dataclass
class Context:
    """What every figure receives."""

    scale: Scale
    device: torch.device
    threads: int
    workdir: Path  # scratch space: run folders, configs, the app's runs


class Skip(Exception):
    """A figure that cannot be measured here (no browser, no app): reported as SKIP with the reason."""


# A figure measures one number and says how: `(measured, detail)`. Its title and target live in
# the registry's metadata: `@FIGURES.register("B1", title=..., target=Target(">=", 0.95))`.
Figure = Callable[[Context], tuple[float, str]]
FIGURES: Registry[Figure] = Registry("benchmark figure")


def run_figure(name: str, ctx: Context) -> Result:
    entry = FIGURES.entry(name)
    result = Result(name, entry.meta["title"], entry.meta["target"])
    try:
        result.measured, result.detail = entry.obj(ctx)
    except Skip as exc:
        result.skip_reason = str(exc)
    except Exception as exc:  # a broken figure must not hide the others; it is reported as ERROR
        log.exception("figure %s failed", name)
        result.error = f"{type(exc).__name__}: {exc}"
    return result


# --- timing --------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each side `repeats` times in A B, B A, A B ... order and return every sample.

    Each callable returns its own rate (images/s over its timed part); warm-up belongs inside it.
    Alternating the order cancels a slow drift (thermal, a neighbour's job) to first order.
    """
    names = list(sides)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            samples[name].append(sides[name]())
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


class EpochClock:
    """Timestamps at the end of each epoch; rates over the epochs after the first (the warm-up)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def tick(self) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def images_per_s(self, images_per_epoch: int) -> float:
        if len(self.stamps) < 2:
            raise RuntimeError("need at least two epochs: the first is warm-up and never timed")
        timed = len(self.stamps) - 1
        return images_per_epoch * timed / (self.stamps[-1] - self.stamps[0])


# --- machine facts and the table -------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: torch.device, threads: int) -> dict[str, str]:
    facts = {
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "torch threads": str(threads),
        "torch": torch.__version__,
        "Python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        facts["GPU"] = torch.cuda.get_device_name(device)
    return facts


def render_table(results: list[Result]) -> str:
    lines = ["| figure | what | measured | target | result | detail |", "|---|---|---|---|---|---|"]
    for r in results:
        detail = r.error or (r.skip_reason if r.measured is None else r.detail)
        lines.append(f"| {r.id} | {r.title} | {r.measured_text()} | {r.target} | {r.verdict} | "
                     f"{detail.replace('|', '/')} |")
    return "\n".join(lines)


def render_results_md(results: list[Result], facts: dict[str, str], command: str, scale: Scale,
                      elapsed_s: float) -> str:
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fact_lines = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    return (
        "# KT Studio benchmark results\n\n"
        "Written by `python -m bench`; every figure is a ratio of two measurements taken in the same\n"
        "run, interleaved, median of the repeats (absolute times on shared machines are noise).\n\n"
        f"- command: `{command}`\n- scale: {scale.name} ({scale.train_images} training images, "
        f"{scale.epochs} timed epochs after one warm-up, {scale.repeats} repeats per side, "
        f"batch {scale.batch_size})\n- when: {when}, {elapsed_s:.0f} s in all\n{fact_lines}\n\n"
        f"{render_table(results)}\n"
    )
