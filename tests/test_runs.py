"""The run folder contract: what the UI and scripts read while a worker writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kt_core import launcher, procs, rundir, runs
from kt_core.config import RunConfig, SourceConfig, TrainConfig
from kt_core.errors import RunError
from waiting import wait_for


def make_cfg(name="quick test", **train) -> RunConfig:
    return RunConfig(name=name, source=SourceConfig(kind="arch", arch="small_cnn"),
                     train=TrainConfig(**{"device": "cpu", **train}))


def write_rows(folder, rows):
    with open(folder / "metrics.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


# --- folders and ids ---------------------------------------------------------------------------

def test_create_run_writes_the_contract_files(tmp_path):
    folder = rundir.create_run(make_cfg(), tmp_path)
    assert folder.parent == tmp_path
    assert RunConfig.from_file(folder / "config.json") == make_cfg()
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "queued" and status["step"] == 0 and status["error"] is None
    assert (folder / "metrics.jsonl").read_text() == "" and (folder / "checkpoints").is_dir()
    # readable and sortable: time first, then the slug of the name
    assert re.fullmatch(r"\d{8}-\d{6}-quick-test-[0-9a-f]{4}", folder.name)


def test_run_ids_sort_by_creation_time(tmp_path):
    first = rundir.create_run(make_cfg("b"), tmp_path).name
    time.sleep(1.05)
    second = rundir.create_run(make_cfg("a"), tmp_path).name
    assert sorted([second, first]) == [first, second]
    assert list(runs.list_runs(tmp_path)["id"]) == [second, first]  # newest first


def test_run_dir_accepts_ids_prefixes_paths_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_RUNS_DIR", str(tmp_path))
    old = rundir.create_run(make_cfg("digits source"), tmp_path)
    rundir.update_status(old, state="completed")
    new = rundir.create_run(make_cfg("digits source"), tmp_path)  # newer but not completed
    assert rundir.run_dir(old.name) == old
    assert rundir.run_dir(str(new)) == new
    assert rundir.run_dir(new.name[:-2]) == new  # unique prefix
    assert rundir.run_dir("digits source") == old  # by name: the newest completed one
    with pytest.raises(RunError, match="no run 'nope'") as err:
        rundir.run_dir("nope")
    assert "kt_core runs" in err.value.hint


def test_reproduce_command_points_at_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = rundir.create_run(make_cfg(), tmp_path / "runs")
    assert rundir.reproduce_command(folder) == f"python -m kt_core train runs/{folder.name}/config.json"


# --- metrics -----------------------------------------------------------------------------------

def test_read_metrics_is_incremental_and_never_returns_half_a_row(tmp_path):
    folder = rundir.create_run(make_cfg(), tmp_path)
    write_rows(folder, [{"kind": "step", "step": 1}, {"kind": "step", "step": 2}])
    rows, offset = rundir.read_metrics(folder)
    assert [r["step"] for r in rows] == [1, 2]
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "st')  # a writer caught mid-line
    again, offset2 = rundir.read_metrics(folder, offset)
    assert again == [] and offset2 == offset
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('ep": 3}\n')
    rows, _ = rundir.read_metrics(folder, offset)
    assert rows == [{"kind": "step", "step": 3}]


def test_truncate_metrics_keeps_rows_up_to_the_checkpoint_step(tmp_path):
    folder = rundir.create_run(make_cfg(), tmp_path)
    write_rows(folder, [{"kind": "step", "step": s} for s in (2, 4, 6)] + [{"kind": "epoch", "epoch": 1, "step": 6}]
               + [{"kind": "step", "step": 8}])
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"kind": "st')  # torn by a kill -9
    assert rundir.truncate_metrics(folder, 6) == 4
    rows, _ = rundir.read_metrics(folder)
    assert [(r["kind"], r["step"]) for r in rows] == [("step", 2), ("step", 4), ("step", 6), ("epoch", 6)]
    assert (folder / "metrics.jsonl").read_text().endswith("\n")


def test_metrics_long_and_compare_put_several_runs_in_one_table(tmp_path):
    a = rundir.create_run(make_cfg("a", lr=0.1), tmp_path)
    b = rundir.create_run(make_cfg("b", lr=0.2), tmp_path)
    write_rows(a, [{"kind": "epoch", "epoch": 1, "step": 3, "val_acc": 0.5}])
    write_rows(b, [{"kind": "epoch", "epoch": 1, "step": 3, "val_acc": 0.7},
                   {"kind": "epoch", "epoch": 2, "step": 6, "val_acc": 0.8}])
    rundir.write_json_atomic(b / "summary.json", {"state": "completed", "best_val_acc": 0.8})
    long = runs.metrics_long([a.name, b.name], tmp_path)
    assert list(long.columns[:1]) == ["run_id"]
    assert long.groupby("run_id")["val_acc"].max().to_dict() == {a.name: 0.5, b.name: 0.8}
    table = runs.compare([a.name, b.name], tmp_path).set_index("run_id")
    assert table.loc[b.name, "best_val_acc"] == 0.8 and table.loc[a.name, "train.lr"] == 0.1
    assert table.loc[b.name, "source.arch"] == "small_cnn"
    # What sets them apart: the config columns that differ (name, lr), every summary column.
    differ = runs.compare([a.name, b.name, "b"], tmp_path, differing_only=True)
    assert list(differ["run_id"]) == [a.name, b.name]  # "b" is run b again, by its name
    assert {"name", "train.lr", "best_val_acc"} <= set(differ.columns) and "source.arch" not in differ.columns
    assert list(runs.compare([], tmp_path).columns) == ["run_id", "state"]
    (a / "config.json").write_text("{broken")
    with pytest.raises(RunError, match="corrupt"):
        runs.compare([a.name], tmp_path)


def test_list_runs_reads_configs_statuses_and_summaries(tmp_path):
    folder = rundir.create_run(make_cfg("listed"), tmp_path)
    rundir.update_status(folder, state="completed", epoch=5)
    rundir.write_json_atomic(folder / "summary.json", {"best_val_acc": 0.9, "test_acc": 0.85})
    frame = runs.list_runs(tmp_path)
    assert list(frame.columns) == runs.LIST_COLUMNS
    row = frame.iloc[0]
    assert (row["name"], row["state"], row["best_val_acc"], row["test_acc"]) == ("listed", "completed", 0.9, 0.85)
    assert (row["arch"], row["dataset"], row["preset"]) == ("small_cnn", "sklearn_digits", "fine_tune")
    assert runs.list_runs(tmp_path / "empty").empty


def test_active_runs_lists_only_queued_and_running_runs_and_skips_corrupt_folders(tmp_path):
    done = rundir.create_run(make_cfg("done"), tmp_path)
    rundir.update_status(done, state="completed")
    live = rundir.create_run(make_cfg("live", epochs=7), tmp_path)
    rundir.update_status(live, state="running", pid=os.getpid(), heartbeat=time.time(), epoch=2, step=9, total_steps=30)
    broken = rundir.create_run(make_cfg("broken"), tmp_path)
    (broken / "status.json").write_text("{not json")
    assert runs.active_runs(tmp_path) == [{"id": live.name, "name": "live", "state": "running", "epoch": 2,
                                           "epochs": 7, "step": 9, "total_steps": 30}]
    assert runs.active_runs(tmp_path / "empty") == []


# --- liveness --------------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_running_run_whose_worker_is_gone_reads_as_interrupted_with_its_last_log_lines(tmp_path):
    folder = rundir.create_run(make_cfg(), tmp_path)
    (folder / "log.txt").write_text("starting\nTraceback: boom\n")
    rundir.update_status(folder, state="running", pid=dead_pid(), heartbeat=time.time())
    status = rundir.read_status(folder)
    assert status["state"] == "interrupted"
    assert status["log_tail"][-1] == "Traceback: boom"
    assert json.loads((folder / "status.json").read_text())["state"] == "running"  # reading never writes


def test_a_stale_heartbeat_reads_as_interrupted_even_if_the_pid_exists(tmp_path):
    folder = rundir.create_run(make_cfg(), tmp_path)
    rundir.update_status(folder, state="running", pid=os.getpid(), heartbeat=time.time() - rundir.STALE_AFTER_S - 1)
    assert rundir.read_status(folder)["state"] == "interrupted"
    rundir.update_status(folder, heartbeat=time.time())
    assert rundir.read_status(folder)["state"] == "running"


def test_a_zombie_worker_is_not_alive(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not reaped: os.kill(pid, 0) would still succeed
    try:
        assert not procs.pid_alive(proc.pid)
    finally:
        proc.wait()


def test_delete_refuses_a_running_run_and_stop_refuses_a_finished_one(tmp_path):
    folder = rundir.create_run(make_cfg(), tmp_path)
    rundir.update_status(folder, state="running", pid=os.getpid(), heartbeat=time.time())
    with pytest.raises(RunError, match="still running"):
        launcher.delete(folder)
    rundir.update_status(folder, state="completed")
    with pytest.raises(RunError, match="not running"):
        launcher.stop(folder)
    with pytest.raises(RunError, match="has completed"):
        launcher.resume(folder)
    launcher.delete(folder)
    assert not folder.exists()


def test_corrupt_status_is_a_clear_error(tmp_path):
    folder = rundir.create_run(make_cfg(), tmp_path)
    (folder / "status.json").write_text("{")
    with pytest.raises(RunError, match="corrupt"):
        rundir.read_status(folder)
    assert runs.list_runs(tmp_path).iloc[0]["state"] == "corrupt"


# --- real workers: launch, stop, kill -9, resume -----------------------------------------------

def worker_cfg(epochs=2, per_class=40, **train) -> RunConfig:
    """A small real run: mnist_net on scikit-learn's digits (offline), a few dozen steps an epoch."""
    return RunConfig.from_dict({
        "name": "worker test",
        "source": {"kind": "arch", "arch": "mnist_net"},
        "dataset": {"name": "sklearn_digits", "per_class": per_class},
        "plan": {"preset": "fine_tune"},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.001, "device": "cpu", "log_every": 5, **train},
    })


