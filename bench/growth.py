"""B24-B27: how costs grow with the work (issue #18, section 4).

A tool that is fast with five runs can crawl with five hundred. Each figure measures one cost at
three sizes and is the cost per unit of work at the largest size over the cost per unit at a
smaller one: about 1 when the cost grows no faster than the work (linear), 10 or more when it
grows with the square. The sizes are measured interleaved (small, middle, large, then the
reverse ...), each size's median taken; the detail holds every size's absolute figures.

- B24 `runs --json` with 10, 100 and 1,000 run folders: CPU time and files opened, per folder.
- B25 the Runs page (Streamlit's AppTest, the whole app) with the same folders: CPU time per
  render and files opened, per folder.
- B26 a live poll of a run whose metrics.jsonl holds 10^3, 10^5 and 10^6 rows (the Train and
  Home pages' 2 s poll, without the drawing: status, new rows, chart traces, progress caption):
  CPU and bytes read per poll, which must not grow with the file at all (the figure is the
  largest file's CPU per poll over the smallest's).
- B27 an experiment of 10, 100 and 1,000 members driven to its end with its member processes
  simulated (`SimulatedPool`: nothing trains, each member run steps queued -> running ->
  completed, one state per driver poll): the driver's CPU time per member, bytes written per
  member and experiment-folder files opened; `experiment show --json`, the Experiments page's
  first render (AppTest) and its live view's 2 s poll beside it, once per size.

Run folders are synthetic but valid: made through `kt_core.rundir` (create_run, status, summary,
metrics) as a worker leaves them. Files opened are counted with an audit hook (`open` events,
which `open()` and `os.open` raise) for paths under the folder measured.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

from .harness import FIGURES, Context, Target

SIZES = {"tiny": (3, 10, 30), "quick": (10, 100, 1000), "full": (10, 100, 1000)}
POLL_ROWS = {"tiny": (10**2, 10**3, 10**4), "quick": (10**3, 10**4, 10**5), "full": (10**3, 10**5, 10**6)}
POLLS = 20  # timed polls per size and repeat, each after the worker appended ROWS_PER_POLL rows
ROWS_PER_POLL = 10


# --- counting the files a piece of code opens ----------------------------------------------------

class _Opens:
    root: str | None = None
    count = 0


def _audit(event: str, args) -> None:
    if event == "open" and _Opens.root is not None and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.fsdecode(args[0]).startswith(_Opens.root):
            _Opens.count += 1


_hooked = False


@contextlib.contextmanager
def counting_opens(root: Path):
    """Count the files opened under `root` meanwhile (`.count` of the yielded object)."""
    global _hooked
    if not _hooked:  # an audit hook cannot be removed: one, idle unless a root is set
        sys.addaudithook(_audit)
        _hooked = True
    _Opens.root, _Opens.count = str(Path(root).resolve()), 0
    try:
        yield _Opens
    finally:
        _Opens.root = None


def interleaved(sides: dict, repeats: int) -> dict[object, list]:
    """Each size's samples, the sizes taking turns in alternating order (as `harness.interleave`)."""
    names = list(sides)
    out: dict[object, list] = {n: [] for n in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            out[name].append(sides[name]())
    return out


# --- synthetic run folders -------------------------------------------------------------------

def make_runs(root: Path, count: int, epochs: int = 3, steps_per_epoch: int = 5) -> list[str]:
    """`count` completed run folders as a worker leaves them (config, status, metrics, summary)."""
    from kt_core import rundir
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

    ids = []
    for i in range(count):
        baseline = i % 2 == 1  # half of them from-scratch twins of the run before
        cfg = RunConfig(name=f"growth {i}", source=SourceConfig(kind="arch", arch="mnist_net"),
                        dataset=DatasetConfig(name="sklearn_digits", per_class=5, image_size=28),
                        plan=TransferPlan(preset="scratch" if baseline else "fine_tune"),
                        train=TrainConfig(epochs=epochs, batch_size=32, seed=i),
                        baseline_of=ids[-1] if baseline else None).validate()
        folder = rundir.create_run(cfg, root)
        appender = rundir.MetricsAppender(folder)
        for e in range(1, epochs + 1):
            for s in range(steps_per_epoch):
                appender.append({"kind": "step", "step": (e - 1) * steps_per_epoch + s + 1, "epoch": e,
                                 "train_loss": 1.0 / e, "lr": 1e-3, "images_per_s": 400.0, "time": 0.0})
            appender.append({"kind": "epoch", "epoch": e, "step": e * steps_per_epoch, "train_loss": 1.0 / e,
                             "train_acc": 0.5 + e / 10, "val_loss": 1.0 / e, "val_acc": 0.45 + e / 10,
                             "epoch_s": 0.5, "lr": 1e-3, "time": 0.0})
        appender.close()
        rundir.update_status(folder, state="completed", epoch=epochs, step=epochs * steps_per_epoch,
                             total_steps=epochs * steps_per_epoch)
        rundir.write_summary(folder, {"state": "completed", "best_val_acc": 0.75, "final_val_acc": 0.75,
                                      "test_acc": 0.74, "test_split": "carved", "epochs": epochs,
                                      "method": cfg.method(), "arch": "mnist_net"})
        ids.append(folder.name)
    return ids


def _run_folders(ctx: Context) -> dict[int, Path]:
    """One runs folder per size, made once per bench run (B24 and B25 share them)."""
    out = {}
    for n in SIZES[ctx.scale.name]:
        root = ctx.workdir / f"growth_runs_{n}"
        if not root.is_dir():
            make_runs(root, n)
        out[n] = root
    return out


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def _growth(per_unit: dict[int, float]) -> float:
    """Cost per unit at the largest size over the cost per unit at the middle one (the smallest
    is dominated by fixed costs: start-up, the page's own widgets)."""
    sizes = sorted(per_unit)
    return per_unit[sizes[-1]] / per_unit[sizes[1]]


def _spread(samples: list[float], scale: float = 1.0, unit: str = "") -> str:
    return f"{min(samples) * scale:.1f}-{max(samples) * scale:.1f}{unit}" if len(samples) > 1 else "one sample"


# --- B24: runs --json --------------------------------------------------------------------------

def _runs_json(root: Path) -> int:
    from kt_core.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["runs", "--json", "--runs-dir", str(root)])
    if code != 0:
        raise RuntimeError(f"runs --json exited {code}")
    return len(json.loads(out.getvalue()))


