"""Read any checkpoint file users actually have, safely, and map its weights onto a model.

Formats: plain state_dicts (zip and legacy serialization), training dicts (weights under
`model_state_dict`, `state_dict`, `model`, ...), PyTorch Lightning `.ckpt`, DataParallel and
torch.compile prefixes, `.safetensors`, TorchScript archives, and KT Studio run checkpoints.

Safety: pickles are read with `torch.load(weights_only=True)`, which only rebuilds tensors and
plain containers. A file that needs code to unpickle (a whole pickled `nn.Module`, or something
worse) is refused with `UnsafeCheckpointError`; to say *what* it is, `pickle_scan` runs its
opcodes symbolically, executing nothing. Only `trust=True` loads it with `weights_only=False`,
and never a pickle the scan finds hostile (it calls `os.system`-like functions or computes the
names of what it calls). TorchScript archives are programs too: refused unless trusted, and
described (files, tensor names and shapes) without being run.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .adapt import adapt_input_conv
from .errors import CheckpointError, UnsafeCheckpointError
from .settings import checked_path
from .pickle_scan import PickleScan, describe_torchscript, numel, scan_file

log = logging.getLogger(__name__)

FORMATS = ("state_dict", "training_dict", "lightning", "safetensors", "torchscript", "pickled_module", "kt_run")

# Keys under which training scripts keep the weights, most common first. EMA weights come last:
# they are a choice the user makes, not the default.
WEIGHT_KEYS = ("model_state_dict", "state_dict", "model", "net", "network", "model_state", "weights",
               "params", "module", "state_dict_ema", "model_ema", "ema")
LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "optimizer_states", "lr_schedulers",
                  "callbacks", "loops", "hyper_parameters")
# Prefixes that wrappers add to every key: (prefix, where it comes from).
WRAPPER_PREFIXES = (("module.", "DataParallel/DistributedDataParallel"), ("_orig_mod.", "torch.compile"))

_MAGIC = (  # first bytes of files people rename to .pt by mistake
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"BM", "a BMP image"),
    (b"RIFF", "a RIFF (WebP/WAV) file"), (b"\x7fELF", "an executable"), (b"<", "an HTML/XML text file"),
    (b"{", "a JSON text file"), (b"\x08", "an ONNX (protobuf) file"),
)
@dataclass
class RawCheckpoint:
    """What a checkpoint file holds, before any model is involved."""

    format: str  # one of FORMATS
    state_dict: dict[str, torch.Tensor]  # cleaned keys
    module: nn.Module | None = None  # TorchScript or trusted pickled module, else None
    meta: dict[str, Any] = field(default_factory=dict)  # epoch, best_prec1, config, ... (JSON-ready)
    fixes: list[str] = field(default_factory=list)  # what was done to the keys, in words
    name: str = ""  # the file name, for messages
    arch: str | None = None  # the architecture the file names itself (KT Studio runs)


@dataclass
class LoadReport:
    """How a state_dict mapped onto a model: what loaded, what did not, and what was fixed."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored
    mismatched: list[dict[str, Any]] = field(default_factory=list)  # {key, source_shape, model_shape}
    fixes: list[str] = field(default_factory=list)

    @property
    def strict(self) -> bool:
        """True when every weight of the model came from the file and every weight was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (f"{len(self.matched)} matched, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} shape-mismatched")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"strict": self.strict, "summary": self.summary()}


# --- reading -----------------------------------------------------------------------------------


def read_checkpoint(source: str | os.PathLike | BinaryIO | bytes, trust: bool = False) -> RawCheckpoint:
    """Read a checkpoint from a path, an open binary file (an upload) or bytes.

    Raises `CheckpointError` for missing, empty, truncated, corrupt or non-checkpoint files and
    `UnsafeCheckpointError` for pickles that need code, unless `trust` is set.
    """
    name, data, path = _open(source)
    head = data[:16] if data is not None else _head(path)
    if not head:
        raise CheckpointError(f"{name} is empty (0 bytes)", "the file was not saved or not copied completely; save it again")
    if _is_safetensors(head, name):
        return _read_safetensors(name, data, path)
    if head.startswith(b"PK\x03\x04"):
        members = _zip_members(name, data, path)
        _refuse_zip_bomb(name, data, path)
        if any("/code/" in m or m.endswith("constants.pkl") for m in members):
            return _read_torchscript(name, data, path, trust)
        if not any(m.endswith("data.pkl") for m in members):
            raise CheckpointError(f"{name} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)",
                                  "give the .pt/.pth file itself, not a zip of files")
    elif not head.startswith(b"\x80"):  # every torch pickle starts with the PROTO opcode
        kind = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
        what = f"is {kind}, not a PyTorch checkpoint" if kind else \
            f"is not a PyTorch checkpoint (it starts with bytes {head[:4].hex(' ')})"
        raise CheckpointError(f"{name} {what}",
                              "choose a .pt/.pth/.bin/.ckpt/.safetensors file saved with torch.save or safetensors")
    obj = _torch_load(name, data, path, trust)
    raw = interpret(obj, name)
    _check_tensor_sizes(name, raw.state_dict)
    return raw


def _open(source: Any) -> tuple[str, bytes | None, Path | None]:
    """(display name, bytes or None, path or None); uploads are read into memory once."""
    if isinstance(source, (str, os.PathLike)):
        path = checked_path(source, "checkpoint file")
        if not path.exists():
            raise CheckpointError(f"checkpoint file {path} does not exist", "check the path")
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder, not a checkpoint file",
                                  "give a file; a KT Studio run folder is a source of kind 'run'")
        return path.name, None, path
    if isinstance(source, (bytes, bytearray)):
        return "uploaded file", bytes(source), None
    name = Path(getattr(source, "name", "uploaded file")).name
    try:
        if hasattr(source, "seek"):
            source.seek(0)
        return name, source.read(), None
    except OSError as exc:
        raise CheckpointError(f"cannot read {name}: {exc}", "upload the file again") from None


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions") from None


def _stream(data: bytes | None, path: Path | None) -> Any:
    return io.BytesIO(data) if data is not None else str(path)


def _is_safetensors(head: bytes, name: str) -> bool:
    # 8-byte little-endian header length, then the JSON header
    if name.endswith(".safetensors"):
        return True
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000


def _read_safetensors(name: str, data: bytes | None, path: Path | None) -> RawCheckpoint:
    import safetensors.torch  # here, not at the top: only .safetensors files need it

    size = len(data) if data is not None else path.stat().st_size
    head = data[:8] if data is not None else _head(path)[:8]
    declared = struct.unpack("<Q", head)[0] if len(head) == 8 else None
    if declared is None or 8 + declared > size:  # a lying header: refuse before anything reads it
        raise CheckpointError(f"{name} is not a readable safetensors file (its header claims "
                              f"{declared if declared is not None else '?'} bytes in a file of {size:,})",
                              "the file is truncated or corrupt; download or save it again")
    try:
        sd = safetensors.torch.load(data) if data is not None else safetensors.torch.load_file(str(path), device="cpu")
        metadata = _safetensors_metadata(data, path)
    except Exception as exc:  # the safetensors errors are many and untyped (SafetensorError, ...)
        raise CheckpointError(f"{name} is not a readable safetensors file ({_first_line(exc)})",
                              "the file is truncated or corrupt; download or save it again") from None
    sd, fixes = clean_state_dict(sd)
    return RawCheckpoint("safetensors", sd, meta=metadata, fixes=fixes, name=name)


def _safetensors_metadata(data: bytes | None, path: Path | None) -> dict[str, Any]:
    if data is None:
        with open(path, "rb") as f:
            header = f.read(struct.unpack("<Q", f.read(8))[0])
    else:
        header = data[8:8 + struct.unpack("<Q", data[:8])[0]]
    return dict(json.loads(header).get("__metadata__") or {})


# torch.save stores tensors uncompressed, so a real checkpoint's entries add up to about its own
# size; one that declares far more is a zip bomb (a 1 MB file that inflates to 1 GiB).
_MAX_INFLATION = 16
_INFLATION_SLACK = 64 << 20


def _refuse_zip_bomb(name: str, data: bytes | None, path: Path | None) -> None:
    size = len(data) if data is not None else path.stat().st_size
    with zipfile.ZipFile(_stream(data, path)) as zf:
        declared = sum(i.file_size for i in zf.infolist())
    if declared > _MAX_INFLATION * size + _INFLATION_SLACK:
        raise CheckpointError(f"{name} refused: its zip entries declare {declared:,} bytes in a file of {size:,} "
                              "bytes, which torch.save never writes (a decompression bomb)",
                              "do not load this file; save the weights again with torch.save or safetensors")


def _check_tensor_sizes(name: str, sd: dict[str, torch.Tensor]) -> None:
    """A tensor may not claim more values than its storage holds (a stride-0 view claiming 10^12
    elements costs nothing to load and everything to copy, count or train)."""
    for key, t in sd.items():
        if t.is_sparse or t.layout != torch.strided or t.device.type == "meta":
            continue
        stored = t.untyped_storage().nbytes()
        if t.numel() and t.numel() * t.element_size() > stored:
            raise CheckpointError(f"{name} refused: tensor {key} claims {t.numel():,} values (shape "
                                  f"{tuple(t.shape)}) backed by {stored:,} bytes (a stride-0 or overlapping view)",
                                  "save real tensors: torch.save({k: v.contiguous() for k, v in sd.items()}, PATH)")


def _zip_members(name: str, data: bytes | None, path: Path | None) -> list[str]:
    try:
        with zipfile.ZipFile(_stream(data, path)) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{name} is truncated or corrupt ({exc})",
                              "the download or copy was incomplete; get the file again") from None


def _read_torchscript(name: str, data: bytes | None, path: Path | None, trust: bool) -> RawCheckpoint:
    # A TorchScript archive is a program: torch.jit.load runs its classes' __setstate__, and its
    # forward (run by the trial pass that finds the input size) may call any TorchScript builtin,
    # torch.from_file (which writes files) among them. So it is code, refused like a pickled class
    # unless trusted; what it holds is described from data.pkl without running it.
    if not trust:
        raise _torchscript_refusal(name, data, path)
    log.warning("loading TorchScript archive %s because it was explicitly trusted: this runs its code", name)
    try:
        with warnings.catch_warnings():  # "torch.jit is deprecated": the user's files are still TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(_stream(data, path), map_location="cpu")
    except Exception as exc:  # torch.jit raises RuntimeError with C++ text
        raise CheckpointError(f"{name} is a TorchScript archive that cannot be loaded ({_first_line(exc)})",
                              "the file is truncated, corrupt or from a newer PyTorch; export it again") from None
    module.eval()
    sd = {k: v for k, v in module.state_dict().items()}
    return RawCheckpoint("torchscript", sd, module=module, name=name,
                         fixes=["TorchScript: the model's code comes from the file; its layers can be listed, not edited"])


def _torchscript_refusal(name: str, data: bytes | None, path: Path | None) -> UnsafeCheckpointError:
    try:
        with zipfile.ZipFile(_stream(data, path)) as zf:
            contents = describe_torchscript(zf)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        contents = {"files": [], "num_files": 0, "tensors": {}, "classes": [], "note": f"unreadable zip ({exc})"}
    tensors = contents["tensors"]
    held = (f" holding {len(tensors)} tensors ({sum(numel(t['shape']) for t in tensors.values()):,} values)"
            if tensors else "")
    error = UnsafeCheckpointError(
        f"{name} refused: it is a TorchScript archive{held}, which is a program: loading it runs its code, "
        "and that code can read and write files",
        "where you trust the file, re-save its weights as a state_dict: "
        "torch.save(torch.jit.load(PATH).state_dict(), 'weights.pt'), then load weights.pt with --arch; "
        "or opt in to running it (--trust on the CLI, the trust checkbox in the UI)")
    error.contents = contents
    return error


@contextlib.contextmanager
def warnings_to_log():
    """Library warnings raised while reading a file (torch's pickle-protocol UserWarning, PIL's)
    go to the log, so a refusal stays one line and a good file adds no noise to the console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                log.debug("%s: %s", w.category.__name__, str(w.message).splitlines()[0] if str(w.message) else "")


