"""Faults end runs cleanly: a full disk during a checkpoint, a read-only runs folder and a run
folder deleted while it trains each end with one clear line naming the cause and the fix, the run
`failed` where its status can still be written, and no temp files left behind.

The disk is a small tmpfs when the tests run as root and `mount` works; otherwise the full disk
is an injected OSError(ENOSPC), and the read-only test (which needs a real read-only mount) is
skipped with that reason."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kt_core import rundir
from kt_core.cli import main
from waiting import kill_and_resume, wait_for_run

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` at `path`, or None where this process cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def write_cfg(path: Path, epochs: int = 2) -> Path:
    path.write_text(json.dumps({
        "name": "faults", "source": {"kind": "arch", "arch": "mnist_net"},  # ~5 MB checkpoints (weights + Adam)
        "dataset": {"name": "sklearn_digits", "per_class": 5, "classes": [0, 1, 2]},
        "plan": {"preset": "fine_tune"}, "train": {"epochs": epochs, "batch_size": 16, "device": "cpu"}}))
    return path


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_during_a_checkpoint_fails_the_run_with_one_line(tmp_path, capsys, monkeypatch):
    cfg = write_cfg(tmp_path / "cfg.json")
    with tmpfs(tmp_path / "disk", "3m") as disk:
        runs_dir = disk or tmp_path / "runs"
        if disk is None:  # no mount here: the checkpoint write fails as a full disk makes it fail
            real_save = torch.save

            def full_disk(obj, f, *args, **kwargs):
                if str(f).startswith(str(runs_dir)):
                    raise OSError(errno.ENOSPC, "No space left on device", str(f))
                return real_save(obj, f, *args, **kwargs)

            monkeypatch.setattr(torch, "save", full_disk)
        assert main(["train", str(cfg), "--runs-dir", str(runs_dir)]) == 1
        out = capsys.readouterr()
        (folder,) = [p for p in runs_dir.iterdir() if p.is_dir()]
        status = rundir.read_status(folder)
        assert status["state"] == "failed", status
        assert "could not write checkpoints/last.pt" in status["error"] and "resume" in status["error"]
        assert "\n" not in status["error"] and "Traceback" not in out.out + out.err
        assert temp_files(folder) == []
        assert not (folder / "checkpoints" / "last.pt").exists()  # no torn checkpoint


def test_a_read_only_runs_folder_gives_one_line_per_command(tmp_path, capsys, caplog):
    cfg = write_cfg(tmp_path / "cfg.json", epochs=1)
    with tmpfs(tmp_path / "ro", "64m") as disk:
        if disk is None:
            pytest.skip("needs root and mount for a real read-only folder (an injected error proves little here)")
        assert main(["train", str(cfg), "--runs-dir", str(disk)]) == 0
        (run,) = [str(p) for p in disk.iterdir()]
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
        capsys.readouterr()
        for argv, words in ((["export", run, "--format", "state_dict"], "cannot write the export"),
                            (["delete", run], "cannot delete run"),
                            (["train", str(cfg), "--runs-dir", str(disk)], "cannot create a run folder")):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (argv, err)
        # eval still answers (its saved copy is a convenience), and says once that it was not saved
        assert main(["eval", run, "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["accuracy"] >= 0 and "was not saved" in caplog.text
        assert "Traceback" not in captured.err


def test_a_run_folder_deleted_while_it_trains_ends_with_one_line(tmp_path):
    cfg = write_cfg(tmp_path / "cfg.json", epochs=200)
    proc = subprocess.Popen([sys.executable, "-m", "kt_core", "train", str(cfg), "--runs-dir", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            folders = list((tmp_path / "r").glob("*/status.json"))
            if folders and (rundir.read_json(folders[0]) or {}).get("step", 0) > 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run did not start training")
        # The worker may write a checkpoint while rmtree runs ("Directory not empty"): delete
        # until it is gone, as a user's `rm -rf` retried would.
        for _ in range(50):
            shutil.rmtree(folders[0].parent, ignore_errors=True)
            if not folders[0].parent.exists():
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode in (1, 2), (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Logging error" not in err, err[-3000:]
    # No writer (checkpoint, status, TensorBoard) brings the deleted folder back as an empty shell
    assert not folders[0].parent.exists(), sorted(p.name for p in folders[0].parent.rglob("*"))
    # Said as the deletion itself, or (when it lands between two lookups of the folder) as the
    # run folder that is no longer there: one line either way, never a traceback.
    assert "was deleted while the run trained" in out + err or "no run" in out + err, (out + err)[-2000:]


def test_a_library_thread_that_dies_is_one_logged_line_not_a_traceback(monkeypatch, capsys, caplog):
    """The class behind TensorBoard's writer dying when its run folder is deleted: any background
    thread a library starts inside a CLI command reports through the log, never as a raw traceback."""
    import threading

    from kt_core.cli import main

    def boom(args):
        thread = threading.Thread(target=lambda: open("/nonexistent/dir/events", "ab"), name="some-writer")
        thread.start()
        thread.join()
        return 0

    import kt_core.cli as cli

    real = cli.build_parser

    def parser_with_boom():
        parser = real()
        sub = next(a for a in parser._actions if a.dest == "command")
        sub.add_parser("boom").set_defaults(func=boom)
        return parser

    monkeypatch.setattr(cli, "build_parser", parser_with_boom)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # main() replaces it: restore after
    assert main(["boom"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("some-writer stopped: FileNotFoundError" in w for w in warnings), caplog.text


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_loses_and_repeats_nothing(tmp_path, monkeypatch):
    """The kill -9 / resume loop of the reliability suite: a worker killed at seeded random moments
    (mid-epoch, mid-checkpoint, during evaluation) and resumed each time ends with every step row
    exactly once and the same final weights, bit for bit, as a run never interrupted."""
    import random

    from kt_core import launcher
    from kt_core.config import RunConfig

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers' thread count is the reference's
    cfg = RunConfig.from_dict({
        "name": "kill loop", "source": {"kind": "arch", "arch": "mnist_net"},
        "dataset": {"name": "sklearn_digits", "per_class": 15},
        "plan": {"preset": "fine_tune"},
        "train": {"epochs": 6, "batch_size": 8, "lr": 0.001, "device": "cpu", "log_every": 1, "seed": 5}})
    reference = tmp_path / "reference" / launcher.launch(cfg, tmp_path / "reference")  # a worker process, as below
    assert wait_for_run(reference)["state"] == "completed"

    folder = tmp_path / "killed" / launcher.launch(cfg, tmp_path / "killed")
    kills = kill_and_resume(folder, random.Random(20261201), times=4)
    status = wait_for_run(folder)
    assert status["state"] == "completed" and kills >= 2, (kills, status)

    rows, expected = rundir.read_metrics(folder)[0], rundir.read_metrics(reference)[0]
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert steps == [r["step"] for r in expected if r["kind"] == "step"]  # none lost, none repeated
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == list(range(1, 7))
    got = rundir.load_checkpoint(rundir.checkpoint_path(folder, "last"))["model"]
    want = rundir.load_checkpoint(rundir.checkpoint_path(reference, "last"))["model"]
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), max((got[k] - want[k]).abs().max().item() for k in want)
    assert not temp_files(folder)
