"""The source model: a `SourceConfig` becomes a model with the source's weights, and a report.

Three kinds of source, one registry: an architecture (with torchvision's named weights, or
random), a checkpoint file (any format `checkpoints.read_checkpoint` reads), or a completed
KT Studio run. Whatever the kind, the result is a `LoadedSource` in the source's native shape
(its own class count and input channels); `LoadedSource.adapt` then fits it to the target task.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import coderef, providers, rundir, usercode
from .checkpoints import LoadReport, RawCheckpoint, interpret, load_into, read_checkpoint
from .config import RunConfig, SourceConfig
from .datasets.transforms import Normalization, adapt_normalization
from .errors import CheckpointError, KTError, PathNotAllowedError
from .models import (ARCHITECTURES, ArchSpec, adapt_first_conv, architecture_fits, blocks, closest_architectures,
                     count_parameters, dry_run, get_spec, infer_architectures, layer_tree, replace_head,
                     weights_preprocessing, weights_state_dict)
from .registry import Registry
from .settings import confine_path, refuse_trust_if_forbidden

log = logging.getLogger(__name__)

# Input sides tried, in order, for a model that does not say what it expects (TorchScript, a
# pickled module of unknown architecture): MNIST-like, CIFAR-like, small and ImageNet-like.
_GUESS_SIDES = (28, 32, 64, 224)


class ArchitectureMismatchError(CheckpointError):
    """An architecture named for a file that takes too little of it to be a transfer of the
    file's weights; `raw` keeps the file for key-level inspection."""

    def __init__(self, message: str, hint: str, arch: str, candidates: list[str], raw: RawCheckpoint | None = None):
        super().__init__(message, hint)
        self.arch, self.candidates, self.raw = arch, candidates, raw


class UnknownArchitectureError(CheckpointError):
    """A state_dict that no registered architecture fits; `raw` keeps it for key-level inspection."""

    def __init__(self, message: str, hint: str, raw: RawCheckpoint):
        super().__init__(message, hint)
        self.raw = raw


class WeakMatchError(ArchitectureMismatchError):
    """A named architecture that fits fewer than half of the file's tensors (none of them, at
    worst): not a transfer of the file's knowledge, unless the user asks for random
    initialisation of the rest (`init_unmatched`)."""


# The share of the file's tensors a named architecture must take for the load to count as a
# transfer; below it the load is an error unless `init_unmatched` asks for random initialisation.
MIN_MATCHED_FRACTION = 0.5
USER_CODE_ROUTE = ("load it into the class that made it: --arch path/to/model.py:ClassName --trust "
                   "(the Source page's 'my model code')")


