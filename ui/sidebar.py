"""The sidebar on every page: the runs in progress (one click re-attaches) and the device."""

from __future__ import annotations

import streamlit as st

from kt_core import launcher, runs
from kt_core.settings import get_settings
from ui.errors import guard
from ui.system import best_device


@st.cache_resource
def _keep_a_worker_warm() -> bool:
    """Once per server: a worker process started ahead of time, so Start shows a loss at once."""
    enabled = get_settings().warm_worker
    launcher.keep_worker_warm(enabled)
    return enabled


def sidebar() -> None:
    _keep_a_worker_warm()
    with st.sidebar:
        st.caption(f"Device: **{best_device()}**")
        with guard("Reading the runs folder"):
            active = runs.active_runs()
            st.markdown(f"**Active runs** ({len(active)})")
            if not active:
                st.caption("None. Start one on the Train page, or the demo on Home.")
            for row in active:
                label = row.get("name") or row["id"]  # no state here: the sidebar is not polled
                st.page_link("app_pages/train.py", label=label, icon=":material/monitoring:",
                             query_params={"run": row["id"]})
