"""The experiment report opens in Debian's Chromium with the network cut off, its chart drawn:
Plotly's JavaScript is inside the file, nothing is fetched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kt_core.experiments import report
from test_app_experiments import make_experiment

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("KT_CHROMIUM", "/usr/bin/chromium")


def test_the_report_opens_offline_with_its_charts_drawn(tmp_path):
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"needs Debian's Chromium at {CHROMIUM}")
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (make browser installs it)")
    from playwright.sync_api import sync_playwright

    exp_id = make_experiment({("from scratch", 1): [0.60, 0.64], ("from scratch", 10): [0.90, 0.91],
                              ("feature extraction", 1): [0.80, 0.82], ("feature extraction", 10): [0.70, 0.72]})
    out = report.write_report(exp_id, tmp_path / "report.html", tmp_path / "report.csv")
    fetched = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(offline=True)

        def refuse(route):  # anything but the file itself would be a dependency on the network
            if not route.request.url.startswith("file://"):
                fetched.append(route.request.url)
                return route.abort()
            return route.continue_()

        context.route("**/*", refuse)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(out.resolve().as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        traces = page.evaluate("""() => document.querySelector('.js-plotly-plot').data
                                         .map(t => [t.name, (t.x || []).length])""")
        drawn = page.locator(".js-plotly-plot .scatterlayer .trace").count()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        text = page.inner_text("body")
        browser.close()
    assert not errors and not fetched, (errors, fetched)
    names = dict(traces)
    assert names["from scratch"] == 2 and names["feature extraction"] == 2 and names["negative transfer"] == 1
    assert drawn >= 5  # two bands, two lines, the negative-transfer marks: drawn as SVG, not just data
    assert "Negative transfer at K=10" in text and "python -m kt_core experiment" in text
