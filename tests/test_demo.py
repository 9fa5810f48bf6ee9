"""The one-click demo: the source model is cached, the story is told from real summaries, and a
transfer run waits for a source run that is still training."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kt_core import demo, launcher, rundir


def completed_source(cfg) -> str:
    folder = rundir.create_run(cfg)
    rundir.update_status(folder, state="completed")
    return folder.name


def test_demo_reuses_a_completed_source_of_the_same_config(monkeypatch):
    launched = []
    monkeypatch.setattr(launcher, "launch", lambda cfg, runs_dir=None, **_: launched.append(cfg) or "new-source")
    monkeypatch.setattr(launcher, "launch_with_baseline", lambda cfg, runs_dir=None, **_: (launched.append(cfg), ("t", "b"))[1])

    cached = completed_source(demo.source_config())
    handle = demo.run_demo(per_class=5)
    assert handle.source_reused and handle.source_run == cached
    assert [c.name for c in launched] == ["demo-transfer-k5"]  # no new source run
    transfer = launched[0]
    assert transfer.source.kind == "run" and transfer.source.path.endswith(cached)
    assert transfer.dataset.per_class == 5 and transfer.plan.preset == "feature_extraction"


def test_demo_trains_a_source_when_none_matches(monkeypatch):
    launched = []
    monkeypatch.setattr(launcher, "launch", lambda cfg, runs_dir=None, **_: launched.append(cfg) or rundir.create_run(cfg).name)
    monkeypatch.setattr(launcher, "launch_with_baseline", lambda cfg, runs_dir=None, **_: ("t", "b"))
    other = demo.source_config()
    other.train.epochs = 1  # a different config is not a cache hit
    completed_source(other)
    failed = rundir.create_run(demo.source_config())
    rundir.update_status(failed, state="failed")  # nor is a failed run of the same config
    handle = demo.run_demo()
    assert not handle.source_reused
    assert [c.name for c in launched] == [demo.SOURCE_NAME]


def test_conclusion_comes_from_the_runs_summaries():
    ids = []
    for acc in (0.93, 0.81):
        folder = rundir.create_run(demo.transfer_config("src", 10))
        ids.append(folder.name)
        rundir.write_json_atomic(folder / "summary.json", {"state": "completed", "final_val_acc": acc})
    handle = demo.DemoHandle("src", ids[0], ids[1], 10, True)
    from kt_core.headline import headline

    label = headline({"final_val_acc": 0.93}).label  # the figure every page shows, and what it measures
    assert demo.conclusion(handle) == \
        f"transfer: 93.0 % vs from scratch: 81.0 % with 10 labelled images per class (transfer wins) — {label}"
    rundir.write_json_atomic(rundir.run_dir(ids[1]) / "summary.json", {"state": "running"})
    assert demo.conclusion(handle) is None  # no verdict before both have finished


@pytest.mark.slow
def test_a_transfer_run_waits_for_its_source_run_and_fails_if_it_fails():
    source = rundir.create_run(demo.source_config())
    # a live "worker" (this test process) with a fresh heartbeat: the source is still training
    rundir.update_status(source, state="running", pid=os.getpid(), heartbeat=time.time())
    transfer = launcher.launch(demo.transfer_config(str(source), 5))
    deadline = time.time() + 60
    # (first "starting the worker process", then what it waits for)
    while source.name not in (rundir.read_status(transfer).get("note") or "") and time.time() < deadline:
        rundir.update_status(source, heartbeat=time.time())
        time.sleep(0.3)
    status = rundir.read_status(transfer)
    assert status["state"] == "queued" and source.name in status["note"]
    rundir.update_status(source, state="failed", error="boom")
    while rundir.is_active(transfer) and time.time() < deadline:
        time.sleep(0.3)
    status = rundir.read_status(transfer)
    assert status["state"] == "failed"
    assert f"source run {source.name} ended as failed" in status["error"]


def test_a_scratch_baseline_starts_at_its_sources_first_checkpoint_a_transfer_at_its_end():
    """A run from scratch reads only the source's structure (every checkpoint has it), so the
    demo's baseline trains beside the source; the transfer needs the trained weights."""
    from kt_core import worker

    source = rundir.create_run(demo.source_config())
    rundir.update_status(source, state="running", pid=os.getpid(), heartbeat=time.time())
    transfer = demo.transfer_config(str(source), 5)
    configs = {"baseline": transfer.as_baseline("t"), "transfer": transfer}
    stop, done = worker.StopFlag(None), {}

    def wait(name):
        done[name] = worker._wait_for_source_run(configs[name], source.parent, name, None, stop)

    def alive_for(seconds, until=lambda: False):  # the source's "worker" (this process) keeps beating
        deadline = time.time() + seconds
        while time.time() < deadline and not until():
            rundir.update_status(source, heartbeat=time.time())
            time.sleep(0.2)

    threads = {name: threading.Thread(target=wait, args=(name,), daemon=True) for name in configs}
    for thread in threads.values():
        thread.start()
    alive_for(1.0)
    assert done == {}  # no checkpoint yet: nothing to build either from
    rundir.write_checkpoint(source, "last", {"model": {}, "epoch": 1, "step": 10})
    alive_for(120, until=lambda: "baseline" in done)
    alive_for(1.0)
    assert done == {"baseline": True}  # the transfer still waits for the trained source
    rundir.update_status(source, state="completed", heartbeat=time.time())
    threads["transfer"].join(timeout=120)
    assert done == {"baseline": True, "transfer": True}


def test_the_examples_are_the_demo_configs_so_cli_and_ui_share_the_source_model():
    from pathlib import Path

    from kt_core.config import RunConfig

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert RunConfig.from_file(examples / "source_mnist.json") == demo.source_config()
    assert RunConfig.from_file(examples / "quick.json") == demo.transfer_config("demo-source", 10)


@pytest.mark.slow
def test_the_demo_from_the_cli_shows_transfer_winning_and_caches_its_source(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def demo_cli(k: int) -> dict:
        out = subprocess.run([sys.executable, "-m", "kt_core", "demo", "--per-class", str(k), "--json"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(root)})
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    first = demo_cli(5)
    assert not first["source_reused"]
    assert set(first["states"].values()) == {"completed"}
    assert "transfer wins" in first["conclusion"], first["conclusion"]
    second = demo_cli(1)  # the next click reuses the trained source model
    assert second["source_reused"] and second["source"] == first["source"]
    assert "with 1 labelled image per class" in second["conclusion"]
