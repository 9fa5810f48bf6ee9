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
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .coderef import parse_code_ref
from .errors import ConfigError
from .optim import OPTIMIZERS, SCHEDULERS
from .presets import PRESETS
from .settings import checked_path

SOURCE_KINDS = ("arch", "file", "run")
CHECKPOINT_CHOICES = ("best", "last")
NORMALIZE_CHOICES = ("auto", "source", "dataset", "imagenet", "none")
AUGMENT_CHOICES = ("none", "light", "standard")  # datasets.transforms.AUGMENTS (torch-free here; a test keeps them equal)
BN_MODES = ("eval", "train")
HEAD_CHOICES = ("auto", "keep", "new")  # auto: keep the source head when the target's classes are the source's
PRECISIONS = ("fp32", "bf16", "fp16")
# multi-task learning (kt_core.multitask): how the tasks' losses are weighted and their batches drawn
WEIGHTINGS = ("fixed", "uncertainty", "dwa")  # fixed weights; Kendall et al. 2018; Liu et al. 2019
SAMPLINGS = ("round_robin", "proportional")  # tasks take turns; or one pass over every task's data
CONFIG_VERSIONS = (1,)

# Size limits: far above any real config, low enough that a hostile one cannot cost minutes or
# gigabytes before it is refused (250,000 rules took minutes to match; a 10 MB name is no name).
MAX_CONFIG_BYTES = 1 << 20  # a config file
MAX_JSON_DEPTH = 32  # nesting of a config file's JSON (a real one has 4 levels)
MAX_NAME = 200  # run names, registry names, patterns, device strings
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_RULES = 1000
MAX_CLASSES = 10_000
MAX_OPTIONS = 64
MAX_SEED = 2**32 - 1  # numpy's and torch's generators take 32-bit seeds
MAX_TASKS = 16  # extra tasks of a multi-task run (each holds its dataset in memory)
MAX_TASK_NAME = 40  # a task's name suffixes metric keys ("val_acc/mnist") and labels curves
EVERY_TASK = "all"  # `export --task all`: every task's network, so no task may be named so
MAX_PROCS = 4096  # training processes of one run (nodes x processes per node): a large cluster job


def bounds(low: float | None = None, high: float | None = None, *, max_len: int | None = None,
           low_open: bool = False) -> dict:
    """A field's declared range (numbers: [low, high], or (low, high] with `low_open`) or its
    longest length (strings, lists, dicts); `check_fields` enforces them for every config."""
    return {"bounds": (low, high, low_open), "max_len": max_len}


def _num(default, low=None, high=None, low_open=False):
    return field(default=default, metadata=bounds(low, high, low_open=low_open))


def _text(default, max_len=MAX_NAME):
    return field(default=default, metadata=bounds(max_len=max_len))
DISTILL_MODES = ("off", "logit", "feature")
ADAPTERS = ("auto", "conv1x1", "linear")


@dataclass
class SourceConfig:
    """Where the source knowledge comes from."""

    kind: str = "arch"  # arch: a registered architecture (+ named weights); file; run
    # A registry name, or user model code `path/to/model.py:ClassName` (a path, so a path's length);
    # for kind=file optional (inferred from the keys).
    arch: str | None = _text(None, MAX_PATH + MAX_NAME)
    weights: str | None = _text(None)  # kind=arch: torchvision weights name ("IMAGENET1K_V1"), None = random
    path: str | None = _text(None, MAX_PATH)  # kind=file: checkpoint path; kind=run: run folder or run id
    checkpoint: str = "best"  # kind=run: which checkpoint of the run
    trust: bool = False  # allow arbitrary unpickling (weights_only=False) or user model code; warned opt-in
    # User model code (arch = "path/to/model.py:ClassName" or "package.module:ClassName"):
    arch_kwargs: dict[str, Any] = field(default_factory=dict,  # the class's constructor keyword arguments
                                        metadata=bounds(max_len=MAX_OPTIONS))
    head: str | None = _text(None)  # the classifier module, when the one found from the module graph is wrong
    first_conv: str | None = _text(None)  # the first conv/linear layer, likewise
    code_sha256: str | None = _text(None, 64)  # the code file's hash, recorded when a run is created
    # A named architecture that fits fewer than half of the file's tensors is an error unless
    # this says to initialise what does not match randomly.
    init_unmatched: bool = False

    def validate(self) -> None:
        check_fields(self, "source.")
        _choice("source.kind", self.kind, SOURCE_KINDS)
        _choice("source.checkpoint", self.checkpoint, CHECKPOINT_CHOICES)
        if self.kind == "arch" and not self.arch:
            raise ConfigError("source.arch is required when source.kind is 'arch'",
                              "name an architecture, e.g. \"small_cnn\"; `python -m kt_core inspect --help` lists them")
        if self.kind in ("file", "run") and not self.path:
            raise ConfigError(f"source.path is required when source.kind is {self.kind!r}",
                              "give the checkpoint file or the run folder")
        user_code = self.kind != "run" and parse_code_ref(self.arch) is not None
        if not user_code:
            given = [k for k in ("arch_kwargs", "head", "first_conv", "code_sha256") if getattr(self, k)]
            if given:
                raise ConfigError(f"source.{given[0]} applies to user model code only",
                                  "set source.arch to path/to/model.py:ClassName or package.module:ClassName, "
                                  f"or remove source.{given[0]}")


