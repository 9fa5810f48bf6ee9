"""Progress of long work (decoding a dataset, extracting a zip, evaluating), for whoever shows it.

kt_core prints nothing: code that takes a while opens a `task(description, total)` and
`advance`s it; a front end that wants to show progress installs a reporter for the duration
of a command with `reporting(reporter)` (the CLI's terminal bars, `cli/terminal.py`). Without
one, a task is a no-op object, so the cost in the library is one context-variable read per task
and one method call per advance (a few hundred nanoseconds; advance per batch or per file, never
per pixel). Training reports through the engine's callbacks instead, row by row.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class Reporter(Protocol):
    def start(self, description: str, total: int | None) -> Task: ...


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


_SILENT = _Silent()
_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("kt_progress_reporter", default=None)


@contextlib.contextmanager
def task(description: str, total: int | None = None) -> Iterator[Task]:
    """A unit of long work with `total` steps (None: unknown); shown only if a reporter listens."""
    reporter = _reporter.get()
    if reporter is None:
        yield _SILENT
        return
    handle = reporter.start(description, total)
    try:
        yield handle
    finally:
        handle.close()


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Show this thread's tasks with `reporter` (None: silence) until the block ends."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
