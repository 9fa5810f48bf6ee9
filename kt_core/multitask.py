"""Multi-task learning: the target and extra tasks trained at once on one shared trunk.

Hard parameter sharing: the model is the source's network as a single-task run builds it (trunk
plus the target's head, under the transfer plan); each extra task gets its own head of the same
kind, sized to its classes. The pieces plug into the engine where any method does, so the loop
has no multi-task branch:

- `TaskRouter` picks the head: a forward hook on the model's head module hands the head's input
  to the active task's head instead (the target's head still runs on those batches, a matmul of
  the head's size thrown away; in exchange the model's weights, checkpoints, eval and export of
  the target are exactly a single-task run's). Extra heads live outside the model.
- `TaskSampler` is the engine's batch source: every step trains one batch of one task, in an
  order drawn from (seed, epoch) alone, so a run resumed mid-epoch (kill -9 included) continues
  with exactly the batches it had not seen. `round_robin`: the tasks take turns, batch by batch,
  for as many turns as the largest task has batches (smaller tasks go round again, reshuffled);
  `proportional`: one pass over every task's training data, interleaved at random (seeded), so
  each task is drawn in proportion to its size (MT-DNN's sampling).
- `TaskLoss` is the loss of a batch: its task's cross-entropy times the task's weight, as the
  `Weighting` says: `fixed` (the config's weights), `uncertainty` (Kendall et al. 2018, as LibMTL
  computes it: L_t / (2 exp(s_t)) + s_t / 2, s_t = log sigma_t^2 learnt), `dwa` (Liu et al. 2019:
  w_t = T_n softmax(r_t / temperature), r_t = L_t(e-1) / L_t(e-2) from the epochs' mean training
  losses, equal weights for the first two epochs). A gradient-based method (GradNorm, PCGrad)
  would be another `Weighting` that also sees the shared parameters' gradients; none is written yet.
- `TaskMetrics` (a callback) puts each task's figures into the metrics rows: `train_loss/<task>`
  in step rows; `train_loss/<task>`, `train_acc/<task>`, `val_loss/<task>`, `val_acc/<task>` in
  epoch rows (the target's too, under its `primary_name`), and `weight/<task>` when the weights
  are learnt. The unsuffixed keys stay the target's (it decides the best checkpoint and the
  headline), except `train_loss`, which is the loss the optimizer minimised (all tasks' batches).
  It also checkpoints the extra heads, the learnt weights and the per-task sums (`multitask` in
  the checkpoint dict) and restores them on resume.
- `MultiTaskPlan` wraps the transfer plan: the extra heads and learnt weights are trained too,
  and the feature cache is off (each batch's task picks its head, and the trunk usually trains).

`attach(prepared, cfg)` builds all of it from a config's `tasks` and `multitask` sections.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_module
from .callbacks import Callback
from .config import MultiTaskConfig, RunConfig
from .data import PreparedData, iter_batches
from .engine import default_param_groups, epoch_generator, evaluate
from .errors import ConfigError
from .objectives import Objective, Term

log = logging.getLogger(__name__)


# --- weightings ------------------------------------------------------------------------------------

class Weighting:
    """How each task's loss is weighted; `loss(t, ce)` is what the optimizer minimises for a batch
    of task t. `learnt`: the weights change while training (reported in the rows)."""

    learnt = False

    def __init__(self, num_tasks: int):
        self.num_tasks = num_tasks

    def loss(self, task: int, ce: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weights(self) -> list[float]:
        """Each task's current multiplier of its cross-entropy."""
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return []

    def epoch_end(self, mean_losses: Sequence[float | None]) -> None:
        """The epoch's mean training loss of each task (None: the task had no batch)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def to(self, device) -> None:
        for param in self.parameters():
            param.data = param.data.to(device)  # the same Parameter: the optimizer holds it


class FixedWeighting(Weighting):
    def __init__(self, weights: Sequence[float]):
        super().__init__(len(weights))
        self._weights = [float(w) for w in weights]

    def loss(self, task, ce):
        w = self._weights[task]
        return ce if w == 1.0 else ce * w  # a weight of 1 leaves the loss bit-identical

    def weights(self):
        return list(self._weights)


class UncertaintyWeighting(Weighting):
    """Kendall, Gal & Cipolla 2018, as LibMTL writes it: L_t / (2 exp(s_t)) + s_t / 2 with
    s_t = log sigma_t^2 a learnt parameter (starting at 0: weight 1/2). A noisy task's sigma grows
    and its weight falls; the s_t / 2 term keeps sigma from growing without bound."""

    learnt = True

    def __init__(self, num_tasks: int, device: torch.device | str = "cpu"):
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks, device=device))

    def loss(self, task, ce):
        s = self.log_vars[task]
        return ce / (2 * s.exp()) + s / 2

    def weights(self):
        return [0.5 * math.exp(-s) for s in self.log_vars.detach().cpu().tolist()]

    def parameters(self):
        return [self.log_vars]

    def state_dict(self):
        return {"log_vars": self.log_vars.detach().cpu().tolist()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.log_vars.copy_(torch.tensor(state["log_vars"], dtype=self.log_vars.dtype))


class DWAWeighting(Weighting):
    """Dynamic weight averaging (Liu, Johns & Davison 2019), as LibMTL computes it: from the third
    epoch on, w_t = N softmax_t(r_t / T) with r_t = L_t(e-1) / L_t(e-2) the ratio of task t's mean
    training losses over the last two epochs (a task whose loss falls slowly gets more weight);
    equal weights (1) before. The weights sum to N, the number of tasks."""

    learnt = True

    def __init__(self, num_tasks: int, temperature: float = 2.0):
        super().__init__(num_tasks)
        self.temperature = float(temperature)
        self.history: list[list[float]] = []  # mean training loss per task, per finished epoch
        self._weights = [1.0] * num_tasks

    def loss(self, task, ce):
        w = self._weights[task]
        return ce if w == 1.0 else ce * w

    def weights(self):
        return list(self._weights)

    def epoch_end(self, mean_losses):
        previous = self.history[-1] if self.history else None
        # a task without a batch this epoch (not possible with the samplers here) keeps its last loss
        self.history.append([(m if m is not None else (previous[i] if previous else 1.0))
                             for i, m in enumerate(mean_losses)])
        self._weights = dwa_weights(self.history, self.temperature)

    def state_dict(self):
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state):
        self.history = [list(map(float, h)) for h in state.get("history", [])]
        self._weights = dwa_weights(self.history, self.temperature) if self.history else [1.0] * self.num_tasks


def dwa_weights(history: Sequence[Sequence[float]], temperature: float) -> list[float]:
    """DWA's weights for the next epoch from the per-epoch mean losses so far."""
    n = len(history[0]) if history else 0
    if len(history) < 2:
        return [1.0] * n
    ratios = torch.tensor([a / max(b, 1e-12) for a, b in zip(history[-1], history[-2])], dtype=torch.float64)
    return (n * torch.softmax(ratios / temperature, dim=0)).tolist()


