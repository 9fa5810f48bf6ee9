"""The measuring side of the suite: fair timing, figures, the results table, machine facts.

Absolute times on a shared machine are noise, so every figure is a *ratio* of two things measured
in the same process run, interleaved (A B B A ...) so that a neighbour's burst of CPU hits both
sides alike (B1, B3, B7 go further: the sides take turns every few batches or every epoch, see
`figures.lockstep`).
B2's runs are paired back to back, each summarised by its best timed epoch as `timeit` does
(interference only ever adds time). Latencies and memory, which users meet as typical values,
are summarised by the median.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from kt_core.callbacks import Callback
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
    repeats: int  # interleaved repeats per side
    batch_size: int = 64
    launches: int = 3  # B5: launches with the dashboard's warm worker (the figure)
    cold_launches: int = 1  # B5: launches of a fresh worker, as the CLI does (reported beside it)
    ui_epochs: int = 4  # B4: epochs of the run watched in the browser
    ui_per_class: int = 30  # B4: training digits per class (x10 classes, 10% held out): the epoch's length
    ui_repeats: int = 1  # B4: runs per side, interleaved (the median counts: one run is noisy here)
    memory_runs: int = 2  # B6: fresh processes per side
    memory_per_class: int = 50  # B6: training digits per class (the peak is torch, the model and a batch)


SCALES = {
    # tiny: the smoke test's size; checks that every figure runs, its numbers mean little.
    "tiny": Scale("tiny", train_images=96, epochs=1, repeats=1, batch_size=32, launches=1, cold_launches=0,
                  ui_epochs=2, ui_per_class=20, memory_runs=1, memory_per_class=10),
    "quick": Scale("quick", train_images=128, epochs=2, repeats=1, launches=1, cold_launches=0,
                   ui_epochs=1, ui_per_class=40, memory_runs=1, memory_per_class=20),
    "full": Scale("full", train_images=512, epochs=4, repeats=2, launches=3, cold_launches=3,
                  ui_epochs=2, ui_per_class=150, ui_repeats=5, memory_runs=2),
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


def interleave(sides: dict[str, Callable[[], float | list[float]]], repeats: int) -> dict[str, list[list[float]]]:
    """Run each side `repeats` times in A B, B A, A B ... order; per side, one list of samples a run.

    Each callable returns one sample or a list (one rate per timed epoch); warm-up belongs inside
    it. Alternating the order cancels a slow drift (thermal, a neighbour's job) to first order.
    """
    names = list(sides)
    runs: dict[str, list[list[float]]] = {n: [] for n in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            got = sides[name]()
            runs[name].append(got if isinstance(got, list) else [got])
    return runs


def median(values: list[float]) -> float:
    return statistics.median(values)


def best(rates: list[float]) -> float:
    """The fastest sample: on a busy machine noise only slows a sample down, never speeds it up."""
    return max(rates)


def flat(runs: list[list[float]]) -> list[float]:
    return [x for run in runs for x in run]


def paired_ratio(top: list[list[float]], bottom: list[list[float]]) -> float:
    """Median over repeats of best(top run i) / best(bottom run i).

    Runs i of both sides ran back to back, so they saw the same machine; pairing them cancels
    the slow swings of a shared host that a ratio of two overall bests would still catch.
    """
    return median([best(a) / best(b) for a, b in zip(top, bottom)])


def clock_for(device: torch.device) -> Callable[[], float]:
    """The clock the in-process figures use.

    On the CPU it is the process's CPU time: the machines this runs on are shared, and a
    neighbour's load stretches wall time by tens of percent but hardly changes the CPU time
    our own work takes. Both sides of a ratio are timed the same way, and nothing the in-process
    figures time sleeps or waits on I/O, so the two clocks agree on an idle machine. On a GPU the
    work runs asynchronously off the process, so wall time after a synchronize is the only truth.
    """
    return time.perf_counter if device.type == "cuda" else time.process_time


class EpochClock:
    """Timestamps at the end of each epoch; rates over the epochs after the first (the warm-up)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.now = clock_for(device)
        self.stamps: list[float] = []

    def tick(self) -> None:
        sync(self.device)
        self.stamps.append(self.now())

    def epoch_rates(self, images_per_epoch: int) -> list[float]:
        """Images/s of each epoch after the first."""
        if len(self.stamps) < 2:
            raise RuntimeError("need at least two epochs: the first is warm-up and never timed")
        return [images_per_epoch / (b - a) for a, b in zip(self.stamps, self.stamps[1:])]



class SideClock:
    """The time one side has had of a machine it shares with another loop in turns: `clock_for`'s
    clock less the other side's turns (`LockstepTurn` books them here). What a run's own timing
    policies read (the worker's checkpoint cadence), as if the run had the machine alone."""

    def __init__(self, device: torch.device):
        self.now = clock_for(device)
        self.others = 0.0

    def __call__(self) -> float:
        return self.now() - self.others


class LockstepTurn(Callback):
    """The plain side's turns, taken from inside the engine's `fit` as a callback.

    `plain_epoch(i)` starts the plain loop's epoch i: it runs it whole and returns None, or returns
    an iterator that runs one plain step per item (`plain.train_steps`). With `every=0` the plain
    side takes one turn per epoch, at the engine's `on_epoch_end`; with `every=k` (an iterator
    needed) it also takes a turn of k steps after every k engine batches (the engine asks
    `should_stop` after each batch), and finishes its epoch at `on_epoch_end`. Fine turns matter
    on this VM: a tiny MLP's epoch rate swings 16k-41k img/s from one 2 s epoch to the next, in
    CPU time, so whole-epoch turns leave each epoch pair's ratio anywhere in 0.66-1.79; turns of
    ~30 ms put both sides on the same machine. Turn-taking costs the engine one call per batch
    (~0.3 us beside a step of >= 1 ms), timed on its side.

    Each side's time for epoch i is the sum of its turns in epoch i; the engine's includes its
    between-epoch bookkeeping (validation, checkpoints, other callbacks' epoch ends). Both lists'
    first entries are warm-up: `kt_times` has no entry for the engine's first epoch (it has no
    start mark); drop `plain_times[0]` to pair them.
    """

    def __init__(self, device: torch.device, plain_epoch: Callable[[int], Iterator | None], every: int = 0,
                 kt_clock: SideClock | None = None):
        self.device, self.now, self.plain_epoch, self.every = device, clock_for(device), plain_epoch, every
        self.kt_clock = kt_clock  # the engine side's own time, less the plain turns
        self.kt_times: list[float] = []
        self.plain_times: list[float] = []
        self._resumed: float | None = None  # when the engine got the CPU back after the last plain turn
        self._steps: Iterator | None = None  # the plain epoch in progress
        self._kt = self._plain = 0.0  # the current epoch's time so far, per side

    def should_stop(self, fit_ctx) -> bool:
        # By the engine's batch count: it asks once more after each epoch's end (batch 0 then),
        # where a turn would start the plain loop's next epoch, even past the engine's last.
        done = fit_ctx.batch_in_epoch
        if self.every and done and done % self.every == 0:
            self._turn(self.every)
        return False

    def on_epoch_end(self, fit_ctx, row) -> None:
        self._turn(None)
        if self._kt_started:
            self.kt_times.append(self._kt)
        self.plain_times.append(self._plain)
        self._kt = self._plain = 0.0
        self._steps = None

    @property
    def _kt_started(self) -> bool:
        return bool(self.plain_times)  # the engine's time counts from the end of the first epoch's last turn

    def _turn(self, steps: int | None) -> None:
        """Run `steps` plain steps (None: the rest of the plain epoch) and book both sides' time."""
        sync(self.device)
        started = self.now()
        if self._resumed is not None and self._kt_started:
            self._kt += started - self._resumed
        if self._steps is None:  # a whole-epoch plain side has run by now and returned None
            self._steps = iter(self.plain_epoch(len(self.plain_times)) or ())
        for _ in itertools.islice(self._steps, steps):  # steps=None: to the end of the plain epoch
            pass
        sync(self.device)
        self._resumed = self.now()
        self._plain += self._resumed - started
        if self.kt_clock is not None:
            self.kt_clock.others += self._resumed - started


class Turns:
    """Several training loops, each in a thread of its own, taking turns of `every` batches:
    one loop runs while the others wait, round and round in the order given (B30's frameworks).

    A loop calls `batch_done(name)` after each batch (from its framework's batch-end hook); the
    thread's return ends its last turn. Each turn is timed with `clock_for` from the moment the
    loop gets the turn to the moment it hands it on, so the hand-over itself (a condition
    variable and a thread switch) is on nobody's side. While one loop runs the others sleep on the
    condition, so the process's CPU time in a turn is that loop's work (and its framework's own
    helper threads, which a whole run would count too). A loop's setup runs inside its first
    turn, and its end-of-epoch work (checkpoints, loggers' flushes) in the turn after the epoch's
    last batch: `epoch_times` books both where they belong, and a whole epoch of every side runs
    in the same stretch of the machine's time, turn for turn.
    """

    def __init__(self, names: list[str], device: torch.device, every: int):
        self.device, self.now, self.every = device, clock_for(device), every
        self.turns: dict[str, list[float]] = {name: [] for name in names}  # seconds of each turn, in order
        self._ring = list(names)  # the loops still running, in turn order
        self._holder = self._ring[0]
        self._batches = dict.fromkeys(names, 0)
        self._started = dict.fromkeys(names, 0.0)
        self._spent = dict.fromkeys(names, 0.0)  # the seconds of each loop's finished turns
        self._changed = threading.Condition()

    def run(self, loops: dict[str, Callable[[], object]]) -> dict[str, object]:
        """Run every loop to its end, turn by turn; returns each loop's return value. The first
        error of any loop is raised here, after every thread has ended (a failing loop leaves
        the ring at once, so the others go on without it)."""
        results: dict[str, object] = {}
        errors: list[BaseException] = []
        threads = torch.get_num_threads()  # OpenMP's count is per thread: a new one starts at its default

        def thread(name: str) -> None:
            torch.set_num_threads(threads)
            self._take(name)
            try:
                results[name] = loops[name]()
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
            finally:
                self._hand_on(name, leave=True)

        loop_threads = [threading.Thread(target=thread, args=(name,), name=f"turns {name}") for name in self.turns]
        for t in loop_threads:
            t.start()
        for t in loop_threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def batch_done(self, name: str) -> None:
        self._batches[name] += 1
        if self._batches[name] % self.every == 0:
            self._hand_on(name)
            self._take(name)

    def own_clock(self, name: str) -> Callable[[], float]:
        """The time `name` has had so far, for its own timing policies (the worker's checkpoint
        cadence) to read as if it had the machine alone: read only in its turns, from its thread."""
        return lambda: self._spent[name] + (self.now() - self._started[name])

    def epoch_times(self, name: str, batches_per_epoch: int) -> list[float]:
        """Seconds of each epoch of `name`: its turns, each booked to the epoch of its last batch;
        the last turn (the loop's end after its last batch) to the last epoch."""
        if batches_per_epoch % self.every:
            raise ValueError(f"turns of {self.every} batches must divide an epoch of {batches_per_epoch}")
        per_epoch = batches_per_epoch // self.every  # turns an epoch
        *body, tail = self.turns[name]
        epochs = [sum(body[i:i + per_epoch]) for i in range(0, len(body), per_epoch)]
        epochs[-1] += tail
        return epochs

    def _take(self, name: str) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._holder == name)
        sync(self.device)
        self._started[name] = self.now()

    def _hand_on(self, name: str, leave: bool = False) -> None:
        sync(self.device)
        self.turns[name].append(self.now() - self._started[name])
        self._spent[name] += self.turns[name][-1]
        with self._changed:
            at = self._ring.index(name)
            if leave:
                self._ring.remove(name)
                at -= 1
            if self._ring:
                self._holder = self._ring[(at + 1) % len(self._ring)]
            self._changed.notify_all()


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
        "clock": ("wall time after torch.cuda.synchronize" if device.type == "cuda" else
                  "process CPU time for in-process figures (B1-B3, B7), wall time for B4-B6"),
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
        "run. B1, B3: the two sides take turns every few batches, B7 epoch by epoch; the figure is the\n"
        "median per-epoch ratio; B30: every framework in a thread of its own, all taking turns of a few\n"
        "batches, each epoch paired with the plain loop's; B12: TensorBoard on and off in alternating\n"
        "one-batch windows of one run; B2: whole runs interleaved; B4: fresh runs, the median of\n"
        "back-to-back pairs' ratios; B20: back-to-back torchrun jobs, the order alternating, the median\n"
        "of the pairs; B5: fresh processes, medians; B6: fresh processes side by side, medians. Absolute\n"
        "times on shared machines are noise; the ratios are the result.\n\n"
        f"- command: `{command}`\n- scale: {scale.name} ({scale.train_images} training images, "
        f"{scale.epochs} timed epochs after one warm-up, {scale.repeats} repeats per side, "
        f"batch {scale.batch_size})\n- when: {when}, {elapsed_s:.0f} s in all\n{fact_lines}\n\n"
        f"{render_table(results)}\n"
    )
