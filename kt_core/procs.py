"""Is a process alive? The one answer for worker pids, with the children this process started;
and signals: sent to a process group, handled for a block.

A leaf module (standard library only): the run folder module asks it whether a run's worker is
still there, the launcher registers the workers it starts here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from typing import Callable, Iterator

# Workers started by this process: polling them reaps them, so a dead worker is never mistaken
# for a live one (a zombie still answers os.kill(pid, 0)).
_children: dict[int, subprocess.Popen] = {}


def adopt(proc: subprocess.Popen) -> None:
    """Remember a child process, so that liveness checks poll (and reap) it."""
    _children[proc.pid] = proc


def reap() -> int:
    """Collect every child that has exited (a long-lived dashboard would otherwise keep one
    <defunct> process per finished run); returns how many were reaped. The launcher calls it
    at each start, and `runs.active_runs`, which the dashboard polls, too."""
    done = [pid for pid, proc in list(_children.items()) if proc.poll() is not None]
    for pid in done:
        _children.pop(pid, None)
    return len(done)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def signal_group(pid: int | None, sig: signal.Signals) -> None:
    """Send `sig` to the process group `pid` leads (a worker and its DataLoader workers), else to `pid`."""
    if not pid:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def signal_handlers(handlers: dict[signal.Signals, Callable]) -> Iterator[None]:
    """`handlers` installed for the block and the previous ones restored after. Only the main
    thread may install handlers (Python's rule); elsewhere (a worker run in a test's or the
    dashboard's thread) the block runs with the process's own handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