@FIGURES.register("B24", title="growth: `runs --json` CPU time per run folder, 1,000 folders / 100 (synthetic "
                               "completed runs)", target=Target("<=", 1.5))
def runs_json_growth(ctx: Context) -> tuple[float, str]:
    roots = _run_folders(ctx)
    for n, root in roots.items():  # warm-up: imports (pandas) and the page cache
        if _runs_json(root) != n:
            raise RuntimeError(f"runs --json listed the wrong number of runs in {root}")
    return _per_folder_growth(roots, lambda r: _cpu(lambda: _runs_json(r)), _runs_json,
                              max(3, 2 * ctx.scale.repeats + 1), "interleaved calls", digits=3)


def _per_folder_growth(roots: dict[int, Path], measure, run_once, repeats: int, what: str,
                       digits: int) -> tuple[float, str]:
    """B24 and B25: `measure(root)` (CPU s) interleaved over the sizes, then the files one
    `run_once(root)` opens; the figure is the CPU time per folder at the largest size over the
    next (`_growth`)."""
    samples = interleaved({n: (lambda r=root: measure(r)) for n, root in roots.items()}, repeats)
    opened = {}
    for n, root in roots.items():
        with counting_opens(root) as opens:
            run_once(root)
        opened[n] = opens.count
    per = {n: statistics.median(s) / n for n, s in samples.items()}
    shown = "; ".join(f"{n} folders: {statistics.median(s):.{digits}f} s CPU (spread {_spread(s, unit=' s')}), "
                      f"{opened[n]} files opened ({opened[n] / n:.1f} per folder)" for n, s in samples.items())
    return _growth(per), f"median of {len(next(iter(samples.values())))} {what} per size; {shown}"


# --- B25: the Runs page ------------------------------------------------------------------------

def _render_page(page: str, title: str, **env: str) -> float:
    """CPU seconds of one render of `page` in a fresh session (the app first, untimed), with `env`
    added to the environment (patch.dict restores it after); no standby worker: one per render
    would be noise."""
    from streamlit.testing.v1 import AppTest

    root_dir = Path(__file__).resolve().parents[1]
    with mock.patch.dict(os.environ, KT_WARM_WORKER="0", **env):
        at = AppTest.from_file(str(root_dir / "app.py"), default_timeout=300)
        at.run()
        start = time.process_time()
        at.switch_page(page).run()
        took = time.process_time() - start
    if at.exception:
        raise RuntimeError(f"the {title} page failed: {at.exception[0].message}")
    return took


def _render_runs_page(root: Path) -> float:
    """CPU seconds of one render of the Runs page in a fresh session (the app, then the page)."""
    return _render_page("app_pages/runs.py", "Runs", KT_RUNS_DIR=str(root))


