"""Data-parallel runs: the same config on two gloo CPU processes under torchrun trains what one
process trains (rows and weights within 1e-5), stops and resumes, and ends cleanly, naming the
rank, when a rank is killed. Tiny model and few steps: these start real torchrun jobs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kt_core import launcher, rundir
from kt_core.config import DatasetConfig, DistillConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.distributed import Ranks
from kt_core.errors import ConfigError
from kt_core.experiments import ExperimentSpec, create_experiment
from kt_core.experiments.driver import drive
from kt_core.torchrun import shown, torchrun_args, torchrun_command
from waiting import wait_for_run

# Random weights from the plan's seeded re-initialisation (scratch), so every process starts alike.
# 60 training images in batches of 16: the last batch (12) splits 6/6, and 2 epochs cross an
# epoch boundary; no BatchNorm, no dropout, no augmentation: nothing differs but the processes.
BASE = RunConfig(
    name="ddp", source=SourceConfig(kind="arch", arch="mnist_net"),
    dataset=DatasetConfig(name="sklearn_digits", per_class=6, val_fraction=0.3, image_size=28, channels=1),
    plan=TransferPlan(preset="scratch"),
    train=TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, device="cpu", log_every=1, seed=3))

# what a row may differ by between runs: wall-clock figures
TIMING = {"time", "epoch_s", "images_per_s"}


def _with(cfg: RunConfig, **train) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def _train(cfg: RunConfig, runs_dir: Path) -> Path:
    run = launcher.launch(cfg, runs_dir)
    status = wait_for_run(str(runs_dir / run))
    if status["state"] != "completed":  # the whole log: pytest cuts a long assertion's repr to a line
        pytest.fail(f"run {run} ended {status['state']}: {status.get('error')}\n"
                    + "\n".join(rundir.log_tail(str(runs_dir / run), 80)), pytrace=False)
    return runs_dir / run


def _rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rundir.read_metrics(folder)[0]]


def _weights(folder: Path) -> dict:
    return rundir.load_checkpoint(rundir.checkpoint_path(folder, "last"))["model"]


def _assert_same_training(one: Path, two: Path, tol: float = 1e-5) -> None:
    a, b = _rows(one), _rows(two)
    assert [(r["kind"], r["step"], r["epoch"]) for r in a] == [(r["kind"], r["step"], r["epoch"]) for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if isinstance(value, float):
                assert rb[key] == pytest.approx(value, abs=tol), (ra["kind"], ra["step"], key)
    wa, wb = _weights(one), _weights(two)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    assert worst < tol, f"final weights differ by {worst}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: the config trained by one plain worker process."""
    return _train(BASE, tmp_path_factory.mktemp("runs"))


# --- the config ----------------------------------------------------------------------------

def test_process_settings_round_trip_and_one_process_is_the_default():
    assert BASE.train.world_size == 1 and BASE.train.nproc_per_node == 1 and BASE.plan.sync_bn is None
    cfg = _with(BASE, nproc_per_node=4, nnodes=2, rdzv_endpoint="node0:29400")
    cfg.plan.sync_bn = True
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg and cfg.train.world_size == 8
    with pytest.raises(ConfigError, match="unknown key"):
        RunConfig.from_dict({**BASE.to_dict(), "train": {**BASE.to_dict()["train"], "nprocs": 2}})


@pytest.mark.parametrize("train, message", [
    ({"nproc_per_node": 0}, "nproc_per_node is 0"),
    ({"nnodes": 5000}, "nnodes is 5000"),
    ({"nproc_per_node": 100, "nnodes": 100, "rdzv_endpoint": "h:1"}, "10,000"),
    ({"nnodes": 2}, "rdzv_endpoint is not set"),
    ({"rdzv_endpoint": "node0"}, "HOST:PORT"),
    ({"rdzv_endpoint": "node0:99999"}, "HOST:PORT"),
    ({"nproc_per_node": 2, "device": "cuda:0"}, "names one device"),
    ({"nproc_per_node": 2, "device": "mps"}, "names one device"),
])
def test_bad_process_settings_name_the_key_and_the_fix(train, message):
    data = BASE.to_dict()
    data["train"].update(train)
    with pytest.raises(ConfigError, match=message) as caught:
        RunConfig.from_dict(data)
    assert caught.value.hint