def make_weighting(cfg: MultiTaskConfig, fixed: Sequence[float], device: torch.device | str = "cpu") -> Weighting:
    if cfg.weighting == "uncertainty":
        return UncertaintyWeighting(len(fixed), device)
    if cfg.weighting == "dwa":
        return DWAWeighting(len(fixed), cfg.dwa_temperature)
    return FixedWeighting(fixed)


# --- tasks, heads and routing --------------------------------------------------------------------

@dataclass
class Task:
    name: str
    data: PreparedData
    weight: float
    head: nn.Module | None  # None for the primary task: its head is the model's own


class TaskRouter:
    """Which task's head the model's forward ends in. Task 0 is the primary: the model's own head.

    A forward hook on the head module replaces its output with the active extra head's output on
    the same input (any reshaping the model's forward does after the head applies to both)."""

    def __init__(self, model: nn.Module, head_name: str, heads: Sequence[nn.Module | None]):
        self.heads, self.head_name = list(heads), head_name
        self.active = 0
        self._handle = model.get_submodule(head_name).register_forward_hook(self._route)

    def _route(self, module, args, output):
        if self.active == 0:
            return None
        return self.heads[self.active](*args)

    def remove(self) -> None:
        self._handle.remove()


def new_head(template: nn.Module, num_classes: int) -> nn.Module:
    """A fresh head like the model's classifier (Linear, or SqueezeNet's 1x1 Conv2d) for `num_classes`."""
    if isinstance(template, nn.Linear):
        head = nn.Linear(template.in_features, num_classes, bias=template.bias is not None)
    elif isinstance(template, nn.Conv2d):
        head = nn.Conv2d(template.in_channels, num_classes, template.kernel_size, template.stride,
                         template.padding, bias=template.bias is not None)
    else:
        raise ConfigError(f"the model's head is a {type(template).__name__}, not a Linear or Conv2d layer",
                          "multi-task training puts a new head per task; pick an architecture with a linear classifier")
    return head.to(device=template.weight.device, dtype=template.weight.dtype)


