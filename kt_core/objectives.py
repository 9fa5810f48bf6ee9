"""Training objectives: what the loop minimises, as a weighted sum of named loss terms.

The engine's loop calls `objective.begin_batch(x, index)` before the model's forward and
`loss, terms = objective(out, y, index, x)` after it, for every batch, and knows
nothing of methods: plain cross-entropy, knowledge distillation and L2-SP are all objectives, and
a new method (a sum of task losses for multi-task training, say) adds a term here and a config
section, never a branch in the loop.

- `Term`: one named loss (`loss_ce`, `loss_kd`, `loss_feat`, `loss_l2sp`). `setup` runs once
  before the optimizer is built (it may add trainable parameters, such as an adapter, and cache a
  teacher's outputs), `begin_batch` with each batch before the student's forward (an uncached
  teacher runs there, as a plain KD loop runs it), `__call__` once per batch after it.
- `Objective`: `total = sum(weight_i * term_i)`; it reports each term *unweighted* beside the
  total, so a curve of `loss_kd` means the same thing whatever its weight. A one-term objective
  reports only the total (`train_loss`), so a plain run's metric rows are as before.
- `Teacher`: a model in eval mode under `no_grad` whose outputs (logits, or the features of one
  layer) are computed once per training image when nothing augments them (`image_cache`, the
  mechanism of the feature cache), else once per batch.
- `build_objective(cfg, ...)`: the objective a `RunConfig` asks for (`distill`, `plan.l2sp_*`).

Extra trainable parameters (a feature adapter) live in the objective, get their own optimizer
group, and are checkpointed under `objective`; they are never part of the model, so `eval` and
`export` of a run see the student alone.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .datasets.containers import iter_batches, split_labels
from .errors import KTError
from .image_cache import MAX_CACHE_BYTES, compute_once, content_key, shared, split_content

log = logging.getLogger(__name__)


class DistillError(KTError):
    """A teacher that cannot teach this target the way the config asks."""


@dataclass
class SetupContext:
    """What a term may look at once, before training: the student, the training images, where."""

    model: nn.Module  # the student, whole
    train_split: Any  # the training images in the order batch indices refer to (labelled + unlabelled)
    device: torch.device
    cache: bool  # True when the images are never augmented and caching is allowed
    autocast: Callable[[], Any] = contextlib.nullcontext
    seed: int = 0
    store: Any = None  # `image_cache.Store`: per-image outputs shared between runs; None: not shared
    ranks: Any = None  # `distributed.Ranks` of a data-parallel run: a cache is computed in shares
    precision: str = "fp32"  # the config's, part of what a shared output depends on


class Term:
    """One named loss term; every hook but `__call__` is a no-op until overridden."""

    name = "loss"
    uses_student_layers = False  # True: needs the whole student forward (no feature cache)

    def setup(self, ctx: SetupContext) -> None: ...

    def begin_batch(self, x: torch.Tensor, index: torch.Tensor | None) -> None:
        """Called with each training batch before the student's forward (a teacher runs here)."""

    def reads_images(self) -> bool:
        """True (after `setup`) when each batch's images themselves are read, not only their
        indices: a teacher that was not cached runs on them, so they must stay images (no
        feature cache in their place)."""
        return False

    def __call__(self, out: torch.Tensor, y: torch.Tensor, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> dict:
        return {}


class Objective:
    """A weighted sum of terms. `terms` names what each metrics row reports beside the total."""

    def __init__(self, parts: Sequence[tuple[float, Term]]):
        if not parts:
            raise ValueError("an objective needs at least one term")
        names = [t.name for _, t in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"term names repeat: {names}")
        self.parts = [(float(w), t) for w, t in parts]
        self.terms: tuple[str, ...] = tuple(names) if len(parts) > 1 else ()

    @property
    def allows_feature_cache(self) -> bool:
        """False when a term reads the student's inner layers (the whole student must run) or,
        after `setup`, the batch's images (an uncached teacher): the engine's feature cache would
        hand both the backbone's features instead."""
        return not any(t.uses_student_layers or t.reads_images() for _, t in self.parts)

    def setup(self, ctx: SetupContext) -> None:
        for _, term in self.parts:
            term.setup(ctx)

    def begin_batch(self, x: torch.Tensor, index: torch.Tensor | None) -> None:
        """The engine calls this with each batch before the student's forward, then `self(...)`."""
        for _, term in self.parts:
            term.begin_batch(x, index)

    def __call__(self, out: torch.Tensor, y: torch.Tensor, index: torch.Tensor, x: torch.Tensor
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if len(self.parts) == 1 and self.parts[0][0] == 1.0:
            return self.parts[0][1](out, y, index, x), ()  # exactly the term: a plain run stays a plain run
        values = tuple(term(out, y, index, x) for _, term in self.parts)
        total = sum(w * v for (w, _), v in zip(self.parts, values))
        return total, values

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, t in self.parts for p in t.parameters()]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The optimizer group of the terms' own parameters (an adapter), appended after the model's."""
        params = self.parameters()
        if not params:
            return []
        return [{"params": params, "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay, "name": "objective"}]

    def state_dict(self) -> dict:
        return {t.name: t.state_dict() for _, t in self.parts if t.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        for _, term in self.parts:
            if state and term.name in state:
                term.load_state_dict(state[term.name])

    def close(self) -> None:
        for _, term in self.parts:
            term.close()

    def describe(self) -> dict:
        """The terms and their weights, for the summary."""
        return {t.name: {"weight": w, **t.describe()} for w, t in self.parts}


# --- terms -------------------------------------------------------------------------------------

class CrossEntropy(Term):
    """Cross-entropy on the labels. Images labelled -1 (unlabelled) are left out of the mean; a
    batch of only unlabelled images contributes 0."""

    name = "loss_ce"

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing
        self.masked = False

    def setup(self, ctx: SetupContext) -> None:
        self.masked = bool((split_labels(ctx.train_split) < 0).any())

    def __call__(self, out, y, index, x):
        if not self.masked:
            return F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        labelled = y >= 0
        per_image = F.cross_entropy(out, y.clamp(min=0), reduction="none", label_smoothing=self.label_smoothing)
        return (per_image * labelled).sum() / labelled.sum().clamp(min=1)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft term: T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean over the batch.

    The T^2 keeps its gradients on the scale of the hard term's as T changes (Hinton et al. 2015).
    """
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


class LogitKD(Term):
    """The soft term of logit distillation, on every image (labelled or not)."""

    name = "loss_kd"

    def __init__(self, teacher: "Teacher", temperature: float):
        self.teacher, self.temperature = teacher, temperature

    def setup(self, ctx: SetupContext) -> None:
        self.teacher.setup(ctx)

    def begin_batch(self, x, index) -> None:
        self.teacher.begin_batch(x, index)

    def reads_images(self) -> bool:
        return self.teacher.cache is None

    def __call__(self, out, y, index, x):
        return kd_loss(out, self.teacher.outputs(x, index), self.temperature)

    def describe(self) -> dict:
        return {"temperature": self.temperature, **self.teacher.describe()}


class FeatureKD(Term):
    """FitNets-style hint: MSE between a learned adapter of a student layer's output and a teacher
    layer's output. The adapter (1x1 conv for feature maps, linear for vectors) trains with the
    student and is checkpointed with the objective, never exported with the model."""

    name = "loss_feat"
    uses_student_layers = True

    def __init__(self, teacher: "Teacher", student_layer: str | None, student_head: str | None, adapter: str = "auto"):
        self.teacher, self.adapter_kind = teacher, adapter
        self.student_tap = LayerTap(student_layer, student_head)
        self.adapter: nn.Module | None = None

    def setup(self, ctx: SetupContext) -> None:
        self.teacher.setup(ctx)
        self.student_tap.attach(ctx.model)
        with torch.no_grad():
            probe = _probe_batch(ctx.train_split).to(ctx.device)
            was = ctx.model.training
            ctx.model.eval()
            try:
                ctx.model(probe)
            finally:
                ctx.model.train(was)
            s = self.student_tap.take()
            t = self.teacher.outputs(probe, None)
        self.adapter = _make_adapter(self.adapter_kind, s, t, ctx.seed).to(ctx.device)
        log.info("feature distillation: student %s %s -> adapter %s -> teacher %s %s",
                 self.student_tap.label, tuple(s.shape[1:]), type(self.adapter).__name__,
                 self.teacher.tap.label, tuple(t.shape[1:]))

    def begin_batch(self, x, index) -> None:
        self.teacher.begin_batch(x, index)

    def __call__(self, out, y, index, x):
        s = self.adapter(self.student_tap.take())
        t = self.teacher.outputs(x, index)
        if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
            s = F.adaptive_avg_pool2d(s, t.shape[-2:])
        return F.mse_loss(s.float(), t.float())

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters()) if self.adapter is not None else []

    def state_dict(self) -> dict:
        return {"adapter": self.adapter.state_dict()} if self.adapter is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.adapter is not None and state.get("adapter"):
            self.adapter.load_state_dict(state["adapter"])

    def close(self) -> None:
        self.student_tap.detach()
        self.teacher.close()

    def describe(self) -> dict:
        return {"student_layer": self.student_tap.label, "adapter": type(self.adapter).__name__ if self.adapter else None,
                **self.teacher.describe()}


