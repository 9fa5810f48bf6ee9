"""A reference to the user's model code, `path/to/model.py:ClassName` or
`package.module:ClassName`, told apart from a registry name, located, hashed and recorded,
all without running it (importing it is `usercode`'s, behind the trust opt-in).

Kept apart from `usercode` so that the config (which must tell user code from registry names)
and the run folder (which records the code's path and hash) stay free of torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserCodeError
from .settings import confine_path, user_path

_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class CodeRef:
    """`target:ClassName`, where target is a `.py` file or a dotted module name."""

    target: str
    class_name: str

    @property
    def is_file(self) -> bool:
        return self.target.endswith(".py")

    def __str__(self) -> str:
        return f"{self.target}:{self.class_name}"


def parse_code_ref(text: str | None) -> CodeRef | None:
    """The reference in `text`, or None when it is not one (a registry name such as `resnet18`)."""
    if not text or ":" not in text:
        return None
    target, _, class_name = str(text).rpartition(":")  # rpartition: a Windows path has a drive colon
    if not _IDENTIFIER.match(class_name) or not target:
        return None
    if target.endswith(".py") or _IDENTIFIER.match(target):
        return CodeRef(target, class_name)
    return None


def code_file(ref: CodeRef, roots: tuple[Path, ...] | None = None) -> Path:
    """The file `ref` names, resolved (and confined to `roots` when given), without running it.

    A module reference is located through its top-level package's import spec: finding a
    top-level spec imports nothing, and the rest of the dotted path is followed on disk.
    """
    if ref.is_file:
        path = confine_path(ref.target, roots) if roots is not None else user_path(ref.target).resolve()
        if not path.is_file():
            raise UserCodeError(f"model code file {ref.target} does not exist",
                                "check the path before the ':' (path/to/model.py:ClassName)")
        return path
    top, *rest = ref.target.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise UserCodeError(f"module {top!r} of {ref} cannot be found",
                            "install the package, or name the file instead: path/to/model.py:ClassName")
    if spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
        candidates = [base.joinpath(*rest).with_suffix(".py"), base.joinpath(*rest, "__init__.py")] if rest \
            else [base / "__init__.py"]
    else:
        candidates = [Path(spec.origin)] if spec.origin and not rest else []
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserCodeError(f"module {ref.target!r} has no Python source file here",
                            "name a module with a .py source, or the file itself: path/to/model.py:ClassName")
    return confine_path(path, roots) if roots is not None else path.resolve()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recorded_change(cfg: Any, roots: tuple[Path, ...] | None = None) -> str | None:
    """A warning when the code file differs from the hash the run recorded; None when it is the
    same or nothing was recorded. Raises UserCodeError when the file is gone."""
    ref = parse_code_ref(cfg.arch)
    if ref is None or not cfg.code_sha256:
        return None
    try:
        path = code_file(ref, roots)
    except UserCodeError as exc:
        raise UserCodeError(f"the model code {ref} this run was built from is gone ({exc.message})",
                            f"put the file (sha256 {cfg.code_sha256[:12]}) back where the config says") from None
    now = file_sha256(path)
    if now != cfg.code_sha256:
        return (f"{path.name} changed since the run recorded it (sha256 {cfg.code_sha256[:12]} then, {now[:12]} now): "
                "the model is built from today's code")
    return None


def record(cfg: Any) -> Any:
    """`cfg` with the code's absolute path and its file's hash filled in (hashing runs nothing);
    the config a run saves, so eval, export and resume can tell when the file changed or is gone."""
    ref = parse_code_ref(cfg.arch)
    if ref is None or cfg.code_sha256:
        return cfg
    path = code_file(ref)
    arch = f"{path}:{ref.class_name}" if ref.is_file else cfg.arch
    return dataclasses.replace(cfg, arch=arch, code_sha256=file_sha256(path))