# --- sampling ------------------------------------------------------------------------------------

def _task_generator(seed: int, epoch: int, task: int, cycle: int) -> torch.Generator:
    """Task 0's first pass of an epoch shuffles exactly as a single-task run's epoch does
    (`engine.epoch_generator`); every other (task, pass) has its own stream."""
    if task == 0 and cycle == 0:
        return epoch_generator(seed, epoch)
    mixed = (seed * 1_000_003 + epoch) * 1_000_033 + task * 10_007 + cycle + 1
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


class TaskSampler:
    """The engine's batch source for several tasks (see the module's docstring)."""

    def __init__(self, tasks: Sequence[Task], router: TaskRouter, sampling: str, batch_size: int,
                 seed: int, num_workers: int | None = 0):
        self.tasks, self.router, self.sampling = list(tasks), router, sampling
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.passes = [math.ceil(len(t.data.train) / batch_size) for t in self.tasks]  # batches per pass
        if sampling == "round_robin":
            self.counts = [max(self.passes)] * len(self.tasks)
        else:
            self.counts = list(self.passes)
        self._augmenters = [None] + [(t.data.augmenter() if (t.data.augment or "none") != "none" else None)
                                     for t in self.tasks[1:]]

    @property
    def steps_per_epoch(self) -> int:
        return sum(self.counts)

    @property
    def images_per_epoch(self) -> int:
        """Training images one epoch shows (what `auto` epochs are reckoned from)."""
        return sum(round(c / p * len(t.data.train)) for c, p, t in zip(self.counts, self.passes, self.tasks))

    def order(self, epoch: int) -> list[int]:
        """The task of every step of `epoch`, from (seed, epoch) alone."""
        if self.sampling == "round_robin":
            return [t for _ in range(self.counts[0]) for t in range(len(self.tasks))]
        flat = torch.tensor([t for t, c in enumerate(self.counts) for _ in range(c)])
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 7_919 + 17)
        return flat[torch.randperm(len(flat), generator=gen)].tolist()

    def epoch(self, ctx) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The batches of epoch `ctx.epoch` after the `ctx.batch_in_epoch` already trained; each
        batch's task is made active just before it is handed over."""
        order = self.order(ctx.epoch)
        done = order[:ctx.batch_in_epoch]
        streams = [self._stream(t, ctx.epoch, done.count(t), ctx.augment if t == 0 else self._augmenters[t])
                   for t in range(len(self.tasks))]
        try:
            for t in order[ctx.batch_in_epoch:]:
                batch = next(streams[t])
                self.router.active = t
                yield batch
        finally:
            self.router.active = 0  # validation, checkpoints and the summary see the target's head

    def _stream(self, task: int, epoch: int, skip: int, augment) -> Iterator:
        """Task `task`'s batches in `epoch`: pass after pass, each reshuffled, from batch `skip` on."""
        split, per_pass = self.tasks[task].data.train, self.passes[task]
        cycle, offset = divmod(skip, per_pass)
        while True:
            yield from iter_batches(split, self.batch_size, shuffle=True,
                                    generator=_task_generator(self.seed, epoch, task, cycle),
                                    augment=augment, num_workers=self.num_workers, skip_batches=offset,
                                    with_index=True)
            cycle, offset = cycle + 1, 0


# --- the loss and the rows -----------------------------------------------------------------------

class TaskLoss(Term):
    """The loss of one batch (an objective's one term): its task's cross-entropy, weighted. Also
    accumulates, on the device (no host sync), each task's loss*n, correct and seen for the rows.
    Its learnt weights train through `MultiTaskPlan`'s groups (no weight decay), not `parameters()`."""

    name = "loss_ce"
    uses_student_layers = True  # the task picks the head: the whole model runs (no feature cache)

    def __init__(self, router: TaskRouter, weighting: Weighting, num_tasks: int, label_smoothing: float = 0.0,
                 device: torch.device | str = "cpu"):
        self.router, self.weighting, self.label_smoothing = router, weighting, label_smoothing
        self.sums = torch.zeros(num_tasks, 3, dtype=torch.float64, device=device)

    def __call__(self, out: torch.Tensor, y: torch.Tensor, *rest) -> torch.Tensor:
        task = self.router.active
        ce = F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        n = y.shape[0]
        self.sums[task, 0] += ce.detach().double() * n
        self.sums[task, 1] += (out.argmax(1) == y).sum()
        self.sums[task, 2] += n
        return self.weighting.loss(task, ce)

    def to(self, device) -> "TaskLoss":
        self.sums = self.sums.to(device)
        return self


