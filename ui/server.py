"""`streamlit run app.py` in a child process on a free port: for the browser tests and bench B4.

Both need the real server (its own process, its own runs folder through the environment) and
must know when it answers, and stop it afterwards however the test or benchmark ended.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(env: dict[str, str] | None = None, log_path: Path | None = None, timeout: float = 90) -> Iterator[Server]:
    """The dashboard with `env` added to this process's environment; yields once it is healthy.

    Its output goes to `log_path` (else nowhere); a server that exits or stays unhealthy raises
    RuntimeError with the end of that log.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, timeout, log_path)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"was not healthy in {timeout:.0f} s"
            raise RuntimeError(f"streamlit run app.py {why}: {tail}")
        time.sleep(0.2)