def _make_adapter(kind: str, s: torch.Tensor, t: torch.Tensor, seed: int) -> nn.Module:
    if kind == "auto":
        kind = "conv1x1" if s.dim() == 4 and t.dim() == 4 else "linear"
    with torch.random.fork_rng(devices=[]):  # seeded, and the loop's RNG stream is left alone
        torch.manual_seed(seed)
        if kind == "conv1x1":
            if s.dim() != 4 or t.dim() != 4:
                raise DistillError(f"a 1x1 conv adapter needs feature maps on both sides, got student {tuple(s.shape[1:])} "
                                   f"and teacher {tuple(t.shape[1:])}", "use adapter linear (or auto)")
            return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False)
        if s.dim() != 2 or t.dim() != 2:
            return nn.Sequential(nn.Flatten(), nn.Linear(s[0].numel(), t[0].numel()), nn.Unflatten(1, tuple(t.shape[1:])))
        return nn.Linear(s.shape[1], t.shape[1])


class L2SP(Term):
    """L2-SP (Li et al. 2018): alpha/2 * ||w - w_source||^2 over the trained weights that came from
    the source, beta/2 * ||w||^2 over the trained weights that did not (a new head, re-initialised
    layers). Frozen weights are skipped at each step (they never move; a block that gradual
    unfreezing releases joins the sum from then on, at 0 for a transferred one).
    """

    name = "loss_l2sp"

    def __init__(self, alpha: float, beta: float, source_state: dict[str, torch.Tensor] | None):
        self.alpha, self.beta = alpha, beta
        self.source_state = source_state or {}
        self.transferred: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.new: list[nn.Parameter] = []

    def setup(self, ctx: SetupContext) -> None:
        """Sorts the student's weights, as they are before training: equal to the source's -> transferred."""
        self.transferred, self.new = [], []
        for name, p in ctx.model.named_parameters():
            ref = self.source_state.get(name)
            if ref is not None and ref.shape == p.shape and torch.equal(ref.to(p.device), p.detach()):
                self.transferred.append((p, ref.to(p.device)))
            else:
                self.new.append(p)
        log.info("L2-SP: %d transferred tensors pulled toward the source (alpha %g), %d new toward zero (beta %g)",
                 len(self.transferred), self.alpha, len(self.new), self.beta)

    def __call__(self, out, y, index, x):
        total = out.new_zeros((), dtype=torch.float32)
        if self.alpha:
            moved = [((p - ref) ** 2).sum() for p, ref in self.transferred if p.requires_grad]
            if moved:
                total = total + 0.5 * self.alpha * torch.stack(moved).sum()
        if self.beta:
            sizes = [(p ** 2).sum() for p in self.new if p.requires_grad]
            if sizes:
                total = total + 0.5 * self.beta * torch.stack(sizes).sum()
        return total

    def describe(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "transferred_tensors": len(self.transferred),
                "new_tensors": len(self.new)}


