"""The training engine: `fit` a model on prepared data under a transfer plan.

The engine knows nothing about files, processes or the UI. Everything observable leaves through
callbacks (Lightning-style objects with no-op hooks): the run worker plugs in a metrics writer, a
checkpointer and a stop flag. What the engine owns:

- the learning rate: each param group's lr is set from the schedule after every step, nanoGPT
  style (`optim.lr_schedule`: registries of optimizers and schedules, linear warmup), so a group
  added while training (gradual unfreezing) simply follows it,
- the hot loop, kept as lean as a plain PyTorch loop: losses and accuracies are accumulated on the
  device and read back only every `log_every` steps,
- the feature cache: when only the head trains and nothing augments the images, the backbone's
  output is computed once and the head is trained on it (the path that makes a CPU demo take
  seconds),
- mixed precision on CUDA, NaN and out-of-memory failures with a message naming the fix,
- resumable state: batch order comes from a generator seeded by (seed, epoch), so a run resumed
  mid-epoch skips exactly the batches it had already seen,
- data parallelism (`ranks`, a `distributed.Ranks` from torchrun): every process draws the same
  global batches and trains on its share of each under DistributedDataParallel; the loss is
  scaled so the averaged gradient is the global batch's, and every figure a callback sees
  (rows, validation, the stop decision, checkpointed sums) is summed over the processes. With
  one process (`ranks=None`) none of this runs.

What a method adds plugs in as a callback (`callbacks.Callback`; a plan brings its own, e.g.
gradual unfreezing) or, for the loss, as a term of the objective (`kt_core.objectives`) that `train_one_epoch` calls
once per batch: `objective.begin_batch(x, index)` before the forward, `loss, terms = objective(out, y, index, x)` after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from . import __version__, defaults, distributed
from .callbacks import Callback
from .config import RunConfig
from .data import PreparedData, TensorSplit, iter_batches, split_labels
from .errors import DeviceError, KTError
from .optim import OPTIMIZERS, lr_schedule, merge_equal_groups, regroup_saved_state
from .image_cache import compute_once, content_key, shared, split_content
from .objectives import Objective, SetupContext, plain_objective
from .probe import probe

log = logging.getLogger(__name__)


class TrainingError(KTError):
    """Training started but cannot go on: the loss diverged or the device ran out of memory."""


# --- devices -------------------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps` -> a device that is really there, or DeviceError."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' was asked for but Apple's Metal backend is not available here",
                              "use device auto or cpu")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for but this machine has no usable CUDA GPU",
                              "use device auto or cpu")
        index_text = name.partition(":")[2]
        if index_text:
            if not index_text.isdigit():
                raise DeviceError(f"device {name!r} is not a valid CUDA device", "write cuda or cuda:N, e.g. cuda:0")
            count = torch.cuda.device_count()
            if int(index_text) >= count:
                raise DeviceError(f"device {name!r} does not exist: this machine has {count} CUDA GPU(s)",
                                  f"use cuda:0 .. cuda:{count - 1}, or auto")
        return torch.device(name)
    raise DeviceError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


# --- when no plan is given ------------------------------------------------------------------

def default_param_groups(model: nn.Module, base_lr: float, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups, no weight decay on biases and norm weights (timm style)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [dict(g, lr=base_lr, initial_lr=base_lr, lr_mult=1.0) for g in groups if g["params"]]


class WholeModel:
    """The plan of a fit given none: every parameter trains (`default_param_groups`), the whole
    model in train mode, no feature cache, no callbacks. It answers what the engine asks of a
    `transfer.PlanResult`, so the loop has one path."""

    head = None

    def __init__(self, model: nn.Module):
        self.model = model

    def param_groups(self, base_lr: float, weight_decay: float = 0.0) -> list[dict]:
        return default_param_groups(self.model, base_lr, weight_decay)

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def head_only(self) -> bool:
        return False

    def cached_suffix(self) -> None:
        return None

    def state(self) -> None:
        return None

    def callbacks(self) -> list[Callback]:
        return []


# --- the context ----------------------------------------------------------------------------

@dataclass
class FitContext:
    """Everything the loop and the callbacks share; `checkpoint_state` turns it into a checkpoint."""

    model: nn.Module
    data: PreparedData
    cfg: RunConfig
    plan: Any  # a transfer.PlanResult, or WholeModel
    device: torch.device
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float] | None  # step -> multiplier of each group's initial_lr; None: constant
    objective: Objective  # loss, terms = objective(out, y, index, x)
    steps_per_epoch: int
    total_steps: int
    callbacks: list[Callback]
    forward: nn.Module  # the model, or only its head when training on cached features
    train_split: Any
    val_split: Any
    scaler: Any = None
    autocast: Callable[[], Any] = contextlib.nullcontext
    augment: Callable | None = None
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    batch_in_epoch: int = 0  # completed batches of the current epoch
    best_val_acc: float | None = None
    epochs_since_best: int = 0
    # Running sums of the current epoch, on the device: loss*n, correct, seen.
    sums: torch.Tensor | None = None
    # (loss*n, seen) of `sums` at the last step row: the next row averages from there.
    log_base: tuple[float, ...] = (0.0, 0.0)  # (loss*n, seen, term*n...) at the last step row
    labelled: int = 0  # labelled images per epoch (the rest, label -1, feed only distillation)
    meta: dict = field(default_factory=dict)
    feature_cache: bool = False
    feature_cache_s: float = 0.0
    # A callback asked this process to stop, and it stays asked; under several processes the stop
    # lands where they next agree (`_should_stop`).
    stop_requested: bool = False
    # where the training batches come from: None = `train_split`, shuffled per (seed, epoch); a
    # batch source (multi-task's `TaskSampler`) has `steps_per_epoch`, `images_per_epoch` and
    # `epoch(ctx)`, which yields the rest of epoch `ctx.epoch` after `ctx.batch_in_epoch` batches
    batches: Any = None
    ranks: Any = None  # distributed.Ranks of a data-parallel run; None for one process
    store: Any = None  # `image_cache.Store` of outputs shared between runs (the worker's); None: not shared
    cache_budget: int | None = None  # the most bytes the feature cache may hold (None: no limit)
    ddp: nn.Module | None = None  # `forward` under DistributedDataParallel (the training steps' module)
    ddp_signature: tuple = ()  # which parameters trained when `ddp` was built
    # the plan's param groups each optimizer group holds (`optim.merge_equal_groups`): how a
    # checkpoint saved with the groups unmerged is read back
    group_layout: list = field(default_factory=list)


@dataclass
class FitResult:
    state: str  # completed | stopped
    epochs: int
    steps: int
    best_val_acc: float | None
    final_val_acc: float | None
    final_train_acc: float | None
    steps_s: float  # this session's time in optimizer steps: images_per_s's denominator
    images_per_s: float
    trainable_params: int
    total_params: int
    feature_cache: bool
    early_stopped: bool = False
    feature_cache_s: float = 0.0  # extracting the frozen layers' features once: waited for, before epoch 1

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def checkpoint_state(ctx: FitContext, sums: torch.Tensor | None = None, rng_ranks: list | None = None) -> dict:
    """The dict written as checkpoints/last.pt and best.pt: enough to resume, or to use as a source.
    A data-parallel run passes the epoch's sums over every process and each process's RNG state
    (`_checkpoint`): its checkpoint resumes on any number of processes."""
    sums = ctx.sums if sums is None else sums
    return {
        "model": ctx.model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        # The lr is a function of the step (`schedule`), recomputed on resume: nothing to restore.
        "scheduler": {"name": ctx.cfg.train.scheduler, "step": ctx.step} if ctx.schedule is not None else None,
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
        "epoch": ctx.epoch,
        "step": ctx.step,
        "batch_in_epoch": ctx.batch_in_epoch,
        "epoch_sums": sums.detach().cpu().tolist() if sums is not None else None,
        "log_base": list(ctx.log_base),
        "objective": ctx.objective.state_dict(),  # e.g. a feature adapter: resumed, never exported
        "best_val_acc": ctx.best_val_acc,
        "epochs_since_best": ctx.epochs_since_best,
        "config": ctx.cfg.to_dict(),
        "plan_state": ctx.plan.state(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if ctx.device.type == "cuda" else None,
                **({"ranks": rng_ranks} if rng_ranks is not None else {})},
        "kt_studio_version": __version__,
        "arch": ctx.meta.get("arch"),
        "built_from": ctx.meta.get("built_from"),  # "arch" | "source": how evaluate.load_run rebuilds the model
        "class_names": list(ctx.data.class_names),
        "input_size": list(ctx.data.input_size),
        "normalization": ctx.data.normalization,
        # how the images were framed (share of the frame the content fills): a run that uses
        # this one as its source frames its own images the same way by default
        "framing": float(getattr(ctx.data, "framing", 1.0) or 1.0),
        "content_size": getattr(ctx.data, "content_size", None),  # reproduces an auto content size
    }


# --- the loop ------------------------------------------------------------------------------

def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The batch order of an epoch depends only on (seed, epoch): resumable and repeatable."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_one_epoch(ctx: FitContext) -> bool:
    """Train the rest of epoch `ctx.epoch` (skipping `ctx.batch_in_epoch` batches already done).

    Returns True when a callback asked to stop (the current batch is finished first).
    """
    t = ctx.cfg.train
    model, optimizer, objective, device = ctx.forward, ctx.optimizer, ctx.objective, ctx.device
    callbacks, log_every, clip, scaler, schedule = ctx.callbacks, t.log_every, t.grad_clip, ctx.scaler, ctx.schedule
    sums = ctx.sums  # [loss * n, correct, seen, term * n ...], accumulated without a host sync on a GPU
    # The hot loop's bookkeeping is kept off a tiny model's step (bench B1, the MLP): the loss,
    # the seen count and the correct count are held (`_Uncounted`) until someone reads them (a
    # step row the loss and the seen count; the end of the loop or a stop the correct one), and
    # only the callbacks that can ask to stop are asked after each batch.
    term_sums = sums[3:]
    uncounted = _Uncounted(sums, host_loss=device.type == "cpu")
    stoppers = _stoppers(callbacks)
    ranks = ctx.ranks
    if ranks is not None:
        model = ctx.ddp
        total = len(ctx.train_split)
    batches = _epoch_batches(ctx)
    if ctx.batch_in_epoch == 0:
        ctx.log_base = (0.0,) * (sums.numel() - 1)  # sums restart with the epoch; so does the step-row window
    window = _Window(sums, ctx.log_base)
    for x, y, index in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with ctx.autocast():
            objective.begin_batch(x, index)  # an uncached teacher runs before the student's graph holds memory
            out = model(x)
            loss, terms = objective(out, y, index, x)
        step_loss = loss
        if ranks is not None:
            # DDP averages the processes' gradients; a process's share of this global batch may be
            # smaller than the others' (the last batch), so its mean loss is weighted by its share.
            batch = min(t.batch_size, total - ctx.batch_in_epoch * t.batch_size)
            step_loss = loss * (y.shape[0] * ranks.world_size / batch) if y.shape[0] else out.sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(step_loss).backward()
            if clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(_trainable(optimizer), clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            step_loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(_trainable(optimizer), clip)
            optimizer.step()
        if schedule is not None:  # the lr of the next step, as a scheduler's step() would set it
            _set_lr(optimizer, schedule(ctx.step + 1))
        n = y.shape[0]
        if n:  # an empty share (a last batch smaller than the processes) adds nothing
            uncounted.add(loss, out, y)
            if terms:
                term_sums.add_(torch.stack(terms).detach(), alpha=n)
        ctx.step += 1
        ctx.batch_in_epoch += 1
        # The very first step is logged too: the user sees a loss within a second of Start.
        at_row = ctx.step % log_every == 0 or ctx.step == 1
        if at_row:
            uncounted.count_seen()  # a row reads the loss and the images seen, not the correct count
            row = window.row(ctx)
            for cb in callbacks:
                cb.on_step_end(ctx, row)
        if _should_stop(ctx, stoppers, agree=at_row):
            uncounted.count()
            _check_finite(float(sums[0]), ctx)  # never checkpoint weights that already diverged
            return True
    uncounted.count()
    return False


class _Uncounted:
    """The batches trained on since the epoch's sums last counted them: their loss, the seen
    count and the correct predictions, added to `sums` only before someone reads them.

    Counting a batch's correct predictions is 4 small tensor ops (argmax, eq, sum, add); on the
    MLP's ~0.9 ms step in bench B1 they cost ~4 % counted at every batch, and still ~2.5 %
    counted at every step row (10 batches), measured (2026-12-02): in the loop, between a
    backward and a step, each small op costs several times what it costs in a tight loop. A step
    row reads only the loss and the images seen (`count_seen`); the correct count is read at the
    epoch's end and at a stop (`count`), so the held batches' outputs (detached: logits, no
    graph) are counted then, or once MAX_HELD batches or MAX_HELD_VALUES logits are held (a long
    epoch or a wide head must not grow memory; 4 MB of float32 at most). Counts are integers, so
    the order of counting never changes them: a resumed run's rows stay its uninterrupted twin's.

    The loss sum: on the CPU (`host_loss`) a Python float, `n * loss.item()` added each batch and
    written into the sums at each read; the same float64 additions in the same order as the
    tensor's `add_(loss, alpha=n)` (a float32 loss times a batch size is exact in float64), so the
    rows are bit for bit what they were, for ~1 % of the MLP's step less (2.1 ms steps,
    2026-12-03: the `add_` +1.3 %, `item()` +0.5 %). On a GPU `item()` would wait for the queue
    at every batch, so the tensor adds there."""

    MAX_HELD = 64
    MAX_HELD_VALUES = 1 << 20

    def __init__(self, sums: torch.Tensor, host_loss: bool = False):
        self.loss_sum, self.correct_sum, self.seen_sum = sums[0], sums[1], sums[2]
        self.loss = float(self.loss_sum) if host_loss else None  # the loss sum so far, on the host
        self.held: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.held_values = 0
        self.seen = 0

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        if self.loss is None:
            self.loss_sum.add_(loss.detach(), alpha=n)
        else:
            self.loss += n * loss.item()
        self.held.append((out.detach(), y))
        self.held_values += out.numel()
        self.seen += n
        if len(self.held) >= self.MAX_HELD or self.held_values >= self.MAX_HELD_VALUES:
            self.count()

    def count_seen(self) -> None:
        """The loss and the images seen into the sums (what a step row reads)."""
        if self.loss is not None:
            self.loss_sum.fill_(self.loss)
        if self.seen:
            self.seen_sum.add_(self.seen)
            self.seen = 0

    def count(self) -> None:
        self.count_seen()
        if not self.held:
            return
        outs, labels = zip(*self.held)
        if len({o.shape[1:] for o in outs}) == 1:
            self.correct_sum.add_(torch.cat(outs).argmax(1).eq_(torch.cat(labels)).sum())
        else:  # heads of different widths (multi-task): each batch by itself
            for out, y in self.held:
                self.correct_sum.add_(out.argmax(1).eq_(y).sum())
        self.held.clear()
        self.held_values = 0


def _epoch_batches(ctx: FitContext):
    """The rest of epoch `ctx.epoch`'s batches `(x, y, index)`, from the batch source or the training
    split (under several processes, this process's share of each)."""
    if ctx.batches is not None:
        if ctx.ranks is not None:
            raise TrainingError("a multi-task run trains on one process for now",
                                "set train.nproc_per_node (and nnodes) to 1 for it")
        return ctx.batches.epoch(ctx)
    t = ctx.cfg.train
    return iter_batches(ctx.train_split, t.batch_size, shuffle=True,
                        generator=epoch_generator(t.seed, ctx.epoch), augment=ctx.augment,
                        num_workers=t.num_workers, skip_batches=ctx.batch_in_epoch, with_index=True,
                        share=ctx.ranks.share if ctx.ranks is not None else None)


def _stoppers(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks that can ask to stop (those overriding `should_stop`): the others are not
    asked after every batch."""
    return [cb for cb in callbacks if type(cb).should_stop is not Callback.should_stop]


def _should_stop(ctx: FitContext, stoppers: list[Callback] | None = None, agree: bool = True) -> bool:
    """A callback (the STOP file, a signal) asks to stop; under several processes the answer is
    the same on every one (any process asking stops all, after the same step).

    The processes agree only where `agree` (the loop passes its step rows, which sync anyway, and
    every epoch's end); in between, a process remembers that it was asked. One collective and
    host sync a batch cost a small model's DDP step a few percent on CPU (gloo), and on a GPU a
    sync every step stalls its queue; a stop then lands at the next step row, `log_every` steps
    at most, with a checkpoint as always."""
    stoppers = _stoppers(ctx.callbacks) if stoppers is None else stoppers
    ctx.stop_requested = ctx.stop_requested or any(cb.should_stop(ctx) for cb in stoppers)
    if ctx.ranks is None:
        return ctx.stop_requested
    return ctx.ranks.any(ctx.stop_requested, ctx.device) if agree else False


def _global_sums(ctx: FitContext) -> torch.Tensor:
    """The epoch's running sums over every process (this process's alone when it is the only one)."""
    return ctx.sums if ctx.ranks is None else ctx.ranks.all_sum(ctx.sums)


class _Window:
    """Step rows: mean loss (and each objective term) and images/s since the previous row, one host sync per row."""

    def __init__(self, sums: torch.Tensor, base: tuple[float, ...]):
        self.sums = sums
        # loss*n, seen, term*n ...: an index tensor made once (a list index builds one each row)
        self.columns = torch.tensor([0, 2] + list(range(3, sums.numel())), device=sums.device)
        self.base = list(base) + [0.0] * (len(self.columns) - len(base))
        self.time = time.perf_counter()

    def row(self, ctx: FitContext) -> dict:
        window = self.sums.index_select(0, self.columns)
        now_sums = (window if ctx.ranks is None else ctx.ranks.all_sum(window)).tolist()
        (loss_sum, seen, *term_sums), (base_loss, base_seen, *base_terms) = now_sums, self.base
        now = time.perf_counter()
        n = seen - base_seen
        train_loss = (loss_sum - base_loss) / max(1.0, n)
        _check_finite(train_loss, ctx)
        row = {"kind": "step", "step": ctx.step, "epoch": ctx.epoch + 1, "train_loss": train_loss,
               "lr": _current_lr(ctx.optimizer), "images_per_s": n / max(now - self.time, 1e-9),
               "time": time.time()}
        for name, total, base in zip(ctx.objective.terms, term_sums, base_terms):
            row[name] = (total - base) / max(1.0, n)
        self.base, self.time = now_sums, now
        ctx.log_base = tuple(now_sums)
        return row


def _check_finite(loss: float, ctx: FitContext) -> None:
    if not math.isfinite(loss):
        what = "NaN" if math.isnan(loss) else "infinite"
        raise TrainingError(f"loss became {what} at step {ctx.step}",
                            f"lower the learning rate, now {ctx.cfg.train.lr:g}")


def _set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group at its base lr times the schedule's factor (nanoGPT's loop does the same)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def apply_schedule(ctx: FitContext) -> None:
    """The lrs of step `ctx.step`; a group added since (gradual unfreezing) starts from its own lr."""
    for group in ctx.optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    if ctx.schedule is not None:
        _set_lr(ctx.optimizer, ctx.schedule(ctx.step))


def _trainable(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    # The largest group lr is the head's (lr_mult 1); smaller ones are the backbone's multiples.
    return max(g["lr"] for g in optimizer.param_groups)


@torch.no_grad()
def evaluate(model: nn.Module, split, device: torch.device | str = "cpu", batch_size: int = 256,
             autocast: Callable[[], Any] = contextlib.nullcontext, ranks=None) -> tuple[float, float]:
    """Mean cross-entropy (without label smoothing) and accuracy of `model` on `split`.
    `ranks` (a data-parallel run): each process measures its shard, the sums are added up."""
    device = torch.device(device)
    if ranks is not None:
        split = ranks.shard(split)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    for x, y in iter_batches(split, batch_size):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        sums[0] += nn.functional.cross_entropy(out.float(), y, reduction="sum")
        sums[1] += (out.argmax(1) == y).sum()
        sums[2] += y.shape[0]
    model.train(was_training)
    if ranks is not None:
        sums = ranks.all_sum(sums)
    loss_sum, correct, seen = sums.tolist()
    if seen == 0:
        return float("nan"), float("nan")
    return loss_sum / seen, correct / seen


# --- the feature cache ---------------------------------------------------------------------

class _HeadReached(Exception):
    """Raised by a pre-hook to stop the forward pass at the head: the rest is not needed."""


@torch.no_grad()
def extract_head_inputs(model: nn.Module, head_name: str, split, device: torch.device,
                        batch_size: int = 256, autocast: Callable[[], Any] = contextlib.nullcontext
                        ) -> TensorSplit | None:
    """The inputs the head receives for every image of `split` (model in eval mode, in order).

    The forward pass stops at the head, so the head is never run here. Returns None when the head
    is not called with exactly one tensor (then its inputs cannot be cached).
    """
    model.get_submodule(head_name)  # a head that is not there fails here, by name
    captured: list[torch.Tensor] = []

    def grab(module, args):
        if len(args) != 1 or not torch.is_tensor(args[0]):
            raise _HeadReached("unsupported")
        captured.append(args[0].detach().float())
        raise _HeadReached

    def head_input(x: torch.Tensor) -> torch.Tensor | None:
        captured.clear()
        try:
            model(x)
        except _HeadReached:
            pass
        return captured[0] if len(captured) == 1 else None

    with probe(model, before={head_name: grab}):  # one mechanism with the teacher cache (objectives.Teacher)
        feats = compute_once(model, head_input, split, device, batch_size, autocast, max_bytes=None,
                             describe="caching the frozen backbone's features")
    if feats is None:
        return None
    return TensorSplit(feats, split_labels(split).to(device))


def feature_cache_eligible(cfg: RunConfig, data: PreparedData, plan) -> bool:
    """Only a suffix of whole blocks trains (the head, or the classifier block), no unfreezing
    later, no augmentation, frozen BatchNorm in eval mode."""
    return bool(cfg.train.feature_cache and plan.cached_suffix()
                and (data.augment or "none") == "none" and cfg.plan.bn_mode == "eval")


@torch.no_grad()
def suffix_forward(model: nn.Module, names: list[str], probe: torch.Tensor,
                   autocast: Callable[[], Any] = contextlib.nullcontext) -> nn.Module | None:
    """The module that maps the cached input of `names[0]` to the model's output: that module
    itself, or the named modules in a row (they keep their parameters: the optimizer trains the
    same tensors). A model's forward may do more between them than its modules show (a reshape,
    a functional activation), so the row is checked on `probe` images against the whole model,
    in eval mode; None when it differs."""
    modules = [model.get_submodule(n) for n in names]
    forward = modules[0] if len(modules) == 1 else nn.Sequential(*modules)
    if len(modules) == 1:
        return forward
    was_training = model.training
    model.eval()
    try:
        with autocast():
            expected = model(probe)
        inputs = extract_head_inputs(model, names[0], TensorSplit(probe, torch.zeros(len(probe), dtype=torch.long)),
                                     probe.device, len(probe), autocast)
        if inputs is None or not torch.is_tensor(expected):
            return None
        with autocast():
            got = forward(inputs.x)
    finally:
        model.train(was_training)
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), rtol=1e-3, atol=1e-4):
        return None
    return forward


# --- fit -------------------------------------------------------------------------------------

def fit(model: nn.Module, data: PreparedData, cfg: RunConfig, plan=None,
        callbacks: Iterable[Callback] = (), resume_state: dict | None = None,
        device: torch.device | str | None = None, meta: dict | None = None,
        evaluate_first: bool = False, objective: Objective | None = None, batches=None, ranks=None,
        store=None, cache_budget: int | None = None) -> FitResult:
    """Train `model` on `data` as `cfg.train` says, under `plan` (None: everything trains, `WholeModel`),
    minimising `objective` (None: cross-entropy with the config's label smoothing).

    `resume_state` is a checkpoint dict from `checkpoint_state`; training continues exactly where
    it left off. `meta` (e.g. {"arch": "small_cnn"}) is stored in every checkpoint.
    `evaluate_first`: before the first step of a fresh run, measure the untrained model and hand
    it to the callbacks as the epoch-0 row (`"epoch": 0`, train/val and, with a test split,
    test loss and accuracy): what the source already knows, when its head is kept.
    `batches`: a batch source instead of `data`'s training split (see `FitContext.batches`);
    multi-task training passes it with its objective (`multitask.TaskSet.fit_options()`).
    `ranks`: this process's `distributed.Ranks` when torchrun started several (the process group
    already joined, `device` this process's own); every process calls `fit` alike.
    `store`: where the frozen layers' features and a teacher's outputs are shared between runs
    (`image_cache.Store`, keyed by content: a run that finds them trains exactly as one that
    computes them, and says so in its log); None computes them in this run alone.
    `cache_budget`: the most bytes the feature cache may hold (None: no limit); past it the run
    trains without the cache, said in the log (the worker passes KT_FEATURE_CACHE_MAX_BYTES's).
    Raises TrainingError (NaN loss, out of memory) and DeviceError; returns a FitResult whose
    state is "completed" or "stopped".
    """
    if len(data.train) == 0:
        raise TrainingError("the training split is empty", "select more images or classes")
    # auto epochs and early stopping, from the method and the training split (kt_core.defaults);
    # the checkpoints store the resolved config, a resume resolves the same numbers again
    images = len(data.train) if batches is None else batches.images_per_epoch
    cfg = dataclasses.replace(cfg, train=defaults.resolve_train(cfg, images))
    t = cfg.train
    device = resolve_device(t.device) if device is None else torch.device(device)
    plan = WholeModel(model) if plan is None else plan
    callbacks = plan.callbacks() + list(callbacks)  # the plan's first: groups exist before others look
    if resume_state is None:
        # dropout and anything else random in the loop; each process its own stream (rank 0's is
        # the single process's), so the shares of a batch are not augmented alike
        torch.manual_seed(t.seed + (ranks.rank if ranks is not None else 0))
    model.to(device)
    objective = objective if objective is not None else plain_objective(t.label_smoothing)
    try:
        ctx = _build_context(model, data, cfg, plan, callbacks, device, meta or {}, objective, batches, ranks, store,
                             cache_budget)
        if resume_state is not None:
            _restore(ctx, resume_state)
        return _fit_loop(ctx, evaluate_first and resume_state is None)
    except torch.OutOfMemoryError:
        raise TrainingError("out of memory", f"use a smaller batch size, now {t.batch_size}") from None
    finally:
        objective.close()  # its hooks leave the student and the teacher


def _build_context(model, data, cfg, plan, callbacks, device, meta, objective: Objective, batches=None,
                   ranks=None, store=None, cache_budget: int | None = None) -> FitContext:
    t = cfg.train
    if len(data.train) == 0:
        raise TrainingError("the training split is empty", "select more images or classes")
    if ranks is not None and _wants_sync_bn(cfg, plan, model):
        log.info("SyncBatchNorm: %d BatchNorm layers normalise over the global batch of %d processes",
                 distributed.sync_batchnorm(model, device), ranks.world_size)
    groups = plan.param_groups(t.lr, t.weight_decay)
    if not any(g["params"] for g in groups):
        raise TrainingError("nothing to train: every parameter is frozen",
                            "unfreeze at least the head in the transfer plan")
    train_split = data.training_split()  # labelled images, then unlabelled ones (label -1) if any
    augmenting = (data.augment or "none") != "none"
    autocast, scaler = contextlib.nullcontext, None
    if t.precision != "fp32":
        if device.type == "cuda":
            dtype = torch.bfloat16 if t.precision == "bf16" else torch.float16
            autocast = lambda: torch.autocast("cuda", dtype=dtype)  # noqa: E731
            if t.precision == "fp16":  # fp16 gradients underflow without loss scaling
                scaler = torch.amp.GradScaler("cuda")
        else:
            log.warning("precision %s is for CUDA GPUs; training in fp32 on %s", t.precision, device)
    # Before the optimizer: a term may add parameters (an adapter) and cache a teacher's outputs.
    objective.setup(SetupContext(model=model, train_split=train_split, device=device, autocast=autocast,
                                 cache=bool(t.feature_cache and not augmenting), seed=t.seed,
                                 store=store, ranks=ranks, precision=t.precision))
    groups += objective.param_groups(t.lr, t.weight_decay)
    groups, group_layout = merge_equal_groups(groups)
    optimizer = OPTIMIZERS.get(t.optimizer)(groups, t)
    steps_per_epoch = math.ceil(len(train_split) / t.batch_size) if batches is None else batches.steps_per_epoch
    total_steps = steps_per_epoch * t.epochs

    augment = _augmenter(data) if augmenting else None

    ctx = FitContext(
        model=model, data=data, cfg=cfg, plan=plan, device=device, optimizer=optimizer,
        schedule=lr_schedule(t, total_steps, steps_per_epoch),
        objective=objective, steps_per_epoch=steps_per_epoch, batches=batches,
        total_steps=total_steps, callbacks=callbacks, forward=model, train_split=train_split,
        val_split=data.val, scaler=scaler, autocast=autocast, augment=augment, meta=meta,
        sums=torch.zeros(3 + len(objective.terms), device=device, dtype=torch.float64),
        labelled=len(data.train) if batches is None else batches.images_per_epoch, ranks=ranks, store=store,
        cache_budget=cache_budget, group_layout=group_layout,
    )
    apply_schedule(ctx)

    if feature_cache_eligible(cfg, data, plan) and objective.allows_feature_cache:
        _use_feature_cache(ctx)
    return ctx


def _wants_sync_bn(cfg: RunConfig, plan, model: nn.Module) -> bool:
    """`plan.sync_bn`, or auto: when the plan trains BatchNorm layers (in train mode, learning
    statistics from each batch); frozen BatchNorm in eval mode needs nothing synchronised."""
    if cfg.plan.sync_bn is not None:
        return cfg.plan.sync_bn
    plan.train_mode(model)
    return distributed.trains_batchnorm(model)


def _distribute(ctx: FitContext) -> None:
    """`ctx.forward` under DistributedDataParallel, wrapped again when the parameters that train
    have changed (gradual unfreezing released a block: DDP syncs only what trained when built)."""
    if ctx.ranks is None:
        return
    signature = distributed.trainable_signature(ctx.forward)
    if ctx.ddp is None or signature != ctx.ddp_signature:
        ctx.ddp, ctx.ddp_signature = distributed.wrap(ctx.forward, ctx.device), signature


def _augmenter(data: PreparedData) -> Callable | None:
    """The batch augmentation of `data` (kt_core.data owns the transforms).

    It draws from the global torch RNG, which checkpoints save and restore: a resumed run
    augments the remaining batches exactly as the uninterrupted run would have.
    """
    make = getattr(data, "augmenter", None)
    if make is None:
        log.warning("augmentation %r requested but the data offers none; training without it", data.augment)
        return None
    return make()


def _use_feature_cache(ctx: FitContext) -> None:
    started = time.perf_counter()
    bs = max(256, ctx.cfg.train.batch_size)
    names = ctx.plan.cached_suffix()
    probe, _ = next(iter_batches(ctx.train_split, 8))
    forward = suffix_forward(ctx.model, names, probe.to(ctx.device), ctx.autocast)
    if forward is None:
        log.warning("feature cache skipped: the model's forward does more after %s than its modules %s", names[0],
                    ", ".join(names))
        return
    need, budget = _cache_bytes(ctx, names[0], probe), ctx.cache_budget
    over = budget is not None and need > budget
    if ctx.ranks is not None:  # every process decides alike (their budgets may differ: other nodes)
        over = ctx.ranks.any(over, ctx.device)
    if over:
        log.warning("feature cache not made: %d images' features would take %.2f GiB, over the %.2f GiB it may "
                    "hold (KT_FEATURE_CACHE_MAX_BYTES, default half the memory available); each batch goes "
                    "through the frozen layers instead: the same result, more time per epoch",
                    _cached_images(ctx), need / 2**30, (budget or need) / 2**30)
        return
    train = _extract(ctx, names[0], ctx.train_split, bs)
    val = (_extract(ctx, names[0], ctx.data.val, bs)
           if ctx.data.val is not None and len(ctx.data.val) else None)
    if train is None or (ctx.data.val is not None and len(ctx.data.val) and val is None):
        log.warning("feature cache skipped: %r is not called with a single tensor", names[0])
        return
    ctx.forward = forward
    ctx.train_split, ctx.val_split, ctx.feature_cache = train, val, True
    ctx.feature_cache_s = time.perf_counter() - started
    log.info("feature cache: %d train + %d val feature vectors of size %s computed once in %.2f s",
             len(train), len(val) if val is not None else 0, tuple(train.x.shape[1:]), ctx.feature_cache_s)


def _cached_images(ctx: FitContext) -> int:
    return len(ctx.train_split) + (len(ctx.data.val) if ctx.data.val is not None else 0)


def _cache_bytes(ctx: FitContext, name: str, probe: torch.Tensor) -> int:
    """What the feature cache of the train and validation splits would hold, from the probe's
    features (float32): known before a single image is extracted."""
    feats = extract_head_inputs(ctx.model, name, TensorSplit(probe, torch.zeros(len(probe), dtype=torch.long)),
                                ctx.device, len(probe), ctx.autocast)
    per_image = feats.x[0].numel() * 4 if feats is not None and len(feats) else 0
    return per_image * _cached_images(ctx)


def _extract(ctx: FitContext, name: str, split, batch_size: int) -> TensorSplit | None:
    """The cached inputs of `name` for `split`; under several processes each extracts its shard
    and every process receives the whole split, in order (the batches draw from all of it).
    Through `ctx.store` when the run has one: another run's identical features are taken."""

    def compute() -> torch.Tensor | None:
        if ctx.ranks is None:
            whole = extract_head_inputs(ctx.model, name, split, ctx.device, batch_size, ctx.autocast)
            return None if whole is None else whole.x
        piece = extract_head_inputs(ctx.model, name, ctx.ranks.shard(split), ctx.device, batch_size, ctx.autocast)
        if ctx.ranks.any(piece is None, ctx.device):
            return None
        return ctx.ranks.gather_rows(piece.x, len(split))

    feats = shared(ctx.store, _feature_key(ctx, name, split, batch_size), len(split), compute,
                   f"the frozen layers' features of {len(split)} images", ctx.device, ctx.ranks)
    return None if feats is None else TensorSplit(feats, split_labels(split).to(ctx.device))


def _feature_key(ctx: FitContext, name: str, split, batch_size: int) -> str | None:
    """What the features of `split` at the input of `name` depend on: the images, the model's
    structure and every weight and buffer outside the modules that train on them (the suffix:
    a head re-initialised per seed does not change them), the batch size, precision, device
    kind and number of processes the pass runs with (they may change the last bits of a float).
    None without a store, or for a split not held in memory."""
    content = split_content(split)
    if ctx.store is None or content is None:
        return None
    trained = ctx.plan.cached_suffix() or [name]
    frozen = {k: v for k, v in ctx.model.state_dict().items()
              if not any(k.startswith(f"{n}.") for n in trained)}
    return content_key("features", repr(ctx.model), name, frozen, content, batch_size, ctx.cfg.train.precision,
                       ctx.device.type, ctx.ranks.world_size if ctx.ranks is not None else 1)


def _in_current_groups(ctx: FitContext, saved: dict) -> dict:
    """`saved` (an optimizer state dict) in this optimizer's groups: a checkpoint written before
    equal groups were merged has one group per plan group where this optimizer has fewer."""
    unmerged = sum(len(held) for held in ctx.group_layout)
    extra = len(saved["param_groups"]) - len(ctx.optimizer.param_groups)
    if extra > 0 and extra == unmerged - len(ctx.group_layout):
        return regroup_saved_state(saved, ctx.group_layout)
    return saved


def _restore(ctx: FitContext, state: dict) -> None:
    """Put model, optimizer, schedule, counters and RNG back where the checkpoint left them."""
    try:
        ctx.model.load_state_dict(state["model"])
        ctx.epoch, ctx.step = int(state["epoch"]), int(state["step"])
        ctx.batch_in_epoch = int(state.get("batch_in_epoch") or 0)
        for cb in ctx.callbacks:  # e.g. gradual unfreezing adds back its groups, in order
            cb.on_resume(ctx, state)
        ctx.optimizer.load_state_dict(_in_current_groups(ctx, state["optimizer"]))
        apply_schedule(ctx)  # from the step: checkpoints of any version resume alike
        if ctx.scaler is not None and state.get("scaler"):
            ctx.scaler.load_state_dict(state["scaler"])
        if state.get("epoch_sums"):
            sums = torch.tensor(state["epoch_sums"], device=ctx.device, dtype=torch.float64)
            if sums.numel() != ctx.sums.numel():
                raise ValueError(f"its epoch sums have {sums.numel()} entries, this objective {ctx.sums.numel()}")
            ctx.sums = sums
            if ctx.ranks is not None and not ctx.ranks.is_main:
                ctx.sums.zero_()  # the checkpoint holds the sums over every process: rank 0 carries them
        ctx.log_base = tuple(state.get("log_base") or (0.0, 0.0))
        ctx.objective.load_state_dict(state.get("objective"))
        ctx.best_val_acc = state.get("best_val_acc")
        ctx.epochs_since_best = int(state.get("epochs_since_best") or 0)
        rng = state.get("rng") or {}
        if ctx.ranks is not None:
            _restore_rank_rng(ctx, rng)
        elif rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise TrainingError(f"the checkpoint does not fit this run: {exc}",
                            "resume with the config the run was started with, or start a new run") from None
    log.info("resumed at epoch %d, step %d (batch %d of the epoch)", ctx.epoch + 1, ctx.step, ctx.batch_in_epoch)


def _restore_rank_rng(ctx: FitContext, rng: dict) -> None:
    """This process's RNG from a checkpoint: its own saved stream when the checkpoint was written
    by as many processes, else rank 0 takes the saved one and the others a fresh seeded stream."""
    saved = rng.get("ranks")
    rank = ctx.ranks.rank
    if saved is not None and len(saved) == ctx.ranks.world_size:
        torch.set_rng_state(saved[rank])
    elif rank == 0 and rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"])
    else:
        torch.manual_seed(ctx.cfg.train.seed + rank + ctx.step * 7919)


def _set_train_mode(ctx: FitContext) -> None:
    if ctx.feature_cache:
        ctx.forward.train()
    else:
        ctx.plan.train_mode(ctx.model)


def _labelled_part(ctx: FitContext):
    """The labelled images of the training split (they come first; the rest, label -1, are
    unlabelled images that only a distillation term learns from)."""
    split = ctx.train_split
    if len(split) == ctx.labelled:
        return split
    if isinstance(split, TensorSplit):  # also the feature cache's rows, in the same order
        return TensorSplit(split.x[:ctx.labelled], split.y[:ctx.labelled])
    return ctx.data.train


def _epoch_zero(ctx: FitContext) -> dict:
    """The untrained model's row: every split it will be judged on, in eval mode, no step taken."""
    bs = max(256, ctx.cfg.train.batch_size)
    started = time.perf_counter()
    row = {"kind": "epoch", "epoch": 0, "step": 0}
    row["train_loss"], row["train_acc"] = evaluate(ctx.forward, _labelled_part(ctx), ctx.device, bs, ctx.autocast,
                                                   ctx.ranks)
    row["val_loss"] = row["val_acc"] = None
    if ctx.val_split is not None and len(ctx.val_split):
        row["val_loss"], row["val_acc"] = evaluate(ctx.forward, ctx.val_split, ctx.device, bs, ctx.autocast, ctx.ranks)
    if ctx.data.test is not None and len(ctx.data.test):  # measured, never used to choose anything
        row["test_loss"], row["test_acc"] = evaluate(ctx.model, ctx.data.test, ctx.device, bs, ctx.autocast, ctx.ranks)
    row.update(epoch_s=time.perf_counter() - started, lr=_current_lr(ctx.optimizer), time=time.time(),
               before_training=True)
    return row


def _fit_loop(ctx: FitContext, evaluate_first: bool = False) -> FitResult:
    t = ctx.cfg.train
    for cb in ctx.callbacks:
        cb.on_fit_start(ctx)
    if evaluate_first and ctx.epoch == 0 and ctx.step == 0:
        row = _epoch_zero(ctx)
        log.info("before training: val_acc %s", "n/a" if row["val_acc"] is None else f"{row['val_acc']:.4f}")
        for cb in ctx.callbacks:
            cb.on_epoch_end(ctx, row)
    # images/s is one figure everywhere: training images per second of optimizer steps (what the
    # step rows measure over each window; validation and checkpoints are not in it). train_s, the
    # time the user waited, is the worker's: every epoch's epoch_s plus the feature extraction.
    steps_s, images = 0.0, 0
    state, early_stopped, val_acc, train_acc = "completed", False, None, None
    while ctx.epoch < t.epochs:
        if ctx.batch_in_epoch == 0:
            for cb in ctx.callbacks:
                cb.on_epoch_start(ctx)
            apply_schedule(ctx)  # groups a callback added follow the schedule from this step
        epoch_started = time.perf_counter()
        seen_before = ctx.sums[2].item()
        _distribute(ctx)
        _set_train_mode(ctx)
        stopped = train_one_epoch(ctx)
        images += int(ctx.sums[2].item() - seen_before)
        steps_s += time.perf_counter() - epoch_started
        if stopped:
            state = "stopped"
            ctx.stop_requested = True
            _checkpoint(ctx, "last")
            break
        loss_sum, correct, seen, *term_sums = _global_sums(ctx).tolist()
        # Accuracy over the labelled images (all of them, once each, by the end of the epoch).
        train_loss, train_acc = loss_sum / seen, correct / max(1, min(ctx.labelled, seen))
        _check_finite(train_loss, ctx)
        val_loss = val_acc = None
        if ctx.val_split is not None and len(ctx.val_split):
            val_loss, val_acc = evaluate(ctx.forward, ctx.val_split, ctx.device, max(256, t.batch_size), ctx.autocast,
                                         ctx.ranks)
        ctx.epoch += 1
        ctx.batch_in_epoch = 0
        ctx.sums.zero_()
        row = {"kind": "epoch", "epoch": ctx.epoch, "step": ctx.step, "train_loss": train_loss,
               "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
               "epoch_s": time.perf_counter() - epoch_started, "lr": _current_lr(ctx.optimizer),
               "time": time.time(), **{name: v / seen for name, v in zip(ctx.objective.terms, term_sums)}}
        for cb in ctx.callbacks:
            cb.on_epoch_end(ctx, row)
        monitored = val_acc if val_acc is not None else train_acc
        if ctx.best_val_acc is None or monitored > ctx.best_val_acc:
            ctx.best_val_acc, ctx.epochs_since_best = monitored, 0
            _checkpoint(ctx, "last", "best")  # one state for both: a checkpointer can link, not rewrite
        else:
            ctx.epochs_since_best += 1
            _checkpoint(ctx, "last")
        if t.early_stopping and ctx.epochs_since_best >= t.early_stopping and ctx.epoch < t.epochs:
            log.info("early stopping after epoch %d: no better val_acc for %d epochs", ctx.epoch, t.early_stopping)
            early_stopped = True
            break
        if _should_stop(ctx):
            state = "stopped"
            break

    if ctx.ranks is not None:  # images/s of the whole run: every process's images
        images = int(ctx.ranks.all_sum(torch.tensor([float(images)], device=ctx.device)).item())
    total = sum(p.numel() for p in ctx.model.parameters())
    extra = {id(p) for p in ctx.objective.parameters()}  # an adapter is not the model's
    trainable = sum(p.numel() for g in ctx.optimizer.param_groups for p in g["params"] if id(p) not in extra)
    result = FitResult(
        state=state, epochs=ctx.epoch, steps=ctx.step, best_val_acc=ctx.best_val_acc if ctx.val_split is not None else None,
        final_val_acc=val_acc, final_train_acc=train_acc, steps_s=steps_s,
        images_per_s=images / steps_s if steps_s > 0 else 0.0, trainable_params=trainable, total_params=total,
        feature_cache=ctx.feature_cache, early_stopped=early_stopped, feature_cache_s=ctx.feature_cache_s)
    for cb in ctx.callbacks:
        cb.on_fit_end(ctx, result)
    return result


def _checkpoint(ctx: FitContext, *tags: str) -> None:
    """Hand the state to every checkpoint hook with the tags it is for. Under several
    processes every one takes part (the sums and RNG states are gathered); rank 0 stores it."""
    sums = rng_ranks = None
    if ctx.ranks is not None:
        sums, rng_ranks = _global_sums(ctx), ctx.ranks.gather(torch.get_rng_state())
    if not any(type(cb).on_checkpoint is not Callback.on_checkpoint for cb in ctx.callbacks):
        return  # nobody stores checkpoints: skip copying the state
    state = checkpoint_state(ctx, sums, rng_ranks)
    for cb in ctx.callbacks:
        cb.on_checkpoint(ctx, state, tags)
