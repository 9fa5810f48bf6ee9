"""Terminal output: live progress on a terminal, one line per epoch in a pipe, tables that fit."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from kt_core import progress, rundir
from kt_core.cli import main
from kt_core.cli.demo_cmd import watch
from kt_core.cli.terminal import Terminal
from kt_core.config import RunConfig
from kt_core.data import TensorSplit

from test_runs_cli import write_cfg

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_a_terminal(args: list[str], columns: int, timeout: float = 180) -> str:
    """Run `python -m kt_core ARGS` with stdout and stderr on a pseudo-terminal `columns` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TERM": "xterm-256color",
           "COLUMNS": str(columns)}
    proc = subprocess.Popen([sys.executable, "-m", "kt_core", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0, out.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def screen_lines(raw: str) -> list[str]:
    """What stays on screen, roughly: escape sequences dropped, each redraw (\\r) overwrites."""
    return [ANSI.sub("", line).split("\r")[-1] for line in raw.replace("\r\n", "\n").split("\n")]


def test_train_in_a_terminal_draws_a_live_bar_and_keeps_one_line_per_epoch(tmp_path):
    cfg = write_cfg(tmp_path / "cfg.json", dataset={"per_class": 3}, train={"epochs": 2, "log_every": 1, "batch_size": 4})
    raw = in_a_terminal(["train", str(cfg), "--runs-dir", str(tmp_path / "r")], columns=120)
    bar_frames = [f for f in ANSI.sub("", raw).split("\r") if "━" in f]
    assert len(bar_frames) >= 3, raw  # redrawn while it trains, not only at the end
    assert any(re.search(r"epoch 1/2 .*\d+/\d+  loss \d\.\d{4}  .*img/s  ETA \d+:\d\d", f) for f in bar_frames)
    kept = [line for line in screen_lines(raw) if re.match(r"epoch \d/2  step", line)]
    assert [line.split()[1] for line in kept] == ["1/2", "2/2"]
    assert all("val_acc" in line and "ETA" in line for line in kept)


def test_train_in_a_pipe_prints_one_plain_line_per_epoch_and_quiet_none(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "cfg.json", dataset={"per_class": 3}, train={"epochs": 3})
    assert main(["train", str(cfg), "--runs-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "━" not in out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    for line in epochs:
        assert re.search(r"step \d+/\d+  loss \d\.\d{4}  train_acc \d\.\d{4}  val_acc \d\.\d{4}  [\d,]+ img/s  ETA", line)
    assert epochs[-1].endswith("ETA 0:00")

    assert main(["train", str(cfg), "--runs-dir", str(tmp_path / "r"), "--quiet", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith("epoch ")]
    assert ": completed" in out  # the result is still printed


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def on_a_terminal(monkeypatch, args: list[str], columns: int) -> list[str]:
    """`main(args)` with stdout a terminal `columns` wide (rich reads the width from COLUMNS)."""
    screen = FakeTty()
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "stdout", screen)
    assert main(args) == 0
    monkeypatch.undo()
    return [line for line in screen_lines(screen.getvalue()) if line.strip()]


def test_runs_compare_and_status_tables_fit_a_narrow_terminal(tmp_path, monkeypatch):
    made = []
    for name, lr in (("narrow-a", 0.01), ("narrow-b", 0.1)):
        cfg = RunConfig.from_file(write_cfg(tmp_path / f"{name}.json", train={"lr": lr}))
        cfg.name = name
        folder = rundir.create_run(cfg, tmp_path / "r")
        rundir.write_summary(folder, {"state": "completed", "best_val_acc": 0.5})
        made.append(folder.name)
    where = ["--runs-dir", str(tmp_path / "r")]
    for args, columns in ((["runs"], 72), (["compare", *made], 60), (["status", made[0]], 50)):
        lines = on_a_terminal(monkeypatch, [*args, *where], columns)
        assert max(len(line) for line in lines) <= columns, "\n".join(lines)
        assert any(made[0][:20] in line for line in lines)  # whole where it fits, else folded over lines
    lines = on_a_terminal(monkeypatch, ["runs", *where], 72)
    assert lines[0].split()[:3] == ["id", "state", "headline"]  # the least important columns went
    assert lines[1].split()[0] == made[1]  # ids whole, newest first
    note = " ".join(lines[2:])
    assert "not shown here" in note and "dataset" in note
    lines = on_a_terminal(monkeypatch, ["compare", *made, *where], 60)
    assert [line.split() for line in lines if line.startswith("train.lr")] == [["train.lr", "0.01", "0.1"]]


def test_a_pipe_gets_tables_unwrapped(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "cfg.json")
    folder = rundir.create_run(RunConfig.from_file(cfg), tmp_path / "r")
    assert main(["runs", "--runs-dir", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "state", "headline", "best_val_acc", "test_acc", "epoch", "epochs", "preset",
                                "arch", "dataset"]
    assert lines[1].split()[0] == folder.name and len(lines) == 2


class Recorder:
    """A progress reporter that remembers what it was told."""

    def __init__(self):
        self.tasks = []

    def start(self, description, total):
        task = {"description": description, "total": total, "done": 0, "closed": False}
        self.tasks.append(task)

        class Handle:
            def advance(self, n=1):
                task["done"] += n

            def close(self):
                task["closed"] = True

        return Handle()


def test_long_library_work_reports_to_whoever_listens_and_costs_nothing_otherwise():
    import torch

    from kt_core.evaluate import predict

    split = TensorSplit(torch.zeros(600, 1, 4, 4), torch.zeros(600, dtype=torch.long))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    recorder = Recorder()
    with progress.reporting(recorder):
        predict(model, split, "cpu", batch_size=256)
    assert recorder.tasks == [{"description": "evaluating", "total": 600, "done": 600, "closed": True}]
    predict(model, split, "cpu", batch_size=256)  # nobody listening: nothing recorded, nothing printed
    assert len(recorder.tasks) == 1


def test_task_bars_in_a_terminal_and_nothing_when_quiet():
    screen = FakeTty()
    terminal = Terminal(stream=screen)
    with terminal.tasks():
        with progress.task("decoding train images", 3) as task:
            for _ in range(3):
                task.advance()
    assert "decoding train images" in screen.getvalue() and "3/3" in ANSI.sub("", screen.getvalue())
    quiet = FakeTty()
    with Terminal(quiet=True, stream=quiet).tasks(), progress.task("decoding", 3) as task:
        task.advance(3)
    assert quiet.getvalue() == ""


def test_the_demo_watcher_follows_runs_through_their_folders(finished_run):
    out = io.StringIO()
    states = watch(Terminal(stream=out), {"transfer": str(finished_run)}, poll_s=0.01)
    assert states == {str(finished_run): "completed"}
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines if " epoch " in f" {line}"] == [["transfer", "epoch"]] * 2
    assert any(line.endswith(": completed") for line in lines)


@pytest.mark.slow
def test_an_experiment_in_a_terminal_draws_its_members_bar_and_lines_in_a_pipe(tmp_path):
    import json

    from test_experiments import tiny_base

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "sample_efficiency", "name": "tiny", "base": tiny_base(epochs=1),
                                "methods": ["scratch"], "per_class": [2, 3], "seeds": 1, "parallel": 2}))
    raw = in_a_terminal(["experiment", str(spec), "--runs-dir", str(tmp_path / "r")], columns=120)
    frames = [f for f in ANSI.sub("", raw).split("\r") if "━" in f]  # the bar, as each redraw drew it
    assert any(re.search(r"members .*0/2 done, \d training\s+ETA -", f) for f in frames), frames[-20:]
    assert any(re.search(r"members .*2/2 done, 0 training\s+ETA 0:00", f) for f in frames), frames[-20:]

    piped = subprocess.run([sys.executable, "-m", "kt_core", "experiment", str(spec), "--runs-dir", str(tmp_path / "p")],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                                 "OMP_NUM_THREADS": "1"}, timeout=300)
    assert piped.returncode == 0, piped.stderr[-2000:]
    lines = [l for l in piped.stdout.splitlines() if re.match(r"\s+[\d.]+ s  \d/2 done", l)]
    assert lines and lines[-1].strip().endswith("2/2 done, 0 training") and "\x1b[" not in piped.stdout
