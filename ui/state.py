"""The user's choices, carried from page to page, and kept where a refresh cannot lose them.

Each page edits one piece of the run configuration (source, dataset, plan, train). The pieces
live in a *draft* (`kt_core.drafts`): one JSON file per setup, its id in the URL (`?draft=`), so
a refresh, a bookmark or a second tab opens the same setup, and Start launches exactly what the
pages show. A new tab without an id starts a new draft (the sidebar offers the last one). Pages
get a copy of a piece and save it back with its setter; a setter writes the file only when the
draft changed, so a rerun that changes nothing writes nothing.

The run being watched lives in the URL too (`?run=<id>`): a refresh or a second tab re-attaches
to it, and closing the tab never touches the worker process, which only ever talks to its run
folder. The draft and the watched run are different things: the Train page shows both, apart.
"""

from __future__ import annotations

import copy
import json

import streamlit as st

from kt_core import drafts
from kt_core.config import (DatasetConfig, DistillConfig, MultiTaskConfig, RunConfig, SourceConfig, TaskConfig,
                            TrainConfig, TransferPlan)

# Widget keys of the pages that edit the draft: forgotten when another draft is opened, so the
# widgets show the new draft's values instead of what they held for the old one.
_WIDGET_PREFIXES = ("source_", "src_train_", "layers_", "dataset_", "train_", "distill_", "tasks_")


def _draft() -> drafts.Draft:
    """The draft of this page view: `?draft=` of the URL, else the session's, else a new one."""
    wanted = st.query_params.get("draft")
    held = st.session_state.get("kt_draft")
    if drafts.is_draft_id(wanted) and (held is None or held.id != wanted):
        # A bookmark, a refresh or a second tab: the saved draft (a never-saved id: the defaults).
        held = drafts.load(wanted) or drafts.Draft(id=wanted)
        _open(held)
    elif held is None:
        held = drafts.new_draft()
        _open(held)
    if st.query_params.get("draft") != held.id:
        st.query_params["draft"] = held.id  # page switches start with a clean query string
    return held


def _open(draft: drafts.Draft) -> None:
    if st.session_state.get("kt_draft") is not None:
        for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(_WIDGET_PREFIXES)]:
            del st.session_state[key]
    st.session_state["kt_draft"] = draft
    st.session_state["kt_draft_saved"] = _fingerprint(draft) if draft.updated else None


def _fingerprint(draft: drafts.Draft) -> str:
    return json.dumps({"config": draft.config.to_dict(), "extras": draft.extras, "runs": draft.runs},
                      sort_keys=True, default=str)


def _save(draft: drafts.Draft) -> None:
    """Write the draft when it differs from what was last written (or never was, and differs
    from a new draft's defaults: an untouched new tab leaves no file behind)."""
    now = _fingerprint(draft)
    last = st.session_state.get("kt_draft_saved")
    if last is None and now == _fingerprint(drafts.Draft(id=draft.id)):
        return
    if now != last:
        drafts.save(draft)
        st.session_state["kt_draft_saved"] = now


def draft_id() -> str:
    return _draft().id


def draft() -> drafts.Draft:
    """A copy of the whole draft (read-only use: the setters save)."""
    return copy.deepcopy(_draft())


def _get(piece: str):
    # A copy: pages edit their own and save it back with the setter, so a half-edited
    # piece never leaks into another page.
    return copy.deepcopy(getattr(_draft().config, piece))


def _set(piece: str, value) -> None:
    held = _draft()
    setattr(held.config, piece, copy.deepcopy(value))
    _save(held)


def get_source() -> SourceConfig:
    return _get("source")


def set_source(cfg: SourceConfig) -> None:
    _set("source", cfg)


def get_dataset() -> DatasetConfig:
    return _get("dataset")


def set_dataset(cfg: DatasetConfig) -> None:
    _set("dataset", cfg)


def get_plan() -> TransferPlan:
    return _get("plan")


def set_plan(plan: TransferPlan) -> None:
    _set("plan", plan)


def get_train() -> TrainConfig:
    return _get("train")


def set_train(cfg: TrainConfig) -> None:
    _set("train", cfg)


def get_distill() -> DistillConfig:
    return _get("distill")


def set_distill(cfg: DistillConfig) -> None:
    _set("distill", cfg)


def get_tasks() -> list[TaskConfig]:
    """The extra tasks of a multi-task setup ([] = an ordinary run)."""
    return _get("tasks")


def set_tasks(tasks: list[TaskConfig]) -> None:
    _set("tasks", tasks)


def get_multitask() -> MultiTaskConfig:
    return _get("multitask")


def set_multitask(cfg: MultiTaskConfig) -> None:
    _set("multitask", cfg)


def get_extra(key: str, default=None):
    """A form choice kept with the draft that is not part of a run config (the run name field)."""
    return copy.deepcopy(_draft().extras.get(key, default))


def set_extra(key: str, value, default=None) -> None:
    """Keep `value` with the draft; a value equal to `default` that was never set stays unset
    (a page showing its defaults leaves an untouched new tab's draft unwritten)."""
    held = _draft()
    if key not in held.extras and value == default:
        return
    held.extras[key] = copy.deepcopy(value)
    _save(held)


def record_launch(*run_ids: str | None) -> None:
    """Remember the runs started from this draft (newest first): the Train page tells them apart."""
    held = _draft()
    held.runs = [r for r in run_ids if r] + [r for r in held.runs if r not in run_ids]
    _save(held)


def run_config(name: str | None = None) -> RunConfig:
    """The full run config from the pieces the pages hold, validated (raises ConfigError)."""
    cfg = copy.deepcopy(_draft().config)
    cfg.name = get_extra("run_name", "") if name is None else name
    return cfg.validate()


def load_run_config(cfg: RunConfig) -> None:
    """A new draft holding an existing run's config (Runs -> "edit and re-run"); the draft the
    user had stays on disk, untouched."""
    new = drafts.new_draft()
    new.config = copy.deepcopy(cfg)
    new.config.name, new.config.baseline_of = "", None
    new.extras["run_name"] = cfg.name
    _open(new)
    st.query_params["draft"] = new.id
    _save(new)


def open_draft(draft_id: str) -> None:
    """Switch this tab to another saved draft (the sidebar's "continue the last setup")."""
    _open(drafts.load(draft_id) or drafts.Draft(id=draft_id))
    st.query_params["draft"] = draft_id


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
    """The watched run id (`?run=...`), or None. A link to another run (the sidebar's) carries
    no baseline: the one watched before belongs to the old run and is dropped."""
    linked = st.query_params.get("run")
    if linked and linked != st.session_state.get("kt_watch_run") and not st.query_params.get("baseline"):
        st.session_state["kt_watch_baseline"] = None
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