def test_torchrun_flags_are_torchruns_own():
    assert torchrun_args(_with(BASE, nproc_per_node=2).train) == ["--nproc-per-node=2", "--standalone"]
    several = _with(BASE, nproc_per_node=4, nnodes=2, rdzv_endpoint="node0:29400").train
    assert torchrun_args(several, "RUN") == ["--nproc-per-node=4", "--nnodes=2", "--rdzv-backend=c10d",
                                             "--rdzv-endpoint=node0:29400", "--rdzv-id=RUN"]
    command = torchrun_command(several, ["/runs/RUN"], "RUN")
    assert command[1:3] == ["-m", "torch.distributed.run"] and command[-4:] == ["-m", "kt_core", "worker", "/runs/RUN"]
    assert shown(command).startswith("torchrun --nproc-per-node=4 --nnodes=2")


def test_shares_of_a_batch_cover_it_once_in_order():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            pieces = [Ranks(r, world, r).share(n) for r in range(world)] if world > 1 else [slice(0, n)]
            assert [i for p in pieces for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in pieces) - min(p.stop - p.start for p in pieces) <= 1


def test_one_process_needs_no_torchrun(tmp_path):
    folder = rundir.create_run(BASE, tmp_path)
    assert launcher.worker_command(folder) is None and Ranks.from_env({"WORLD_SIZE": "1"}) is None


def test_a_dead_rank_0_reads_interrupted_naming_it(tmp_path):
    folder = rundir.create_run(_with(BASE, nproc_per_node=2), tmp_path)
    gone = 2**22 + 12345  # no such process
    rundir.update_status(folder, state="running", pid=gone, heartbeat=time.time(),
                         ranks=[{"rank": 0, "pid": gone, "host": os.uname().nodename},
                                {"rank": 1, "pid": gone + 1, "host": os.uname().nodename}])
    status = rundir.read_status(folder)
    assert status["state"] == "interrupted" and f"rank 0 (pid {gone}) of this 2-process run" in status["error"]
    # rank 0 on another node: alive while its heartbeat is fresh, whatever pids this host has
    rundir.update_status(folder, ranks=[{"rank": 0, "pid": gone, "host": "node-elsewhere"}])
    assert rundir.read_status(folder)["state"] == "running"
    rundir.update_status(folder, heartbeat=time.time() - 60)
    assert rundir.read_status(folder)["state"] == "interrupted"


def test_a_process_of_a_data_parallel_run_ends_without_the_interpreters_teardown(tmp_path):
    # Once its group is destroyed, the teardown of DDP's gloo group sometimes aborts a rank that
    # trained to the end (SIGABRT; torchrun then fails the run). end_process leaves before the
    # teardown: its log lines flushed, its exit code kept, no teardown code run (atexit here).
    script = tmp_path / "rank.py"
    script.write_text(
        "import atexit, logging, sys\n"
        "from kt_core.distributed import end_process\n"
        "logging.basicConfig(filename=sys.argv[1], level=logging.INFO)\n"
        "atexit.register(lambda: open(sys.argv[2], 'w').write('teardown ran'))\n"
        "logging.getLogger('rank').info('trained to the end')\n"
        "end_process(3)\n")
    log_file, teardown = tmp_path / "log.txt", tmp_path / "teardown"
    done = subprocess.run([sys.executable, str(script), str(log_file), str(teardown)],
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 3
    assert "trained to the end" in log_file.read_text() and not teardown.exists()


@pytest.mark.parametrize("state, code", [("completed", 0), ("stopped", 0), ("failed", 1)])
def test_the_worker_command_ends_every_rank_through_end_process(monkeypatch, tmp_path, state, code):
    from kt_core.cli import runs_cmd
    from kt_core import distributed, worker

    ended = []
    monkeypatch.setattr(distributed, "end_process", lambda c: ended.append(c))
    monkeypatch.setattr(worker, "run_worker", lambda folder: {"state": state})
    monkeypatch.setattr(worker, "run_config_worker", lambda config, runs_dir: {"state": state})
    args = argparse.Namespace(serve=False, config=None, standby=False, run_dir=str(tmp_path), runs_dir=None)
    # one plain process: the exit code alone, through the interpreter's usual end
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    runs_cmd._worker(args)
    assert ended == []
    # a rank of a two-process torchrun job, from a run folder or from a config file
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    runs_cmd._worker(args)
    runs_cmd._worker(argparse.Namespace(**{**vars(args), "config": "cfg.json"}))
    assert ended == [code, code]


# --- two processes ----------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(one_process, tmp_path):
    two = _train(_with(BASE, nproc_per_node=2), tmp_path / "runs")
    _assert_same_training(one_process, two)
    status = rundir.read_status(two)
    assert status["world_size"] == 2 and [m["rank"] for m in status["ranks"]] == [0, 1]
    assert status["pid"] == status["ranks"][0]["pid"]
    summary = rundir.read_summary(two)
    assert summary["world_size"] == 2
    assert summary["best_val_acc"] == pytest.approx(rundir.read_summary(one_process)["best_val_acc"], abs=1e-9)
    # rank 0 alone writes the folder: the same files as one process's; rank 1's lines in the log, marked
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one_process.iterdir())
    log_text = rundir.log_path(two).read_text()
    assert " rank 1 INFO " in log_text and " rank 0 INFO " in log_text


