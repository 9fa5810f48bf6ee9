"""The sidebar on every page: the runs in progress (one click re-attaches) and the device."""

from __future__ import annotations

import time

import streamlit as st

from kt_core import drafts, launcher, runs
from kt_core.settings import get_settings
from ui import state
from ui.errors import guard
from ui.system import best_device


@st.cache_resource
def _keep_a_worker_warm() -> bool:
    """Once per server: a worker process started ahead of time, so Start shows a loss at once."""
    enabled = get_settings().warm_worker
    launcher.keep_worker_warm(enabled)
    return enabled


def _offer_last_draft() -> None:
    """A new tab starts a new setup; the one edited last is one click away."""
    current = state.draft()
    if current.updated:  # this tab's setup is already the user's work
        return
    last = drafts.latest(exclude=current.id)
    if last is None:
        return
    when = time.strftime("%d %b %H:%M", time.localtime(last.updated))
    if st.button("Continue your last setup", key="sidebar_last_draft", icon=":material/history:",
                 help=f"{drafts.describe(last.config)} (edited {when})"):
        state.open_draft(last.id)  # the page, drawn after the sidebar, shows it in this same run
        return
    st.caption(f"{drafts.describe(last.config)} · edited {when}")


def sidebar() -> None:
    _keep_a_worker_warm()
    with st.sidebar:
        st.caption(f"Device: **{best_device()}**")
        with guard("Reading the drafts"):
            _offer_last_draft()
        active_runs_list(key="sidebar")


ACTIVE_POLL_SECONDS = 4.0  # reads one status.json per run folder: a few ms, even for many runs


@st.fragment(run_every=ACTIVE_POLL_SECONDS)
def active_runs_list(key: str, table: bool = False) -> None:
    """The queued and running runs, re-read every few seconds so the list follows runs as they
    start and end (the demo, a source training, a run started from the CLI or another tab)."""
    with guard("Reading the runs folder"):
        active = runs.active_runs()
        if table:
            if active:
                st.dataframe([{"run": r.get("name") or r["id"], "state": r["state"],
                               "epoch": f"{r.get('epoch') or 0}/{r.get('epochs') or '?'}", "id": r["id"]}
                              for r in active], hide_index=True, key=f"{key}_active_table")
            else:
                st.caption("No run is queued or running.")
            return
        st.markdown(f"**Active runs** ({len(active)})")
        if not active:
            st.caption("None. Start one on the Train page, or the demo on Home.")
        for row in active:
            label = f"{row.get('name') or row['id']} · {row['state']}"
            st.page_link("app_pages/train.py", label=label, icon=":material/monitoring:",
                         query_params={"run": row["id"]})
