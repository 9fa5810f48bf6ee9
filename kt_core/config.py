"""The run configuration: plain typed data, validated, saved with every run and checkpoint.

Config flows one way: UI widgets or a JSON file -> `RunConfig` -> `config.json` in the run
folder -> worker -> engine. `RunConfig.from_dict(cfg.to_dict()) == cfg` always holds, and an
unknown key or a bad value fails with a `ConfigError` naming the key and the valid choices.

Names that refer to registries (architectures, datasets, optimizers, ...) are checked where the
registry lives, when the run starts, so this module stays free of heavy imports.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError
from .optim import OPTIMIZERS, SCHEDULERS
from .presets import PRESETS

SOURCE_KINDS = ("arch", "file", "run")
CHECKPOINT_CHOICES = ("best", "last")
NORMALIZE_CHOICES = ("auto", "source", "dataset", "imagenet", "none")
AUGMENT_CHOICES = ("none", "light", "standard")
BN_MODES = ("eval", "train")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class SourceConfig:
    """Where the source knowledge comes from."""

    kind: str = "arch"  # arch: a registered architecture (+ named weights); file; run
    arch: str | None = None  # registry name; for kind=file optional (inferred from the keys)
    weights: str | None = None  # kind=arch: torchvision weights name ("IMAGENET1K_V1"), None = random
    path: str | None = None  # kind=file: checkpoint path; kind=run: run folder or run id
    checkpoint: str = "best"  # kind=run: which checkpoint of the run
    trust: bool = False  # allow arbitrary unpickling (weights_only=False); warned opt-in

    def validate(self) -> None:
        _choice("source.kind", self.kind, SOURCE_KINDS)
        _choice("source.checkpoint", self.checkpoint, CHECKPOINT_CHOICES)
        if self.kind == "arch" and not self.arch:
            raise ConfigError("source.arch is required when source.kind is 'arch'",
                              "name an architecture, e.g. \"small_cnn\"; `python -m kt_core inspect --help` lists them")
        if self.kind in ("file", "run") and not self.path:
            raise ConfigError(f"source.path is required when source.kind is {self.kind!r}",
                              "give the checkpoint file or the run folder")


@dataclass
class DatasetConfig:
    """The target data and how it is selected and shaped."""

    name: str = "sklearn_digits"  # dataset registry name
    root: str | None = None  # folder or file for file-based and torchvision datasets
    download: bool = False  # torchvision datasets: allow a download when online
    classes: list[Any] | None = None  # class subset, by name or index; None = all
    per_class: int | None = None  # K labelled training images per class; None = all
    val_fraction: float = 0.2  # stratified validation split of the training data
    seed: int = 0  # selects the few-shot images and the split
    image_size: int | None = None  # final side length; None = the source model's input size
    content_size: int | None = None  # resize content to this, then pad to image_size
    channels: int | None = None  # 1 or 3; None = the source model's input channels
    normalize: str = "auto"  # auto: source weights' mean/std if known, else dataset statistics
    augment: str = "none"  # none | light | standard
    options: dict[str, Any] = field(default_factory=dict)  # dataset specific (e.g. synthetic style)

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("dataset.name is empty", "`python -m kt_core datasets` lists the datasets")
        _choice("dataset.normalize", self.normalize, NORMALIZE_CHOICES)
        _choice("dataset.augment", self.augment, AUGMENT_CHOICES)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"dataset.val_fraction is {self.val_fraction}", "use a fraction in [0, 1)")
        _positive("dataset.per_class", self.per_class)
        _positive("dataset.image_size", self.image_size)
        _positive("dataset.content_size", self.content_size)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"dataset.channels is {self.channels}", "use 1, 3 or null (match the source)")
        if self.classes is not None and len(self.classes) < 2:
            raise ConfigError("dataset.classes selects fewer than two classes", "choose at least two classes, or null for all")


@dataclass
class LayerRule:
    """An override for the modules whose qualified name matches `pattern`.

    `pattern` is a block name from the layer tree ("stage1", "head"), a module name
    ("features.0") or a glob ("layer3.*"). Rules apply after the preset, in order.
    """

    pattern: str
    transfer: bool | None = None  # copy the source weights (True) or re-initialise (False)
    freeze: bool | None = None
    lr_mult: float | None = None


@dataclass
class TransferPlan:
    """What to transfer, what to freeze, and how fast each part learns."""

    preset: str = "fine_tune"
    freeze_first_n: int = 0  # freeze_first_n: number of blocks frozen from the input side
    unfreeze_every: int = 1  # gradual_unfreeze: epochs between unfreezing one more block
    unfreeze_lr_mult: float = 0.1  # gradual_unfreeze: lr multiplier of each newly unfrozen group
    layer_decay: float = 0.7  # discriminative: lr multiplier per block, from the head down
    bn_mode: str = "eval"  # BatchNorm in frozen layers: eval (stats frozen) or train
    rules: list[LayerRule] = field(default_factory=list)

    def validate(self) -> None:
        _choice("plan.preset", self.preset, PRESETS.names())
        _choice("plan.bn_mode", self.bn_mode, BN_MODES)
        if self.freeze_first_n < 0:
            raise ConfigError("plan.freeze_first_n is negative", "use 0 or more blocks")
        if self.unfreeze_every < 1:
            raise ConfigError("plan.unfreeze_every must be at least 1", "unfreeze a block every 1 or more epochs")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"plan.layer_decay is {self.layer_decay}", "use a factor in (0, 1]")
        for rule in self.rules:
            if not rule.pattern:
                raise ConfigError("a plan rule has an empty pattern", "name a block, module or glob")
            if rule.lr_mult is not None and rule.lr_mult < 0:
                raise ConfigError(f"plan rule {rule.pattern!r} has a negative lr_mult", "use 0 or more")


@dataclass
class TrainConfig:
    """The optimisation schedule and where it runs."""

    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup_epochs: float = 0.0
    step_size: int = 5  # step scheduler: epochs between decays
    gamma: float = 0.1  # step scheduler: decay factor
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max gradient norm; None = off
    early_stopping: int | None = None  # patience in epochs on val_acc; None = off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision, CUDA)
    log_every: int = 10  # steps between step rows in metrics.jsonl
    num_workers: int = 0  # DataLoader workers for datasets that are not held in memory
    feature_cache: bool = True  # cache frozen-backbone features when the plan allows it

    def validate(self) -> None:
        _choice("train.optimizer", self.optimizer, OPTIMIZERS.names())
        _choice("train.scheduler", self.scheduler, SCHEDULERS.names())
        _choice("train.precision", self.precision, PRECISIONS)
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.log_every", self.log_every)
        if not self.lr > 0:
            raise ConfigError(f"train.lr is {self.lr}", "use a positive learning rate, e.g. 0.001")
        if self.weight_decay < 0 or self.label_smoothing < 0 or self.label_smoothing >= 1:
            raise ConfigError("train.weight_decay or train.label_smoothing is out of range",
                              "weight_decay >= 0 and 0 <= label_smoothing < 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip is {self.grad_clip}", "use a positive norm or null")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"unknown device {self.device!r}", "use auto, cpu, cuda, cuda:N or mps")


@dataclass
class RunConfig:
    """Everything a run needs; `config.json` of the run folder is exactly `to_dict()`."""

    name: str = ""
    source: SourceConfig = field(default_factory=SourceConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    plan: TransferPlan = field(default_factory=TransferPlan)
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline_of: str | None = None  # run id of the transfer run this one is the baseline of
    experiment: str | None = None  # id of the experiment this run is a member of (kt_core/experiments/)
    version: int = 1

    def validate(self) -> "RunConfig":
        self.source.validate()
        self.dataset.validate()
        self.plan.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _from_dict(cls, data, "").validate()

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist", "check the path") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}", "give a JSON text file") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}",
                              "fix the JSON; examples/quick.json is a complete example") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not an object",
                              "the config is one JSON object; see examples/quick.json")
        return cls.from_dict(data)

    def as_baseline(self, transfer_run_id: str | None = None) -> "RunConfig":
        """The from-scratch twin: same architecture, data and schedule, random initialisation."""
        base = copy.deepcopy(self)
        base.name = f"{self.name or 'run'} (from scratch)"
        base.plan = TransferPlan(preset="scratch")
        base.baseline_of = transfer_run_id
        base.experiment = None  # a baseline asked for by hand is not an experiment's member
        return base


# --- validation helpers --------------------------------------------------------------------

def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} is {value!r}", f"valid choices: {', '.join(choices)}")


def _positive(key: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{key} is {value!r}", "use a whole number of 1 or more")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from plain data, checking keys and simple types on the way."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}", "see examples/quick.json")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}",
                          f"valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without a default, e.g. LayerRule.pattern
        raise ConfigError(f"{where}: {exc}", "see examples/quick.json") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        hint, origin, args = inner[0], typing.get_origin(inner[0]), typing.get_args(inner[0])
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}", "use a JSON array")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be an object, got {type(value).__name__}", "use a JSON object")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {hint.__name__}, got {json.dumps(value)}",
                              f"write a JSON {'number' if hint in (int, float) else hint.__name__}")
    return value
