"""Real-browser tests: Debian's Chromium driven by Playwright against `streamlit run app.py`.

The whole flow a user clicks through (source, freeze layers, dataset, start, live curve, stop,
the run listed on Runs), then the one-click demo. Screenshots of every page go to
test-artifacts/, and the Train page with live curves to docs/screenshots/train.png (the README's).
We never run `playwright install`: the browser is /usr/bin/chromium (Makefile: `make browser`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
README_SHOT = ROOT / "docs" / "screenshots" / "train.png"
CHROMIUM = os.environ.get("KT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _need(condition: bool, reason: str) -> None:
    """Skip with the reason locally; under CI a missing browser is a failure, not a silent pass."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def streamlit_server(home: Path):
    """`streamlit run app.py` on a free port, with its own runs and cache folders under `home`."""
    from ui.server import serve

    env = {"KT_RUNS_DIR": str(home / "runs"), "KT_CACHE_DIR": str(home / "cache")}
    try:
        with serve(env, log_path=home / "streamlit.log") as srv:
            yield {"url": srv.url, "runs": home / "runs"}
    finally:
        _stop_all(home / "runs")  # workers outlive the server by design


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("kt_browser")) as srv:
        yield srv


def _stop_all(runs_dir: Path) -> None:
    """Workers outlive the server by design; the test stops the ones it started."""
    from kt_core import launcher, rundir

    for run_id in rundir.run_ids(runs_dir):
        if rundir.is_active(runs_dir / run_id):
            launcher.stop(runs_dir / run_id, timeout=3)


@pytest.fixture(scope="module")
def browser():
    _need(Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None,
          f"needs Debian's Chromium at {CHROMIUM} (make browser installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def goto_page(page, title: str) -> None:
    """Client-side navigation through the sidebar: the session (the user's choices) survives."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title, exact=True).wait_for()


def select(page, label: str, option: str) -> None:
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label)
    box.locator('[role="combobox"], input').first.click()
    page.get_by_role("option", name=option).first.click()


def set_number(page, label: str, value) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


def live_points(page) -> dict[str, int]:
    """Points per line of the live chart (a canvas; it lists its lines' lengths in data-points)."""
    chart = page.locator(".kt-live")  # Playwright's CSS locators pierce the component's shadow root
    if not chart.count():
        return {}
    return json.loads(chart.first.get_attribute("data-points") or "{}")


def trace_lengths(page, chart: int = 0) -> dict[str, int]:
    """Points per trace of a Plotly chart (the final one, drawn when the runs have ended)."""
    return page.evaluate(
        """(i) => { const g = document.querySelectorAll('.js-plotly-plot')[i];
                    if (!g || !g.data) return {};
                    return Object.fromEntries(g.data.map(t => [t.name, (t.x || []).length])); }""", chart)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_whole_flow_source_layers_dataset_train_stop_runs(server, page):
    page.goto(server["url"])
    page.get_by_role("heading", name="KT Studio").wait_for()
    shot(page, "1-home")

    goto_page(page, "Source")
    page.get_by_text("Layer tree").wait_for()  # small_cnn, the default source, is loaded and listed
    shot(page, "2-source")

    goto_page(page, "Layers")
    select(page, "Preset", "freeze_first_n")
    set_number(page, "Blocks frozen from the input", 2)
    page.get_by_text("Training work saved").wait_for()
    wait_for(lambda: "0%" not in page.locator('[data-testid="stMetric"]').nth(1).inner_text(), 30,
             "the cost summary to show the work saved by freezing")
    shot(page, "3-layers")

    goto_page(page, "Dataset")
    set_number(page, "Labelled images per class (0 = all)", 10)
    page.get_by_text("Preview").first.wait_for()
    page.locator('[data-testid="stImage"]').first.wait_for()
    shot(page, "4-dataset")

    goto_page(page, "Train")
    set_number(page, "Epochs", 40)
    page.get_by_role("button", name="Start").click()
    page.get_by_role("heading", name="Run ").first.wait_for()
    assert "run=" in page.url and "baseline=" in page.url  # a refresh or a second tab re-attaches
    # The curve gains points while the worker trains (epoch rows: train/val loss and accuracy).
    wait_for(lambda: live_points(page).get("transfer · val acc", 0) >= 2, 150, "two epochs on the live chart")
    first = live_points(page)["transfer · val acc"]
    wait_for(lambda: live_points(page).get("transfer · val acc", 0) > first, 60, "the live chart to gain a point")
    wait_for(lambda: live_points(page).get("from scratch · val acc", 0) >= 1, 60, "the baseline overlaid")
    assert page.locator(".js-plotly-plot").count() == 0  # no Plotly re-layout at every poll (bench B4)
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1350})  # Streamlit scrolls inside: full_page is not enough
    wait_for(lambda: live_points(page).get("from scratch · val acc", 0) >= 2, 60, "a second baseline epoch")
    page.screenshot(path=str(README_SHOT), full_page=True)
    shot(page, "5-train")

    page.get_by_role("button", name="Stop").click()
    wait_for(lambda: page.get_by_text("stopped · epoch").count() >= 1, 60, "the run to show state stopped")
    # Stopped: the page draws the interactive Plotly chart with every epoch the live one showed.
    wait_for(lambda: trace_lengths(page).get("transfer · val acc", 0) > first, 60, "the final chart")

    goto_page(page, "Runs")
    page.get_by_text("state stopped").first.wait_for()
    shot(page, "6-runs")
    from kt_core import runs

    listed = runs.list_runs(server["runs"])
    assert set(listed["state"]) == {"stopped"} and len(listed) == 2  # the run and its baseline


def test_the_demo_runs_offline_and_concludes_from_its_results(server, page):
    page.goto(server["url"])
    page.get_by_role("button", name="Run the demo").click()
    page.locator(".kt-live").first.wait_for()
    wait_for(lambda: page.get_by_text("from scratch:").count() >= 1, 300, "the demo's conclusion line")
    text = page.get_by_text("from scratch:").first.inner_text()
    assert text.startswith("Transfer: ") and "labelled images per class" in text
    # Both runs ended: the final, interactive chart replaces the live one.
    lengths = wait_for(lambda: trace_lengths(page), 60, "the final Plotly chart")
    assert lengths["transfer · val acc"] >= 2 and lengths["from scratch · val acc"] >= 2
    shot(page, "7-demo")


def test_a_deep_link_as_a_servers_first_request_gets_the_whole_app(tmp_path, page):
    """A bookmarked /train?run=... right after a restart: the navigation table and the sidebar
    are there (a folder named pages/ would make Streamlit serve the bare page instead)."""
    from kt_core import rundir

    with streamlit_server(tmp_path) as srv:
        os.environ["KT_RUNS_DIR"] = str(srv["runs"])  # (restored by the autouse fixture)
        run_id = rundir.create_run(_tiny_config(), srv["runs"]).name
        page.goto(f"{srv['url']}/train?run={run_id}")
        page.get_by_role("heading", name=f"Run {run_id}").wait_for()
        nav = page.locator('[data-testid="stSidebarNav"]')
        assert nav.get_by_role("link", name="Home").is_visible()
        assert nav.get_by_role("link", name="app").count() == 0
        assert page.get_by_text("Device:").first.is_visible()


def _tiny_config():
    from kt_core.config import RunConfig, SourceConfig

    return RunConfig(name="deep link", source=SourceConfig(kind="arch", arch="mnist_net"))