class TaskMetrics(Callback):
    """Per-task figures in the rows; the extra heads and learnt weights in checkpoints."""

    def __init__(self, tasks: Sequence[Task], loss: TaskLoss, batch_size: int):
        self.tasks, self.loss, self.batch_size = list(tasks), loss, batch_size
        self.base = [[0.0, 0.0] for _ in self.tasks]  # (loss*n, seen) of each task at the last step row

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def on_fit_start(self, ctx) -> None:
        self.loss.to(ctx.device)
        for task in self.tasks[1:]:
            task.head.to(ctx.device)

    def on_epoch_start(self, ctx) -> None:
        self.loss.sums.zero_()
        self.base = [[0.0, 0.0] for _ in self.tasks]

    def on_step_end(self, ctx, row: dict) -> None:
        sums = self.loss.sums.tolist()  # one host sync per logged row, as the engine's own
        for name, (loss_sum, _, seen), base in zip(self.names, sums, self.base):
            if seen > base[1]:
                row[f"train_loss/{name}"] = (loss_sum - base[0]) / (seen - base[1])
        self.base = [[s[0], s[2]] for s in sums]
        if self.loss.weighting.learnt:
            row.update(self._weights())

    def on_epoch_end(self, ctx, row: dict) -> None:
        if row.get("before_training"):
            return
        sums = self.loss.sums.tolist()
        means = []
        for name, (loss_sum, correct, seen) in zip(self.names, sums):
            means.append(loss_sum / seen if seen else None)
            row[f"train_loss/{name}"] = means[-1]
            row[f"train_acc/{name}"] = correct / seen if seen else None
        row["train_acc"] = row[f"train_acc/{self.names[0]}"]  # the target's, as in a single-task run
        row[f"val_loss/{self.names[0]}"], row[f"val_acc/{self.names[0]}"] = row.get("val_loss"), row.get("val_acc")
        bs = max(256, self.batch_size)
        for index, task in enumerate(self.tasks[1:], start=1):
            row[f"val_loss/{task.name}"] = row[f"val_acc/{task.name}"] = None
            if task.data.val is not None and len(task.data.val):
                row[f"val_loss/{task.name}"], row[f"val_acc/{task.name}"] = self.evaluate(ctx.model, index, task.data.val,
                                                                                         ctx.device, bs, ctx.autocast)
        self.loss.weighting.epoch_end(means)
        if self.loss.weighting.learnt:
            row.update(self._weights())
        self.loss.sums.zero_()
        self.base = [[0.0, 0.0] for _ in self.tasks]

    def evaluate(self, model: nn.Module, index: int, split, device, batch_size=256, autocast=None):
        """Loss and accuracy of task `index`'s head on `split`."""
        router = self.loss.router
        router.active = index
        try:
            return evaluate(model, split, device, batch_size, autocast or contextlib.nullcontext)
        finally:
            router.active = 0

    def _weights(self) -> dict:
        return {f"weight/{name}": w for name, w in zip(self.names, self.loss.weighting.weights())}

    def state(self) -> dict:
        return {"tasks": self.names,
                "head": self.loss.router.head_name,  # the classifier module the heads stand in for
                "classes": {t.name: [str(c) for c in t.data.class_names] for t in self.tasks},
                "normalization": {t.name: t.data.normalization for t in self.tasks},
                "content_size": {t.name: getattr(t.data, "content_size", None) for t in self.tasks},
                "heads": {t.name: t.head.state_dict() for t in self.tasks[1:]},
                "weighting": self.loss.weighting.state_dict(),
                "sums": self.loss.sums.detach().cpu().tolist(),
                "base": [list(b) for b in self.base]}

    def on_checkpoint(self, ctx, state: dict, tags: tuple[str, ...]) -> None:
        state["multitask"] = self.state()

    def on_resume(self, ctx, state: dict) -> None:
        saved = state.get("multitask")
        if not saved or saved.get("tasks") != self.names:
            raise ValueError(f"it was written for the tasks {saved.get('tasks') if saved else None}, "
                             f"this run has {self.names}")
        for task in self.tasks[1:]:
            task.head.load_state_dict(saved["heads"][task.name])
        self.loss.weighting.load_state_dict(saved["weighting"])
        self.loss.sums = torch.tensor(saved["sums"], dtype=torch.float64, device=ctx.device)
        self.base = [list(b) for b in saved["base"]]

    def on_fit_end(self, ctx, result) -> None:
        self.loss.router.active = 0


