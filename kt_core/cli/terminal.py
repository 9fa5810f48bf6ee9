"""What the command line shows while work runs, and its tables, drawn with `rich`.

Two modes, chosen by where stdout goes:
- a terminal: live progress bars (training: epoch, step, loss, val accuracy, images/s, ETA;
  decoding, extracting, evaluating: a bar per task), log lines printed above them;
- anything else (a pipe, a CI log): no bars; one line per epoch on stdout, one line per long
  task on stderr (beside the log).
`--quiet` (or `--json`, whose stdout is the document) turns both off.

Training is shown from the rows the engine already hands its callbacks (one host sync per
logged step, which the metrics file needs anyway): drawing adds no sync and no thread. The bar
is redrawn at most every REDRAW_S, only when a row arrives.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import IO, Iterable, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from .. import progress

REDRAW_S = 0.1  # a bar redraw costs ~0.3 ms; ten a second is smooth and costs training nothing
TASK_LINE_AFTER_S = 1.0  # without a terminal, tasks quicker than this leave no line
PIPE_WIDTH = 200  # tables written to a pipe or file: wide enough for a run id column, never wrapped


class Terminal:
    """The CLI's output channel for one command: progress (unless quiet) and tables."""

    def __init__(self, quiet: bool = False, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        width = None if self.is_tty else PIPE_WIDTH
        self.console = Console(file=self.stream, width=width, highlight=False, soft_wrap=False,
                               force_terminal=self.is_tty or None, color_system="auto" if self.is_tty else None)
        self._bars: _LiveBars | None = None

    @property
    def bars(self) -> "_LiveBars":
        if self._bars is None:
            self._bars = _LiveBars(self)
        return self._bars

    @property
    def live(self) -> bool:
        """Progress bars are drawn (else lines, or nothing when quiet)."""
        return self.is_tty and not self.quiet

    def line(self, text: str) -> None:
        """One line of progress (not drawn when quiet)."""
        if not self.quiet:
            self.console.print(Text(text))
            self.stream.flush()

    @contextlib.contextmanager
    def tasks(self) -> Iterator[None]:
        """Show kt_core's long tasks (`kt_core.progress`) while the block runs."""
        if self.quiet:
            yield
            return
        reporter = _BarReporter(self) if self.live else _LineReporter(self)
        with progress.reporting(reporter):
            yield

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[str] = (),
              drop_to_fit: bool = False) -> None:
        """An aligned table that fits the terminal's width.

        `drop_to_fit`: columns are in order of importance; those that do not fit are left out
        (from the last) and a line says which, rather than folding every cell into a column of
        fragments. Otherwise (or when even the first column is too wide) cells fold.
        """
        cells = [[format_cell(v) for v in row] for row in rows]
        columns = list(columns)
        hidden: list[str] = []
        if drop_to_fit and self.is_tty:
            widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
            while len(columns) > 1 and sum(widths) + 2 * (len(widths) - 1) > self.console.width:  # 2: the gap
                hidden.insert(0, columns.pop())
                widths.pop()
            cells = [row[:len(columns)] for row in cells]
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
        for name in columns:
            table.add_column(name, justify="right" if name in right else "left", overflow="fold")
        for row in cells:
            table.add_row(*row)
        self.console.print(table)
        if hidden:
            self.console.print(Text(f"(not shown here: {', '.join(hidden)}; --json has every column)"))


def format_cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e6 or value == 0 else f"{value:.3g}"
    return str(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextlib.contextmanager
def _logs_through(console: Console) -> Iterator[None]:
    """While a bar is live, log records on the same terminal print above it, not through it.

    logging's StreamHandler holds the stderr it was made with; rich's redirection swaps
    sys.stderr for a proxy that prints above the bar, so point the handlers at that proxy.
    """
    root = logging.getLogger()
    moved = []
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.__stderr__ and sys.stderr is not sys.__stderr__:
            moved.append((handler, handler.setStream(sys.stderr)))
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


class _LiveBars:
    """The terminal's one rich Progress (rich allows one live display per console): started with
    its first bar, stopped with its last; redrawn only on demand, never by a thread."""

    def __init__(self, terminal: Terminal):
        self.terminal = terminal
        # Log lines go above the bars only when stderr is this terminal too (2>file stays a file).
        redirect = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                                 console=terminal.console, auto_refresh=False, transient=False,
                                 redirect_stdout=False, redirect_stderr=redirect)
        self._logs = None
        self._drawn = 0.0

    def add(self, description: str, total: int | None, completed: int = 0, stats: str = ""):
        if self._logs is None:
            self.progress.start()
            self._logs = _logs_through(self.terminal.console)
            self._logs.__enter__()
        task_id = self.progress.add_task(description, total=total, completed=completed, stats=stats)
        self.redraw(force=True)
        return task_id

    def update(self, task_id, **fields) -> None:
        self.progress.update(task_id, **fields)
        self.redraw()

    def remove(self, task_id) -> None:
        self.progress.remove_task(task_id)
        if not self.progress.tasks:
            self.stop()

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._logs is not None and (force or now - self._drawn >= REDRAW_S):
            self.progress.refresh()
            self._drawn = now

    def print(self, text: str) -> None:
        """A line above the bars (or a plain line when none is live)."""
        self.progress.console.print(Text(text))

    def stop(self) -> None:
        if self._logs is not None:
            self.progress.refresh()
            self._logs.__exit__(None, None, None)
            self.progress.stop()
            self._logs = None


# --- kt_core's long tasks ----------------------------------------------------------------------

class _BarTask:
    def __init__(self, bars: _LiveBars, description: str, total: int | None):
        self.bars, self.description, self.total, self.done = bars, description, total, 0
        self.started = time.monotonic()
        self.task_id = bars.add(description, total, stats=self._stats())

    def _stats(self) -> str:
        count = f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"
        return f"{count}  {format_duration(time.monotonic() - self.started)}"

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.bars.update(self.task_id, completed=self.done, stats=self._stats())

    def close(self) -> None:
        self.bars.redraw(force=True)  # its last count, then the bar gives way to a line that stays
        took = time.monotonic() - self.started
        if took >= TASK_LINE_AFTER_S:
            self.bars.print(f"{self.description}: {self.done:,} in {took:.1f} s")
        self.bars.remove(self.task_id)


class _BarReporter:
    def __init__(self, terminal: Terminal):
        self.terminal = terminal

    def start(self, description: str, total: int | None) -> _BarTask:
        return _BarTask(self.terminal.bars, description, total)



class _LineTask:
    def __init__(self, terminal: Terminal, description: str):
        self.terminal, self.description = terminal, description
        self.count, self.started = 0, time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.count += n

    def close(self) -> None:
        took = time.monotonic() - self.started
        if took >= TASK_LINE_AFTER_S:  # on stderr: stdout is the command's result (`show | grep` stays clean)
            print(f"{self.description}: {self.count:,} in {took:.1f} s", file=sys.stderr, flush=True)


class _LineReporter:
    def __init__(self, terminal: Terminal):
        self.terminal = terminal

    def start(self, description: str, total: int | None) -> _LineTask:
        return _LineTask(self.terminal, description)