@dataclass
class DatasetConfig:
    """The target data and how it is selected and shaped."""

    name: str = _text("sklearn_digits")  # dataset registry name
    root: str | None = _text(None, MAX_PATH)  # folder or file for file-based and torchvision datasets
    download: bool = False  # torchvision datasets: allow a download when online
    classes: list[Any] | None = _text(None, MAX_CLASSES)  # class subset, by name or index; None = all
    per_class: int | None = _num(None, 1, 1_000_000)  # K labelled training images per class; None = all
    val_fraction: float = _num(0.2, 0.0, 0.99)  # stratified validation split of the training data
    # a held-out test split carved from the labelled data when the dataset has none (stratified,
    # seeded, before the validation split): the headline figure is measured on it. None = auto:
    # 0.2 when a validation split is carved too, 0 otherwise; ignored when the dataset has a test split
    test_fraction: float | None = _num(None, 0.0, 0.99)
    seed: int = _num(0, 0, MAX_SEED)  # selects the few-shot images and the split
    # final side length; None = the source model's input size. 1024 px holds any classification
    # input (ImageNet models take 224-518); 100,000 px would allocate 40 GB per batch.
    image_size: int | None = _num(None, 4, 1024)
    content_size: int | None = _num(None, 1, 1024)  # resize content to this, then pad to image_size
    channels: int | None = None  # 1 or 3; None = the source model's input channels
    normalize: str = "auto"  # auto: source weights' mean/std if known, else dataset statistics
    augment: str = "none"  # none | light | standard
    options: dict[str, Any] = field(default_factory=dict, metadata=bounds(max_len=MAX_OPTIONS))  # dataset specific
    # With per_class: the rest of the training images join training with their labels hidden
    # (label -1); only a distillation term learns from them.
    unlabelled: bool = False

    def validate(self) -> None:
        check_fields(self, "dataset.")
        if not self.name:
            raise ConfigError("dataset.name is empty", "`python -m kt_core datasets` lists the datasets")
        _choice("dataset.normalize", self.normalize, NORMALIZE_CHOICES)
        _choice("dataset.augment", self.augment, AUGMENT_CHOICES)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"dataset.val_fraction is {self.val_fraction}", "use a fraction in [0, 1)")
        if self.test_fraction is not None and not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"dataset.test_fraction is {self.test_fraction}", "use a fraction in [0, 1), or null for auto")
        if self.test_fraction is not None and self.test_fraction + self.val_fraction >= 1.0:
            raise ConfigError("dataset.test_fraction + val_fraction leave nothing to train on",
                              "keep their sum below 1, e.g. 0.2 + 0.2")
        _positive("dataset.per_class", self.per_class)
        _positive("dataset.image_size", self.image_size)
        _positive("dataset.content_size", self.content_size)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"dataset.channels is {_shown(self.channels)}", "use 1, 3 or null (match the source)")
        if self.classes is not None and len(self.classes) < 2:
            raise ConfigError("dataset.classes selects fewer than two classes", "choose at least two classes, or null for all")
        if self.unlabelled and not self.per_class:
            raise ConfigError("dataset.unlabelled is on but per_class is null, so no training image is left unlabelled",
                              "set per_class (K labelled images per class; the rest become unlabelled), "
                              "or turn unlabelled off")


