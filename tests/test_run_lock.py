"""One owner per run folder: the worker's exclusive lock, and what is refused while it is held
(a second worker, a second resume, a forced stop's status write, a delete); plus the change
stamp the dashboard caches on."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from kt_core import launcher, rundir, worker
from kt_core.errors import RunBusyError, RunError
from test_runs import assert_continuous, worker_cfg
from waiting import wait_for


@pytest.fixture
def stopped_run(tmp_path):
    folder = rundir.create_run(worker_cfg(epochs=1, per_class=10), tmp_path)
    rundir.update_status(folder, state="stopped", pid=None)
    return folder


def test_the_lock_is_exclusive_names_its_holder_and_goes_with_its_holder(stopped_run):
    held = rundir.RunLock(stopped_run).acquire()
    assert rundir.is_locked(stopped_run)
    started = time.monotonic()
    with pytest.raises(RunBusyError, match=f"held by process {os.getpid()}") as err:
        rundir.RunLock(stopped_run).acquire(wait=0.3, what="train")
    assert time.monotonic() - started >= 0.3  # it waited before refusing
    assert "stop it first" in err.value.hint
    held.release()
    assert not rundir.is_locked(stopped_run)
    with rundir.RunLock(stopped_run):  # free again
        assert rundir.is_locked(stopped_run)


def test_a_process_that_dies_leaves_no_stale_lock(stopped_run):
    code = ("import sys, time; from kt_core.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([os.sys.executable, "-c", code, str(stopped_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert rundir.is_locked(stopped_run)
        with pytest.raises(RunBusyError, match=f"process {holder.pid}"):
            rundir.RunLock(stopped_run).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert not rundir.is_locked(stopped_run)  # the kernel dropped it with the process (kill -9 included)


def test_a_second_worker_is_refused_and_writes_nothing(stopped_run, monkeypatch):
    monkeypatch.setattr(worker, "LOCK_WAIT_S", 0.2)
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    with rundir.RunLock(stopped_run):  # the first worker
        with pytest.raises(RunBusyError, match="cannot train now"):
            worker.run_worker(stopped_run)
    after = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file() and p.name != rundir.LOCK}
    assert after == {k: v for k, v in before.items() if k != rundir.LOCK}  # status, metrics, log untouched


def test_resume_and_delete_are_refused_while_another_process_holds_the_run(stopped_run, monkeypatch):
    monkeypatch.setattr(launcher, "ENDING_WORKER_WAIT_S", 0.2)
    spawned = []
    monkeypatch.setattr(launcher, "_spawn_worker", spawned.append)
    status_before = (stopped_run / "status.json").read_text()
    with rundir.RunLock(stopped_run):
        with pytest.raises(RunBusyError, match="cannot be resumed"):
            launcher.resume(stopped_run)
        with pytest.raises(RunBusyError, match="cannot be deleted"):
            launcher.delete(stopped_run)
    assert spawned == [] and stopped_run.is_dir()
    assert (stopped_run / "status.json").read_text() == status_before
    launcher.delete(stopped_run)  # once it is free
    assert not stopped_run.exists()


@pytest.mark.parametrize("action", ["resume", "delete"])
def test_resume_or_delete_right_after_the_end_waits_for_the_ending_worker(stopped_run, monkeypatch, action):
    """The status reads `stopped` while the worker that wrote it is still exiting (under torchrun:
    seconds) and holds the lock: the user's resume or delete waits for it, it is not refused."""
    code = ("import sys, time; from kt_core.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(1.5)")
    ending = subprocess.Popen([os.sys.executable, "-c", code, str(stopped_run)], stdout=subprocess.PIPE, text=True)
    spawned = []
    monkeypatch.setattr(launcher, "_spawn_worker", spawned.append)
    try:
        assert ending.stdout.readline().strip() == "held"
        getattr(launcher, action)(stopped_run)
    finally:
        ending.kill()
        ending.wait()
    if action == "resume":
        assert spawned == [stopped_run]  # its worker started, once the ending one had let go
    else:
        assert not stopped_run.exists()


def test_a_forced_stop_does_not_overwrite_the_status_of_a_worker_that_took_the_run_over(stopped_run):
    # A worker that ignores STOP (a stand-in that only sleeps) is killed; meanwhile a new worker
    # (the lock held here) owns the folder: its status stands.
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        rundir.update_status(stopped_run, state="running", pid=sleeper.pid, heartbeat=time.time())
        with rundir.RunLock(stopped_run):
            launcher.stop(stopped_run, timeout=0.2)
            assert sleeper.poll() is not None  # it was killed
            assert rundir.read_status_file(stopped_run)["state"] == "running"  # not rewritten by stop
    finally:
        sleeper.kill()
        sleeper.wait()
    # Without a new owner the forced stop says what happened, as before.
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        rundir.update_status(stopped_run, state="running", pid=sleeper.pid, heartbeat=time.time())
        assert launcher.stop(stopped_run, timeout=0.2)["state"] == "stopped"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_two_concurrent_resumes_never_run_two_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two shared cores: one worker, one test
    cfg = worker_cfg(epochs=2, per_class=10)
    folder = rundir.create_run(cfg, tmp_path)
    rundir.update_status(folder, state="stopped", pid=None)
    spawn, started = launcher._spawn_worker, []

    def counting_spawn(path):
        started.append(spawn(path))
        return started[-1]

    monkeypatch.setattr(launcher, "_spawn_worker", counting_spawn)
    barrier, outcomes = threading.Barrier(4), []

    def resume():
        barrier.wait()
        try:
            outcomes.append(launcher.resume(folder))
        except RunError as exc:  # refused: busy (the other holds the lock) or already queued
            outcomes.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == 1, outcomes  # one worker, however the four raced
    assert [o for o in outcomes if isinstance(o, str)] == [folder.name]
    assert all(isinstance(o, RunError) for o in outcomes if not isinstance(o, str))
    final = wait_for(lambda: rundir.read_status(folder)["state"] not in rundir.ACTIVE_STATES and rundir.read_status(folder),
                     what="the resumed run to end")
    assert final["state"] == "completed" and final["pid"] == started[0], final
    assert_continuous(folder, cfg, final["total_steps"])  # one writer: no duplicated rows


def test_the_change_stamp_follows_checkpoints_and_the_metrics_file(stopped_run):
    assert rundir.stamp(stopped_run, "checkpoints") == "" and rundir.stamp(stopped_run, "best") == ""
    rundir.write_checkpoint(stopped_run, "last", {"step": 1})
    first = rundir.stamp(stopped_run, "checkpoints")
    assert first and rundir.stamp(stopped_run, "best").startswith("last.pt:")  # best falls back to last
    time.sleep(0.01)
    rundir.write_checkpoint(stopped_run, "last", {"step": 2})
    assert rundir.stamp(stopped_run, "checkpoints") != first
    metrics = rundir.stamp(stopped_run, "metrics")
    assert metrics and rundir.stamp(stopped_run, "metrics") == metrics
    rundir.truncate_metrics(stopped_run, 0)  # a resume rewrites it: another file
    assert rundir.stamp(stopped_run, "metrics") != metrics
    with pytest.raises(ValueError):
        rundir.stamp(stopped_run, "nonsense")
