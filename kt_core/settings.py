"""Deployment settings, read from the environment so an administrator can set them per server.

| variable | default | meaning |
|---|---|---|
| `KT_RUNS_DIR` | `./runs` | where run folders live |
| `KT_CACHE_DIR` | `./.kt_cache` | decoded datasets, the demo's source model |
| `KT_DRAFTS_DIR` | `<KT_CACHE_DIR>/drafts` | the dashboard's drafts: setups not yet started, one JSON file per `?draft=` id |
| `KT_ALLOWED_ROOTS` | working dir and `~/kt-studio` | `os.pathsep`-separated roots that paths typed into the UI must lie under |
| `KT_ALLOW_TRUST` | `1` | `0` hides the "trust this file" opt-in (arbitrary unpickling) in the UI |
| `KT_WARM_WORKER` | `1` | the dashboard keeps one worker process started ahead of time (~300 MB idle) so Start shows a loss at once; `0` starts each worker on demand |
| `KT_ZIP_MAX_BYTES` | `2147483648` (2 GiB) | the most a dataset zip may extract to; a dataset's own `max_total_bytes` option can only lower it |
| `KT_ZIP_MAX_FILES` | `200000` | the most entries a dataset zip may hold; the `max_files` option can only lower it |

The CLI is the local user's own: it is not confined to the roots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PathNotAllowedError, SettingsError

# Dataset zips: what one may extract to and hold unless KT_ZIP_MAX_BYTES / KT_ZIP_MAX_FILES say.
DEFAULT_MAX_TOTAL_BYTES = 2 << 30  # 2 GiB extracted
DEFAULT_MAX_FILES = 200_000


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


def _count(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip().replace("_", "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise SettingsError(f"{name}={os.environ[name]!r} is not a positive whole number",
                            f"set {name} to a count such as {default}, or unset it for the default")
    return int(value)


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


def confine_path(path: str | os.PathLike, roots: tuple[Path, ...] | None = None) -> Path:
    """Resolve `path` (symlinks and `..` included) and refuse it unless it lies under a root."""
    roots = get_settings().allowed_roots if roots is None else roots
    resolved = user_path(path).resolve()
    for root in roots:
        if resolved == root or root in resolved.parents:
            return resolved
    raise PathNotAllowedError(
        f"{path} is outside the folders this server may read",
        f"use a path under {', '.join(map(str, roots))}, or ask the administrator to add the folder to KT_ALLOWED_ROOTS",
    )