@FIGURES.register("B25", title="growth: the Runs page's render CPU time per run folder, 1,000 folders / 100 "
                               "(AppTest, synthetic completed runs)", target=Target("<=", 1.5))
def runs_page_growth(ctx: Context) -> tuple[float, str]:
    roots = _run_folders(ctx)
    for root in roots.values():
        _render_runs_page(root)  # warm-up: Streamlit, the page's imports
    return _per_folder_growth(roots, _render_runs_page, _render_runs_page, max(1, ctx.scale.repeats),
                              "renders", digits=2)


# --- B26: a live poll of a long run ----------------------------------------------------------

POLL_EPOCHS = 10  # every size's run has this many epochs: the sizes differ in step rows alone


def _long_run(root: Path, rows: int) -> str:
    """A running run whose metrics.jsonl holds `rows` step rows over POLL_EPOCHS epochs (an epoch
    row each: the chart draws every epoch, so their number is the run's, not the file's)."""
    from kt_core import rundir

    (run_id,) = make_runs(root, 1, epochs=1, steps_per_epoch=0)
    folder = rundir.run_dir(run_id, root)
    path = rundir.metrics_path(folder)
    per_epoch = rows // POLL_EPOCHS
    with open(path, "w") as f:
        for i in range(rows):
            f.write(f'{{"kind": "step", "step": {i + 1}, "epoch": {i // per_epoch + 1}, '
                    f'"train_loss": {1 / (i + 1):.6f}, "lr": 0.001, "images_per_s": 400.0, "time": {i}.0}}\n')
            if (i + 1) % per_epoch == 0:
                f.write(f'{{"kind": "epoch", "epoch": {(i + 1) // per_epoch}, "step": {i + 1}, "train_loss": 0.1, '
                        f'"train_acc": 0.9, "val_loss": 0.2, "val_acc": 0.85, "epoch_s": 2.0, "time": {i}.0}}\n')
    # a live run: the page polls it (the pid is this process, the heartbeat fresh)
    rundir.update_status(folder, state="running", pid=os.getpid(), heartbeat=time.time(), step=rows,
                         total_steps=2 * rows, epoch=POLL_EPOCHS)
    return str(folder)


def _rchar() -> int | None:
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))
    except (OSError, StopIteration):
        return None


class _Poller:
    """One browser session watching one run, polled as `ui.curves.render_runs(live=True)` does."""

    def __init__(self, folder: str):
        from ui import curves

        self.curves, self.folder = curves, folder
        self.seen = curves._Seen.of(folder)
        self.step = None
        start, before = time.process_time(), _rchar()
        self.poll()
        self.first_s = time.process_time() - start
        self.first_bytes = (_rchar() - before) if before is not None else None

    def poll(self) -> None:
        from kt_core import rundir

        status = rundir.read_status(self.folder)
        rows = self.seen.read(self.folder)
        series = self.curves.Series("run", rows)
        self.curves.traces([series])
        self.curves.progress_info(status, rows, self.seen.batch_size, self.seen.epochs)
        self.step = rows[-1].get("step") if rows else None

    def append(self, rows: int) -> None:
        from kt_core import rundir

        appender = rundir.MetricsAppender(Path(self.folder))
        for _ in range(rows):
            self.step = (self.step or 0) + 1
            appender.append({"kind": "step", "step": self.step, "epoch": 1, "train_loss": 0.1, "lr": 0.001,
                             "images_per_s": 400.0, "time": 0.0})
        appender.close()
        rundir.update_status(self.folder, heartbeat=time.time(), step=self.step)

    def timed_polls(self, count: int) -> list[tuple[float, int | None]]:
        out = []
        for _ in range(count):
            self.append(ROWS_PER_POLL)
            start, before = time.process_time(), _rchar()
            self.poll()
            took = time.process_time() - start
            out.append((took, (_rchar() - before) if before is not None else None))
        return out


@FIGURES.register("B26", title="growth: a live poll's CPU time, a run of 10^6 metric rows / one of 10^3 "
                               "(10 new rows per poll)", target=Target("<=", 1.5))