@pytest.mark.slow
def test_two_processes_stop_mid_epoch_and_resume_to_the_same_result(one_process, tmp_path):
    # The STOP file is there before the first batch: rank 0 sees it after that batch, and every
    # rank stops there with it (rank 1 never reads the folder), mid-epoch, with a checkpoint.
    folder = rundir.create_run(_with(BASE, nproc_per_node=2), tmp_path / "runs")
    rundir.request_stop(folder)
    launcher.start(folder)
    run = str(folder)
    stopped = wait_for_run(run)
    assert stopped["state"] == "stopped", stopped
    state = rundir.load_checkpoint(rundir.checkpoint_path(Path(run), "last"))
    assert state["step"] == 1 and state["batch_in_epoch"] == 1 and len(state["rng"]["ranks"]) == 2
    launcher.resume(run)
    assert wait_for_run(run)["state"] == "completed"
    _assert_same_training(one_process, Path(run))


@pytest.mark.slow
def test_killing_rank_1_fails_the_run_naming_the_rank(tmp_path):
    runs_dir = tmp_path / "runs"
    run = str(runs_dir / launcher.launch(_with(BASE, nproc_per_node=2, epochs=200), runs_dir))
    running = wait_for_run(run, until=lambda s: s["state"] == "running" and (s.get("step") or 0) >= 2
                    or s["state"] not in rundir.ACTIVE_STATES)
    rank1 = running["ranks"][1]["pid"]
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    status = wait_for_run(run, timeout=60)
    assert time.monotonic() - killed < 30  # torchrun ends the others at once: no collective hangs
    assert status["state"] == "failed" and f"rank 1 (pid {rank1})" in status["error"], status
    assert "resume" in status["error"]  # (resuming under two processes: the stop test above)


@pytest.mark.slow
def test_the_feature_cache_is_extracted_in_shards_and_trains_alike(tmp_path):
    """Feature extraction (a frozen backbone, the classifier block trains on cached features):
    each process extracts its shard of the splits, every process receives the whole cache."""
    cfg = dataclasses.replace(BASE, plan=TransferPlan(preset="feature_extraction"))
    one = _train(cfg, tmp_path / "one")
    two = _train(_with(cfg, nproc_per_node=2), tmp_path / "two")
    assert rundir.read_summary(one)["feature_cache"] and rundir.read_summary(two)["feature_cache"]
    _assert_same_training(one, two)


