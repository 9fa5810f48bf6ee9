"""A state file with a heartbeat: one owner writes a JSON state, a daemon thread refreshes it.

A leaf module (standard library and `errors` only). The run worker's status.json and the
experiment driver's experiment.json are both read by other processes that tell a live owner from
a dead one by the age of `heartbeat`; this is the one writer both use.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .errors import KTError

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0


class HeartbeatFile:
    """`state` in memory, written through `write(state)`: `update` writes at once (states and
    errors, which readers must see), `note` changes memory only (progress counters at every step,
    where a file rewrite per batch would slow small runs), and the thread rewrites the state with a
    fresh heartbeat every HEARTBEAT_EVERY_S."""

    def __init__(self, state: dict, write: Callable[[dict], None], *, name: str, what: str):
        self.state = state
        self._write = write
        self._what = what
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def update(self, **fields) -> None:
        with self._lock:
            self.state.update(fields, heartbeat=time.time())
            self._write(self.state)

    def note(self, **fields) -> None:
        with self._lock:
            self.state.update(fields)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_EVERY_S):
            try:
                self.update()
            except (KTError, OSError) as exc:
                # A full disk must not kill the owner: readers see a stale heartbeat instead.
                log.warning("%s heartbeat not written: %s", self._what, getattr(exc, "message", exc))