def _torch_load(name: str, data: bytes | None, path: Path | None, trust: bool) -> Any:
    try:
        with warnings_to_log():
            return torch.load(_stream(data, path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        scan = _scan(data, path)
        if not scan.names and not scan.computed:  # not a refusal of code: the bytes are not a valid pickle
            raise CheckpointError(f"{name} is corrupt: its pickle data cannot be parsed",
                                  "the file was damaged or is not a PyTorch checkpoint; get it again") from None
        if not trust or scan.hostile:
            raise _refusal(name, scan) from None
    except (RuntimeError, EOFError, OSError, ValueError, struct.error, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{name} is truncated or corrupt ({_first_line(exc) or type(exc).__name__})",
                              "the download or copy was incomplete; get the file again") from None
    log.warning("loading %s with weights_only=False because it was explicitly trusted: "
                "this runs any code the file contains", name)
    try:
        return torch.load(_stream(data, path), map_location="cpu", weights_only=False)
    except Exception as exc:  # a trusted pickle can fail in any way its code fails
        raise CheckpointError(f"{name} could not be unpickled even with trust ({type(exc).__name__}: {_first_line(exc)})",
                              "the classes it needs must be importable here (run from the project that saved it)") from None


def _scan(data: bytes | None, path: Path | None) -> PickleScan:
    try:
        return scan_file(data if data is not None else path.read_bytes())
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions") from None


def _refusal(name: str, scan: PickleScan) -> UnsafeCheckpointError:
    """Why a pickle is refused, from what its opcodes do. A hostile one (a callable that runs code
    or touches files, or a name computed at load time) gets no advice to trust it: trust does not
    load it either."""
    if scan.hostile:
        parts = []
        if scan.dangerous:
            parts.append(f"unpickling it would call {', '.join(scan.dangerous[:5])}, which runs code or touches files")
        if scan.computed:
            parts.append(f"it computes the name of {scan.computed} function(s) it calls while loading, "
                         "which hides what it runs")
        return UnsafeCheckpointError(
            f"{name} refused: {'; '.join(parts)}; a model file never does this, so it is likely malicious",
            "do not load this file, even as trusted; ask its author for a state_dict or a .safetensors file")
    classes = scan.needs_code
    resave = ("re-save it as a state_dict where its code is importable: "
              "torch.save(torch.load(PATH, weights_only=False).state_dict(), 'weights.pt'); "
              "or, if you trust the file, opt in (--trust on the CLI, the trust checkbox in the UI)")
    module_class = next((c for c in classes if not c.startswith(("torch.", "numpy.", "collections.", "builtins."))), None)
    if any(c.startswith("torch.nn.") for c in classes) or "torch._utils._rebuild_parameter" in scan.names:
        what = f"a whole pickled nn.Module of class {module_class or classes[0]}" if classes else "a whole pickled nn.Module"
        return UnsafeCheckpointError(f"{name} refused: it is {what}, which needs its Python code to load", resave)
    shown = ", ".join(classes[:5]) or "classes torch does not load as plain data"
    return UnsafeCheckpointError(f"{name} refused: unpickling it needs code from {shown}", resave)


# --- interpreting what was loaded --------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and \
        sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def interpret(obj: Any, name: str) -> RawCheckpoint:
    """What a loaded checkpoint object holds: its weights (cleaned), format and metadata. A KT Studio
    run's checkpoint (`rundir.load_checkpoint`) is format `kt_run`."""
    if isinstance(obj, nn.Module):
        sd, fixes = clean_state_dict(obj.state_dict())
        return RawCheckpoint("pickled_module", sd, module=obj, name=name, fixes=fixes,
                             meta={"class": f"{type(obj).__module__}.{type(obj).__qualname__}"})
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name} holds a {type(obj).__name__}, not model weights",
                              "save the model's state_dict: torch.save(model.state_dict(), PATH)")
    if _is_state_dict(obj) and not any(k in obj for k in ("model", "config")):
        sd, fixes = clean_state_dict(obj)
        return RawCheckpoint("state_dict", sd, name=name, fixes=fixes)

    meta = _plain_meta(obj)
    if _is_state_dict(obj.get("model")) and isinstance(obj.get("config"), dict):
        sd, fixes = clean_state_dict(obj["model"])
        arch = obj.get("arch") or (obj["config"].get("source") or {}).get("arch")
        return RawCheckpoint("kt_run", sd, name=name, fixes=fixes, meta=meta, arch=arch)
    if _is_state_dict(obj.get("state_dict")) and any(k in obj for k in LIGHTNING_KEYS):
        sd, fixes = clean_state_dict(obj["state_dict"])
        sd, strip_fixes = strip_common_prefix(sd, reason="the LightningModule attribute")
        return RawCheckpoint("lightning", sd, name=name, fixes=fixes + strip_fixes, meta=meta)
    for key in WEIGHT_KEYS:
        value = obj.get(key)
        if isinstance(value, nn.Module):  # a trusted {'model': module} dict
            sd, fixes = clean_state_dict(value.state_dict())
            return RawCheckpoint("pickled_module", sd, module=value, name=name, fixes=fixes, meta=meta)
        if _is_state_dict(value):
            sd, fixes = clean_state_dict(value)
            others = [k for k in WEIGHT_KEYS if k != key and _is_state_dict(obj.get(k))]
            fixes = [f"weights read from {key!r}"] + fixes
            if others:
                fixes.append(f"the file also has weights under {', '.join(map(repr, others))} (not used)")
            return RawCheckpoint("training_dict", sd, name=name, fixes=fixes, meta=meta)
    keys = ", ".join(map(str, list(obj)[:8]))
    raise CheckpointError(f"{name} holds a dict without model weights (keys: {keys})",
                          f"save the model's state_dict, or keep it under one of: {', '.join(WEIGHT_KEYS[:5])}")


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data, or raise TypeError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (list, tuple)) and len(value) <= 64:
        return [_plain(v) for v in value]
    if isinstance(value, dict) and len(value) <= 256 and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _plain_meta(obj: dict) -> dict[str, Any]:
    meta = {}
    for key, value in obj.items():
        if key in WEIGHT_KEYS or not isinstance(key, str) or _is_state_dict(value):
            continue
        try:
            meta[key] = _plain(value)
        except TypeError:  # optimizer states and other bulk data stay out of the summary
            meta[key] = f"<{type(value).__name__}>"
    return meta


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


