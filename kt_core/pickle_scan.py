"""What a pickle or a TorchScript archive would do if loaded, found out without loading it.

A pickle is a small program: `GLOBAL`/`STACK_GLOBAL` import a callable, `REDUCE`/`NEWOBJ`/`BUILD`
call it. `scan_pickle` runs that program symbolically over `pickletools.genops` (which only
parses): it tracks which stack values are string constants, so it knows the exact name of every
callable a pickle imports and sees when a name is *computed* at load time (a `STACK_GLOBAL` fed
by the result of a call, such as `_codecs.decode`), which hides what the file runs. The verdict
comes from what the opcodes do, never from what the file says it is:

- every imported callable inside `_SAFE` (the tensor-rebuilding functions, storages, dtypes and
  plain containers that `torch.load(weights_only=True)` also accepts): plain data;
- a callable outside it: the file needs code (a pickled class) to load;
- a computed name, or a callable known to run code or touch files (`os.*`, `subprocess.*`,
  `builtins.eval`, `torch.load`, `torch.from_file`, ...): hostile; no model file does that.

`describe_torchscript` lists a TorchScript archive's files and its tensors' names and shapes by
reading `data.pkl` with an unpickler that can build nothing but placeholders, so an archive can
be described without running its code (`torch.jit.load` runs `__setstate__` methods, and its
`forward` can call any TorchScript builtin).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

# Tensor-rebuilding callables and plain containers: what a state_dict's pickle imports.
_SAFE = frozenset({
    "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.slice",
    "builtins.complex", "__builtin__.set", "_codecs.encode",  # protocol-2 bytes are `_codecs.encode(str, 'latin1')`
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_meta_tensor_no_storage", "torch._utils._rebuild_nested_tensor",
    "torch._tensor._rebuild_from_type_v2", "torch.nn.parameter.Parameter", "torch.Tensor", "torch.Size",
    "torch.device", "torch.storage.UntypedStorage", "torch.storage.TypedStorage", "torch.storage._TypedStorage",
    "torch.per_tensor_affine", "torch.per_channel_affine", "torch.per_channel_affine_float_qparams",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
})
# Callables that run code, import modules, or read and write files. A module here covers all
# its attributes; torch's own loaders are listed because they unpickle (or map) another file.
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "runpy", "importlib",
                      "webbrowser", "pty", "code", "codeop", "ctypes", "pickle", "_pickle", "marshal", "types",
                      "io", "_io", "pathlib", "tempfile", "glob", "multiprocessing", "threading", "_thread",
                      "signal", "asyncio", "http", "urllib", "ftplib", "smtplib", "zipfile", "tarfile", "dill",
                      "cloudpickle", "joblib", "torch.serialization", "torch.jit", "torch.hub", "torch.package",
                      "torch.ops", "torch.utils.cpp_extension", "torch._C", "torch._dynamo", "numpy.ctypeslib",
                      "numpy.f2py", "numpy.distutils", "numpy.testing")
_DANGEROUS_NAMES = frozenset({
    "torch.load", "torch.save", "torch.from_file", "torch.compile", "torch.storage._load_from_bytes",
    "numpy.load", "numpy.save", "numpy.fromfile", "numpy.memmap", "numpy.loadtxt", "numpy.genfromtxt",
    "operator.attrgetter", "operator.methodcaller", "functools.partial", "functools.reduce",
})
_DANGEROUS_BUILTINS = frozenset({"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
                                 "apply", "execfile", "input", "breakpoint", "globals", "locals", "vars", "help",
                                 "exit", "quit", "memoryview", "__builtins__"})
_STRINGS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8"})
_MARK = object()  # the stack's MARK
_VALUE = object()  # any value the scan does not follow (a number, a call's result, a container)
MAX_PICKLE_BYTES = 256 << 20  # more than any real model's pickle (its tensors are stored beside it)


def is_dangerous(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return (name in _DANGEROUS_NAMES or module in ("builtins", "__builtin__") and attr in _DANGEROUS_BUILTINS
            or any(module == m or module.startswith(m + ".") for m in _DANGEROUS_MODULES))


def is_safe(name: str) -> bool:
    if name in _SAFE:
        return True
    module, _, attr = name.rpartition(".")
    # torch.float32, torch.FloatStorage, ...: read from torch's own namespace (no lazy imports)
    return module == "torch" and (attr.endswith("Storage") or isinstance(torch.__dict__.get(attr), torch.dtype))


@dataclass
class PickleScan:
    """Every callable a pickle imports, and what that means."""

    names: list[str] = field(default_factory=list)  # imported callables, in order, without repeats
    computed: int = 0  # imports whose module or name is not a constant in the file
    malformed: bool = False  # the opcodes stopped parsing before the end

    @property
    def dangerous(self) -> list[str]:
        return [n for n in self.names if is_dangerous(n)]

    @property
    def needs_code(self) -> list[str]:
        """Callables outside the allowlist that are not known to be dangerous (pickled classes)."""
        return [n for n in self.names if not is_safe(n) and not is_dangerous(n)]

    @property
    def hostile(self) -> bool:
        return bool(self.dangerous or self.computed)

    @property
    def plain_data(self) -> bool:
        return not (self.hostile or self.needs_code)

    def merge(self, other: PickleScan) -> None:
        self.names = list(dict.fromkeys(self.names + other.names))
        self.computed += other.computed
        self.malformed = self.malformed or other.malformed


def scan_pickle(blob: bytes) -> PickleScan:
    """What the pickle(s) in `blob` import. A torch legacy file is several pickles in a row
    (magic number, protocol, system info, the object), then raw storage bytes: up to four are read."""
    scan = PickleScan()
    stream = io.BytesIO(blob)
    for _ in range(4):
        if stream.tell() >= len(blob):
            break
        one = _scan_one(stream)
        scan.merge(one)
        if one.malformed:
            break
    return scan


def _scan_one(stream: io.BytesIO) -> PickleScan:
    scan, stack, memo = PickleScan(), [], {}
    names: list[str] = []

    def pop() -> Any:
        if not stack:
            raise ValueError("stack underflow")
        return stack.pop()

    def pop_mark() -> None:
        while pop() is not _MARK:
            pass

    try:
        for op, arg, _ in pickletools.genops(stream):
            kind = op.name
            if kind in _STRINGS:
                stack.append(str(arg))
            elif kind in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
                if kind == "INST":
                    pop_mark()
                stack.append(_VALUE)
            elif kind == "STACK_GLOBAL":
                attr, module = pop(), pop()
                if isinstance(module, str) and isinstance(attr, str):
                    names.append(f"{module}.{attr}")
                else:
                    scan.computed += 1
                stack.append(_VALUE)
            elif kind in ("EXT1", "EXT2", "EXT4"):  # a callable looked up in copyreg's registry
                scan.computed += 1
                stack.append(_VALUE)
            elif kind in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else _VALUE
            elif kind == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _VALUE
            elif kind in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _VALUE))
            elif kind == "DUP":
                stack.append(stack[-1] if stack else _VALUE)
            elif kind == "MARK":
                stack.append(_MARK)
            else:  # every other opcode by its declared stack effect
                for item in reversed(op.stack_before):
                    if item is pickletools.stackslice:
                        while stack and stack[-1] is not _MARK:
                            stack.pop()
                    else:
                        pop()
                stack.extend(_MARK if item is pickletools.markobject else _VALUE for item in op.stack_after)
            if op.code == ".":  # the STOP opcode: this pickle ends here
                break
    except (ValueError, EOFError, IndexError, KeyError, TypeError):  # malformed opcodes: keep what was found
        scan.malformed = True
    scan.names = list(dict.fromkeys(names))
    return scan


def scan_file(data: bytes) -> PickleScan:
    """The scan of a checkpoint's bytes: `*/data.pkl` of a zip checkpoint, else the legacy stream."""
    if not data.startswith(b"PK\x03\x04"):
        return scan_pickle(data)
    scan = PickleScan()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".pkl"):
                    scan.merge(scan_pickle(read_member(zf, info)))
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError):
        scan.malformed = True
    return scan


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """One zip entry's bytes, refusing (ValueError) an entry that declares or inflates past `limit`."""
    if info.file_size > limit:
        raise ValueError(f"{info.filename} declares {info.file_size:,} bytes")
    with zf.open(info) as f:
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise ValueError(f"{info.filename} inflates past {limit:,} bytes")
    return blob