@dataclass
class TaskConfig:
    """An extra task of a multi-task run: its own dataset selection and head on the shared trunk."""

    name: str = _text("task", MAX_TASK_NAME)  # suffixes its metrics: train_loss/<name>, val_acc/<name>
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # selected exactly as the target is
    weight: float = _num(1.0, 0.0, 1000.0, low_open=True)  # its loss weight under `fixed` weighting

    def validate(self, prefix: str = "task.") -> None:
        check_fields(self, prefix)
        _task_name(f"{prefix}name", self.name)
        try:
            self.dataset.validate()
        except ConfigError as exc:  # name the task: "dataset.per_class" alone would mean the target's
            raise ConfigError(f"{prefix.rstrip('.')} ({self.name!r}): {exc.message}", exc.hint) from None


@dataclass
class MultiTaskConfig:
    """How the target (the primary task) and the extra `tasks` train together on one trunk."""

    weighting: str = "fixed"  # fixed | uncertainty (Kendall et al. 2018) | dwa (Liu et al. 2019)
    sampling: str = "round_robin"  # round_robin: tasks take turns, batch by batch | proportional
    primary_name: str = _text("target", MAX_TASK_NAME)  # the target's task name in metrics and charts
    primary_weight: float = _num(1.0, 0.0, 1000.0, low_open=True)  # the target's loss weight (fixed)
    dwa_temperature: float = _num(2.0, 0.0, 100.0, low_open=True)  # DWA's T: larger = weights closer to equal

    def validate(self) -> None:
        check_fields(self, "multitask.")
        _choice("multitask.weighting", self.weighting, WEIGHTINGS)
        _choice("multitask.sampling", self.sampling, SAMPLINGS)
        _task_name("multitask.primary_name", self.primary_name)


@dataclass
class LayerRule:
    """An override for the modules whose qualified name matches `pattern`.

    `pattern` is a block name from the layer tree ("stage1", "head"), a module name
    ("features.0") or a glob ("layer3.*"). Rules apply after the preset, in order.
    """

    pattern: str = field(metadata=bounds(max_len=MAX_NAME))
    transfer: bool | None = None  # copy the source weights (True) or re-initialise (False)
    freeze: bool | None = None
    lr_mult: float | None = _num(None, 0.0, 1000.0)


@dataclass
class TransferPlan:
    """What to transfer, what to freeze, and how fast each part learns."""

    preset: str = "fine_tune"
    freeze_first_n: int = _num(0, 0, 10_000)  # freeze_first_n: number of blocks frozen from the input side
    unfreeze_every: int = _num(1, 1, 10_000)  # gradual_unfreeze: epochs between unfreezing one more block
    unfreeze_lr_mult: float = _num(0.1, 0.0, 1000.0)  # gradual_unfreeze: lr multiplier of each newly unfrozen group
    layer_decay: float = _num(0.7, 0.0, 1.0, low_open=True)  # discriminative: lr multiplier per block, from the head down
    bn_mode: str = "eval"  # BatchNorm in frozen layers: eval (stats frozen) or train
    # auto: keep the source's head (its weights, transferred) when the target's class names are
    # the source's (or the class count, where the source's names are unknown); keep; new.
    head: str = "auto"
    # lr multiplier of transferred layers that train; None = the preset's default
    # (presets.TRANSFERRED_LR_MULT): a new head trains at the base rate, what the source learnt
    # at a fraction of it, so a few target images do not wash it out.
    transferred_lr_mult: float | None = _num(None, 0.0, 100.0)
    # BatchNorm synchronised across the processes of a data-parallel run (SyncBatchNorm): each
    # layer normalises with the statistics of the whole global batch, as one process would.
    # None = auto: on when more than one process trains and the plan trains BatchNorm layers.
    sync_bn: bool | None = None
    rules: list[LayerRule] = field(default_factory=list, metadata=bounds(max_len=MAX_RULES))
    # L2-SP (Li et al. 2018): alpha/2 * ||w - w_source||^2 over the trained transferred weights,
    # beta/2 * ||w||^2 over the trained new ones (a fresh head, re-initialised layers); 0 = off.
    l2sp_alpha: float = _num(0.0, 0.0, 1e6)
    l2sp_beta: float = _num(0.0, 0.0, 1e6)

    def validate(self) -> None:
        check_fields(self, "plan.")
        _choice("plan.preset", self.preset, PRESETS.names())
        _choice("plan.bn_mode", self.bn_mode, BN_MODES)
        _choice("plan.head", self.head, HEAD_CHOICES)
        if self.sync_bn is not None and not isinstance(self.sync_bn, bool):
            raise ConfigError(f"plan.sync_bn is {_shown(self.sync_bn)}", "use true, false or null (auto)")
        if self.transferred_lr_mult is not None and self.transferred_lr_mult < 0:
            raise ConfigError(f"plan.transferred_lr_mult is {self.transferred_lr_mult}",
                              "use 0 or more, or null for the preset's default")
        if self.freeze_first_n < 0:
            raise ConfigError("plan.freeze_first_n is negative", "use 0 or more blocks")
        if self.unfreeze_every < 1:
            raise ConfigError("plan.unfreeze_every must be at least 1", "unfreeze a block every 1 or more epochs")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"plan.layer_decay is {self.layer_decay}", "use a factor in (0, 1]")
        if self.l2sp_alpha < 0 or self.l2sp_beta < 0:
            raise ConfigError(f"plan.l2sp_alpha / l2sp_beta are {self.l2sp_alpha} / {self.l2sp_beta}",
                              "use 0 (off) or a positive strength, e.g. alpha 0.01, beta 0.01")
        if self.l2sp_alpha > 0 and self.preset == "scratch":
            raise ConfigError(f"plan.l2sp_alpha is {self.l2sp_alpha} but the preset is scratch: there are no source "
                              "weights to stay near", "set l2sp_alpha to 0, or choose a preset that transfers "
                              "(fine_tune, freeze_first_n, ...)")
        for rule in self.rules:
            if not rule.pattern:
                raise ConfigError("a plan rule has an empty pattern", "name a block, module or glob")
            if rule.lr_mult is not None and rule.lr_mult < 0:
                raise ConfigError(f"plan rule {rule.pattern!r} has a negative lr_mult", "use 0 or more")


