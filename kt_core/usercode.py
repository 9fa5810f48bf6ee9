"""The user's own model code as a source architecture: `path/to/model.py:ClassName` or
`package.module:ClassName`, built with the keyword arguments in `source.arch_kwargs`.

A checkpoint is half a model; the class that made it is the other half. Importing that class
runs its module's code, so it needs the same explicit, warned opt-in as a pickled module
(`source.trust`, `--trust`, the *Trust this file* box), a server that disables trust
(`KT_ALLOW_TRUST=0`) refuses it from the UI, and a file typed into the UI must lie under the
allowed roots. Parsing a reference and hashing its file never run it (`coderef`).

What the app needs to know about the class (its head, its first layer, its input size) it takes
from the class when the class says (`kt_head`, `kt_first_conv`, `kt_input_size`,
`kt_normalization` class attributes) or from the config (`source.head`, `source.first_conv`),
and otherwise finds it from the module graph: one forward pass of a dummy batch with hooks gives
the order the layers run in; the head is the last `nn.Linear` to run (the one whose output is the
model's output when there is one), the first layer the first conv or linear layer to run.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .archspec import ArchSpec
from .coderef import CodeRef, code_file, file_sha256, parse_code_ref
from .errors import KTError, TrustNotAllowedError, UntrustedCodeError, UserCodeError
from .models import _swap_first_conv, dry_run, replace_head
from .settings import get_settings, refuse_trust_if_forbidden

log = logging.getLogger(__name__)

FAMILY = "user_code"
# Sides tried for a first convolution that does not say what image it takes (as sources.py does
# for a TorchScript file): MNIST-like, CIFAR-like, small and ImageNet-like.
_GUESS_SIDES = (28, 32, 64, 224)


def require_trust(ref: CodeRef, trust: bool, roots: tuple[Path, ...] | None) -> None:
    """Refuse user code unless it is trusted; from the UI (`roots` set) also unless the server
    allows trust at all: KT_ALLOW_TRUST=0 forbids user code exactly as it forbids a trusted pickle
    or TorchScript archive (`settings.refuse_trust_if_forbidden`, the one place that rule lives)."""
    if roots is not None:
        if trust:
            refuse_trust_if_forbidden(f"the model code {ref}")
        elif not get_settings().allow_trust:  # no box to tick on such a server: say what it forbids
            raise TrustNotAllowedError(
                f"{ref} is Python code, and this server does not run user code (KT_ALLOW_TRUST=0)",
                "load the weights into a registered architecture (a state_dict or .safetensors), or train "
                "from the CLI on your own machine, or ask the administrator to set KT_ALLOW_TRUST=1")
    if not trust:
        raise UntrustedCodeError(
            f"{ref} is Python code: importing it runs it, so it needs your explicit trust",
            "only for code you wrote or trust: --trust on the CLI, the 'Trust this file' box in the UI, "
            "\"trust\": true in the config's source")


def load_class(ref: CodeRef, trust: bool, roots: tuple[Path, ...] | None = None) -> tuple[type, Path, str]:
    """Import the class `ref` names (after the trust and confinement checks): (class, file, sha256).

    A file is imported as a module named after its content hash, so editing the file and loading
    it again gets the new code, and the same content is imported once per process.
    """
    require_trust(ref, trust, roots)
    path = code_file(ref, roots)
    digest = file_sha256(path)
    log.warning("importing user model code %s (sha256 %s) because it was explicitly trusted: "
                "this runs the file's code", path, digest[:12])
    try:
        if ref.is_file:
            module = _import_file(path, digest)
        else:
            module = importlib.import_module(ref.target)
    except KTError:
        raise
    except BaseException as exc:  # the user's module can fail any way Python code can (SystemExit included)
        log.exception("importing %s failed", path)
        raise UserCodeError(f"importing {path.name} failed: {type(exc).__name__}: {_first_line(exc)}",
                            "fix the file so that `python " + path.name + "` runs; the traceback is in the log") from None
    obj: Any = module
    for part in ref.class_name.split("."):
        obj = getattr(obj, part, None)

    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__)
        what = "has no" if obj is None else f"has a {type(obj).__name__} named"
        raise UserCodeError(f"{path.name} {what} {ref.class_name!r} that is an nn.Module class",
                            f"nn.Module classes in it: {', '.join(found)}" if found else
                            "name an nn.Module subclass defined in the file: path/to/model.py:ClassName")
    return obj, path, digest


def _import_file(path: Path, digest: str):
    name = f"_kt_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    # The file's own folder is importable while it runs, as `python model.py` would have it, so
    # `from layers import Block` next to it works.
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        try:
            sys.path.remove(str(path.parent))
        except ValueError:
            pass
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


# --- the class as an architecture ----------------------------------------------------------------

def user_spec(cfg: Any, roots: tuple[Path, ...] | None = None) -> ArchSpec:
    """The ArchSpec of the class `cfg.arch` names, with its head, first layer and input size."""
    ref = parse_code_ref(cfg.arch)
    if ref is None:
        raise UserCodeError(f"{cfg.arch!r} is not a model code reference", "write path/to/model.py:ClassName")
    cls, path, digest = load_class(ref, cfg.trust, roots)
    kwargs = dict(cfg.arch_kwargs or {})
    probe = _instantiate(cls, kwargs, ref)
    input_size = _declared_size(cls, ref) or _guess_input_size(probe, cfg.first_conv or getattr(cls, "kt_first_conv", None))
    found_head, found_first = _from_graph(probe, input_size)
    head = cfg.head or getattr(cls, "kt_head", None) or found_head
    first = cfg.first_conv or getattr(cls, "kt_first_conv", None) or found_first
    modules = dict(probe.named_modules())
    for what, name, key in (("head", head, "head"), ("first layer", first, "first_conv")):
        if not name:
            raise UserCodeError(f"{ref.class_name} has no nn.Linear/nn.Conv2d to use as its {what}",
                                f"name it in the config (source.{key}) or on the class (kt_{key} = \"...\")")
        if name not in modules:
            raise UserCodeError(f"{ref.class_name} has no module named {name!r} (its {what})",
                                f"modules: {', '.join(n for n in list(modules)[1:12] if n)}")
    if input_size is None:
        raise UserCodeError(f"the input size of {ref.class_name} cannot be told from its layers",
                            "give the class an attribute kt_input_size = (C, H, W)")
    head_module = modules[head]
    num_classes = getattr(head_module, "out_features", None) or getattr(head_module, "out_channels", None) or 0
    normalization = getattr(cls, "kt_normalization", None)
    if normalization is not None:
        normalization = (tuple(map(float, normalization[0])), tuple(map(float, normalization[1])))

    def builder(classes: int, in_channels: int) -> "nn.Module":

        model = _instantiate(cls, kwargs, ref)
        if classes and classes != num_classes:
            replace_head(model, spec, classes)
        if in_channels and isinstance(model.get_submodule(first), nn.Conv2d):
            _swap_first_conv(model, first, in_channels)
        return model

    shown = path.name if ref.is_file else ref.target
    spec = ArchSpec(
        name=str(cfg.arch), family=FAMILY, builder=builder, input_size=tuple(int(s) for s in input_size),
        num_classes=int(num_classes), head=head, first_conv=first, normalization=normalization,
        description=f"user code {ref.class_name} from {shown} (sha256 {digest[:12]})",
    )
    return spec


def _instantiate(cls: type, kwargs: dict[str, Any], ref: CodeRef):
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserCodeError(f"{ref.class_name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {exc}",
                            "give the constructor's keyword arguments in the config (source.arch_kwargs)") from None
    except Exception as exc:
        raise UserCodeError(f"building {ref.class_name} failed: {type(exc).__name__}: {_first_line(exc)}",
                            "fix the class, or its arguments in source.arch_kwargs") from None


def _declared_size(cls: type, ref: CodeRef) -> tuple[int, int, int] | None:
    size = getattr(cls, "kt_input_size", None)
    if size is None:
        return None
    if not (isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size)):
        raise UserCodeError(f"{ref.class_name}.kt_input_size is {size!r}", "write kt_input_size = (C, H, W)")
    return tuple(size)


def _first_layer(model: "nn.Module", name: str | None):

    if name:
        return dict(model.named_modules()).get(name)
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)


def _guess_input_size(model: "nn.Module", first: str | None) -> tuple[int, int, int] | None:
    """From the first layer: a conv's channels and the first side a forward pass accepts; a
    linear layer's inputs as a square image of 1 or 3 channels (an MLP on flattened images)."""

    layer = _first_layer(model, first)
    if isinstance(layer, nn.Conv2d):
        for side in _GUESS_SIDES:
            if dry_run(model, (layer.in_channels, side, side))[1] is None:
                return (layer.in_channels, side, side)
    elif isinstance(layer, nn.Linear):
        for channels in (1, 3):
            side = math.isqrt(layer.in_features // channels)
            if channels * side * side == layer.in_features and dry_run(model, (channels, side, side))[1] is None:
                return (channels, side, side)
    return None


def _from_graph(model: "nn.Module", input_size: tuple[int, int, int] | None) -> tuple[str | None, str | None]:
    """(head, first layer) from the order layers run in a forward pass; definition order when
    the model does not run on `input_size`."""

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    ran: list[tuple[str, Any]] = []  # (name, its output), in the order they ran
    out = None
    if input_size is not None:
        handles = [m.register_forward_hook(lambda _m, _i, o, n=n: ran.append((n, o))) for n, m in layers.items()]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                out = model(torch.zeros((1, *input_size)))
        except Exception as exc:  # the analysis falls back to definition order
            log.info("forward pass of the user model on %s failed (%s): layers taken in definition order", input_size, exc)
            ran = []
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
    order = [n for n, _ in ran] or list(layers)
    linears = [n for n in order if isinstance(layers[n], nn.Linear)]
    direct = [n for n, o in ran if out is not None and o is out and isinstance(layers[n], nn.Linear)]
    head = (direct or linears or [None])[-1]
    return head, (order or [None])[0]
