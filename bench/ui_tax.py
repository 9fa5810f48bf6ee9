"""B4, the UI tax: does watching a run's live curves in the dashboard slow the run down?

The UI side is what a user does: the dashboard is open in a browser (headless Chromium, Train
page) and the run starts with its **Start** button, so the page polls the run folder and redraws
the curves until the run ends. The other side starts the same config with no dashboard at all
(`kt_core.launcher.launch`, as the CLI does). Both sides read the worker's own images/s from
`summary.json`, and the config the dashboard launched is checked to be the same as the CLI's.
Opening the dashboard (loading the app into the browser, the server's first page) happens once,
before any timed run, as it does for a user: it is reported beside the figure, not in it.
Without the app, Streamlit, Playwright or Chromium the figure is a SKIP that says which is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from pathlib import Path

from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

from .harness import FIGURES, Context, Skip, Target, flat, interleave, median, paired_ratio

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FINAL_STATES = ("completed", "stopped", "failed", "interrupted")


def missing_prerequisite() -> str | None:
    """Why B4 cannot run here, or None."""
    if not (ROOT / "app.py").is_file() or not (ROOT / "app_pages" / "train.py").is_file():
        return "the dashboard (app.py with app_pages/train.py) is not in this checkout"
    for module in ("streamlit", "playwright"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed (pip install -r requirements-dev.txt)"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (make browser installs Debian's)"
    return None


def _process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds so far), from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / ticks)
    return table


def cpu_seconds_by_group(streamlit_pid: int) -> dict[str, float]:
    """CPU time so far of the dashboard server process and of the browser we drive.

    What B4 costs is CPU taken from the worker; these two numbers say who takes it. The server's
    children are not counted: they are the training workers that its Start button launched. The
    browser is the Chromium processes under this process (Playwright's), not any on the machine.
    """
    table = _process_table()
    ours, frontier = set(), [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _, _) in table.items() if ppid == parent and pid not in ours]
        ours.update(children)
        frontier.extend(children)
    browser = [table[pid][2] for pid in ours if "chrom" in table[pid][1].lower() or "headless" in table[pid][1].lower()]
    return {"dashboard": table.get(streamlit_pid, (0, "", 0.0))[2], "browser": sum(browser)}


def ui_config(ctx: Context) -> RunConfig:
    """small_cnn on offline digits; full scale: 150 per class, epochs of ~5 s and a step row about
    every second, so each poll of the page has new rows to draw (its costliest case). Epochs that
    long keep the per-epoch validation and checkpoint a small, steady part of the run's time.
    No test split: it would take 20 % of the digits (the smallest class then has 128, and Start
    refuses 150 per class: B4's ERROR in both runs of 2026-12-01), and scoring it is no epoch's work."""
    return RunConfig(
        name="bench ui tax",
        source=SourceConfig(kind="arch", arch="small_cnn"),
        dataset=DatasetConfig(name="sklearn_digits", per_class=ctx.scale.ui_per_class, val_fraction=0.1,
                              test_fraction=0.0, augment="none"),
        plan=TransferPlan(preset="fine_tune"),
        train=TrainConfig(epochs=ctx.scale.ui_epochs, batch_size=ctx.scale.batch_size, device=ctx.device.type,
                          log_every=5, seed=0),
    ).validate()


def wait_until_done(run_path: Path, timeout: float) -> dict:
    """The run's summary once the worker has finished; a failed run is an error, not a number."""
    from kt_core import rundir

    def ended() -> dict | None:
        status = rundir.read_status(run_path)
        return status if status["state"] in FINAL_STATES else None

    status = _until(ended, timeout, f"run {run_path.name} to finish")
    if status["state"] != "completed":
        raise RuntimeError(f"run {run_path.name} ended {status['state']}: {status.get('error')}")
    return rundir.read_summary(run_path)


def open_train_page(page, url: str, template_run: str) -> None:
    """Load the dashboard and put `template_run`'s config on the Train page, baseline off.

    The way a user re-runs a config: Runs -> "Edit and re-run" -> Train.
    """
    page.goto(f"{url}/runs?run={template_run}")
    page.get_by_role("button", name="Edit and re-run").click()
    page.get_by_role("heading", name="Train", exact=True).wait_for()
    baseline = page.get_by_role("checkbox", name="Also train a from-scratch baseline")
    if baseline.is_checked():
        page.get_by_text("Also train a from-scratch baseline").click()
        _until(lambda: not baseline.is_checked(), 30, "the baseline checkbox to clear")


def start_from_page(page, runs_dir: Path) -> str:
    """Press Start on the Train page; the id of the run it launched."""
    from kt_core import rundir

    known = set(rundir.run_ids(runs_dir))
    start = page.get_by_role("button", name="Start")
    start.click()
    try:
        return _until(lambda: next(iter(set(rundir.run_ids(runs_dir)) - known), None), 60, "Start to create a run")
    except RuntimeError as exc:
        # Start refuses a config it cannot run with a message on the page (B4's ERROR on 2026-12-01:
        # more digits per class than the splits leave): say what the page showed.
        alerts = [a.inner_text(timeout=5_000) for a in page.locator('[data-testid="stAlert"]').all()]
        raise RuntimeError(f"{exc}; Start enabled: {start.is_enabled(timeout=5_000)}; the page's messages: "
                           f"{alerts or 'none'}") from None


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def same_run(cfg: RunConfig, launched: RunConfig) -> None:
    """The dashboard must have launched exactly the CLI side's config (its name aside)."""
    want, got = cfg.to_dict(), launched.to_dict()
    want.pop("name", None), got.pop("name", None)
    if want != got:
        diff = {k: (want.get(k), got.get(k)) for k in want.keys() | got.keys() if want.get(k) != got.get(k)}
        raise RuntimeError(f"the dashboard launched another config than the CLI side: {diff}")


@FIGURES.register("B4", title="UI tax: a run's images/s while the Train page shows its live curves in Chromium / "
                              "the same run with no UI", target=Target(">=", 0.95))
def ui_tax(ctx: Context) -> tuple[float, str]:
    reason = missing_prerequisite()
    if reason:
        raise Skip(reason)
    from playwright.sync_api import sync_playwright

    from kt_core import launcher, rundir
    from ui.server import serve

    cfg = ui_config(ctx)
    runs_dir = ctx.workdir / "b4_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    timeout = 120 + 60 * ctx.scale.ui_epochs
    # No standby worker: the CLI side has none either (B5 measures what it buys at Start).
    env = {"KT_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": str(ctx.threads), "KT_WARM_WORKER": "0"}

    def headless_run() -> float:
        run_id = launcher.launch(cfg, runs_dir=runs_dir)
        return wait_until_done(runs_dir / run_id, timeout)["images_per_s"]

    cpu: dict[str, list[dict[str, float]]] = {"with UI": [], "no UI": []}  # per run: CPU s of server, browser
    opened: dict[str, float] = {}  # CPU s that opening the dashboard took, once

    with serve(env) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page()
            # Playwright's 30 s default is a wall-clock limit on each click: on a busy host the Runs
            # page was still laying out (its button not yet "stable") when it ran out, and the whole
            # figure was an ERROR. Nothing here is timed by these waits (CPU is counted apart).
            page.set_default_timeout(180_000)

            def measured(side: str, run) -> float:
                start, started = cpu_seconds_by_group(server.pid), time.monotonic()
                rate = run()
                end = cpu_seconds_by_group(server.pid)
                cpu[side].append({k: end[k] - start[k] for k in end} | {"wall": time.monotonic() - started})
                return rate

            def watched_run() -> float:
                run_id = start_from_page(page, runs_dir)
                same_run(cfg, rundir.load_config(runs_dir / run_id))
                page.wait_for_selector(".kt-live", timeout=60_000)  # the live chart is drawn
                return wait_until_done(runs_dir / run_id, timeout)["images_per_s"]

            def settled() -> None:
                """The page has drawn the last run's final chart and offers Start again."""
                _until(lambda: page.get_by_role("button", name="Start").is_enabled(), 60, "Start to be enabled")

            # Opened once, before any timed run, on a folder holding the config (never trained: the
            # Runs page has nothing to evaluate in it, which would only lengthen the opening).
            template = rundir.create_run(dataclasses.replace(cfg, name="bench ui tax (template)"), runs_dir)
            before = cpu_seconds_by_group(server.pid)
            open_train_page(page, server.url, template.name)
            after = cpu_seconds_by_group(server.pid)
            opened.update({k: after[k] - before[k] for k in after})

            def watched() -> float:
                rate = measured("with UI", watched_run)
                settled()  # outside both sides' CPU windows: it follows this run, it is not part of the next
                return rate

            samples = interleave({"with UI": watched, "no UI": lambda: measured("no UI", headless_run)},
                                 ctx.scale.ui_repeats)
        finally:
            browser.close()
    # Runs i of both sides ran back to back: their ratio cancels the host's slow swings (±15% from
    # one epoch to the next here), which a ratio of two medians still carries.
    ratio = paired_ratio(samples["with UI"], samples["no UI"])
    a, b = median(flat(samples["with UI"])), median(flat(samples["no UI"]))

    def share(side: str) -> str:
        wall = sum(u["wall"] for u in cpu[side])
        return ", ".join(f"{k} {sum(u[k] for u in cpu[side]) / wall:.0%}" for k in ("dashboard", "browser"))

    pairs = len(samples['no UI'])
    return ratio, (f"median of {pairs} back-to-back pair{'s' if pairs != 1 else ''}; with the Train page open {a:.0f} img/s / "
                   f"without {b:.0f} img/s (medians, worker's own summary); CPU of a core while watching: {share('with UI')}; "
                   f"while the page sat idle: {share('no UI')}; opening the dashboard, once: "
                   f"{opened['dashboard']:.1f} s server, {opened['browser']:.1f} s browser")
