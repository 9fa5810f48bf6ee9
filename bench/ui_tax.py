"""B4, the UI tax: does watching a run's live curves in the dashboard slow the run down?

Both sides launch the same run config the way the Start button does (`kt_core.runs.launch`: a
separate worker process) and read the worker's own images/s from `summary.json`. The UI side
additionally has `streamlit run app.py` serving and a headless Chromium showing the Train page
with `?run=<id>`, so the page's fragment polls the run folder and redraws the curves all along.
Without the app, Streamlit, Playwright or Chromium the figure is a SKIP that says which is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

from .harness import FIGURES, Context, Skip, Target, flat, interleave, median

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
    """CPU time so far of the dashboard server and of the browser, each with its children.

    What B4 costs is CPU taken from the worker; these two numbers say who takes it.
    """
    table = _process_table()

    def subtree(root: int) -> set[int]:
        found, frontier = {root}, [root]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _, _) in table.items() if ppid == parent]
            found.update(children)
            frontier.extend(children)
        return found

    server = subtree(streamlit_pid)
    browser = {pid for pid, (_, name, _) in table.items() if "chrom" in name.lower() or "headless" in name.lower()}
    return {"dashboard": sum(table[p][2] for p in server if p in table),
            "browser": sum(table[p][2] for p in browser - server)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard(runs_dir: Path, threads: int):
    """`streamlit run app.py` on a free port, reading `runs_dir`; yields its base URL."""
    port = free_port()
    # No standby worker: a real server starts it (importing torch, ~3 s of CPU) when its first page
    # is shown, before anyone presses Start; here the page opens mid-run and would bill it to B4.
    env = {**os.environ, "KT_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": str(threads), "KT_WARM_WORKER": "0"}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited {proc.returncode}: {proc.stderr.read().decode()[-400:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("streamlit did not answer its health check within 60 s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ui_config(ctx: Context) -> RunConfig:
    """small_cnn on 30 offline digits per class: epochs of ~1 s, so the page polls every epoch."""
    return RunConfig(
        name="bench ui tax",
        source=SourceConfig(kind="arch", arch="small_cnn"),
        dataset=DatasetConfig(name="sklearn_digits", per_class=30, val_fraction=0.1, augment="none"),
        plan=TransferPlan(preset="fine_tune"),
        train=TrainConfig(epochs=ctx.scale.ui_epochs, batch_size=ctx.scale.batch_size, device=ctx.device.type,
                          log_every=5, seed=0),
    ).validate()


def wait_until_done(run_path: Path, timeout: float) -> dict:
    """The run's summary once the worker has finished; a failed run is an error, not a number."""
    from kt_core import runs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = runs.read_status(run_path)
        if status.get("state") in FINAL_STATES:
            if status["state"] != "completed":
                raise RuntimeError(f"run {run_path.name} ended {status['state']}: {status.get('error')}")
            return json.loads((run_path / "summary.json").read_text())
        time.sleep(0.2)
    raise RuntimeError(f"run {run_path.name} did not finish within {timeout:.0f} s")


@FIGURES.register("B4", title="UI tax: a run's images/s while the Train page shows its live curves in Chromium / "
                              "the same run with no UI", target=Target(">=", 0.95))
def ui_tax(ctx: Context) -> tuple[float, str]:
    reason = missing_prerequisite()
    if reason:
        raise Skip(reason)
    from playwright.sync_api import sync_playwright

    from kt_core import runs

    cfg = ui_config(ctx)
    runs_dir = ctx.workdir / "b4_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    timeout = 120 + 60 * ctx.scale.ui_epochs

    ui_cpu: list[dict[str, float]] = []  # CPU seconds of server and browser per watched run, and its length
    with dashboard(runs_dir, ctx.threads) as (url, server_pid), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            def headless_run() -> float:
                run_id = runs.launch(cfg, runs_dir=runs_dir)
                return wait_until_done(runs_dir / run_id, timeout)["images_per_s"]

            def watched_run() -> float:
                run_id = runs.launch(cfg, runs_dir=runs_dir)
                page = browser.new_page()
                try:
                    before, started = cpu_seconds_by_group(server_pid), time.monotonic()
                    page.goto(f"{url}/train?run={run_id}", wait_until="domcontentloaded")
                    # The page is live once the curves' fragment has drawn: a Plotly chart appears.
                    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
                    summary = wait_until_done(runs_dir / run_id, timeout)
                    after = cpu_seconds_by_group(server_pid)
                    ui_cpu.append({k: after[k] - before[k] for k in after} | {"wall": time.monotonic() - started})
                finally:
                    page.close()
                return summary["images_per_s"]

            samples = interleave({"with UI": watched_run, "no UI": headless_run}, ctx.scale.ui_repeats)
        finally:
            browser.close()
    a, b = median(flat(samples["with UI"])), median(flat(samples["no UI"]))
    wall = sum(u["wall"] for u in ui_cpu)
    share = ", ".join(f"{k} {sum(u[k] for u in ui_cpu) / wall:.0%} of a core" for k in ("dashboard", "browser"))
    return a / b, (f"with the Train page open {a:.0f} img/s / without {b:.0f} img/s "
                   f"(worker's own summary, {len(samples['no UI'])} runs each); while watching: {share}")
