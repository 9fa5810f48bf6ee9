"""The Train page's multi-task section: extra tasks trained at once with the target on one trunk.

The tasks live in the draft (`RunConfig.tasks`, `RunConfig.multitask`), so Start launches what
this section shows; each task's values are judged by kt_core's own config rules as it is added.
"""

from __future__ import annotations

import streamlit as st

from kt_core import rundir, sources
from kt_core.config import SAMPLINGS, WEIGHTINGS, DatasetConfig, SourceConfig, TaskConfig, field_error
from kt_core.errors import ConfigError, KTError
from kt_core.settings import get_settings
from ui import state
from ui.errors import error_line, plain

WEIGHTING_LABELS = {"fixed": "fixed (each task's weight)", "uncertainty": "uncertainty (Kendall 2018, learnt)",
                    "dwa": "dynamic weight averaging (Liu 2019)"}
SAMPLING_LABELS = {"round_robin": "round robin (tasks take turns)", "proportional": "proportional to dataset size"}


def _forget_widgets() -> None:
    """Rows shift when a task goes: the widgets start again from the draft."""
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith("tasks_")]:
        del st.session_state[key]


def _source_task(source: SourceConfig) -> TaskConfig | None:
    """The source run's own dataset as a task ("train it together with its source task"), or None."""
    if source.kind != "run" or not source.path:
        return None
    try:
        folder = sources.run_folder(source.path, get_settings().dashboard_roots)
        return TaskConfig(name="source", dataset=rundir.load_config(folder).dataset)
    except KTError:
        return None


def _add(tasks: list[TaskConfig], task: TaskConfig) -> str | None:
    """Append `task` if kt_core's rules take it; else the reason, in one line."""
    try:
        task.validate(f"tasks[{len(tasks)}].")
        if task.name in [state.get_multitask().primary_name] + [t.name for t in tasks]:
            raise ConfigError(f"a task named {task.name!r} is already there", "give the task another name")
    except ConfigError as exc:
        return error_line(exc)
    state.set_tasks(tasks + [task])
    _forget_widgets()
    return None


def task_section(catalog: dict[str, dict]) -> None:
    """Add, weigh and remove extra tasks; choose the weighting and the sampling."""
    tasks, multi = state.get_tasks(), state.get_multitask()
    title = (f"Multi-task: {len(tasks)} extra task{'s' if len(tasks) != 1 else ''} trained with the target"
             if tasks else "Multi-task: train other datasets at the same time")
    with st.expander(title, expanded=bool(tasks)):
        st.caption("One shared trunk (the source's network under your transfer plan), one head per task. "
                   "The target stays the primary task: it chooses the best checkpoint and gives the "
                   "headline. Each task's images are brought to the model's input.")
        for i, task in enumerate(tasks):
            c1, c2, c3 = st.columns([4, 2, 1])
            k = task.dataset.per_class
            # plain() escapes what users typed, so the bold markers go outside it (inside, they showed as **)
            c1.markdown(f"**{plain(task.name)}**: " + plain(f"{task.dataset.name}, K = {'all' if k is None else k}"
                        f"{', ' + str(len(task.dataset.classes)) + ' classes' if task.dataset.classes else ''}"))
            # no widget limits (as every field of the pages): kt_core's config rules judge the value
            weight = c2.number_input("Weight", value=float(task.weight),
                                     step=0.1, key=f"tasks_weight_{i}", label_visibility="collapsed",
                                     disabled=multi.weighting != "fixed",
                                     help="Its loss weight (fixed weighting); learnt weightings set their own.")
            if weight != task.weight:
                tasks[i].weight = float(weight)
                state.set_tasks(tasks)
            problem = field_error(tasks[i], "weight")
            if problem:
                c2.error(plain(error_line(problem)))
            if c3.button("Remove", key=f"tasks_remove_{i}", icon=":material/delete:"):
                state.set_tasks(tasks[:i] + tasks[i + 1:])
                _forget_widgets()
                st.rerun()

        source_task = _source_task(state.get_source())
        if source_task is not None and not any(t.dataset == source_task.dataset for t in tasks):
            if st.button("Train it together with its source task", key="tasks_with_source",
                         icon=":material/merge:", help=f"Adds the source run's dataset "
                         f"({source_task.dataset.name}) as a task: joint training instead of transfer."):
                problem = _add(tasks, source_task)
                if problem:
                    st.error(plain(problem))
                else:
                    st.rerun()

        st.markdown("**Add a task**")
        a1, a2, a3, a4 = st.columns([2, 3, 2, 2])
        names = list(catalog)
        name = a1.text_input("Task name", key="tasks_new_name", placeholder="e.g. mnist")
        dataset = a2.selectbox("Dataset", names, key="tasks_new_dataset",
                               format_func=lambda n: f"{n}{' (not present offline)' if catalog[n].get('present') is False else ''}")
        per_class = a3.number_input("K per class (0 = all)", value=0, key="tasks_new_k")
        weight = a4.number_input("Weight", value=1.0, step=0.1, key="tasks_new_weight")
        root = None
        if catalog.get(dataset, {}).get("needs_root"):
            root = st.text_input("Its path on the server", key="tasks_new_root").strip() or None
        if st.button("Add the task", key="tasks_add", icon=":material/add:"):
            task = TaskConfig(name=name.strip() or dataset.lower().replace(" ", "_"), weight=float(weight),
                              dataset=DatasetConfig(name=dataset, root=root, per_class=int(per_class) or None))
            problem = _add(tasks, task)
            if problem:
                st.error(plain(problem))
            else:
                st.rerun()

        if tasks:
            w1, w2 = st.columns(2)
            weighting = w1.selectbox("Loss weighting", WEIGHTINGS, index=WEIGHTINGS.index(multi.weighting),
                                     format_func=WEIGHTING_LABELS.get, key="tasks_weighting")
            sampling = w2.selectbox("Batches", SAMPLINGS, index=SAMPLINGS.index(multi.sampling),
                                    format_func=SAMPLING_LABELS.get, key="tasks_sampling")
            if (weighting, sampling) != (multi.weighting, multi.sampling):
                multi.weighting, multi.sampling = weighting, sampling
                state.set_multitask(multi)
            if st.button("Back to a single-task run", key="tasks_clear", icon=":material/undo:",
                         help="Removes every extra task: the target alone, as a transfer run."):
                state.set_tasks([])
                _forget_widgets()
                st.rerun()