# --- the plan wrapper ----------------------------------------------------------------------------

class MultiTaskPlan:
    """The transfer plan, plus what multi-task training adds: the extra heads and the learnt
    weights train too (new layers at the base lr; no weight decay on the log-variances), they
    follow the model's train/eval mode, and no feature cache. Everything else is the plan's."""

    def __init__(self, plan, tasks: Sequence[Task], weighting: Weighting, metrics: TaskMetrics):
        self.inner, self.tasks, self.weighting, self.metrics = plan, list(tasks), weighting, metrics

    def __getattr__(self, name: str) -> Any:  # head_decision, warnings, head, block_names, ...
        return getattr(self.inner, name)

    def param_groups(self, base_lr: float, weight_decay: float = 0.0) -> list[dict]:
        groups = self.inner.param_groups(base_lr, weight_decay)
        device = next(self.inner.model.parameters()).device  # the engine moved the model there
        self.weighting.to(device)
        for task in self.tasks[1:]:
            task.head.to(device)
        for task in self.tasks[1:]:
            for group in default_param_groups(task.head, base_lr, weight_decay):
                groups.append(dict(group, name=f"head/{task.name}/{group['name']}"))
        if self.weighting.parameters():
            groups.append({"params": self.weighting.parameters(), "lr": base_lr, "initial_lr": base_lr,
                           "lr_mult": 1.0, "weight_decay": 0.0, "name": "task_weights"})
        return groups

    def train_mode(self, model: nn.Module) -> None:
        self.inner.train_mode(model)
        for task in self.tasks[1:]:
            task.head.train()

    def head_only(self) -> bool:
        return False

    def cached_suffix(self) -> None:
        return None  # each batch's task picks its head: the features are not the head's alone

    def state(self):
        return self.inner.state()

    def callbacks(self) -> list[Callback]:
        return self.inner.callbacks() + [self.metrics]  # before the worker's: rows carry the tasks


# --- building it from a config -------------------------------------------------------------------

@dataclass
class TaskSet:
    """What a multi-task config adds to a prepared run; `fit_options()` is what `engine.fit` takes."""

    tasks: list[Task]
    router: TaskRouter
    sampler: TaskSampler
    loss: TaskLoss
    metrics: TaskMetrics
    plan: MultiTaskPlan

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def extra_parameters(self) -> int:
        """Parameters outside the model: the extra heads and the learnt task weights."""
        return (sum(p.numel() for t in self.tasks[1:] for p in t.head.parameters())
                + sum(p.numel() for p in self.loss.weighting.parameters()))

    @property
    def objective(self) -> Objective:
        """What the optimizer minimises: the weighted cross-entropy of each batch's task."""
        return Objective([(1.0, self.loss)])

    def fit_options(self) -> dict:
        return {"batches": self.sampler, "objective": self.objective}

    def summary(self, model: nn.Module, last_row: dict, best_state: dict | None, device,
                batch_size: int = 256) -> list[dict]:
        """Each task's results for summary.json: the last epoch's figures and, where the task has a
        test split, its accuracy with the best checkpoint (the target's choice: the one model the run
        keeps), model and heads loaded from `best_state`."""
        if best_state is not None:
            model.load_state_dict(best_state["model"])
            for task in self.tasks[1:]:
                task.head.load_state_dict(heads_from_checkpoint(best_state)[task.name])
        rows = []
        for index, task in enumerate(self.tasks):
            test_loss = test_acc = None
            if best_state is not None and task.data.test is not None and len(task.data.test):
                test_loss, test_acc = self.metrics.evaluate(model, index, task.data.test, device, batch_size)
            rows.append({"name": task.name, "primary": index == 0, "dataset": task.data.name,
                         "num_classes": task.data.num_classes, "train_images": len(task.data.train),
                         "weight": task.weight, "final_train_acc": last_row.get(f"train_acc/{task.name}"),
                         "final_val_acc": last_row.get(f"val_acc/{task.name}"),
                         "test_acc": test_acc, "test_loss": test_loss,
                         "test_split": task.data.test_origin if task.data.test is not None else None})
        return rows