# --- cleaning keys -----------------------------------------------------------------------------

_OLD_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def clean_state_dict(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors only, with wrapper prefixes stripped and legacy names renamed; returns the fixes."""
    fixes = []
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if len(tensors) < len(sd):
        dropped = [k for k in sd if k not in tensors]
        fixes.append(f"ignored {len(dropped)} non-tensor entries ({', '.join(map(str, dropped[:3]))})")
    changed = True
    while changed and tensors:
        changed = False
        for prefix, origin in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                fixes.append(f"stripped the {prefix!r} prefix (saved from {origin})")
                changed = True
    renamed = {}
    for key, value in tensors.items():
        match = _OLD_DENSENET.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    if list(renamed) != list(tensors):
        fixes.append("renamed old DenseNet keys (norm.1 -> norm1)")
    return renamed, fixes


def strip_common_prefix(sd: dict[str, torch.Tensor], reason: str = "a wrapper") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip the first key component when every key shares it (Lightning's `model.`)."""
    firsts = {k.split(".", 1)[0] for k in sd}
    if len(firsts) == 1 and all("." in k for k in sd):
        prefix = firsts.pop() + "."
        return {k[len(prefix):]: v for k, v in sd.items()}, [f"stripped the {prefix!r} prefix ({reason})"]
    return sd, []


# --- mapping onto a model ----------------------------------------------------------------------


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], spec: Any = None) -> LoadReport:
    """Copy the weights of `sd` that fit `model` into it, and say what happened to every key.

    With an `ArchSpec` (anything with `head` and `first_conv`), a head with another class count is
    left as initialised (reported as mismatched, with a fix note) and a first conv with another
    channel count is adapted (sum or repeat-and-scale). A key prefix that only the file has is
    stripped when that makes keys match.
    """
    report = LoadReport()
    target = model.state_dict()
    sd = _align_prefix(sd, target, report)
    head = getattr(spec, "head", None)
    first_conv = getattr(spec, "first_conv", None)  # None: no first conv to adapt (an MLP)
    first_conv_weight = f"{first_conv}.weight" if first_conv is not None else None
    to_load, head_shapes, skipped_counters = {}, None, False
    for key, want in target.items():
        if key not in sd:
            if key.endswith("num_batches_tracked"):  # older files lack BatchNorm's step counter
                skipped_counters = True
            else:
                report.missing.append(key)
            continue
        got = sd[key]
        if got.shape == want.shape:
            to_load[key] = got
            report.matched.append(key)
        elif key == first_conv_weight and got.dim() == 4 and got.shape[0] == want.shape[0] and got.shape[2:] == want.shape[2:]:
            to_load[key] = adapt_input_conv(got.to(torch.float32), want.shape[1]).to(want.dtype)
            report.matched.append(key)
            report.fixes.append(f"first conv {spec.first_conv}: {got.shape[1]} input channels adapted to {want.shape[1]}")
        else:
            report.mismatched.append({"key": key, "source_shape": list(got.shape), "model_shape": list(want.shape)})
            if head and key.startswith(head + ".") and got.shape[1:] == want.shape[1:]:
                head_shapes = (got.shape[0], want.shape[0])
    report.unexpected = [k for k in sd if k not in target]
    if head_shapes:
        report.fixes.append(f"head {head}: the file has {head_shapes[0]} classes, the model {head_shapes[1]}: "
                            "re-initialised")
    if skipped_counters:
        report.fixes.append("the file has no BatchNorm num_batches_tracked counters: kept at 0 (they do not affect outputs)")
    if to_load:
        model.load_state_dict(to_load, strict=False)
    log.debug("loaded weights: %s", report.summary())
    return report


def _align_prefix(sd: dict[str, torch.Tensor], target: dict[str, Any], report: LoadReport) -> dict[str, torch.Tensor]:
    """Strip a common first key component of the file when that makes more keys match."""
    hits = sum(k in target for k in sd)
    if hits == len(sd):
        return sd
    stripped, fixes = strip_common_prefix(sd, reason="to match the model's keys")
    if fixes and sum(k in target for k in stripped) > hits:
        report.fixes.extend(fixes)
        return stripped
    return sd
