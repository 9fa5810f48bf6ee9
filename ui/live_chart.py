"""The chart of a run while it trains: the same lines as the final Plotly figure, on a canvas.

Why not Plotly while the run trains: every poll re-sent the figure and Plotly re-laid it out in
the browser, about 0.3 s of CPU per poll in headless Chromium. On the machine that trains (bench
B4: server, browser and worker on 2 cores) that cost the run ~10% of its images/s. `live_chart.js` keeps one canvas in the page and redraws only the lines when new data
comes. When the run ends the page draws the interactive Plotly figure (zoom, hover, legend
toggles) from the same `curves.traces`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

import streamlit as st

CSS = """
.kt-live { font: 13px sans-serif; color: #374151; }
.kt-live .title { font-weight: 600; margin-bottom: 4px; }
.kt-live .title:empty { display: none; }
.kt-live canvas { display: block; max-width: 100%; }
.kt-live .legend { display: flex; flex-wrap: wrap; gap: 2px 16px; margin-top: 4px; }
.kt-live .legend i { display: inline-block; width: 22px; margin: 0 6px 3px 0; vertical-align: middle; }
"""


@functools.cache
def _component():
    """Registered once per process; the JS lives in its own file next to this one."""
    js = (Path(__file__).with_name("live_chart.js")).read_text()
    return st.components.v2.component("kt_live_curves", js=js, css=CSS)


def payload(traces: list, x_max: float | None, title: str | None, height: int) -> dict:
    """What the browser gets at each poll: plain JSON, the lines and the x range to keep."""
    return {"traces": [asdict(t) for t in traces], "x_max": x_max, "title": title or "", "height": height}


def show(traces: list, x_max: float | None, title: str | None, height: int, key: str) -> None:
    """Draw (or, at a later poll, redraw) the live chart under `key`. `x_max` is the planned
    number of epochs, so the axis does not rescale as the run grows."""
    _component()(data=payload(traces, x_max, title, height), key=key)