def poll_growth(ctx: Context) -> tuple[float, str]:
    sizes = POLL_ROWS[ctx.scale.name]
    pollers = {n: _Poller(_long_run(ctx.workdir / f"growth_poll_{n}", n)) for n in sizes}
    samples = interleaved({n: (lambda p=p: p.timed_polls(POLLS)) for n, p in pollers.items()},
                          max(2, 2 * ctx.scale.repeats))
    cpu = {n: [t for run in runs for t, _ in run] for n, runs in samples.items()}
    read = {n: [b for run in runs for _, b in run if b is not None] for n, runs in samples.items()}
    med = {n: statistics.median(v) for n, v in cpu.items()}
    shown = "; ".join(
        f"{n:.0e} rows: {med[n] * 1e3:.2f} ms CPU per poll (spread {_spread(cpu[n], 1e3, ' ms')}), "
        + (f"{statistics.median(read[n]):.0f} bytes read per poll" if read[n] else "bytes read: no /proc/self/io")
        + f"; first look {pollers[n].first_s:.2f} s CPU"
        + (f", {pollers[n].first_bytes / 1e6:.1f} MB" if pollers[n].first_bytes is not None else "")
        + f", {len(pollers[n].seen.digest.rows)} rows kept"
        for n in sizes)
    return med[sizes[-1]] / med[sizes[0]], f"medians of {len(cpu[sizes[0]])} polls per size; {shown}"


# --- B27: an experiment's bookkeeping against its member count --------------------------------

EXPERIMENT_SLOTS = 4  # members "training" at a time


class SimulatedPool:
    """The driver's member processes, simulated at their seam (`driver.Pool`): a member handed to
    a slot is marked queued at once, as `Pool.assign` does, and then moves one state per driver
    poll, queued -> running -> completed (with a summary), as a worker would leave its run folder;
    nothing is trained and no process is started. Everything else is the real driver: the spec's
    expansion, the member run folders it creates, its status reads and its record of the members."""

    def __init__(self, size: int, log_path=None):
        from kt_core.experiments.driver import Slot

        self.slots = [Slot(i) for i in range(size)]

    def free(self):
        from kt_core import rundir

        for slot in self.slots:  # the "member processes" step once per driver poll
            if slot.key is None:
                continue
            state = rundir.read_status_file(slot.folder).get("state")
            if state == "queued":
                rundir.update_status(slot.folder, state="running", heartbeat=time.time(), epoch=1)
            elif state == "running":
                rundir.write_summary(slot.folder, {"state": "completed", "final_val_acc": 0.75, "test_acc": 0.74,
                                                   "test_split": "carved", "num_classes": 3, "train_images": 15})
                rundir.update_status(slot.folder, state="completed", heartbeat=time.time(), epoch=1)
        return [s for s in self.slots if s.key is None]

    def assign(self, slot, folder: Path, key: str) -> None:
        from kt_core import rundir

        rundir.update_status(folder, state="queued", pid=os.getpid(), heartbeat=time.time(), error=None)
        slot.folder, slot.key = folder, key

    def close(self, timeout: float = 10.0) -> None:
        pass


def experiment_spec(members: int) -> dict:
    """`members` members: one method, one K, `members` seeds (each seed its own member run)."""
    return {"kind": "sample_efficiency", "name": f"growth-{members}",
            "base": {"name": "growth", "source": {"kind": "arch", "arch": "mnist_net"},
                     "dataset": {"name": "sklearn_digits", "classes": [0, 1, 2], "image_size": 28, "channels": 1},
                     "train": {"epochs": 1, "batch_size": 8, "device": "cpu"}},
            "methods": ["scratch"], "per_class": [5], "seeds": members, "parallel": EXPERIMENT_SLOTS}


def _wchar() -> int | None:
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar"))
    except (OSError, StopIteration):
        return None


def drive_simulated(root: Path, members: int) -> dict:
    """One experiment of `members` simulated members driven to its end in this process (a fresh
    experiment and runs folder under `root`): CPU s, bytes written (the whole process's, from
    /proc/self/io: the member run folders too) and files the driver opened in the experiment
    folder."""
    from kt_core import experiments as ex
    from kt_core.experiments import driver

    root.mkdir(parents=True)
    runs_dir = root / "runs"
    with mock.patch.dict(os.environ, KT_EXPERIMENTS_DIR=str(root / "experiments")), \
            mock.patch.object(driver, "Pool", SimulatedPool), mock.patch.object(driver, "POLL_S", 0.0):
        folder = ex.create_experiment(ex.ExperimentSpec.from_dict(experiment_spec(members)), runs_dir)
        before, start = _wchar(), time.process_time()
        with counting_opens(folder) as opens:
            data = driver.drive(folder)
            opened = opens.count
        cpu = time.process_time() - start
        written = (_wchar() - before) if before is not None else None
    if data["state"] != "completed" or data["progress"]["done"] != members:
        raise RuntimeError(f"the simulated experiment of {members} members ended {data['state']}: {data.get('error')}")
    return {"cpu": cpu, "written": written, "opened": opened, "folder": folder, "runs_dir": runs_dir}


