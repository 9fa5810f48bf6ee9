"""The user's choices, carried from page to page.

Each page edits one piece of the run configuration (source, dataset, plan, train) and keeps it
in `st.session_state` as the plain dataclass of `kt_core.config`, so the Train page can assemble
a `RunConfig` without knowing about any widget. The run being watched lives in the URL
(`?run=<id>`): a refresh or a second tab re-attaches to it, and closing the tab never touches
the worker process, which only ever talks to its run folder.
"""

from __future__ import annotations

import copy
import streamlit as st

from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

# session_state key -> the default factory of that piece of the config
_PIECES = {
    "kt_source": lambda: SourceConfig(kind="arch", arch="small_cnn"),
    "kt_dataset": lambda: DatasetConfig(name="sklearn_digits"),
    "kt_plan": lambda: TransferPlan(preset="fine_tune"),
    "kt_train": lambda: TrainConfig(epochs=5),
}


def _get(key: str):
    if key not in st.session_state:
        st.session_state[key] = _PIECES[key]()
    # A copy: pages edit their own and save it back with the setter, so a half-edited
    # piece never leaks into another page.
    return copy.deepcopy(st.session_state[key])


def _set(key: str, value) -> None:
    st.session_state[key] = copy.deepcopy(value)


def get_source() -> SourceConfig:
    return _get("kt_source")


def set_source(cfg: SourceConfig) -> None:
    _set("kt_source", cfg)


def get_dataset() -> DatasetConfig:
    return _get("kt_dataset")


def set_dataset(cfg: DatasetConfig) -> None:
    _set("kt_dataset", cfg)


def get_plan() -> TransferPlan:
    return _get("kt_plan")


def set_plan(plan: TransferPlan) -> None:
    _set("kt_plan", plan)


def get_train() -> TrainConfig:
    return _get("kt_train")


def set_train(cfg: TrainConfig) -> None:
    _set("kt_train", cfg)


def run_config(name: str = "") -> RunConfig:
    """The full run config from the pieces the pages hold, validated (raises ConfigError)."""
    cfg = RunConfig(name=name, source=get_source(), dataset=get_dataset(), plan=get_plan(), train=get_train())
    return cfg.validate()


def load_run_config(cfg: RunConfig) -> None:
    """Put every piece of an existing run's config into the pages (Runs -> "edit and re-run")."""
    set_source(cfg.source)
    set_dataset(cfg.dataset)
    set_plan(cfg.plan)
    set_train(cfg.train)


# --- the watched run, in the URL -------------------------------------------------------------

def _watched(key: str) -> str | None:
    """`?key=...` of the URL, else what this session watched last (then put back in the URL).

    The URL is what survives a refresh or opens in a second tab; the session copy is what
    survives Streamlit's page switches, which start every page with a clean query string.
    """
    value = st.query_params.get(key)
    if value:
        st.session_state[f"kt_watch_{key}"] = value
        return value
    value = st.session_state.get(f"kt_watch_{key}")
    if value:
        st.query_params[key] = value
    return value or None


def current_run() -> str | None:
    """The watched run id (`?run=...`), or None."""
    return _watched("run")


def current_baseline() -> str | None:
    """The from-scratch twin of the watched run (`?baseline=...`), or None."""
    return _watched("baseline")


def watch_run(run_id: str | None, baseline: str | None = None) -> None:
    """Attach the pages to `run_id` and its baseline (None detaches): URL and session both."""
    for key, value in (("run", run_id), ("baseline", baseline)):
        st.session_state[f"kt_watch_{key}"] = value
        if value:
            st.query_params[key] = value
        elif key in st.query_params:
            del st.query_params[key]


def remember(key: str, value) -> None:
    """A small non-config value that should survive page changes (e.g. the loaded source summary)."""
    st.session_state[f"kt_memo_{key}"] = value


def recall(key: str, default=None):
    return st.session_state.get(f"kt_memo_{key}", default)


def current_experiment() -> str | None:
    """The watched experiment id (`?experiment=...`), or None."""
    return _watched("experiment")


def watch_experiment(exp_id: str | None) -> None:
    st.session_state["kt_watch_experiment"] = exp_id
    if exp_id:
        st.query_params["experiment"] = exp_id
    elif "experiment" in st.query_params:
        del st.query_params["experiment"]