@dataclass
class TrainConfig:
    """The optimisation schedule and where it runs."""

    # None = auto: from the method, the training set's size and K (kt_core.defaults), resolved
    # by the worker once the data is loaded and written to status.json as `planned_epochs`
    epochs: int | None = _num(None, 1, 10_000)
    batch_size: int = _num(64, 1, 65_536)  # more would not fit any device's memory at the smallest image size
    optimizer: str = "adamw"
    lr: float = _num(1e-3, 0.0, 1e6, low_open=True)  # a huge lr is a run that diverges, not bad input
    momentum: float = _num(0.9, 0.0, 1.0)  # sgd
    weight_decay: float = _num(0.0, 0.0, 10.0)
    scheduler: str = "constant"
    warmup_epochs: float = _num(0.0, 0.0, 10_000)
    step_size: int = _num(5, 1, 10_000)  # step scheduler: epochs between decays
    gamma: float = _num(0.1, 0.0, 1.0, low_open=True)  # step scheduler: decay factor
    label_smoothing: float = _num(0.0, 0.0, 0.99)
    grad_clip: float | None = _num(None, 0.0, 1e6, low_open=True)  # max gradient norm; None = off
    # patience in epochs on val_acc; 0 = off; None = auto (on, kt_core.defaults.patience)
    early_stopping: int | None = _num(None, 0, 10_000)
    seed: int = _num(0, 0, MAX_SEED)
    device: str = _text("auto")  # auto | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision, CUDA)
    log_every: int = _num(10, 1, 1_000_000)  # steps between step rows in metrics.jsonl
    # DataLoader workers for datasets that are not held in memory; None = auto (0 in memory, else
    # one per usable CPU but one, at most 4: `datasets.containers.loader_workers`)
    num_workers: int | None = _num(None, 0, 64)
    feature_cache: bool = True  # cache frozen-backbone features when the plan allows it
    # Data parallelism (torchrun + DistributedDataParallel): processes per node and nodes. The
    # global batch is `batch_size` whatever their number; each process takes its share of it.
    nproc_per_node: int = _num(1, 1, MAX_PROCS)
    nnodes: int = _num(1, 1, MAX_PROCS)
    rdzv_endpoint: str | None = _text(None)  # HOST:PORT of torchrun's rendezvous, for several nodes

    @property
    def world_size(self) -> int:
        """How many processes train the run (1: today's single worker, no torchrun)."""
        return self.nproc_per_node * self.nnodes

    def validate(self) -> None:
        check_fields(self, "train.")
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
        if self.early_stopping is not None and (isinstance(self.early_stopping, bool) or self.early_stopping < 0):
            raise ConfigError(f"train.early_stopping is {self.early_stopping}",
                              "use a patience in epochs, 0 = off, or null = auto")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip is {self.grad_clip}", "use a positive norm or null")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"unknown device {_shown(self.device)}", "use auto, cpu, cuda, cuda:N or mps")
        self._validate_processes()

    def _validate_processes(self) -> None:
        for key in ("nproc_per_node", "nnodes"):
            _positive(f"train.{key}", getattr(self, key))
        if self.world_size > MAX_PROCS:
            raise ConfigError(f"train.nproc_per_node x nnodes is {self.world_size:,}",
                              f"use at most {MAX_PROCS:,} processes in all")
        if self.world_size > 1 and (self.device == "mps" or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device {self.device!r} names one device, but {self.world_size} processes train",
                              "use device cuda (one GPU per process), cpu or auto")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError(f"train.nnodes is {self.nnodes} but train.rdzv_endpoint is not set",
                              "give the rendezvous HOST:PORT every node reaches, e.g. \"node0:29400\"")
        if self.rdzv_endpoint is not None:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c.isspace() for c in host):
                raise ConfigError(f"train.rdzv_endpoint is {_shown(self.rdzv_endpoint)}",
                                  "write HOST:PORT, e.g. \"node0:29400\" (port 1-65535), or null on one node")