# --- TorchScript archives, described without being run -----------------------------------------


@dataclass
class TensorInfo:
    shape: list[int]
    dtype: str


class _ScriptObject:
    """Stands in for any `__torch__` class: keeps the state a BUILD gives it, runs nothing."""

    type_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, *rest) -> TensorInfo:
    dtype = storage[0] if isinstance(storage, tuple) else "?"
    return TensorInfo([int(s) for s in size], str(dtype).replace("Storage", "").lower() or "?")


class _DescribingUnpickler(pickle.Unpickler):
    _PASS = {"torch.jit._pickle.build_intlist", "torch.jit._pickle.build_tensorlist", "torch.jit._pickle.build_doublelist",
             "torch.jit._pickle.build_boollist", "torch.jit._pickle.build_stringlist"}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {"type_name": full})
        if full in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor"):
            return _rebuild_tensor
        if full in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"):
            return lambda data, *rest: data
        if full == "torch.jit._pickle.restore_type_tag":
            return lambda value, _type: value
        if full in self._PASS:
            return lambda value: value
        if full == "collections.OrderedDict":
            return OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{full} is not read without running the archive")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, numel): the storage's type is all a shape needs
        return (pid[1], pid[-1]) if isinstance(pid, tuple) and len(pid) >= 2 else ("?", 0)


def describe_torchscript(zf: zipfile.ZipFile) -> dict[str, Any]:
    """{files, tensors: {name: {shape, dtype}}, classes, note}: what an archive holds, unrun."""
    files = zf.namelist()
    out: dict[str, Any] = {"files": files[:500], "num_files": len(files), "tensors": {}, "classes": [], "note": ""}
    data_pkl = next((i for i in zf.infolist() if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"), None)
    if data_pkl is None:
        out["note"] = "no data.pkl: the tensors cannot be listed"
        return out
    try:
        root = _DescribingUnpickler(io.BytesIO(read_member(zf, data_pkl))).load()
    except Exception as exc:  # any parse failure only limits the description
        out["note"] = f"the tensors cannot be listed without running the archive ({str(exc)[:120]})"
        return out
    classes: list[str] = []
    _walk(root, "", out["tensors"], classes, depth=0)
    out["classes"] = list(dict.fromkeys(classes))[:50]
    return out


def _walk(obj: Any, prefix: str, tensors: dict, classes: list, depth: int) -> None:
    if depth > 64 or len(tensors) > 100_000:
        return
    if isinstance(obj, TensorInfo):
        tensors[prefix.rstrip(".")] = {"shape": obj.shape, "dtype": obj.dtype}
    elif isinstance(obj, _ScriptObject):
        classes.append(obj.type_name)
        _walk(getattr(obj, "state", None), prefix, tensors, classes, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                _walk(value, f"{prefix}{key}.", tensors, classes, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj[:10_000]):
            _walk(value, f"{prefix}{i}.", tensors, classes, depth + 1)


def numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= max(int(s), 0)
    return n

