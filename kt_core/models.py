"""Architectures: the registry, head and input adaptation, the layer tree and its blocks.

Every architecture a source can be is an `ArchSpec` in `ARCHITECTURES`: how to build it for a
class count and a number of input channels, which module is the classifier head, which is the
first convolution, and what input it expects. torchvision's classification models are
registered from torchvision's own model list and weights enums; our own small models (the seed
design's CNN, the classic MNIST net, the CIFAR ResNets) are written here.

The layer tree and the blocks are how the rest of the app sees a model: one row per module with
parameter counts and output shapes (from a dry run), and natural groups ordered input -> output
(stem, stages, head) that transfer presets freeze or unfreeze as units.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from . import providers
from .adapt import adapt_input_conv
from .archspec import ArchSpec
from .checkpoints import clean_state_dict, read_checkpoint
from .datasets.transforms import IMAGENET_NORMALIZATION, Normalization
from .errors import CheckpointError, KTError
from .probe import probe
from .registry import Entry, Registry
from .settings import get_settings

log = logging.getLogger(__name__)

MNIST_NORMALIZATION: Normalization = ((0.1307,), (0.3081,))


class _ArchitectureRegistry(Registry[ArchSpec]):
    """The registry, with torchvision's families and the providers' architectures (timm, entry
    points: `kt_core.providers`) added the first time a lookup needs them.

    Importing `torchvision.models` costs ~1.6 s of CPU and ~200 MB (it pulls in torch._dynamo):
    a worker training one of our own architectures must not pay that before its first step
    (benchmark B5, start latency). A name we registered ourselves never triggers the import; a
    `timm/NAME` triggers timm's alone.
    """

    def __init__(self, kind: str):
        super().__init__(kind)
        self._complete = False
        self._timm_added = False
        self._providers_added = False

    def _add_torchvision(self) -> None:
        if not self._complete:
            self._complete = True
            _register_torchvision()

    def _add_all(self) -> None:
        self._add_torchvision()
        self._add_providers()

    def _add_providers(self, timm_only: bool = False) -> None:
        if self._providers_added or (timm_only and self._timm_added):
            return
        specs = providers.provided_specs(names_only_timm=timm_only)
        if self._timm_added:
            specs = [s for s in specs if s.provider != "timm"]
        self._timm_added = True
        self._providers_added = not timm_only
        for spec in specs:
            if spec.name in self._entries:  # ours and torchvision's come first
                log.warning("architecture %s of provider %s is already registered: skipped", spec.name, spec.provider)
                continue
            self._entries[spec.name] = Entry(spec.name, spec, {})

    def reload_providers(self) -> None:
        """Forget the providers' architectures and find them again (a package installed or
        removed while the process runs)."""
        self._entries = {k: e for k, e in self._entries.items() if not e.obj.provider}
        self._timm_added = self._providers_added = False
        _signature.cache_clear()

    def _look_for(self, name: object) -> None:
        """Add what could hold `name`: timm alone for `timm/NAME`; else torchvision, then the
        providers only if torchvision does not have it (a torchvision worker never imports timm)."""
        if name in self._entries:
            return
        if str(name).startswith(providers.TIMM_PREFIX):
            hint = providers.missing_hint(str(name))
            if hint:
                raise KTError(f"unknown architecture {name!r}", hint)
            self._add_providers(timm_only=True)
            return
        self._add_torchvision()
        if name not in self._entries:
            self._add_providers()

    def entry(self, name: str):
        self._look_for(name)
        return super().entry(name)

    def _valid_names(self) -> str:
        """Ours and torchvision's by name; the providers' (timm's ~1,300) only counted, with where
        to list them, so the message stays one readable line; and the user-code route."""
        builtin = sorted(n for n, e in self._entries.items() if not e.obj.provider)
        counts: dict[str, int] = {}
        for e in self._entries.values():
            if e.obj.provider:
                counts[e.obj.provider] = counts.get(e.obj.provider, 0) + 1
        text = ", ".join(builtin)
        if counts:
            text += (f"; and {sum(counts.values()):,} from installed packages ("
                     + ", ".join(f"{p}: {n:,}" for p, n in sorted(counts.items()))
                     + "; `python -m kt_core archs` lists them)")
        return text + "; or your own model code: path/to/model.py:ClassName (with trust)"

    def builtin(self) -> list[ArchSpec]:
        """Ours and torchvision's: the first tier of architecture inference."""
        self._add_torchvision()
        return [e.obj for e in self._entries.values() if not e.obj.provider]

    def provided(self) -> list[ArchSpec]:
        """The providers' (timm, entry points): inferred from only when no built-in one fits."""
        self._add_all()
        return [e.obj for e in self._entries.values() if e.obj.provider]

    def names(self) -> list[str]:
        self._add_all()
        return super().names()

    def __contains__(self, name: object) -> bool:
        try:
            self._look_for(name)
        except KTError:  # timm/NAME without timm: simply not here
            return False
        return super().__contains__(name)

    def __iter__(self):
        self._add_all()
        return super().__iter__()

    def __len__(self) -> int:
        self._add_all()
        return super().__len__()


ARCHITECTURES: Registry[ArchSpec] = _ArchitectureRegistry("architecture")


@dataclass
class Block:
    """A natural group of modules, trained or frozen as a unit.

    `modules` holds qualified module names, plus the qualified *parameter* names of parameters
    that sit directly on a container split into blocks (ViT's `class_token`); match parameters
    with `name == entry or name.startswith(entry + ".")`.
    """

    name: str
    modules: list[str] = field(default_factory=list)

    def owns(self, name: str) -> bool:
        return any(name == m or name.startswith(m + ".") for m in self.modules)


# --- our own architectures ---------------------------------------------------------------------


class TwoConvNet(nn.Module):
    """Two conv + ReLU + 2x2 max-pool stages, then two fully connected layers.

    One class for the seed design's small CNN and the pytorch/examples MNIST net: they differ
    only in widths, kernel size and padding. Every layer is a named top-level module, so the
    state_dict keys are `conv1.weight`, ..., `fc2.bias` and each layer is a natural block.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int], kernel: int, padding: int,
                 hidden: int, num_classes: int, image_size: int = 28):
        super().__init__()
        side = image_size
        for _ in range(2):  # each stage: conv (maybe shrinking), then a 2x2 pool
            side = (side + 2 * padding - kernel + 1) // 2
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel, padding=padding)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], kernel, padding=padding)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(widths[1] * side * side, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample spatially, zero-pad the new channels. No weights."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra_channels // 2
        return nn.functional.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class MLP(nn.Module):
    """Flatten, one hidden Linear + ReLU, the classifier: the per-step-bound model of bench B1.

    Its steps take a fraction of a millisecond, so any per-step cost of a training loop shows;
    the first layer is a Linear whose width is fixed by the input's channels and size.
    """

    def __init__(self, input_size: tuple[int, int, int], hidden: int, num_classes: int):
        super().__init__()
        channels, height, width = input_size
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels * height * width, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu1(self.fc1(self.flatten(x))))


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        changes_shape = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(stride, planes - in_planes) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): 3 stages of 16/32/64 channels, 6n+2 layers.

    Module names follow the widely shared reference implementation, so its checkpoints load
    strictly once DataParallel's `module.` prefix is stripped.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        planes_in = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(CifarBasicBlock(planes_in, planes, stride))
                planes_in = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.avgpool(x)))


ARCHITECTURES.add("small_cnn", ArchSpec(
    name="small_cnn", family="small_cnn",
    builder=lambda num_classes, in_channels: TwoConvNet(in_channels, (64, 128), 3, 1, 1000, num_classes),
    input_size=(3, 28, 28), num_classes=10, head="fc2", first_conv="conv1",
    description="the seed design's CNN: conv 3->64->128 (3x3, pad 1) + ReLU + 2x2 max-pool, fc 6272->1000->10",
))
ARCHITECTURES.add("mnist_net", ArchSpec(
    name="mnist_net", family="mnist_net",
    builder=lambda num_classes, in_channels: TwoConvNet(in_channels, (20, 50), 5, 0, 500, num_classes),
    input_size=(1, 28, 28), num_classes=10, head="fc2", first_conv="conv1",
    normalization=MNIST_NORMALIZATION,
    description="pytorch/examples MNIST Net (2018): conv 1->20->50 (5x5) + max-pool, fc 800->500->10",
))
ARCHITECTURES.add("mlp", ArchSpec(
    name="mlp", family="mlp",
    builder=lambda num_classes, in_channels: MLP((in_channels, 28, 28), 128, num_classes),
    input_size=(1, 28, 28), num_classes=10, head="fc2", first_conv=None,
    normalization=MNIST_NORMALIZATION,
    description="multilayer perceptron 784-128-10 (flatten, Linear + ReLU, Linear): MNIST's classic first model",
))
for _depth in (20, 32, 44, 56):
    ARCHITECTURES.add(f"cifar_resnet{_depth}", ArchSpec(
        name=f"cifar_resnet{_depth}", family="cifar_resnet",
        builder=functools.partial(lambda depth, num_classes, in_channels: CifarResNet(depth, num_classes, in_channels), _depth),
        input_size=(3, 32, 32), num_classes=10, head="linear", first_conv="conv1",
        normalization=IMAGENET_NORMALIZATION,
        description=f"CIFAR ResNet-{_depth} (He et al. 2016): 16/32/64 channels, option-A identity shortcuts",
    ))


_OWN = frozenset(ARCHITECTURES._entries)  # registered above: small, always cheap to compare


# --- torchvision architectures -----------------------------------------------------------------

# Where the head, the first conv and the stages sit, per torchvision model module (one line a
# family, checked against every registered model by tests/test_models.py).
_TORCHVISION_LAYOUT: dict[str, tuple[str, str, str | None]] = {
    # module: (head, first_conv, stages)
    "resnet": ("fc", "conv1", None),
    "regnet": ("fc", "stem.0", "trunk_output"),
    "mobilenetv2": ("classifier.1", "features.0.0", "features"),
    "mobilenetv3": ("classifier.3", "features.0.0", "features"),
    "efficientnet": ("classifier.1", "features.0.0", "features"),
    "vgg": ("classifier.6", "features.0", "features"),
    "alexnet": ("classifier.6", "features.0", "features"),
    "densenet": ("classifier", "features.conv0", "features"),
    "convnext": ("classifier.2", "features.0.0", "features"),
    "shufflenetv2": ("fc", "conv1.0", None),
    "squeezenet": ("classifier.1", "features.0", "features"),
    "vision_transformer": ("heads.head", "conv_proj", "encoder.layers"),
    "swin_transformer": ("head", "features.0.0", "features"),
    "mnasnet": ("classifier.1", "layers.0", "layers"),
    "maxvit": ("classifier.5", "stem.0.0", "blocks"),
    # googlenet and inception_v3 are left out: in training mode they return auxiliary outputs,
    # which no loss here expects.
}


def _torchvision_builder(name: str, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision import models as tvm  # here, not at the top: torchvision's model zoo costs ~1.5 s to import

    with warnings.catch_warnings():  # init-scheme FutureWarnings are not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        model = tvm.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        spec = ARCHITECTURES.get(name)
        _swap_first_conv(model, spec.first_conv, in_channels)
    return model


def _register_torchvision() -> None:
    from torchvision import models as tvm  # here, not at the top: torchvision's model zoo costs ~1.5 s to import

    for name in tvm.list_models(module=tvm):
        module = tvm.get_model_builder(name).__module__.rsplit(".", 1)[-1]
        if module not in _TORCHVISION_LAYOUT:
            continue
        head, first_conv, stages = _TORCHVISION_LAYOUT[module]
        enum = tvm.get_model_weights(name)
        weights = tuple(w.name for w in enum)
        default = enum.DEFAULT
        crop, normalization = _preprocessing_of(default, 224)
        params = default.meta.get("num_params")
        acc = default.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
        description = f"torchvision {name}"
        if params:
            description += f", {params / 1e6:.1f}M parameters"
        if acc:
            description += f", {acc:.1f}% ImageNet top-1 ({default.name})"
        ARCHITECTURES.add(name, ArchSpec(
            name=name, family=module, builder=functools.partial(_torchvision_builder, name),
            input_size=(3, crop, crop), num_classes=len(default.meta.get("categories") or range(1000)),
            head=head, first_conv=first_conv, weights=weights, normalization=normalization,
            description=description, stages=stages,
        ))



# --- building, heads and input channels --------------------------------------------------------


def get_spec(arch: str | ArchSpec) -> ArchSpec:
    return arch if isinstance(arch, ArchSpec) else ARCHITECTURES.get(arch)


def build_model(arch: str | ArchSpec, num_classes: int | None = None, in_channels: int | None = None,
                weights: str | None = None) -> nn.Module:
    """Build `arch`, with torchvision `weights` loaded if named, then fit it to the task.

    The weights are loaded into the architecture's native shape first; a different class count
    gets a new (randomly initialised) head, a different channel count an adapted first conv.
    """
    spec = get_spec(arch)
    native_channels = spec.input_size[0]
    if weights:
        model = spec.builder(spec.num_classes, native_channels)
        model.load_state_dict(weights_state_dict(spec, weights))
    else:
        model = spec.builder(num_classes or spec.num_classes, in_channels or native_channels)
    if num_classes:
        replace_head(model, spec, num_classes)
    if in_channels:
        adapt_first_conv(model, spec, in_channels)
    return model


def replace_head(model: nn.Module, spec: ArchSpec, num_classes: int) -> bool:
    """Give `model` a fresh head for `num_classes` classes; False when it already has that many."""
    head = model.get_submodule(spec.head)
    if isinstance(head, nn.Linear):
        if head.out_features == num_classes:
            return False
        new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    elif isinstance(head, nn.Conv2d):  # SqueezeNet classifies with a 1x1 conv
        if head.out_channels == num_classes:
            return False
        new = nn.Conv2d(head.in_channels, num_classes, head.kernel_size, head.stride, head.padding,
                        bias=head.bias is not None)
    else:
        raise KTError(f"the head {spec.head!r} of {spec.name} is a {type(head).__name__}, not a Linear or Conv2d",
                      "this architecture cannot take a new class count; keep its classes")
    new.to(device=head.weight.device, dtype=head.weight.dtype)
    _set_submodule(model, spec.head, new)
    log.debug("replaced head %s of %s: %d classes", spec.head, spec.name, num_classes)
    return True


def _swap_first_conv(model: nn.Module, name: str, in_channels: int) -> bool:
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise KTError(f"{name!r} is a {type(conv).__name__}, not a Conv2d", "keep the model's input channels")
    if conv.in_channels == in_channels:
        return False
    if conv.groups != 1:
        raise KTError(f"the first conv {name!r} is grouped", "keep the model's input channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
        if conv.weight.device.type != "meta":
            new.weight.copy_(adapt_input_conv(conv.weight, in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    new.weight.requires_grad_(conv.weight.requires_grad)
    _set_submodule(model, name, new)
    return True


def adapt_first_conv(model: nn.Module, spec: ArchSpec, in_channels: int) -> bool:
    """Swap the first conv for one taking `in_channels`, weights adapted; False when unchanged.
    An architecture without a first conv (`spec.first_conv` None: an MLP) takes the channels it
    was built for; another count is refused by name."""
    if spec.first_conv is not None:
        return _swap_first_conv(model, spec.first_conv, in_channels)
    native = spec.input_size[0]
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    built_for = first.in_features // (spec.input_size[1] * spec.input_size[2]) if first is not None else native
    if built_for == in_channels:
        return False
    raise KTError(f"{spec.name} has no first convolution to adapt: it was built for {built_for}-channel images, "
                  f"not {in_channels}", f"use {built_for}-channel data (the dataset's channels option)")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --- torchvision weights -----------------------------------------------------------------------


def torchvision_weights_path(spec: ArchSpec, weights: str) -> tuple[Path, str]:
    """Where torch's hub cache keeps `weights` of `spec`, and the URL they come from."""
    from torchvision import models as tvm  # here, not at the top: torchvision's model zoo costs ~1.5 s to import

    if not spec.weights:
        raise KTError(f"{spec.name} has no named weights", "use weights=None (random initialisation) or load a checkpoint file")
    if weights not in spec.weights:
        raise KTError(f"{spec.name} has no weights named {weights!r}", f"valid weights: {', '.join(spec.weights)}")
    url = tvm.get_model_weights(spec.name)[weights].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def weights_state_dict(spec: ArchSpec, weights: str) -> dict[str, torch.Tensor]:
    """The state_dict of `weights` of `spec`: a provider's own (timm, a package), else torchvision's."""
    if spec.load_weights is not None:
        return providers.weights_state_dict(spec, weights)
    return torchvision_state_dict(spec, weights)


def weights_preprocessing(spec: ArchSpec, weights: str | None) -> tuple[tuple[int, int, int], Normalization | None]:
    """The input size and mean/std that `weights` of `spec` expect (the spec's defaults if None)."""
    if not weights or not spec.weights or spec.load_weights is not None:
        return spec.input_size, spec.normalization
    from torchvision import models as tvm  # here, not at the top: torchvision's model zoo costs ~1.5 s to import

    torchvision_weights_path(spec, weights)  # validates the name
    crop, normalization = _preprocessing_of(tvm.get_model_weights(spec.name)[weights], spec.input_size[1])
    return (spec.input_size[0], crop, crop), normalization


def _preprocessing_of(weights, default_crop: int) -> tuple[int, Normalization]:
    """The crop size and mean/std a torchvision weights entry's transforms use: the keywords of
    its `transforms` partial (ImageClassification(crop_size=..., mean=..., std=...)), read here only."""
    keywords = getattr(weights.transforms, "keywords", {})
    mean = tuple(keywords.get("mean", IMAGENET_NORMALIZATION[0]))
    std = tuple(keywords.get("std", IMAGENET_NORMALIZATION[1]))
    return int(keywords.get("crop_size", default_crop)), (mean, std)


def torchvision_state_dict(spec: ArchSpec, weights: str) -> dict[str, torch.Tensor]:
    """The state_dict of torchvision `weights`: from the hub cache, else downloaded there."""
    path, url = torchvision_weights_path(spec, weights)
    if not path.is_file():
        log.info("downloading %s weights %s to %s", spec.name, weights, path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as exc:  # offline, proxy, disk: all mean "the file is not here"
            raise CheckpointError(
                f"weights {weights} for {spec.name} are not in the torch hub cache ({path}) and could "
                f"not be downloaded ({type(exc).__name__}: {exc})",
                f"copy {path.name} from {url} to {path.parent}, or start from random initialisation instead (no weights)",
            ) from None
    sd, _ = clean_state_dict(read_checkpoint(path).state_dict)
    return sd


# --- inference of the architecture from a state_dict ------------------------------------------


@contextlib.contextmanager
def _weightless() -> Iterator[None]:
    """Build modules with parameters and buffers on the meta device: shapes without memory.

    `torch.device("meta")` as a default device breaks builders that compute with tensors
    (RegNet's widths), so only the registered tensors are moved, as accelerate's
    init_empty_weights does.
    """
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def to_meta_parameter(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def to_meta_buffer(self, name, buffer, persistent=True):
        register_buffer(self, name, None if buffer is None else buffer.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = to_meta_parameter, to_meta_buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build_shapeless(arch: str | ArchSpec) -> nn.Module:
    """The architecture on the meta device (native classes and channels): structure, no memory."""
    spec = get_spec(arch)
    if spec.provider:
        # timm's and the packages' models build on a meta default device (no memory, no init
        # work: ~10x faster than building on the CPU first, and inference may try hundreds);
        # one that computes with tensors while building falls back to the patched build.
        try:
            with torch.device("meta"):
                return spec.builder(spec.num_classes, spec.input_size[0])
        except Exception as exc:  # a builder that needs real tensors
            log.debug("%s does not build on the meta device (%s): building weightless", spec.name, exc)
    with _weightless():
        return spec.builder(spec.num_classes, spec.input_size[0])


@functools.lru_cache(maxsize=None)
def _signature(arch: str) -> dict[str, tuple[int, ...]]:
    spec = get_spec(arch)
    cached = _signature_file(spec)
    if cached is not None:
        try:
            return {k: tuple(v) for k, v in json.loads(cached.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            pass
    signature = {k: tuple(v.shape) for k, v in build_shapeless(arch).state_dict().items()
                 if not k.endswith("num_batches_tracked")}
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.part")
            tmp.write_text(json.dumps(signature))
            tmp.replace(cached)
        except OSError as exc:  # a read-only cache only costs the next process the build
            log.debug("signature of %s not cached: %s", arch, exc)
    return signature


def _signature_file(spec: ArchSpec) -> Path | None:
    """Where a provider architecture's key shapes are kept between processes, per package version.

    Inferring a timm checkpoint may compare ~170 architectures that share its head and first-conv
    names; each costs a build (~0.1-1 s), so a server or a worker pays that once per machine, not
    once per process. Ours and torchvision's are cheap enough to build (None: not cached)."""
    if not spec.provider:
        return None
    from importlib import metadata  # stdlib, needed only for providers' versions

    try:
        version = metadata.version(spec.provider)
    except metadata.PackageNotFoundError:
        return None
    safe = re.sub(r"[^0-9A-Za-z_.-]", "_", spec.name)
    return get_settings().cache_dir / "arch_signatures" / f"{spec.provider}-{version}" / f"{safe}.json"


def infer_architectures(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Every registered architecture whose keys and shapes fit `state_dict`.

    The head's class count and the first conv's input channels may differ: those are what a
    transfer changes. BatchNorm's `num_batches_tracked` counters are ignored (older files lack them).
    """
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    found = [spec.name for spec in ARCHITECTURES.builtin() if _fits(state_dict, keys, spec)]
    if not found:  # timm's ~1,300 and the packages' are tried only when none of ours fits
        found = [spec.name for spec in ARCHITECTURES.provided() if _fits(state_dict, keys, spec)]
    return found


def architecture_fits(state_dict: dict[str, torch.Tensor], arch: str) -> bool:
    """Whether `state_dict` fits the one architecture `arch` (as `infer_architectures` judges):
    checking a named architecture needs no scan of the registry, nor torchvision's import."""
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    return _fits(state_dict, keys, get_spec(arch))


def closest_architectures(state_dict: dict[str, torch.Tensor], n: int = 3) -> list[tuple[str, int]]:
    """The `n` built-in architectures (ours, torchvision's) that take the most of `state_dict`'s
    tensors (same key, a fitting shape): (name, tensors taken), best first.

    Our own small architectures are always compared; the others only when the file has their
    head or first-conv key (a signature costs a meta-device build, ~0.1 s for a torchvision model,
    and comparing all of them would cost seconds on an error path)."""
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    scores = []
    for spec in ARCHITECTURES.builtin():  # the providers' (timm's ~1,300) would cost minutes here
        if spec.name not in _OWN and f"{spec.head}.weight" not in keys and _first_conv_key(spec) not in keys:
            continue
        signature = _signature(spec.name)
        hits = sum(1 for k in keys if k in signature and _shape_fits(k, tuple(state_dict[k].shape), signature[k], spec))
        scores.append((-hits, abs(len(signature) - len(keys)), spec.name))
    return [(name, -hits) for hits, _, name in sorted(scores)[:n]]


def _first_conv_key(spec: ArchSpec) -> str | None:
    """The first conv's weight key; None for an architecture without a first conv (an MLP)."""
    return f"{spec.first_conv}.weight" if spec.first_conv is not None else None


def _fits(state_dict: dict[str, torch.Tensor], keys: set[str], spec: ArchSpec) -> bool:
    head_w, conv_w = f"{spec.head}.weight", _first_conv_key(spec)
    if head_w not in keys or (conv_w is not None and conv_w not in keys):  # cheap filter before building anything
        return False
    signature = _signature(spec.name)
    if set(signature) != keys:
        return False
    return all(_shape_fits(k, tuple(state_dict[k].shape), shape, spec) for k, shape in signature.items())


def _shape_fits(key: str, got: tuple[int, ...], want: tuple[int, ...], spec: ArchSpec) -> bool:
    if got == want:
        return True
    if len(got) != len(want):
        return False
    if key.startswith(spec.head + "."):  # another class count: dim 0 of weight and bias
        return got[1:] == want[1:]
    if key == _first_conv_key(spec):  # another channel count: dim 1
        return got[0] == want[0] and got[2:] == want[2:]
    return False


# --- layer tree and blocks ---------------------------------------------------------------------


def submodule(model: nn.Module, name: str) -> nn.Module:
    """`model.get_submodule(name)` that also works on TorchScript modules."""
    module = model
    for part in filter(None, name.split(".")):
        children = dict(module.named_children())
        if part not in children:
            raise AttributeError(f"{type(module).__name__} has no submodule {part!r}")
        module = children[part]
    return module


def _has_params(module: nn.Module) -> bool:
    return next(iter(module.parameters()), None) is not None


def _is_layer(module: nn.Module) -> bool:
    """A single layer, not a stage: it holds its parameters itself (a conv wrapped with its
    padding module, as EfficientNet's and timm's "same" padding do, is one layer)."""
    return not any(_has_params(child) for child in module.children())


def _units(model: nn.Module, spec: ArchSpec | None) -> list[str]:
    """Top-level children, with the stages container and the head's ancestors opened up."""
    expand = {""}
    for path in ([spec.stages] if spec and spec.stages else []) + ([spec.head] if spec else []):
        parts = path.split(".")
        stop = len(parts) if path != (spec.head if spec else None) else len(parts) - 1
        expand.update(".".join(parts[:i]) for i in range(1, stop + 1))
    units, changed = [""], True
    while changed:
        changed, out = False, []
        for unit in units:
            if unit in expand:
                module = submodule(model, unit)
                out.extend(f"{unit}.{n}" if unit else n for n, _ in module.named_children())
                changed = True
                expand.discard(unit)
            else:
                out.append(unit)
        units = out
    return units


def _direct_params(model: nn.Module, spec: ArchSpec | None) -> list[str]:
    """Parameters held directly by containers that `_units` opened (ViT's class token)."""
    opened = {""}
    for path in ([spec.stages] if spec and spec.stages else []) + ([spec.head] if spec else []):
        parts = path.split(".")
        opened.update(".".join(parts[:i]) for i in range(1, len(parts)))
    if spec and spec.stages:
        opened.add(spec.stages)
    names = []
    for prefix in sorted(opened):
        try:
            module = submodule(model, prefix)
        except AttributeError:
            continue
        names.extend(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def blocks(model: nn.Module, spec: ArchSpec | None = None) -> list[Block]:
    """Natural groups of modules, ordered input -> output; the last one is always `head`.

    Units are the model's top-level children (with the spec's stages container opened into its
    stages). Leading single layers before the first composite stage form the `stem`;
    parameter-free units (activations, pools, dropout) join the block before them; the spec's
    head (for unknown models: the last unit with parameters) is `head`.
    """
    units = _units(model, spec)
    modules = {u: submodule(model, u) for u in units}
    with_params = [u for u in units if _has_params(modules[u])]
    if not with_params:
        raise KTError("the model has no parameters", "load a model with weights")
    head = spec.head if spec and spec.head in modules else with_params[-1]
    head_at = units.index(head)
    body, tail = units[:head_at], units[head_at:]
    has_stages = any(not _is_layer(modules[u]) for u in body if _has_params(modules[u]))

    result: list[Block] = []
    waiting: list[str] = list(_direct_params(model, spec))  # param-free units before the first block
    seen_stage = False
    for unit in body:
        module = modules[unit]
        if not _has_params(module):
            (result[-1].modules if result else waiting).append(unit)
            continue
        is_layer = _is_layer(module)
        if has_stages and is_layer and not seen_stage:  # conv, bn, ... before the first stage
            if result:
                result[-1].modules.append(unit)
            else:
                result.append(Block("stem", waiting + [unit]))
        else:
            result.append(Block(unit, waiting + [unit]))
            seen_stage = seen_stage or not is_layer
        waiting = []
    result.append(Block("head", waiting + tail))
    return result


def _shape_of(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (tuple, list)):
        shapes = [_shape_of(o) for o in output]
        return shapes if any(s is not None for s in shapes) else None
    return None


def dry_run(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[dict[str, Any], str | None]:
    """Run a dummy batch of one through `model` (eval mode, no grad); output shape per module.

    Returns the shapes and the error message if the forward pass failed (the shapes recorded
    up to the failure show where it broke).
    """
    shapes: dict[str, Any] = {}
    record = {name: (lambda _m, _i, out, name=name: shapes.__setitem__(name, _shape_of(out)))
              for name, _ in model.named_modules()}
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    error = None
    try:
        with probe(model, after=record):
            out = model(torch.zeros((1, *input_size), device=device, dtype=dtype))
        shapes[""] = _shape_of(out)
    except Exception as exc:  # any failure of a user's model is reported, not raised
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning("dry run with input %s failed: %s", input_size, error)
    return shapes, error


def layer_tree(model: nn.Module, input_size: tuple[int, int, int] | None,
               spec: ArchSpec | None = None) -> list[dict[str, Any]]:
    """One JSON-ready row per module (the root excluded), in definition order.

    `output_shape` comes from a dry run on a dummy batch of one (None where the module did not
    run, or `input_size` is None); `block` names the `blocks()` group the module falls in (None
    for containers spanning several).
    """
    shapes = dry_run(model, input_size)[0] if input_size else {}
    groups = blocks(model, spec)
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        own = list(module.parameters(recurse=False))
        total = list(module.parameters())
        block = next((g.name for g in groups if g.owns(name)), None)
        rows.append({
            "name": name,
            "type": getattr(module, "original_name", None) or type(module).__name__,
            "depth": name.count("."),
            "num_parameters": sum(p.numel() for p in own),
            "num_parameters_total": sum(p.numel() for p in total),
            "trainable": any(p.requires_grad for p in total) if total else None,
            "output_shape": shapes.get(name),
            "block": block,
        })
    return rows


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