@dataclass
class DistillConfig:
    """A teacher model teaching the trained model (the student) through an extra loss term.

    logit (Hinton et al. 2015): loss = (1 - alpha) * CE + alpha * T^2 * KL(softmax(t/T) || softmax(s/T));
    `alpha` weights the SOFT (teacher) term, as RepDistiller's `-a` does (torchdistill's alpha
    weights the hard one). feature (FitNets): loss = CE + feature_weight * MSE(adapter(s_layer), t_layer).
    """

    mode: str = "off"  # off | logit | feature
    teacher: SourceConfig | None = None  # None: the run's own source model, with its weights
    temperature: float = _num(4.0, 0.0, 1000.0, low_open=True)
    alpha: float = _num(0.9, 0.0, 1.0)  # logit mode: weight of the soft (teacher) term; 1 - alpha weights the labels
    student_layer: str | None = _text(None)  # feature mode: a module name; None = the input of the head
    teacher_layer: str | None = _text(None)  # feature mode: a module name; None = the input of the teacher's head
    adapter: str = "auto"  # feature mode: auto (1x1 conv for feature maps, linear for vectors) | conv1x1 | linear
    feature_weight: float = _num(1.0, 0.0, 1e6)  # feature mode: weight of the feature term

    def validate(self) -> None:
        check_fields(self, "distill.")
        _choice("distill.mode", self.mode, DISTILL_MODES)
        _choice("distill.adapter", self.adapter, ADAPTERS)
        if self.teacher is not None:
            try:
                self.teacher.validate()
            except ConfigError as exc:
                raise ConfigError(f"distill.teacher: {exc.message}", exc.hint) from None
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature is {self.temperature}", "use a positive temperature, e.g. 4")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha is {self.alpha}",
                              "use a soft-term weight in [0, 1] (0.9: mostly the teacher, 0: labels only)")
        if self.feature_weight < 0:
            raise ConfigError(f"distill.feature_weight is {self.feature_weight}", "use 0 or more")

    def describe(self) -> str:
        """One line for summaries and tables: the method and its settings."""
        if self.mode == "off":
            return "off"
        teacher = "the source" if self.teacher is None else _describe_source(self.teacher)
        if self.mode == "logit":
            return f"logit KD from {teacher} (T={self.temperature:g}, soft weight alpha={self.alpha:g})"
        return (f"feature KD from {teacher} ({self.student_layer or 'head input'} -> "
                f"{self.teacher_layer or 'head input'}, adapter {self.adapter}, weight {self.feature_weight:g})")


def _describe_source(src: SourceConfig) -> str:
    if src.kind == "arch":
        return f"{src.arch}" + (f" ({src.weights})" if src.weights else " (random weights)")
    return f"{src.kind} {src.path}"