class ScriptedWithHead(nn.Module):
    """A TorchScript model (which cannot be edited) with a new linear head on its outputs."""

    def __init__(self, body: nn.Module, in_features: int, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class LoadedSource:
    """A source model with its weights loaded, and everything known about it."""

    model: nn.Module
    arch: str | None
    spec: ArchSpec | None
    report: LoadReport
    input_size: tuple[int, int, int] | None  # (C, H, W) the source expects
    normalization: Normalization | None  # mean/std the source was trained with, if known
    candidates: list[str] = field(default_factory=list)  # architectures inferred from the keys
    format: str = ""  # checkpoint format, or "torchvision_weights" / "random_init" for kind=arch
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # epoch, best accuracy, run config, ...
    num_classes: int | None = None  # the model's current output classes
    # True when the model is the file's own module (TorchScript, a trusted pickle): its code
    # lives in the source file, so a run trained from it cannot be rebuilt from `arch` alone.
    own_module: bool = False
    # (model, input_size, (shapes, error)) of the last trial forward pass: see `trial()`.
    _trial: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def pretrained(self) -> bool:
        """Whether the model holds learnt weights: False for an architecture without weights. (A
        from-scratch twin of a file keeps the file's format; its plan is `scratch` anyway.)"""
        return self.format != "random_init"

    @property
    def framing(self) -> float | None:
        """The share of the frame its training images' content filled, when a run recorded it
        (an MNIST model: 20/28); None when unknown."""
        value = self.meta.get("framing")
        return float(value) if isinstance(value, (int, float)) and 0 < value <= 1 else None

    @property
    def class_names(self) -> list[str] | None:
        """The classes the source's head was trained on, when known: a run's checkpoint records
        them, torchvision weights name them; a bare checkpoint file does not."""
        names = self.meta.get("class_names")
        if isinstance(names, (list, tuple)) and names:
            return [str(n) for n in names]
        return None

    def trial(self) -> tuple[dict[str, Any], str | None]:
        """Output shapes per module of one forward pass of a dummy batch at `input_size`, and
        the error if it failed (`models.dry_run`); ({}, None) when the input size is unknown.

        Run once per model and input size, then reused: finding the class count, `inspect_source`
        and the UI's layer tree all need it, and a forward pass of a large TorchScript model is
        not free."""
        if self.input_size is None:
            return {}, None
        size = tuple(self.input_size)
        if self._trial is None or self._trial[0] is not self.model or self._trial[1] != size:
            self._trial = (self.model, size, dry_run(self.model, size))
        return self._trial[2]

    def remember_trial(self, size: tuple[int, int, int], result: tuple[dict[str, Any], str | None]) -> None:
        """Keep the result of a trial forward pass already made on this model at `size`."""
        self._trial = (self.model, tuple(size), result)

    def adapt(self, num_classes: int | None = None, in_channels: int | None = None) -> None:
        """Fit the model to a target task in place: a new head, an adapted first conv."""
        if num_classes and num_classes != self.num_classes:
            self._new_head(num_classes)
        if in_channels and self.input_size and in_channels != self.input_size[0]:
            self._new_input_channels(in_channels)

    def _editable(self) -> bool:
        return self.spec is not None and not isinstance(self.model, torch.jit.ScriptModule)

    def _new_head(self, num_classes: int) -> None:
        old = self.num_classes
        if self._editable():
            replace_head(self.model, self.spec, num_classes)
            fix = f"head {self.spec.head} replaced: {old} -> {num_classes} classes (randomly initialised)"
            self._trial = None  # the head changed in place
        else:
            if old is None:
                raise KTError("the source model's output size is unknown, so no head can be put on it",
                              "name its architecture (--arch) or give its input size")
            body_trial = self._trial if self._trial and self._trial[0] is self.model else None
            self.model = ScriptedWithHead(self.model, old, num_classes)
            if body_trial and body_trial[2][1] is None and isinstance(body_trial[2][0].get(""), list):
                # The wrapper's shapes follow from the body's: no second forward pass through it.
                out = body_trial[2][0][""]
                head_out = [*out[:-1], num_classes]
                self.remember_trial(body_trial[1], ({"body": out, "head": head_out, "": head_out}, None))
            fix = (f"the TorchScript model cannot be edited: a new head (Linear {old} -> {num_classes}) "
                   "takes its outputs")
        self.report.fixes.append(fix)
        self.num_classes = num_classes

    def _new_input_channels(self, in_channels: int) -> None:
        old = self.input_size[0]
        if not self._editable():
            raise KTError(f"the source takes {old}-channel images and cannot be adapted to {in_channels} "
                          "(TorchScript or unknown architecture)",
                          f"use {old}-channel data (the dataset's channels option)")
        adapt_first_conv(self.model, self.spec, in_channels)
        self.report.fixes.append(f"first conv {self.spec.first_conv}: {old} input channels adapted to {in_channels}")
        self.input_size = (in_channels, *self.input_size[1:])
        self.normalization = adapt_normalization(self.normalization, in_channels)
        self._trial = None


SOURCE_LOADERS: Registry[Callable[..., LoadedSource]] = Registry("source kind")


def load_source(cfg: SourceConfig, num_classes: int | None = None, in_channels: int | None = None,
                roots: tuple[Path, ...] | None = None, pretrained: bool = True) -> LoadedSource:
    """Build the source model of `cfg` with its weights (random ones if not `pretrained`).

    `num_classes` / `in_channels` adapt it to a target task (None keeps the source's own);
    `roots` confines file paths and refuses trust where KT_ALLOW_TRUST=0 (the dashboard passes
    `Settings.dashboard_roots`, the CLI None). A from-scratch
    baseline (`pretrained=False`) keeps the source's input size and normalization, so it sees
    exactly the same data.
    """
    cfg.validate()
    source = SOURCE_LOADERS.get(cfg.kind)(cfg, roots=roots, pretrained=pretrained)
    source.adapt(num_classes, in_channels)
    return source


def _architecture(cfg: SourceConfig, roots=None) -> tuple[str | ArchSpec | None, list[str]]:
    """`cfg.arch` as the loaders take it: a registry name, or the ArchSpec of the user's model
    code (imported only with trust), with a note when the code changed since a run recorded it."""
    if coderef.parse_code_ref(cfg.arch) is None:
        return cfg.arch, []
    change = coderef.recorded_change(cfg, roots)
    if change:
        log.warning("%s", change)  # a resumed or re-evaluated run is built from code it was not trained with
    return usercode.user_spec(cfg, roots), [change] if change else []


@SOURCE_LOADERS.register("arch")
def _from_arch(cfg: SourceConfig, roots=None, pretrained: bool = True) -> LoadedSource:
    arch, code_notes = _architecture(cfg, roots)
    spec = get_spec(arch)
    input_size, normalization = weights_preprocessing(spec, cfg.weights)
    model = spec.builder(spec.num_classes, spec.input_size[0])
    notes = []
    if cfg.weights and pretrained:
        report = load_into(model, weights_state_dict(spec, cfg.weights), spec)
        if spec.provider:
            fmt, categories = f"{spec.provider}_weights", None
        else:
            fmt = "torchvision_weights"
            from torchvision import models as tvm  # torchvision's model registry: read on first use (start-up cost)

            categories = tvm.get_model_weights(spec.name)[cfg.weights].meta.get("categories")
    else:
        categories = None
        report = LoadReport()
        fmt = "random_init"
        notes.append("random initialisation: no weights are loaded" +
                     (f" (from-scratch twin of {cfg.weights})" if cfg.weights else ""))
    return LoadedSource(model, spec.name, spec, report, input_size, normalization, [spec.name], fmt,
                        code_notes + notes, meta={"class_names": list(categories)} if categories else {},
                        num_classes=spec.num_classes)


@SOURCE_LOADERS.register("file")
def _from_file(cfg: SourceConfig, roots=None, pretrained: bool = True) -> LoadedSource:
    if roots is None:  # the CLI: the local user's own files and choices
        path = Path(cfg.path).expanduser()
    else:
        path = confine_path(cfg.path, roots)
        if cfg.trust:
            refuse_trust_if_forbidden(f"the source file {cfg.path}")
    raw = read_checkpoint(path, trust=cfg.trust)
    arch, code_notes = _architecture(cfg, roots)
    source = from_checkpoint(raw, arch, pretrained, init_unmatched=cfg.init_unmatched)
    source.notes[:0] = code_notes
    return source


@SOURCE_LOADERS.register("run")
def _from_run(cfg: SourceConfig, roots=None, pretrained: bool = True) -> LoadedSource:
    folder = run_folder(cfg.path, roots)
    config = rundir.read_config_json(folder)
    notes = []
    wanted = rundir.run_checkpoint(folder, cfg.checkpoint)
    if wanted.stem != cfg.checkpoint:
        notes.append(f"the run has no {cfg.checkpoint}.pt; using {wanted.name}")
    raw = interpret(rundir.load_checkpoint(wanted), wanted.name)
    arch = raw.arch or (config.get("source") or {}).get("arch")
    if coderef.parse_code_ref(arch):  # a run of the user's model code: rebuilt from the code it recorded
        arch, code_notes = _architecture(code_source(RunConfig.from_dict(config).source, roots), roots)
        notes += code_notes
    dataset = config.get("dataset") or {}
    side = raw.meta.get("input_size") or dataset.get("image_size")
    if isinstance(side, (list, tuple)):  # run checkpoints store the data's (C, H, W)
        side = int(side[-1])
    normalization = raw.meta.get("normalization")
    if normalization is None and dataset.get("normalize") == "none":
        normalization = ()  # explicitly no normalization
    source = from_checkpoint(raw, arch, pretrained, side=side, normalization=normalization)
    source.notes = notes + source.notes
    source.meta = {"run": folder.name, "checkpoint": wanted.name, "run_name": config.get("name", ""),
                   **{k: v for k, v in raw.meta.items() if k not in ("config", "optimizer", "scheduler")}}
    return source


def code_source(cfg: SourceConfig, roots: tuple[Path, ...] | None = None,
                runs_dir: str | Path | None = None) -> SourceConfig:
    """The source config that names the user's model code behind `cfg`: `cfg` itself, or for a
    run source the source its run recorded (followed through runs of runs). The code's trust is
    the one given when that run was created; `roots` still confine it and KT_ALLOW_TRUST=0 still
    refuses it from the UI."""
    for _ in range(32):  # a chain of runs, each the source of the next; never a cycle in practice
        if cfg.kind != "run":
            return cfg
        cfg = RunConfig.from_dict(rundir.read_config_json(run_folder(cfg.path, roots, runs_dir))).source
    raise KTError("the chain of source runs is too long", "train from a file or an architecture")


def run_folder(run: str, roots: tuple[Path, ...] | None = None, runs_dir: str | Path | None = None) -> Path:
    """The folder of a source run: anything `rundir.run_dir` takes (a folder, a run id, a unique id
    prefix, a run name), looked up in `runs_dir` (default: the settings' runs folder).

    With `roots` (the UI) the folder must lie under one of them or under the runs folder itself.
    Text that would name a place outside them is looked up only as a run id or name in the runs
    folder, never probed on disk, so the answer says nothing about what exists out there.
    """
    text = str(run)
    if roots is None:
        return rundir.run_dir(text, runs_dir)
    allowed = roots + (rundir.runs_root(runs_dir).resolve(),)
    try:
        confine_path(text, allowed)
        inside = True
    except PathNotAllowedError:
        inside = False
        if Path(text).is_absolute() or text in (".", "..", "~") or any(sep in text for sep in ("/", "\\")):
            raise  # plainly a path, and not an allowed one: say so
    return confine_path(rundir.run_dir(text, runs_dir, paths=inside), allowed)


def resolve_run_source(cfg: SourceConfig, runs_dir: str | Path | None = None,
                       roots: tuple[Path, ...] | None = None) -> SourceConfig:
    """`cfg` with a run source's id, id prefix or name replaced by its folder (`run_folder`), looked
    up in `runs_dir`; any other source unchanged. The one resolution of a run given as a source:
    launch's preflight, prepare, the worker's wait for a source run and evaluation all use it."""
    if cfg.kind != "run":
        return cfg
    return dataclasses.replace(cfg, path=str(run_folder(cfg.path, roots, runs_dir)))


def from_checkpoint(raw: RawCheckpoint, arch: str | ArchSpec | None = None, pretrained: bool = True,
                    side: int | None = None, normalization: Any = None, init_unmatched: bool = False) -> LoadedSource:
    """A LoadedSource from what a file held: its module (TorchScript, trusted pickle) or an
    architecture (named, the user's code as an ArchSpec, or inferred from the keys) with the
    weights mapped in.

    A named `arch` that takes fewer than half of the file's tensors raises `WeakMatchError`
    (with the closest registered architectures) unless `init_unmatched`."""
    # A named architecture (or the one a KT Studio run recorded) that fits is checked alone; the
    # whole registry (torchvision's included, ~1.5 s to import) is scanned only when it is needed.
    # The user's own code is the architecture it says: nothing to infer.
    known = arch or _recorded_arch(raw)
    if isinstance(arch, ArchSpec):
        candidates = [arch.name]
    elif not raw.state_dict:
        candidates = []
    elif known and architecture_fits(raw.state_dict, known):
        candidates = [known]
    else:
        candidates = infer_architectures(raw.state_dict)
    notes = []
    spec = None
    if isinstance(arch, ArchSpec):
        spec = arch
    elif arch:
        spec = get_spec(arch)
        if candidates and arch not in candidates:
            notes.append(f"the keys fit {', '.join(candidates)}, not {arch}: see the mapping report")
    elif candidates:
        spec = get_spec(candidates[0])
        if len(candidates) > 1:
            notes.append(f"several architectures fit the keys: {', '.join(candidates)}; using {spec.name} "
                         "(name another with --arch)")
    elif raw.arch and raw.arch in ARCHITECTURES:
        spec = get_spec(raw.arch)

    own_module = raw.module is not None and pretrained
    if raw.module is not None:
        model, report = _own_module(raw, spec, pretrained)
    elif spec is None:
        raise UnknownArchitectureError(
            f"{raw.name}: no known architecture matches its {len(raw.state_dict)} weights",
            "name the architecture (--arch, or the Architecture box), " + USER_CODE_ROUTE +
            ", or save the model as TorchScript (torch.jit.script(model).save(PATH)) so its code travels with it", raw)
    else:
        model = spec.builder(*_native_shape(raw.state_dict, spec))
        if pretrained:
            report = load_into(model, raw.state_dict, spec)
            report.fixes[:0] = raw.fixes
            if arch is not None:
                _check_match(raw, spec, report, init_unmatched, candidates, notes)
        else:
            report = LoadReport(fixes=["random initialisation: the file's weights are not loaded (from-scratch baseline)"])

    input_size, norm, trial = _input_of(model, spec, raw.state_dict, side)
    if normalization is not None:
        norm = tuple(map(tuple, normalization)) if normalization else None
    if input_size is None:
        notes.append("the input size could not be found: name the architecture (--arch) to use its input size")
    elif spec is None:
        notes.append(f"input size {input_size} guessed by a trial forward pass (no architecture named)")
    if report.mismatched:
        notes.append(f"{len(report.mismatched)} weights have another shape than the model's and were not loaded")
    if report.missing:
        notes.append(f"{len(report.missing)} weights of the model are not in the file and keep their random initialisation")
    source = LoadedSource(model, spec.name if spec else None, spec, report, input_size, norm, candidates,
                          raw.format, notes, dict(raw.meta), own_module=own_module)
    if trial is not None:
        source.remember_trial(input_size, trial)
    source.num_classes = _output_classes(source)
    return source


def _recorded_arch(raw: RawCheckpoint) -> str | None:
    """The registered architecture a file names itself: a KT Studio run's `arch`, or a timm
    training checkpoint's `arch` (timm's train.py saves the model name there)."""
    if raw.arch and raw.arch in ARCHITECTURES:
        return raw.arch
    named = raw.meta.get("arch")
    if isinstance(named, str) and named and "/" not in named:
        if providers.timm_available() and providers.TIMM_PREFIX + named in ARCHITECTURES:
            return providers.TIMM_PREFIX + named
    return None


def _check_match(raw: RawCheckpoint, spec: ArchSpec, report: LoadReport, init_unmatched: bool,
                 candidates: list[str], notes: list[str]) -> None:
    """Refuse a named architecture that takes fewer than half of the file's tensors, naming the
    architectures the keys fit (or the closest ones) and the user-code route; with
    `init_unmatched` accept it, saying so. Loading too little would train a mostly random network
    while every page says "source: <file>": starting from scratch is a choice, made explicitly."""
    total = sum(1 for k in raw.state_dict if not k.endswith("num_batches_tracked"))
    matched = len(report.matched)
    if not total or matched >= MIN_MATCHED_FRACTION * total:
        return
    if init_unmatched:
        notes.append(f"only {matched} of the file's {total} tensors fit {spec.name}: everything else is randomly "
                     "initialised, as asked (init_unmatched)")
        return
    fits = [c for c in candidates if c != spec.name]
    if fits:
        where = f"its keys fit {', '.join(fits)}"
        closer = f"choose the architecture the file was saved from ({fits[0]}); "
    else:
        closest = [f"{name} ({hits} of {total})" for name, hits in closest_architectures(raw.state_dict) if hits]
        where = "no registered architecture fits its keys"
        closer = f"the closest registered architectures: {', '.join(closest)}; " if closest else ""
    what = (f"none of its {total} weights fit {spec.name}" if not matched else
            f"{spec.name} takes only {matched} of its {total} tensors, so it would not transfer the file's weights")
    raise WeakMatchError(
        f"{raw.name}: {what} ({where})",
        closer + USER_CODE_ROUTE + "; or, to train it anyway, initialise what does not match randomly "
        "(--init-unmatched; source.init_unmatched in a config; the box in the UI), or use "
        f"{spec.name} with random initialisation (an architecture with no weights) to start from scratch",
        arch=spec.name, candidates=fits, raw=raw)


def _own_module(raw: RawCheckpoint, spec: ArchSpec | None, pretrained: bool) -> tuple[nn.Module, LoadReport]:
    if pretrained:
        return raw.module, LoadReport(matched=list(raw.state_dict), fixes=list(raw.fixes))
    if spec is None:
        raise KTError(f"{raw.name} is a {raw.format} of no known architecture: a from-scratch twin cannot be built",
                      "name its architecture (--arch) to train a from-scratch baseline")
    model = spec.builder(*_native_shape(raw.state_dict, spec))
    return model, LoadReport(fixes=[f"random initialisation of {spec.name} (from-scratch baseline)"])


def _native_shape(sd: dict[str, torch.Tensor], spec: ArchSpec) -> tuple[int, int]:
    """(num_classes, in_channels) of the weights, falling back to the spec's."""
    head = sd.get(f"{spec.head}.weight")
    conv = sd.get(f"{spec.first_conv}.weight") if spec.first_conv is not None else None
    classes = int(head.shape[0]) if head is not None else spec.num_classes
    channels = int(conv.shape[1]) if conv is not None and conv.dim() == 4 else spec.input_size[0]
    return classes, channels


def _input_of(model: nn.Module, spec: ArchSpec | None, sd: dict[str, torch.Tensor], side: int | None
              ) -> tuple[tuple[int, int, int] | None, Normalization | None, tuple[dict[str, Any], str | None] | None]:
    """(input size, normalization, the successful trial forward pass or None).

    A model of unknown architecture is tried on a few input sizes; the pass that worked is
    returned so it need not be run again (`LoadedSource.trial`)."""
    if spec is not None:
        channels = _native_shape(sd, spec)[1] if sd else spec.input_size[0]
        h, w = (side, side) if side else spec.input_size[1:]
        return (channels, h, w), spec.normalization, None
    convs = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 4]
    channel_options = [int(convs[0].shape[1])] if convs else [3, 1]
    for channels in channel_options:
        for s in ([side] if side else _GUESS_SIDES):
            trial = dry_run(model, (channels, s, s))
            if trial[1] is None:
                return (channels, s, s), None, trial
    return None, None, None


