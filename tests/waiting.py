"""Polling helpers for tests that watch a run or a page from outside (imported as `waiting`,
like `hostile`: pytest puts the tests folder on sys.path)."""

from __future__ import annotations

import time

from kt_core import rundir


def wait_for(predicate, timeout: float = 120.0, what: str = "the condition", interval: float = 0.1):
    """The first truthy value of `predicate()`, polled every `interval` s; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_run(run, timeout: float = 240.0, until=lambda s: s["state"] not in rundir.ACTIVE_STATES) -> dict:
    """The run's status once `until(status)` holds (by default: it has ended); on a timeout the
    failure shows the run's state and its log's last lines, which say why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rundir.read_status(run)
        if until(status):
            return status
        time.sleep(0.05)
    raise AssertionError(f"run {run} still {rundir.read_status(run)['state']} after {timeout:.0f} s:\n"
                         + "\n".join(rundir.log_tail(run, 40)))


def kill_and_resume(folder, rng, times: int, pause: tuple[float, float] = (0.0, 1.5)) -> int:
    """The kill -9 / resume loop: up to `times` times, once the worker has trained a step, wait a
    seeded random moment, `kill -9` it, see the run read `interrupted`, and resume it. Returns how
    many kills landed (a run that ends before a kill stops the loop); the caller waits for the end."""
    import os

    from kt_core import launcher

    kills = 0
    for _ in range(times):
        wait_for_run(folder, 120, until=lambda s: (s.get("step") or 0) > 0 or s["state"] not in rundir.ACTIVE_STATES)
        time.sleep(rng.uniform(*pause))  # a kill while the data loads tests little; after it, any moment
        status = rundir.read_status(folder)
        if status["state"] not in rundir.ACTIVE_STATES:
            break
        os.kill(status["pid"], 9)
        kills += 1
        assert wait_for_run(folder, 30)["state"] == "interrupted"
        launcher.resume(folder)
    return kills