@dataclass
class RunConfig:
    """Everything a run needs; `config.json` of the run folder is exactly `to_dict()`."""

    name: str = _text("")
    source: SourceConfig = field(default_factory=SourceConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    plan: TransferPlan = field(default_factory=TransferPlan)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    baseline_of: str | None = _text(None)  # run id of the transfer run this one is the baseline of
    experiment: str | None = _text(None)  # id of the experiment this run is a member of (kt_core/experiments/)
    # multi-task learning: extra tasks trained at once with the target on the source's trunk, a head
    # each (kt_core.multitask); none = an ordinary single-task run
    tasks: list[TaskConfig] = field(default_factory=list, metadata=bounds(max_len=MAX_TASKS))
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    version: int = 1

    def validate(self) -> "RunConfig":
        if self.version not in CONFIG_VERSIONS:
            raise ConfigError(f"version is {self.version!r}", f"this KT Studio reads config version "
                              f"{', '.join(map(str, CONFIG_VERSIONS))}; write \"version\": 1")
        check_fields(self, "")
        self.source.validate()
        self.dataset.validate()
        self.plan.validate()
        self.train.validate()
        self.distill.validate()
        if self.dataset.unlabelled and self.distill.mode == "off":
            raise ConfigError("dataset.unlabelled is on but distillation is off: nothing would learn from "
                              "the unlabelled images", "turn on distill.mode (logit or feature), or unlabelled off")
        self.multitask.validate()
        if self.tasks and (self.distill.mode != "off" or self.dataset.unlabelled
                           or self.plan.l2sp_alpha or self.plan.l2sp_beta):
            # a teacher's cached outputs and L2-SP's reference are the target's alone (batch indices
            # into its training split): with other tasks' batches in the stream they would be wrong
            raise ConfigError("extra tasks cannot be combined with distillation, unlabelled images or L2-SP yet",
                              "remove the tasks, or turn distill.mode off, dataset.unlabelled off and plan.l2sp_* to 0")
        if self.tasks and self.train.world_size > 1:
            # the task sampler draws one task's batch per step; sharding those batches across
            # processes is not written yet (the engine would refuse it only once training starts)
            raise ConfigError(f"a multi-task run trains on one process, but train.nproc_per_node x nnodes is "
                              f"{self.train.world_size}", "set train.nproc_per_node and train.nnodes to 1, "
                              "or remove the tasks to train on several processes")
        names = [self.multitask.primary_name]
        for i, task in enumerate(self.tasks):
            task.validate(f"tasks[{i}].")
            if task.name in names:
                raise ConfigError(f"tasks[{i}].name {task.name!r} is used twice (the target is "
                                  f"{self.multitask.primary_name!r})", "give every task its own name")
            names.append(task.name)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], validate: bool = True) -> "RunConfig":
        """Strict on keys and types always; `validate=False` keeps values a form has not yet
        fixed (a draft being edited: `kt_core.drafts`)."""
        _check_depth(data)
        cfg = _from_dict(cls, data, "")
        return cfg.validate() if validate else cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        path = checked_path(path, "config file")
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_CONFIG_BYTES + 1)
            text = raw.decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist", "check the path") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder", "give the config's .json file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}",
                              "give a JSON text file") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES >> 20} MB",
                              "a config is a few hundred bytes; see examples/quick.json")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}",
                              "fix the JSON; examples/quick.json is a complete example") from None
        except RecursionError:
            raise ConfigError(f"{path} nests its JSON too deeply", "a config nests 4 levels; see examples/quick.json") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not an object",
                              "the config is one JSON object; see examples/quick.json")
        return cls.from_dict(data)

    def task_names(self) -> list[str]:
        """The run's tasks, the target first (one name for a single-task run)."""
        return [self.multitask.primary_name] + [t.name for t in self.tasks]

    def method(self) -> str:
        """The training method in words: the plan's preset, and distillation / L2-SP when on."""
        parts = [self.plan.preset]
        if self.distill.mode != "off":
            parts.append(self.distill.describe())
        if self.plan.l2sp_alpha or self.plan.l2sp_beta:
            parts.append(f"L2-SP (alpha={self.plan.l2sp_alpha:g}, beta={self.plan.l2sp_beta:g})")
        if self.dataset.unlabelled:
            parts.append("unlabelled images")
        return " + ".join(parts)

    def as_baseline(self, transfer_run_id: str | None = None) -> "RunConfig":
        """The from-scratch twin: same architecture, data and schedule, random initialisation."""
        base = copy.deepcopy(self)
        base.name = f"{self.name or 'run'} (from scratch)"
        base.plan = TransferPlan(preset="scratch")
        # Labels alone: no teacher, and so no unlabelled images (they would feed only a teacher's term).
        base.distill = DistillConfig()
        base.dataset.unlabelled = False
        base.baseline_of = transfer_run_id
        base.experiment = None  # a baseline asked for by hand is not an experiment's member
        return base


