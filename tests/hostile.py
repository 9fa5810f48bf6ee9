"""Hostile files, generated at test time (nothing hostile is committed as a binary).

Each maker writes a file whose loading would create `marker` if any of its code ran, so a test
asserts `not marker.exists()` after every entry point has seen it.
"""

from __future__ import annotations

import codecs
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _call(callable_ops: bytes, *args: str) -> bytes:
    """`callable(*args)`: the callable's opcodes, a tuple of string arguments, REDUCE."""
    return callable_ops + b"(" + b"".join(_unicode(a) for a in args) + b"tR"


def computed_global_pickle(module: str, name: str, *args: str) -> bytes:
    """A pickle that builds `module.name` at load time from rot13 text (`_codecs.decode` feeding
    STACK_GLOBAL), then calls it with `args`: the trick that fooled a name-only scanner."""
    decode = b"c_codecs\ndecode\n"
    parts = [_call(decode, codecs.encode(module, "rot13"), "rot13"),
             _call(decode, codecs.encode(name, "rot13"), "rot13")]
    return b"\x80\x04" + parts[0] + parts[1] + b"\x93" + b"(" + b"".join(map(_unicode, args)) + b"tR."


def named_global_pickle(module: str, name: str, *args: str) -> bytes:
    """A pickle that imports `module.name` by a constant name and calls it with `args`."""
    return b"\x80\x02" + _call(f"c{module}\n{name}\n".encode(), *args) + b"."


def torch_zip(path: Path, data_pkl: bytes) -> Path:
    """A zip checkpoint laid out as torch.save writes it, with `data_pkl` as its pickle."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


class _SideEffectScript(nn.Module):
    """TorchScript whose __setstate__ (run by torch.jit.load) and forward (run by a trial
    forward pass) create files with torch.from_file: code, in a file that looks like weights."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.w = nn.Parameter(torch.ones(3, 4))

    def forward(self, x):
        t = torch.from_file(self.marker + ".forward", shared=True, size=4).sum() * 0
        return x.flatten(1)[:, :4] @ self.w.t() + t

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool, torch.Tensor]:
        return (self.marker, self.training, self.w)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool, torch.Tensor]) -> None:
        self.marker = state[0]
        self.training = state[1]
        self.w = state[2] + torch.from_file(self.marker, shared=True, size=4).sum() * 0


def torchscript_with_side_effects(path: Path, marker: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation warning
        torch.jit.script(_SideEffectScript(str(marker))).save(str(path))
    return path


def markers(marker: Path) -> list[Path]:
    """Every file the payloads above may create for `marker`."""
    return [p for p in (marker, Path(f"{marker}.forward")) if p.exists()]


# name -> (maker(path, marker) -> path, words the refusal must contain)
HOSTILE_CHECKPOINTS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "torchscript from_file": (lambda p, m: torchscript_with_side_effects(p, m), "TorchScript archive"),
    "computed os.system (legacy)": (lambda p, m: _write(p, computed_global_pickle("os", "system", f"touch {m}")),
                                    "computes the name"),
    "computed builtins.open (zip)": (lambda p, m: torch_zip(p, computed_global_pickle("builtins", "open", str(m), "w")),
                                     "computes the name"),
    "posix.system": (lambda p, m: _write(p, named_global_pickle("posix", "system", f"touch {m}")), "posix.system"),
    "subprocess.call (zip)": (lambda p, m: torch_zip(p, named_global_pickle("subprocess", "call", "touch", str(m))),
                              "subprocess.call"),
    "builtins.exec": (lambda p, m: _write(p, named_global_pickle("builtins", "exec", f"open({str(m)!r}, 'w')")),
                      "builtins.exec"),
    "torch.from_file": (lambda p, m: torch_zip(p, named_global_pickle("torch", "from_file", str(m))), "torch.from_file"),
    "torch.load of another file": (lambda p, m: _write(p, named_global_pickle("torch", "load", str(m))), "torch.load"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class TouchesOnLoad:
    """A user's class whose unpickling creates `marker`: it names no dangerous callable, only
    itself, so it loads (and runs) exactly when the file is trusted."""

    def __init__(self, marker: str):
        self.marker = str(marker)

    def __setstate__(self, state: dict) -> None:
        open(state["marker"], "w").close()


def trusted_only_pickle(path: Path, marker: Path) -> Path:
    """A state_dict-like file with a TouchesOnLoad inside: refused untrusted, runs when trusted."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    torch.save({"model": model, "payload": TouchesOnLoad(str(marker))}, path)
    return path