def _show_json(folder: Path, runs_dir: Path) -> float:
    """CPU s of one `experiment show ID --json` (the members' table, points and verdict)."""
    from kt_core.cli import main

    out = io.StringIO()
    with mock.patch.dict(os.environ, KT_EXPERIMENTS_DIR=str(folder.parent)), contextlib.redirect_stdout(out):
        start = time.process_time()
        code = main(["experiment", "show", folder.name, "--json", "--runs-dir", str(runs_dir)])
        took = time.process_time() - start
    if code != 0:
        raise RuntimeError(f"experiment show exited {code}")
    return took


def _render_experiments_page(folder: Path, runs_dir: Path) -> float:
    """CPU s of one render of the Experiments page (AppTest, a fresh session) showing `folder`'s
    experiment, completed: its chart, verdict, members' table and downloads."""
    from kt_core.experiments import results

    results._ENDED.clear()  # a first look: nothing of the members known yet
    return _render_page("app_pages/experiments.py", "Experiments", KT_RUNS_DIR=str(runs_dir),
                        KT_EXPERIMENTS_DIR=str(folder.parent))


def _live_poll(folder: Path) -> float:
    """CPU s of one poll of the Experiments page's live view (`ui.experiment_view.live` without
    the drawing: the experiment, the members' table, the points, the verdict, the chart's figure),
    after a first one: what each 2 s poll costs while the experiment runs."""
    from kt_core import experiments as ex
    from kt_core.experiments import report, results

    def poll():
        data = ex.read_experiment(folder)
        members = results.member_table(data)
        points = results.aggregate(data, members)
        report.figure(data, points, results.conclude(data, points))

    poll()
    return _cpu(poll)


@FIGURES.register("B27", title="growth: an experiment driver's bookkeeping CPU time per member, 1,000 members / "
                               "100 (member training simulated at the driver's process pool)",
                  target=Target("<=", 1.5))
def experiment_growth(ctx: Context) -> tuple[float, str]:
    sizes = SIZES[ctx.scale.name]
    base = ctx.workdir / "growth_experiments"
    drive_simulated(base / "warm-up", sizes[0])  # imports, the spec machinery's first use
    counter = iter(range(10**6))
    samples = interleaved({n: (lambda n=n: drive_simulated(base / f"{n}-{next(counter)}", n)) for n in sizes},
                          max(1, ctx.scale.repeats))
    cpu = {n: [s["cpu"] for s in runs] for n, runs in samples.items()}
    per = {n: statistics.median(v) / n for n, v in cpu.items()}
    last = {n: runs[-1] for n, runs in samples.items()}
    _show_json(last[sizes[0]]["folder"], last[sizes[0]]["runs_dir"])  # warm-up: pandas, the CLI's imports
    show = {n: _show_json(last[n]["folder"], last[n]["runs_dir"]) for n in sizes}
    show_per = {n: show[n] / n for n in sizes}
    _render_experiments_page(last[sizes[0]]["folder"], last[sizes[0]]["runs_dir"])  # warm-up: Streamlit
    page = {n: _render_experiments_page(last[n]["folder"], last[n]["runs_dir"]) for n in sizes}
    page_per = {n: page[n] / n for n in sizes}
    live = {n: _live_poll(last[n]["folder"]) for n in sizes}
    parts = []
    for n in sizes:
        written = [s["written"] for s in samples[n] if s["written"] is not None]
        parts.append(f"{n} members: {statistics.median(cpu[n]):.2f} s CPU (spread {_spread(cpu[n], unit=' s')}, "
                     f"{per[n] * 1e3:.1f} ms per member), "
                     + (f"{statistics.median(written) / n / 1e3:.1f} kB written per member" if written
                        else "bytes written: no /proc/self/io")
                     + f", {last[n]['opened'] / n:.1f} experiment-folder files opened per member; "
                     f"`experiment show --json` {show[n]:.2f} s CPU ({show_per[n] * 1e3:.1f} ms per member), "
                     f"the Experiments page {page[n]:.2f} s CPU ({page_per[n] * 1e3:.1f} ms per member), "
                     f"its live view's poll {live[n] * 1e3:.0f} ms CPU")
    return _growth(per), (
        f"median of {len(cpu[sizes[0]])} simulated experiments per size, interleaved ({EXPERIMENT_SLOTS} at a "
        "time; each member run queued -> running -> completed by a simulated member process, one state per "
        "driver poll, the poll's sleep set to 0; the driver, the spec's expansion and the member run folders "
        "real); per member, largest / middle: `experiment show --json` "
        f"{_growth(show_per):.2f}, the Experiments page (AppTest render) {_growth(page_per):.2f}; "
        + "; ".join(parts))
