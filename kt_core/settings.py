"""Deployment settings, read from the environment so an administrator can set them per server.

| variable | default | meaning |
|---|---|---|
| `KT_RUNS_DIR` | `./runs` | where run folders live |
| `KT_CACHE_DIR` | `./.kt_cache` | decoded datasets, the demo's source model |
| `KT_DRAFTS_DIR` | `<KT_CACHE_DIR>/drafts` | the dashboard's drafts: setups not yet started, one JSON file per `?draft=` id |
| `KT_ALLOWED_ROOTS` | working dir and `~/kt-studio` | `os.pathsep`-separated roots that paths typed into the UI must lie under |
| `KT_ALLOW_TRUST` | `1` | `0` refuses every dashboard config that trusts a file (arbitrary unpickling, TorchScript), and hides the opt-in |
| `KT_WARM_WORKER` | `1` | the dashboard keeps one worker process started ahead of time (~380 MB of its own idle), which forks a worker for each run (on Linux), so Start shows a loss at once; `0` starts each worker on demand |
| `KT_ZIP_MAX_BYTES` | `2147483648` (2 GiB) | the most a dataset zip may extract to; a dataset's own `max_total_bytes` option can only lower it |
| `KT_ZIP_MAX_FILES` | `200000` | the most entries a dataset zip may hold; the `max_files` option can only lower it |
| `KT_CACHE_MAX_BYTES` | `10737418240` (10 GiB) | the cache folder's size limit: decoded datasets, shared outputs (frozen features, teachers' outputs) and extracted zips are evicted least recently used first past it (`kt_core.cachedir`; uploads, downloads and drafts never are); `python -m kt_core cache` shows and clears it |
| `KT_FEATURE_CACHE_MAX_BYTES` | half the memory available when a run starts | the most a run's feature cache (the frozen layers' output for every training and validation image) may hold in memory; a cache that would need more is not made, said in the run's log, and the run trains without it (the same result, each batch through the frozen layers) |
| `KT_TENSORBOARD` | `1` | every run writes TensorBoard event files into `RUN/tensorboard/`; `0` turns them off |

What the dashboard launches, resumes, re-runs, evaluates or exports is held to `KT_ALLOWED_ROOTS`
and `KT_ALLOW_TRUST` in kt_core itself (the worker of a dashboard run enforces them again), not
only by the pages. The CLI is the local user's own: it is not confined to the roots.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PathError, PathNotAllowedError, SettingsError, TrustNotAllowedError

# Dataset zips: what one may extract to and hold unless KT_ZIP_MAX_BYTES / KT_ZIP_MAX_FILES say.
DEFAULT_MAX_TOTAL_BYTES = 2 << 30  # 2 GiB extracted
DEFAULT_MAX_FILES = 200_000
DEFAULT_CACHE_MAX_BYTES = 10 << 30  # 10 GiB: a few ImageNet-subset selections, or hundreds of small ones


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    runs_dir: Path = field(default_factory=lambda: Path(os.environ.get("KT_RUNS_DIR", "runs")))
    cache_dir: Path = field(default_factory=lambda: Path(os.environ.get("KT_CACHE_DIR", ".kt_cache")))
    allowed_roots: tuple[Path, ...] = field(default_factory=lambda: _roots_from_env())
    allow_trust: bool = field(default_factory=lambda: _flag("KT_ALLOW_TRUST", True))
    warm_worker: bool = field(default_factory=lambda: _flag("KT_WARM_WORKER", True))
    tensorboard: bool = field(default_factory=lambda: _flag("KT_TENSORBOARD", True))

    @property
    def drafts_dir(self) -> Path:
        return Path(os.environ.get("KT_DRAFTS_DIR") or self.cache_dir / "drafts")

    # Read when a zip is extracted, so a mistyped value fails that upload with its message, not
    # every page of the server.
    @property
    def zip_max_bytes(self) -> int:
        return _count("KT_ZIP_MAX_BYTES", DEFAULT_MAX_TOTAL_BYTES)

    @property
    def zip_max_files(self) -> int:
        return _count("KT_ZIP_MAX_FILES", DEFAULT_MAX_FILES)

    @property
    def cache_max_bytes(self) -> int:
        return _count("KT_CACHE_MAX_BYTES", DEFAULT_CACHE_MAX_BYTES)

    @property
    def feature_cache_max_bytes(self) -> int:
        """KT_FEATURE_CACHE_MAX_BYTES, else half of the memory available now: a cache past it would
        push the machine toward an out-of-memory kill, which loses the run."""
        if os.environ.get("KT_FEATURE_CACHE_MAX_BYTES", "").strip():
            return _count("KT_FEATURE_CACHE_MAX_BYTES", 1)
        return _available_memory() // 2

    @property
    def dashboard_roots(self) -> tuple[Path, ...]:
        """Where a dashboard user's paths may lead: the allowed roots, plus the uploads folder
        (files the dashboard wrote itself, named by their hash)."""
        return self.allowed_roots + ((self.cache_dir / "uploads").resolve(),)


def _count(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip().replace("_", "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise SettingsError(f"{name}={os.environ[name]!r} is not a positive whole number",
                            f"set {name} to a count such as {default}, or unset it for the default")
    return int(value)


def _available_memory() -> int:
    """Bytes of memory available to new allocations (Linux: MemAvailable; else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # unknown: assume a small machine


def _roots_from_env() -> tuple[Path, ...]:
    raw = os.environ.get("KT_ALLOWED_ROOTS")
    if raw:
        parts = [p for p in raw.split(os.pathsep) if p.strip()]
    else:
        parts = [os.getcwd(), str(Path.home() / "kt-studio")]
    return tuple(Path(p).expanduser().resolve() for p in parts)


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; tests change the environment)."""
    return Settings()


def user_path(text: str | os.PathLike) -> Path:
    """`~/...` expanded to the home folder; any other text as it is (`~draft` may be a run's
    name, and expanding it as another user's home would fail)."""
    text = str(text)
    return Path(text).expanduser() if text == "~" or text.startswith(("~/", "~" + os.sep)) else Path(text)


MAX_PATH_BYTES = 4096  # Linux's PATH_MAX
MAX_NAME_BYTES = 255  # one folder or file name (NAME_MAX)


def checked_path(path: str | os.PathLike, what: str = "path") -> Path:
    """`path` as a Path (`~/` expanded), or a KTError for what the OS would refuse with an
    OSError or ValueError traceback: a NUL byte, an over-long path or name, a symlink loop."""
    text = os.fspath(path)
    shown = text if len(text) <= 120 else text[:60] + "..." + text[-40:]
    if "\x00" in text:
        raise PathError(f"{what} {shown!r} holds a NUL byte", "remove the NUL (\\0) character from the path")
    if len(text.encode()) > MAX_PATH_BYTES or any(len(p.encode()) > MAX_NAME_BYTES for p in Path(text).parts):
        raise PathError(f"{what} {shown!r} is too long ({len(text):,} characters)",
                        f"use a path of at most {MAX_PATH_BYTES} bytes, {MAX_NAME_BYTES} per name")
    result = user_path(text)
    try:
        os.stat(result)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathError(f"{what} {shown} is a symlink loop (it links back to itself)",
                            "point the link at a real file or folder") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise PathError(f"{what} {shown!r} is too long for this filesystem", "use a shorter path") from None
    return result


def refuse_trust_if_forbidden(what: str) -> None:
    """For a dashboard config: trusting a file runs its code, which KT_ALLOW_TRUST=0 forbids."""
    if not get_settings().allow_trust:
        raise TrustNotAllowedError(
            f"{what} is marked trusted (run its code while loading), which this server forbids (KT_ALLOW_TRUST=0)",
            "re-save the file as a state_dict or .safetensors and use that, or ask the administrator "
            "to set KT_ALLOW_TRUST=1")


def confine_path(path: str | os.PathLike, roots: tuple[Path, ...] | None = None) -> Path:
    """Resolve `path` (symlinks and `..` included) and refuse it unless it lies under a root."""
    roots = get_settings().allowed_roots if roots is None else roots
    try:
        resolved = checked_path(path).resolve()
    except (OSError, RuntimeError):  # a loop or an unreadable link met while resolving
        raise PathError(f"{path} cannot be resolved (a symlink loop or an unreadable link)",
                        "give a path to a real file or folder") from None
    for root in roots:
        if resolved == root or root in resolved.parents:
            return resolved
    raise PathNotAllowedError(
        f"{path} is outside the folders this server may read",
        f"use a path under {', '.join(map(str, roots))}, or ask the administrator to add the folder to KT_ALLOWED_ROOTS",
    )