# --- validation helpers --------------------------------------------------------------------

def field_error(section: Any, name: str) -> ConfigError | None:
    """The problem of one field of a config section (TrainConfig, DatasetConfig, ...) alone:
    its value on the section's defaults, validated by the section's own rules. A form shows it
    beside the field without knowing a single limit (cross-field rules: validate the whole)."""
    trial = dataclasses.replace(type(section)(), **{name: getattr(section, name)})
    try:
        trial.validate()
    except ConfigError as exc:
        return exc
    return None


def check_fields(obj: Any, prefix: str) -> None:
    """Every field of dataclass `obj` against its declared `bounds`: numbers finite and in range,
    strings, lists and dicts not too long, no NUL byte in any string. Nested dataclasses are
    checked by their own `validate`; a list of them (plan rules) here, item by item."""
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        max_len = f.metadata.get("max_len")
        if max_len is not None and isinstance(value, (str, list, dict)) and len(value) > max_len:
            unit = "characters" if isinstance(value, str) else "entries"
            raise ConfigError(f"{key}: {len(value):,} {unit} is over the limit of {max_len:,}",
                              f"use at most {max_len:,} {unit}")
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                check_fields(item, f"{key}[{i}].")
            continue
        _check_plain(value, key)
        low, high, low_open = f.metadata.get("bounds", (None, None, False))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value} is not a finite number", "write a number such as 0.001")
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            span = f"{'above' if low_open else 'at least'} {_number(low)}" if high is None else \
                f"{'above ' if low_open else 'from '}{_number(low)} {'up ' if low_open else ''}to {_number(high)}"
            raise ConfigError(f"{key} is {_shown(value, 40)}", f"out of range: use a value {span}")


def _number(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return f"{int(x):,}" if abs(x) < 1e15 else f"{x:.3g}"
    return f"{x:g}"


def _check_plain(value: Any, key: str, depth: int = 0) -> None:
    """No NUL byte (it truncates paths in the OS), no over-long string, in any nested value."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ConfigError(f"{key}: the text holds a NUL byte", "remove the \\u0000 character")
        if len(value) > MAX_PATH:
            raise ConfigError(f"{key}: {len(value):,} characters is over the limit of {MAX_PATH:,}",
                              f"use at most {MAX_PATH:,} characters")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number", "write a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, key, depth + 1)
            _check_plain(v, f"{key}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]", depth + 1)


def _check_depth(data: Any) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH, without recursing (a deep value must not
    blow Python's stack here either)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ConfigError(f"config: nested more than {MAX_JSON_DEPTH} levels deep",
                              "a config nests 4 levels; see examples/quick.json")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _shown(value: Any, limit: int = 80) -> str:
    """A value as it may appear in a one-line message: repr'd (no raw newlines), cut short."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} is {_shown(value)}", f"valid choices: {', '.join(choices)}")


def _task_name(key: str, value: str) -> None:
    """A task's name becomes a metric key's suffix and a chart label: short, no separators."""
    if not value or not all(c.isalnum() or c in "_-" for c in value):
        raise ConfigError(f"{key} is {_shown(value)}",
                          "use letters, digits, '_' or '-', e.g. \"mnist\" (it suffixes the task's metrics)")
    if value == EVERY_TASK:
        raise ConfigError(f"{key} is {EVERY_TASK!r}, which `export --task {EVERY_TASK}` reads as every task's network",
                          f"give the task another name, e.g. \"{EVERY_TASK}_digits\" or the dataset's name")


def _positive(key: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{key} is {_shown(value)}", "use a whole number of 1 or more")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # Resolved once per class: typing evaluates every annotation string anew on each call
    # (~1 ms a section), which made expanding an experiment's 54 member configs cost 0.3 s.
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from plain data, checking keys and simple types on the way."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}", "see examples/quick.json")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        shown = ", ".join(_shown(k, 40) for k in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise ConfigError(f"unknown key(s) in {where}: {shown}",
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
            raise ConfigError(f"{key} must be {hint.__name__}, got {_shown(value)}",
                              f"write a JSON {'number' if hint in (int, float) else hint.__name__}")
    return value