@pytest.fixture
def one_thread_workers(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two shared cores: one worker, one test


def assert_continuous(folder, cfg, total_steps):
    rows, _ = rundir.read_metrics(folder)
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert steps == [1] + list(range(cfg.train.log_every, total_steps + 1, cfg.train.log_every))  # no gap, no duplicate
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == list(range(1, cfg.train.epochs + 1))


@pytest.mark.slow
def test_stop_mid_epoch_leaves_a_resumable_run(tmp_path, one_thread_workers):
    cfg = worker_cfg(epochs=2)
    run_id = launcher.launch(cfg, tmp_path)
    folder = tmp_path / run_id
    wait_for(lambda: len(rundir.read_metrics(folder)[0]) >= 2, what="two step rows")
    status = launcher.stop(folder, timeout=30)
    assert status["state"] == "stopped" and status.get("error") is None
    checkpoint = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < checkpoint["step"] < status["total_steps"]
    assert not (folder / "STOP").exists()

    launcher.resume(folder)
    final = wait_for(lambda: rundir.read_status(folder)["state"] not in rundir.ACTIVE_STATES and rundir.read_status(folder),
                     what="the resumed run to end")
    assert final["state"] == "completed", final
    assert_continuous(folder, cfg, final["total_steps"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["best_val_acc"] > 0.2


@pytest.mark.slow
def test_a_killed_worker_is_detected_and_resumed_with_continuous_metrics(tmp_path, one_thread_workers):
    cfg = worker_cfg(epochs=6, per_class=20)
    run_id = launcher.launch(cfg, tmp_path)
    folder = tmp_path / run_id
    wait_for(lambda: any(r.get("kind") == "step" and r["epoch"] >= 2 for r in rundir.read_metrics(folder)[0]),
             what="a step row of epoch 2")
    os.kill(rundir.read_status(folder)["pid"], 9)
    status = wait_for(lambda: rundir.read_status(folder)["state"] == "interrupted" and rundir.read_status(folder),
                      timeout=10, what="the kill to be noticed")
    assert "log_tail" in status and status["error"]
    launcher.resume(folder)
    final = wait_for(lambda: rundir.read_status(folder)["state"] not in rundir.ACTIVE_STATES and rundir.read_status(folder),
                     what="the resumed run to end")
    assert final["state"] == "completed", final
    assert_continuous(folder, cfg, final["total_steps"])
    assert "resumed at epoch" in (folder / "log.txt").read_text()


@pytest.mark.slow
def test_several_runs_train_at_once_and_a_baseline_points_at_its_transfer_run(tmp_path, one_thread_workers):
    cfg = worker_cfg(epochs=1, per_class=10)
    run_id, baseline_id = launcher.launch_with_baseline(cfg, tmp_path)
    for rid in (run_id, baseline_id):
        wait_for(lambda: rundir.read_status(tmp_path / rid)["state"] not in rundir.ACTIVE_STATES, what=f"{rid} to end")
        assert rundir.read_status(tmp_path / rid)["state"] == "completed"
    frame = runs.list_runs(tmp_path).set_index("id")
    assert frame.loc[baseline_id, "baseline_of"] == run_id
    assert frame.loc[baseline_id, "preset"] == "scratch" and frame.loc[run_id, "preset"] == "fine_tune"


def test_frozen_batchnorm_that_does_not_fit_the_target_data_is_warned_about_in_the_log(tmp_path):
    from kt_core.config import DatasetConfig, TransferPlan
    from kt_core.worker import run_worker

    # a random-weight CIFAR ResNet's BN statistics (mean 0, var 1 everywhere) against raw digits
    cfg = RunConfig(name="bn", source=SourceConfig(kind="arch", arch="cifar_resnet20"),
                    dataset=DatasetConfig(name="sklearn_digits", per_class=5, normalize="none", channels=3,
                                          image_size=32),
                    plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(epochs=1, device="cpu"))
    folder = rundir.create_run(cfg, tmp_path)
    assert run_worker(folder)["state"] == "completed"
    log_text = (folder / "log.txt").read_text()
    assert "frozen BatchNorm layer" in log_text and "consider bn_mode" in log_text
    assert "more frozen BatchNorm layers like these" in log_text  # summarised, not a page of lines


def test_a_best_epoch_links_best_to_last_and_a_later_last_leaves_best_intact(tmp_path):
    from kt_core.rundir import load_checkpoint
    from kt_core.worker import Checkpointer

    ckpt = Checkpointer(tmp_path)
    ckpt.on_checkpoint(None, {"epoch": 1, "model": {"w": torch.ones(3)}}, ("last", "best"))
    last, best = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "best.pt"
    assert os.stat(last).st_ino == os.stat(best).st_ino  # linked, not written twice
    for epoch in (2, 3):
        ckpt.on_checkpoint(None, {"epoch": epoch, "model": {"w": torch.zeros(3)}}, ("last",))
        assert load_checkpoint(last)["epoch"] == epoch
    assert load_checkpoint(best)["epoch"] == 1 and torch.equal(load_checkpoint(best)["model"]["w"], torch.ones(3))
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


class _Fit:
    """What the Checkpointer reads of the engine's context."""

    def __init__(self, epochs: int):
        self.cfg = make_cfg(epochs=epochs)
        self.epoch, self.stop_requested = 0, False


def test_checkpoints_of_short_epochs_are_written_within_their_share_of_the_time_and_none_is_lost(tmp_path, monkeypatch):
    # Epochs far shorter than a write: the first epoch is written, the others only once the
    # writes' share of the time allows; a best epoch skipped is written with the next write,
    # with its own weights; the final epoch is always written.
    from kt_core import worker
    from kt_core.rundir import load_checkpoint

    clock = [100.0]
    ckpt, fit = worker.Checkpointer(tmp_path, clock=lambda: clock[0]), _Fit(epochs=6)
    last, best = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "best.pt"
    weights = torch.zeros(3)  # the live tensor a state holds: the next epoch trains it in place

    def epoch_end(epoch, tags, seconds_since):
        clock[0] += seconds_since
        fit.epoch = epoch
        weights.fill_(epoch)
        ckpt.on_checkpoint(fit, {"epoch": epoch, "model": {"w": weights}}, tags)

    original_write = rundir.write_checkpoint

    def slow_write(*args, **kwargs):  # each write takes 1 s of the clock
        clock[0] += 1.0
        return original_write(*args, **kwargs)

    monkeypatch.setattr(rundir, "write_checkpoint", slow_write)
    epoch_end(1, ("last", "best"), 0.1)
    assert load_checkpoint(last)["epoch"] == 1  # the first is always written
    epoch_end(2, ("last", "best"), 0.1)  # 0.1 s after a 2 s write (last, and best linked): not 1/WRITE_SHARE times its time
    epoch_end(3, ("last",), 0.1)
    assert load_checkpoint(last)["epoch"] == 1 and load_checkpoint(best)["epoch"] == 1
    epoch_end(4, ("last",), 2.0 / worker.Checkpointer.WRITE_SHARE)  # the share allows a write: last is epoch 4, best epoch 2's own weights
    assert load_checkpoint(last)["epoch"] == 4 and torch.equal(load_checkpoint(last)["model"]["w"], torch.full((3,), 4.0))
    assert load_checkpoint(best)["epoch"] == 2 and torch.equal(load_checkpoint(best)["model"]["w"], torch.full((3,), 2.0))
    epoch_end(5, ("last", "best"), 0.1)
    ckpt.on_fit_end(fit, None)  # early stopping after epoch 5: the run's end writes what it skipped
    assert load_checkpoint(last)["epoch"] == 5 and load_checkpoint(best)["epoch"] == 5
    assert os.stat(last).st_ino == os.stat(best).st_ino
    epoch_end(6, ("last",), 0.1)  # the final epoch: written at once
    assert load_checkpoint(last)["epoch"] == 6 and load_checkpoint(best)["epoch"] == 5


@pytest.mark.parametrize("early_stopping", [None, 1])
def test_a_run_whose_epochs_were_not_all_written_ends_with_its_final_and_best_states(tmp_path, monkeypatch,
                                                                                     early_stopping):
    # Through the engine, with a share so small that only the first and the final epochs are due:
    # last.pt is the end of training, best.pt the best epoch's state, as if every epoch were written.
    from test_engine import Recorder, config, make_data, make_model

    from kt_core import worker
    from kt_core.engine import fit
    from kt_core.rundir import load_checkpoint

    monkeypatch.setattr(worker.Checkpointer, "WRITE_SHARE", 1e-12)
    rec = Recorder()  # every state handed out, read back as a writer would: the truth
    cfg = config(epochs=8, lr=0.01, early_stopping=early_stopping)  # its best: epoch 4 of 8, or of 5
    result = fit(make_model(), make_data(), cfg, callbacks=[worker.Checkpointer(tmp_path), rec])
    last, best = (load_checkpoint(tmp_path / "checkpoints" / f"{tag}.pt") for tag in ("last", "best"))
    assert result.epochs == last["epoch"] == rec.checkpoints["last"]["epoch"]
    assert best["epoch"] == rec.checkpoints["best"]["epoch"] and best["best_val_acc"] == result.best_val_acc
    for mine, truth in ((last, rec.checkpoints["last"]), (best, rec.checkpoints["best"])):
        assert all(torch.equal(mine["model"][k], truth["model"][k]) for k in truth["model"])
    # the case this is about: a best epoch that was neither the first nor the last
    assert 1 < best["epoch"] < last["epoch"]
    assert result.early_stopped == bool(early_stopping)


def test_a_stop_writes_its_checkpoint_at_once(tmp_path):
    from kt_core import worker
    from kt_core.rundir import load_checkpoint

    ckpt, fit = worker.Checkpointer(tmp_path), _Fit(epochs=100)
    ckpt.on_checkpoint(fit, {"epoch": 1}, ("last",))
    fit.epoch, fit.stop_requested = 1, True
    ckpt.on_checkpoint(fit, {"epoch": 1, "step": 7}, ("last",))  # right after: a stop is always due
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 7


def _proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: [state, parent pid, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _parent(pid: int) -> int:
    return int(_proc_stat(pid)[1])


@pytest.mark.slow
def test_the_warm_worker_forks_a_worker_for_each_launch_and_stands_by(tmp_path, one_thread_workers):
    """The demo launches three runs in one click: each must start from the warm standby (a fork,
    no fresh Python and torch), in a session of its own that a stop can signal, and the standby
    must stay for the next click. A launch never waits for a standby that is still starting."""
    def pid_of(run_id):
        return rundir.read_status(rundir.run_dir(run_id, tmp_path))["pid"]

    launcher.keep_worker_warm(True)
    try:
        standby = launcher._standby._proc
        early = launcher.launch(worker_cfg(epochs=1, per_class=5), tmp_path)
        assert _parent(pid_of(early)) == os.getpid()  # the standby was still importing: a fresh worker
        wait_for(launcher._standby.ready, timeout=120, what="the standby to be ready")

        forked = [launcher.launch(worker_cfg(epochs=1, per_class=5), tmp_path),
                  launcher.launch(worker_cfg(epochs=30, per_class=5), tmp_path)]
        pids = [pid_of(run_id) for run_id in forked]
        assert len(set(pids)) == 2 and standby.pid not in pids
        for pid in pids:
            assert _parent(pid) == standby.pid
            wait_for(lambda: os.getsid(pid) == pid, timeout=10, what="the fork's own session")
        assert launcher._standby._proc is standby and standby.poll() is None  # it stays for the next launch

        wait_for(lambda: rundir.read_status(rundir.run_dir(forked[1], tmp_path))["state"] == "running",
                 what="the long run to train")
        assert launcher.stop(rundir.run_dir(forked[1], tmp_path))["state"] == "stopped"  # its own process group, signalled
        for run_id in (early, forked[0]):
            wait_for(lambda: not rundir.is_active(rundir.run_dir(run_id, tmp_path)), what="the run to finish")
            folder = rundir.run_dir(run_id, tmp_path)
            assert rundir.read_status(folder)["state"] == "completed"
            assert "completed" in (folder / "log.txt").read_text()  # its output went to the run's log
        wait_for(lambda: not os.path.exists(f"/proc/{pids[0]}"), timeout=30, what="the forked worker to be reaped")
        assert standby.poll() is None

        os.environ["KT_CACHE_DIR"] = str(tmp_path / "other-cache")  # (restored by the autouse fixture)
        other_env = launcher.launch(worker_cfg(epochs=1, per_class=5), tmp_path)
        assert _parent(pid_of(other_env)) == os.getpid()  # started under another environment: not used
        wait_for(lambda: standby.poll() is not None, timeout=30, what="the retired standby to exit")
        assert launcher._standby._proc is not standby  # a new one is starting for the new environment
        wait_for(lambda: not rundir.is_active(rundir.run_dir(other_env, tmp_path)), what="the last run")
    finally:
        launcher.keep_worker_warm(False)


def test_no_warm_worker_where_forking_after_torch_is_unsafe(monkeypatch):
    monkeypatch.setattr(launcher, "FORK_SAFE", False)  # macOS, Windows
    launcher.keep_worker_warm(True)
    try:
        assert launcher._standby._proc is None and not launcher._standby.enabled
        assert launcher._standby.fork(Path("never-used")) is None  # every launch starts its own worker
    finally:
        launcher.keep_worker_warm(False)


def test_finished_workers_are_reaped_not_left_defunct():
    children = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(3)]
    for proc in children:
        procs.adopt(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(_zombie(p.pid) for p in children):
        time.sleep(0.1)
    assert all(_zombie(p.pid) for p in children)  # exited, not yet collected: <defunct>
    runs.active_runs()  # what the dashboard polls every few seconds
    assert not any(_zombie(p.pid) for p in children) and not set(procs._children) & {p.pid for p in children}


def _zombie(pid: int) -> bool:
    try:
        return _proc_stat(pid)[0] == "Z"
    except OSError:
        return False