def _output_classes(source: LoadedSource) -> int | None:
    if source._editable():
        head = source.model.get_submodule(source.spec.head)
        return getattr(head, "out_features", None) or getattr(head, "out_channels", None)
    shapes, error = source.trial()
    out = shapes.get("")
    if error is None and isinstance(out, list) and out and isinstance(out[-1], int):
        return out[-1]
    return None


def rebuild_model(arch: str | ArchSpec, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Registered architecture `arch` in the shape of `state_dict` (its head's class count, its
    first conv's input channels) with exactly those weights, loaded strictly.

    How a trained run's model is rebuilt from its checkpoint alone: no source weights are read,
    so it works after the run's source file or source run is gone. Raises `RuntimeError` (from
    `load_state_dict`) when the weights do not fit, and KTError for an unknown `arch`.
    """
    spec = get_spec(arch)
    model = spec.builder(*_native_shape(state_dict, spec))
    model.load_state_dict(state_dict)
    return model


# --- inspection (the CLI's JSON and the Source page) ------------------------------------------


def keys_layer_table(sd: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Layers of an unknown model, from its keys: grouped by module prefix, types guessed."""
    groups: dict[str, dict[str, list[int]]] = {}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, {})[leaf] = list(value.shape)
    rows = []
    for module, params in groups.items():
        weight = params.get("weight", [])
        if "running_mean" in params:
            kind = "BatchNorm (guessed)"
        elif len(weight) == 4:
            kind = "Conv2d (guessed)"
        elif len(weight) == 2:
            kind = "Linear (guessed)"
        elif len(weight) == 1:
            kind = "Norm (guessed)"
        else:
            kind = "?"
        count = sum(_numel(shape) for leaf, shape in params.items()
                    if leaf not in ("running_mean", "running_var", "num_batches_tracked"))
        rows.append({"name": module, "type": kind, "depth": module.count("."), "num_parameters": count,
                     "num_parameters_total": count, "shapes": params})
    return rows


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def inspect_source(cfg: SourceConfig, num_classes: int | None = None,
                   roots: tuple[Path, ...] | None = None) -> dict[str, Any]:
    """Everything known about a source, JSON-ready: the output of `python -m kt_core inspect --json`."""
    try:
        src = load_source(cfg, num_classes=num_classes, roots=roots)
    except UnknownArchitectureError as exc:
        raw = exc.raw
        rows = keys_layer_table(raw.state_dict)
        return {
            "source": asdict(cfg), "format": raw.format, "architecture": None, "candidates": [],
            "num_parameters": sum(r["num_parameters"] for r in rows), "num_trainable": None,
            "input_size": None, "normalization": None, "num_classes": None,
            "layers": rows, "blocks": [],
            "load_report": LoadReport(fixes=list(raw.fixes)).to_dict(),
            "notes": [f"no known architecture matched: {exc.message}; layers are listed from the keys. "
                      f"To load it, {exc.hint}"],
            "meta": raw.meta, "output_shape": None,
        }
    total, trainable = count_parameters(src.model)
    notes = list(src.notes)
    shapes, error = src.trial()
    if error:
        notes.append(f"a dry run with input {src.input_size} failed ({error}); output shapes are partial")
    return {
        "source": asdict(cfg), "format": src.format, "architecture": src.arch, "candidates": src.candidates,
        "num_parameters": total, "num_trainable": trainable,
        "input_size": list(src.input_size) if src.input_size else None,
        "normalization": [list(src.normalization[0]), list(src.normalization[1])] if src.normalization else None,
        "num_classes": src.num_classes,
        "layers": layer_rows(src),
        "blocks": [{"name": b.name, "modules": b.modules} for b in blocks(src.model, src.spec)],
        "load_report": src.report.to_dict(),
        "notes": notes, "meta": src.meta, "output_shape": shapes.get(""),
    }


def layer_rows(src: LoadedSource) -> list[dict[str, Any]]:
    """`models.layer_tree` of the source, with the output shapes of its (cached) trial forward pass."""
    shapes = src.trial()[0]
    rows = layer_tree(src.model, None, src.spec)
    for row in rows:
        row["output_shape"] = shapes.get(row["name"])
    return rows
