"""A small named registry with metadata, in the spirit of torchvision's `models/_api.py`.

Architectures, datasets, optimizers and schedulers are all registries: adding one is one
decorated function, and an unknown name fails with the list of valid names instead of a
KeyError deep in an if/elif chain.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import KTError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "architecture", "dataset", ... used in error messages
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator: `@REG.register("name", key=value)`; the name defaults to `__name__`."""

        def add(obj: T) -> T:
            self.add(name or obj.__name__, obj, **meta)
            return obj

        return add

    def add(self, name: str, obj: T, **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, obj, dict(meta))

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise KTError(f"unknown {self.kind} {name!r}", f"{hint}valid names: {self._valid_names()}") from None

    def _valid_names(self) -> str:
        """The names an unknown-name error lists (a registry of thousands says less)."""
        return ", ".join(sorted(self._entries))

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def meta(self, name: str) -> dict[str, Any]:
        return self.entry(name).meta

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