def load_task_data(cfg: RunConfig, primary: PreparedData, source, roots=None) -> list[PreparedData]:
    """Each extra task's data, brought to the target's input (the model's: channels and size),
    normalised as the source's weights expect, framed as the source's images were."""
    loaded = []
    for i, task in enumerate(cfg.tasks):
        data = data_module.load_dataset(task.dataset, input_size=primary.input_size,
                                        normalization=getattr(source, "normalization", None), roots=roots,
                                        framing=getattr(source, "framing", None))
        if tuple(data.input_size) != tuple(primary.input_size):
            raise ConfigError(f"tasks[{i}] ({task.name!r}) gives images of {tuple(data.input_size)}, the model "
                              f"takes {tuple(primary.input_size)} (the target's)",
                              f"leave tasks[{i}].dataset.channels and image_size null: they follow the target's")
        loaded.append(data)
    return loaded


def attach(model: nn.Module, plan, primary: PreparedData, cfg: RunConfig, task_data: Sequence[PreparedData],
           device: torch.device | str = "cpu") -> TaskSet:
    """The multi-task machinery for `model` (plan applied) with the target `primary` and the
    extra tasks' data; new heads are drawn from the run's seed."""
    head_name = plan.head
    template = model.get_submodule(head_name)
    heads = []
    with torch.random.fork_rng(devices=[]):
        for i, data in enumerate(task_data):
            torch.manual_seed(cfg.train.seed * 1_000_003 + 7_777 + i)
            heads.append(new_head(template, data.num_classes))
    tasks = [Task(cfg.multitask.primary_name, primary, cfg.multitask.primary_weight, None)]
    tasks += [Task(t.name, d, t.weight, h) for t, d, h in zip(cfg.tasks, task_data, heads)]
    router = TaskRouter(model, head_name, [t.head for t in tasks])
    weighting = make_weighting(cfg.multitask, [t.weight for t in tasks], device)
    loss = TaskLoss(router, weighting, len(tasks), cfg.train.label_smoothing, device)
    sampler = TaskSampler(tasks, router, cfg.multitask.sampling, cfg.train.batch_size, cfg.train.seed,
                          cfg.train.num_workers)
    metrics = TaskMetrics(tasks, loss, cfg.train.batch_size)
    log.info("multi-task: %s on one trunk (%s weighting, %s sampling, %d steps per epoch)",
             ", ".join(f"{t.name} ({t.data.num_classes} classes, {len(t.data.train)} images)" for t in tasks),
             cfg.multitask.weighting, cfg.multitask.sampling, sampler.steps_per_epoch)
    return TaskSet(tasks, router, sampler, loss, metrics, MultiTaskPlan(plan, tasks, weighting, metrics))


def task_names(cfg: RunConfig) -> list[str]:
    """The run's tasks, the target first."""
    return cfg.task_names()


def task_checkpoint(state: dict, cfg: RunConfig, task: str | None):
    """A multi-task checkpoint seen as the single-task network of `task`: the trunk with that
    task's head in the classifier's place, its class names, normalization and content size; and
    the task's dataset selection. The target (None or its name) is the checkpoint as it is: that
    is how `eval --task` and `export --task` reuse the single-task paths unchanged."""
    names = task_names(cfg)
    if task is None or task == names[0]:
        return state, cfg.dataset
    if task not in names:
        raise ConfigError(f"the run has no task {task!r}", f"its tasks: {', '.join(names)}"
                          if len(names) > 1 else "it is a single-task run: leave out --task")
    saved = state.get("multitask")
    if not saved or task not in (saved.get("heads") or {}):
        raise ConfigError(f"the checkpoint holds no head for task {task!r}",
                          "it was written before the run had that task; train the run again")
    model = dict(state["model"])
    for key, value in saved["heads"][task].items():
        model[f"{saved['head']}.{key}"] = value
    view = dict(state, model=model, class_names=saved["classes"][task],
                normalization=saved["normalization"][task], content_size=saved["content_size"][task])
    return view, cfg.tasks[names.index(task) - 1].dataset


def heads_from_checkpoint(state: dict) -> dict[str, dict]:
    """The extra heads' weights a multi-task run's checkpoint holds ({} for a single-task run)."""
    return dict((state.get("multitask") or {}).get("heads") or {})