@pytest.mark.slow
def test_sync_batchnorm_makes_two_processes_match_one(tmp_path):
    """BatchNorm layers that train normalise over the global batch (SyncBatchNorm, on by
    default for more than one process), so the two runs agree to float32 rounding; a residual
    network amplifies that rounding, hence a looser bound than the plain model's."""
    bn = RunConfig(
        name="ddp-bn", source=SourceConfig(kind="arch", arch="cifar_resnet20"),
        dataset=DatasetConfig(name="sklearn_digits", per_class=4, val_fraction=0.3, image_size=8, channels=3),
        plan=TransferPlan(preset="scratch"),
        train=TrainConfig(epochs=1, batch_size=16, optimizer="sgd", lr=0.01, device="cpu", log_every=1, seed=3))
    one = _train(bn, tmp_path / "one")
    two = _train(_with(bn, nproc_per_node=2), tmp_path / "two")
    assert "SyncBatchNorm: 19 BatchNorm layers" in rundir.log_path(two).read_text()
    _assert_same_training(one, two, tol=1e-4)
    # the checkpoint is a plain model's: BatchNorm keys, running statistics of the global batch
    assert torch.equal(_weights(one)["bn1.num_batches_tracked"], _weights(two)["bn1.num_batches_tracked"])


@pytest.mark.slow
def test_the_teacher_cache_is_computed_in_shares_and_distills_alike(one_process, tmp_path):
    """Logit distillation from a trained teacher (the one-process reference run): each process
    computes the teacher's outputs for its share of the training images, every process receives
    them all (its share of a batch looks its rows up), and the run trains what one process trains."""
    cfg = dataclasses.replace(BASE, distill=DistillConfig(mode="logit", alpha=0.7,
                                                          teacher=SourceConfig(kind="run", path=str(one_process))))
    one = _train(cfg, tmp_path / "one")
    two = _train(_with(cfg, nproc_per_node=2), tmp_path / "two")
    log_text = rundir.log_path(two).read_text()
    for rank in (0, 1):  # 60 training images, 30 each
        assert re.search(rf"rank {rank} INFO kt_core\.objectives: teacher .*: this process computed its share "
                         r"of the outputs, 30 of 60 images", log_text), log_text
    assert "loss_kd" in _rows(two)[0]
    _assert_same_training(one, two)


@pytest.mark.slow
def test_resume_in_the_foreground_resumes_a_two_process_run_on_two_processes(one_process, tmp_path):
    """`launcher.resume(foreground=True)` (the CLI's `resume --foreground`) of a run of several
    processes resumes it on them, under torchrun, and returns once it has ended."""
    folder = rundir.create_run(_with(BASE, nproc_per_node=2), tmp_path / "runs")
    rundir.request_stop(folder)
    launcher.start(folder)
    assert wait_for_run(str(folder))["state"] == "stopped"
    launcher.resume(folder, foreground=True)
    status = rundir.read_status(folder)
    assert status["state"] == "completed" and status["world_size"] == 2 and len(status["ranks"]) == 2, status
    assert status["pid"] != os.getpid()  # rank 0 trained it, not this process
    _assert_same_training(one_process, folder)


@pytest.mark.slow
def test_an_experiment_member_that_asks_for_two_processes_trains_on_two_and_alike(tmp_path):
    """A grid over the number of processes: the member of 2 is started under torchrun by the
    driver (not by its single-process member workers) and trains what the member of 1 trains."""
    spec = ExperimentSpec.from_dict({"kind": "grid", "name": "ddp-grid", "base": BASE.to_dict(),
                                     "grid": {"train.nproc_per_node": [1, 2]}, "seeds": [3]})
    data = drive(create_experiment(spec, tmp_path / "runs", parallel=2))
    assert data["state"] == "completed", data.get("error")
    runs_dir = Path(data["runs_dir"])
    members = {rundir.load_config(runs_dir / m["run_id"]).train.nproc_per_node: runs_dir / m["run_id"]
               for m in data["members"]}
    one, two = members[1], members[2]
    status = rundir.read_status(two)
    assert status["world_size"] == 2 and [m["rank"] for m in status["ranks"]] == [0, 1], status
    assert " rank 1 INFO " in rundir.log_path(two).read_text()
    assert "world_size" not in rundir.read_status(one) or rundir.read_status(one)["world_size"] in (None, 1)
    _assert_same_training(one, two)
