"""Assembling a run from its config: the model with its source weights, the data, the plan.

`prepare` is what the worker (and the benchmarks' plain loop) build before training;
`preflight` is what can fail before a run folder exists (the launcher calls it, so a bad config
fails at Start, not later in a worker's log). No files are written here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import data as data_module
from . import coderef, models, multitask, objectives, sources, transfer, usercode
from .config import RunConfig
from .engine import resolve_device
from .errors import AmbiguousRunError, RunError
from .rundir import read_status, runs_root
from .settings import confine_path, refuse_trust_if_forbidden


@dataclass
class Prepared:
    """What a config builds: the model (source weights, adapted head, plan applied) and the data."""

    model: Any
    data: Any
    plan: Any
    source: Any
    blocks: list
    objective: Any = None  # objectives.Objective: what training minimises (None: plain cross-entropy)
    tasks: Any = None  # multitask.TaskSet when the config has extra tasks (then `plan` is its MultiTaskPlan)

    def fit_options(self) -> dict:
        """What `engine.fit` takes beside model, data and plan: the objective, and a multi-task
        run's batch source."""
        return {"objective": self.objective, **({"batches": self.tasks.sampler} if self.tasks is not None else {})}

    @property
    def arch(self) -> str | None:
        return getattr(self.source, "arch", None)

    @property
    def built_from(self) -> str:
        """"arch" when the model is a registered architecture (rebuilt from `arch` and the weights'
        shapes alone), "code" when it is the user's model code (rebuilt from the code the config
        names), "source" when it runs the source file's own code (TorchScript, a pickle)."""
        if self.arch is None or getattr(self.source, "own_module", False):
            return "source"
        return "code" if getattr(self.source.spec, "family", None) == usercode.FAMILY else "arch"


def preflight(cfg: RunConfig, runs_dir: str | os.PathLike | None = None,
              roots: tuple[Path, ...] | None = None, deep: bool = False) -> Prepared | None:
    """What can fail before a run folder exists fails now, not later in a worker's log: a device
    that is not here, a source run that is not there, and (with `roots`, a dashboard run) a path
    outside the server's roots or a trust the server forbids.

    `deep` (train, launch) also does what the worker will do first, `prepare`: the source file
    is read, the classes and K images per class exist, the plan's rules match modules. Its
    result is returned for a caller that trains in this process. Skipped (None) for a source run
    that has not completed yet: the worker waits for it."""
    cfg.validate()
    resolve_device(cfg.train.device)
    if roots is not None:
        enforce_server_settings(cfg, roots, runs_dir)
    teacher = cfg.distill.teacher if cfg.distill.mode != "off" else None
    waiting = False
    for what, src in (("source", cfg.source), ("teacher", teacher)):
        if src is None or src.kind != "run":
            continue
        try:
            resolved = sources.resolve_run_source(src, runs_dir, roots)
        except AmbiguousRunError:
            raise
        except RunError:
            raise RunError(
                f"the {what} run {src.path!r} is not in {runs_root(runs_dir)}",
                "train it first (for the examples: python -m kt_core train examples/source_mnist.json), "
                "or give a run id, name or folder listed by `python -m kt_core runs`") from None
        if read_status(resolved.path)["state"] != "completed":
            waiting = True  # it is still training: the worker waits for it, then prepares
    if waiting:
        return None
    return prepare(cfg, roots=roots, runs_dir=runs_dir) if deep else None


def enforce_server_settings(cfg: RunConfig, roots: tuple[Path, ...], runs_dir: str | os.PathLike | None = None) -> None:
    """A dashboard config may only lead into `roots` (source file, source run, dataset root) and
    may trust a file only where KT_ALLOW_TRUST allows it. The worker enforces the same again (its
    loaders get the roots), so nothing changed on disk in between gets past it."""
    teacher = cfg.distill.teacher if cfg.distill.mode != "off" else None
    for what, source in (("source", cfg.source), ("teacher", teacher)):  # a teacher loads as a source does
        if source is None:
            continue
        if source.kind == "file" and source.path:
            confine_path(source.path, roots)
        if source.kind == "run" and source.path:
            sources.run_folder(source.path, roots, runs_dir)
        if source.trust:
            refuse_trust_if_forbidden(f"the {what} {source.path or source.arch}")
        code = coderef.parse_code_ref(source.arch)
        if code is not None:  # the user's model code is a server path like any other (finding it runs nothing)
            coderef.code_file(code, roots)
    if cfg.dataset.root:
        confine_path(cfg.dataset.root, roots)


def prepare(cfg: RunConfig, device=None, roots=None, runs_dir: str | os.PathLike | None = None) -> Prepared:
    """Build everything a run needs from its config (no training). `roots` confines paths (UI);
    a source run given by id or name is looked up in `runs_dir` (default: the settings')."""
    # A run id, prefix or name ("the newest completed run named X") becomes its folder here,
    # against this run's own runs folder.
    source_cfg = sources.resolve_run_source(cfg.source, runs_dir, roots)
    # Every weight no file supplies (an architecture without weights, a new head, an adapted first
    # layer) is drawn from the run's seed, not from whatever the process's RNG holds: the same
    # config trains the same run, in a fresh worker or in the dashboard's warm one.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        src = sources.load_source(source_cfg, pretrained=(cfg.plan.preset != "scratch"), roots=roots)
        # L2-SP pulls toward the source's values: keep them before a new head and re-initialisation.
        source_state = ({k: v.detach().clone() for k, v in src.model.state_dict().items()}
                        if cfg.plan.l2sp_alpha > 0 else None)
        data = data_module.load_dataset(cfg.dataset, input_size=src.input_size, normalization=src.normalization,
                                        roots=roots, framing=src.framing)
        head = transfer.decide_head(cfg.plan, data.class_names, src.class_names, src.num_classes, src.pretrained)
        src.adapt(data.num_classes, data.input_size[0])
    blocks = models.blocks(src.model, src.spec)
    plan = transfer.apply_plan(src.model, cfg.plan, blocks, seed=cfg.train.seed, head=head)
    teacher = None
    if cfg.distill.mode != "off":
        # The teacher loads as a source does (same loaders, roots and trust rule), with its own
        # weights and head; default: the run's own source, pretrained whatever the plan says.
        teacher_cfg = sources.resolve_run_source(cfg.distill.teacher, runs_dir, roots) if cfg.distill.teacher else source_cfg
        teacher = sources.load_source(teacher_cfg, roots=roots, pretrained=True)
    objective = objectives.build_objective(cfg, src, data, teacher, source_state)
    tasks = None
    if cfg.tasks:  # one trunk, a head per task: the extra tasks' data brought to the model's input
        task_data = multitask.load_task_data(cfg, data, src, roots=roots)
        tasks = multitask.attach(src.model, plan, data, cfg, task_data)
        plan, objective = tasks.plan, tasks.objective
    if device is not None:
        src.model.to(device)
    return Prepared(model=src.model, data=data, plan=plan, source=src, blocks=blocks, objective=objective,
                    tasks=tasks)