# --- the teacher -------------------------------------------------------------------------------

class LayerTap:
    """Captures one tensor of a forward pass: the output of module `layer`, or (layer None) the
    input of the head module `head` (the penultimate features)."""

    def __init__(self, layer: str | None, head: str | None):
        self.layer, self.head = layer, head
        self.label = layer or (f"input of {head}" if head else "logits")
        self._value: torch.Tensor | None = None
        self._handle = None

    def attach(self, model: nn.Module) -> None:
        self.detach()
        name = self.layer or self.head
        if name is None:
            return  # the model's output itself
        try:
            module = model.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise DistillError(f"the model has no layer {name!r}",
                               f"name one of its modules, e.g. {', '.join(names[-6:])}; or null for the head's input") from None
        if self.layer is not None:
            self._handle = module.register_forward_hook(self._grab_output)
        else:
            self._handle = module.register_forward_pre_hook(self._grab_input)

    @property
    def logits(self) -> bool:
        return self.layer is None and self.head is None

    def _grab_output(self, module, args, output):
        if not torch.is_tensor(output):
            raise DistillError(f"layer {self.layer!r} does not output one tensor", "pick another layer")
        self._value = output

    def _grab_input(self, module, args):
        if len(args) != 1 or not torch.is_tensor(args[0]):
            raise DistillError(f"the head {self.head!r} is not called with one tensor", "name a layer instead")
        self._value = args[0]

    def take(self) -> torch.Tensor:
        value, self._value = self._value, None
        if value is None:
            raise DistillError(f"layer {self.label!r} was not run by the forward pass", "pick a layer the model uses")
        return value

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class Teacher:
    """A frozen model in eval mode that answers `outputs(x, index)` for a training batch.

    `outputs` are its logits for the target's classes (`class_index` picks and orders them), or
    the tensor of one layer (`tap`). `input_map` converts the student's normalised images into
    the teacher's normalisation. With `SetupContext.cache`, every training image's outputs are
    computed once (`image_cache.compute_once`) and a batch looks its rows up by index.
    """

    def __init__(self, model: nn.Module, tap: LayerTap, class_index: list[int] | None = None,
                 input_map: tuple[torch.Tensor, torch.Tensor] | None = None, label: str = "teacher"):
        self.model, self.tap, self.label = model, tap, label
        self.class_index = class_index
        self.input_map = input_map
        self.cache: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (batch, outputs) of `begin_batch`
        self._setup_done = False
        for p in model.parameters():
            p.requires_grad_(False)

    def setup(self, ctx: SetupContext) -> None:
        if self._setup_done:
            return
        self._setup_done = True
        self.model.to(ctx.device).eval()
        self.tap.attach(self.model)
        if self.input_map is not None:
            self.input_map = tuple(t.to(ctx.device) for t in self.input_map)
        self._index = (torch.tensor(self.class_index, device=ctx.device) if self.class_index is not None
                       and self.class_index != list(range(len(self.class_index))) else None)
        if ctx.cache:
            self.cache = shared(ctx.store, self._cache_key(ctx), len(ctx.train_split), lambda: self._compute(ctx),
                                f"teacher {self.label}: outputs of {len(ctx.train_split)} training images",
                                ctx.device, ctx.ranks)
            if self.cache is not None:
                log.info("teacher %s: outputs %s of %d training images computed once and cached",
                         self.label, tuple(self.cache.shape[1:]), len(self.cache))
        if self.cache is None:
            log.info("teacher %s: runs on every batch (%s)", self.label,
                     "the images are augmented or caching is off" if not ctx.cache else "too large to cache")

    def _compute(self, ctx: SetupContext) -> torch.Tensor | None:
        """The outputs of every training image; under several processes each rank computes its
        share and receives everyone's (every rank looks rows up for its share of a batch)."""
        if ctx.ranks is None:
            return compute_once(self.model, self._forward, ctx.train_split, ctx.device,
                                autocast=ctx.autocast, describe="caching the teacher's outputs")
        # each rank's share is 1/N of the whole: the size limit is judged on the whole
        mine = compute_once(self.model, self._forward, ctx.ranks.shard(ctx.train_split), ctx.device,
                            autocast=ctx.autocast, describe="caching the teacher's outputs (this process's share)",
                            max_bytes=MAX_CACHE_BYTES // ctx.ranks.world_size)
        if ctx.ranks.any(mine is None, ctx.device):
            return None
        log.info("teacher %s: this process computed its share of the outputs, %d of %d images",
                 self.label, len(mine), len(ctx.train_split))
        return ctx.ranks.gather_rows(mine, len(ctx.train_split))

    def _cache_key(self, ctx: SetupContext) -> str | None:
        """What the cached outputs depend on: the training images, the teacher (structure,
        weights, buffers), what is taken of it (layer, classes, input map) and how the pass runs."""
        content = split_content(ctx.train_split)
        if ctx.store is None or content is None:
            return None
        return content_key("teacher", repr(self.model), self.model.state_dict(), self.tap.layer, self.tap.head,
                           self.class_index, self.input_map, content, ctx.precision, ctx.device.type,
                           ctx.ranks.world_size if ctx.ranks is not None else 1)

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_map is not None:
            scale, shift = self.input_map
            x = x * scale + shift
        out = self.model(x)
        if not self.tap.logits:
            return self.tap.take().float()
        out = out.float()
        return out[:, self._index] if self._index is not None else out

    def begin_batch(self, x: torch.Tensor, index: torch.Tensor | None) -> None:
        """Run an uncached teacher on the batch now, before the student's forward, as a plain KD
        loop does: its activations are freed before the student's graph is built, so the two never
        hold memory together (lower peak memory; on CPU, measured on cifar_resnet56 ->
        cifar_resnet20 at batch 64, ~10x fewer page faults and ~5 % less CPU time per step than
        running it after the student). `outputs` hands the result to the loss."""
        if self.cache is not None and index is not None:
            return
        self._pending = (x, self._run(x))

    def outputs(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if self.cache is not None and index is not None:
            return self.cache[index.to(self.cache.device, non_blocking=True)]
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is x:  # computed by `begin_batch` for this very batch
            return pending[1]
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            self.model.eval()
        return self._forward(x)

    def close(self) -> None:
        self.tap.detach()

    def describe(self) -> dict:
        return {"teacher": self.label, "teacher_cached": self.cache is not None}


def _probe_batch(split) -> torch.Tensor:
    x, _ = next(iter_batches(split, 2))
    return x


# --- from a config -------------------------------------------------------------------------------

def plain_objective(label_smoothing: float = 0.0) -> Objective:
    """Cross-entropy on the labels: every run's objective unless a method adds terms."""
    return Objective([(1.0, CrossEntropy(label_smoothing))])


def build_objective(cfg, student_source=None, data=None, teacher_source=None,
                    source_state: dict[str, torch.Tensor] | None = None) -> Objective:
    """The objective `cfg` (a RunConfig) asks for.

    `student_source` is the student's LoadedSource (for its head's name), `data` the PreparedData,
    `teacher_source` the loaded teacher (a LoadedSource in its own shape) when `cfg.distill.mode`
    is not off, `source_state` the source's weights before the plan (for L2-SP).
    """
    d, ls = cfg.distill, cfg.train.label_smoothing
    parts: list[tuple[float, Term]] = []
    if d.mode == "logit":
        teacher = _teacher(teacher_source, data, LayerTap(None, None), cfg, logits=True)
        parts += [(1.0 - d.alpha, CrossEntropy(ls)), (d.alpha, LogitKD(teacher, d.temperature))]
    elif d.mode == "feature":
        teacher_head = teacher_source.spec.head if teacher_source.spec is not None else None
        if d.teacher_layer is None and teacher_head is None:
            raise DistillError("the teacher's head is unknown, so its penultimate features cannot be found",
                               "name distill.teacher_layer (a module of the teacher)")
        student_head = student_source.spec.head if student_source is not None and student_source.spec else None
        if d.student_layer is None and student_head is None:
            raise DistillError("the student's head is unknown, so its penultimate features cannot be found",
                               "name distill.student_layer (a module of the student)")
        teacher = _teacher(teacher_source, data, LayerTap(d.teacher_layer, teacher_head), cfg, logits=False)
        parts += [(1.0, CrossEntropy(ls)), (d.feature_weight, FeatureKD(teacher, d.student_layer, student_head, d.adapter))]
    else:
        parts.append((1.0, CrossEntropy(ls)))
    if cfg.plan.l2sp_alpha > 0 or cfg.plan.l2sp_beta > 0:
        parts.append((1.0, L2SP(cfg.plan.l2sp_alpha, cfg.plan.l2sp_beta, source_state)))
    return Objective(parts)


def _teacher(src, data, tap: LayerTap, cfg, logits: bool) -> Teacher:
    d = cfg.distill
    label = "the source" if d.teacher is None else (d.teacher.arch if d.teacher.kind == "arch" else d.teacher.path)
    if src.format == "random_init":
        raise DistillError(f"the teacher ({label}) has random weights: it has nothing to teach",
                           "give the teacher its weights (a checkpoint file, a completed run, or an architecture "
                           "with named weights), or pick a source with weights")
    channels = src.input_size[0] if src.input_size else None
    if channels is not None and channels != data.input_size[0]:
        raise DistillError(f"the teacher ({label}) takes {channels}-channel images but the data has "
                           f"{data.input_size[0]} channel(s)",
                           f"set dataset.channels to {channels}, or choose a teacher for "
                           f"{data.input_size[0]}-channel images")
    if src.input_size and tuple(src.input_size[1:]) != tuple(data.input_size[1:]):
        log.warning("the teacher (%s) expects %s images; it sees the student's %s", label,
                    "x".join(map(str, src.input_size[1:])), "x".join(map(str, data.input_size[1:])))
    class_index = _class_index(src, data, label) if logits else None
    return Teacher(src.model, tap, class_index, _input_map(data.normalization, src.normalization, data.input_size[0]),
                   label=label)


def _class_index(src, data, label: str) -> list[int]:
    """Which teacher output is which target class; refuses a teacher of other classes."""
    target = list(data.class_names)
    names = src.meta.get("class_names") if isinstance(src.meta, dict) else None
    offer = ("use distill.mode \"feature\" (the student's features regress onto the teacher's, any label "
             "spaces), or fine-tune the teacher on the target first and use that run as the teacher")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        missing = [n for n in target if n not in names]
        if missing:
            raise DistillError(f"logit distillation needs a teacher that predicts the target's classes; "
                               f"the teacher ({label}) has no class {', '.join(map(repr, missing[:5]))}"
                               f"{' ...' if len(missing) > 5 else ''} (it predicts {len(names)} classes)", offer)
        return [names.index(n) for n in target]
    if src.num_classes != len(target):
        raise DistillError(f"logit distillation needs a teacher that predicts the target's classes; the teacher "
                           f"({label}) predicts {src.num_classes or 'an unknown number of'} classes, the target has "
                           f"{len(target)}", offer)
    log.info("the teacher's class names are unknown: its %d outputs are taken as the target's classes in order",
             len(target))
    return list(range(len(target)))


def _input_map(data_norm, teacher_norm, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) per channel taking images normalised with `data_norm` (None: raw [0, 1]) to
    `teacher_norm`; None when they are the same or the teacher's is unknown."""
    if teacher_norm is None or tuple(map(tuple, teacher_norm)) == (tuple(map(tuple, data_norm)) if data_norm else None):
        return None

    def per_channel(values) -> torch.Tensor:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        return (t.expand(channels) if t.numel() == 1 else t).reshape(1, -1, 1, 1)

    mean_t, std_t = per_channel(teacher_norm[0]), per_channel(teacher_norm[1])
    if data_norm:
        mean_s, std_s = per_channel(data_norm[0]), per_channel(data_norm[1])
    else:
        mean_s, std_s = torch.zeros_like(mean_t), torch.ones_like(std_t)
    # x_raw = x * std_s + mean_s;  x_teacher = (x_raw - mean_t) / std_t
    return std_s / std_t, (mean_s - mean_t) / std_t
