"""The benchmark suite runs, writes a well-formed table, and compares like with like.

Measurements never become assertions here (a shared CI machine makes any speed threshold flaky):
what is checked is the table's structure, the verdict logic, and that the plain reference loop
does exactly the work kt_core does (the same final weights), which is what makes the ratios fair.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench import cache_growth, demo_speed, distributed, experiment_speed, figures, growth, image_folder, peers, plain, quality, ui_tax  # noqa: F401  (importing registers the figures)
from bench.harness import (FIGURES, SCALES, Context, Result, Skip, Target, interleave, paired_ratio, render_table,
                           run_figure)

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (B\d) \| .+ \| (\S+(?: s)?) \| ([<>]=) [\d.]+(?: s)? \| (PASS|FAIL|SKIP|ERROR) \| .* \|$")


def run_bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quick_run_writes_the_table_with_machine_facts(tmp_path):
    out = tmp_path / "results.md"
    done = run_bench("--scale", "tiny", "--only", "B1,B3,B7", "--device", "cpu", "--results", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert [r["id"] for r in rows] == ["B1", "B3", "B7"]
    for row in rows:
        assert row["verdict"] in ("PASS", "FAIL"), row
        assert row["measured"] > 0
        assert row["verdict"] == ("PASS" if row["measured"] >= 0.95 else "FAIL")
    text = out.read_text()
    for fact in ("CPU:", "torch threads: 1", f"torch: {torch.__version__}", "device: cpu", "scale: tiny"):
        assert fact in text
    table = [line for line in text.splitlines() if line.startswith("| B")]
    assert [ROW.match(line).group(1) for line in table] == ["B1", "B3", "B7"]


@pytest.mark.slow
def test_plain_loop_does_the_same_work_as_the_engine(tmp_path):
    """Same weights, data, order and optimizer: after training, both models must be identical."""
    ctx = Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path)
    for name in ("B1", "B3"):
        result = run_figure(name, ctx)
        assert result.verdict in ("PASS", "FAIL"), result.error
        assert "FINAL WEIGHTS DIFFER" not in result.detail
        assert result.detail.count("same final weights") == (3 if name == "B1" else 2), result.detail  # B3: with and without the feature cache


@pytest.mark.slow
def test_peer_figure_puts_each_installed_peer_beside_the_same_plain_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "PEER_MODELS", ("mlp",))  # the per-step-bound model alone: seconds, not minutes
    result = run_figure("B30", Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path))
    missing = peers.missing_peers()
    if len(missing) == 2:
        assert result.verdict == "SKIP" and "requirements-bench.txt" in result.skip_reason
        return
    assert result.verdict in ("PASS", "FAIL"), result.error
    assert result.measured > 0
    sides = ["kt_core"] + [p for p in ("Lightning", "fastai") if p not in missing]
    for side in sides:  # each a ratio to the plain loop, having done exactly the plain loop's work
        assert re.search(rf"{side} \d+\.\d\d \(range [\d.]+-[\d.]+, all epochs together [\d.]+, same final weights\)",
                         result.detail), result.detail
    for peer in missing:
        assert f"{peer} SKIP (" in result.detail


def test_peer_figure_says_skip_and_how_to_install_without_the_peers(tmp_path, monkeypatch):
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    result = run_figure("B30", Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path))
    assert result.verdict == "SKIP"
    assert "lightning is not installed" in result.skip_reason and "fastai is not installed" in result.skip_reason
    assert "pip install -r requirements-bench.txt" in result.skip_reason


def test_peer_batches_keep_the_epoch_order_when_a_framework_probes_the_iterable():
    from kt_core.data import TensorSplit, iter_batches
    from kt_core.engine import epoch_generator

    x, y = torch.arange(20.0).view(10, 2), torch.arange(10)
    batches = peers.EpochBatches(x, y, 4, seed=3)
    iter(batches)  # Lightning's check: never iterated, so no epoch is drawn
    assert len(batches) == 3
    for epoch in range(2):
        ours = [b[1] for b in batches]
        engine = [b[1] for b in iter_batches(TensorSplit(x, y), 4, shuffle=True, generator=epoch_generator(3, epoch))]
        assert [t.tolist() for t in ours] == [t.tolist() for t in engine]


@pytest.mark.slow
def test_image_folder_figure_compares_the_loading_paths_on_generated_jpegs(tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder, "CACHE", tmp_path / "cache")
    folder = image_folder.jpeg_folder(8, seed=1, root=tmp_path / "cache")
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 8 and {p.parent.name for p in files} == set(image_folder.CLASSES)
    from PIL import Image

    for path in files:  # realistic photo sizes, within the issue's range
        with Image.open(path) as img:
            assert 200 <= img.width <= 2600 and 130 <= img.height <= 1900 and img.format == "JPEG"
    stamp = (folder / "DONE").stat().st_mtime_ns
    assert image_folder.jpeg_folder(8, seed=1, root=tmp_path / "cache") == folder  # made once, then reused
    assert (folder / "DONE").stat().st_mtime_ns == stamp

    result = run_figure("B31", Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path))
    assert result.verdict in ("PASS", "FAIL"), result.error
    assert result.measured > 0
    assert "loader worker(s) (auto)" in result.detail and "load_dataset" in result.detail
    assert f"{image_folder.FOLDER_IMAGES['tiny']} JPEGs" in result.detail


def test_unknown_figure_is_refused_with_the_valid_names():
    done = run_bench("--only", "B1,B99", timeout=180)
    assert done.returncode != 0
    assert "B99" in done.stderr and "B1, B2" in done.stderr and "quality" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_figure_of_the_issue_is_registered():
    from bench.__main__ import parse_only

    assert sorted(FIGURES.names(), key=lambda n: int(n[1:])) == \
        [f"B{i}" for i in range(1, 16)] + ["B20", "B21", "B22", "B23", "B24", "B25", "B26", "B27", "B28", "B30", "B31"]
    assert parse_only("quality") == ["B8", "B9", "B10", "B11"]  # the transfer-quality group
    assert parse_only("B2,quality")[0] == "B2"
    for entry in FIGURES:
        assert isinstance(entry.meta["target"], Target) and entry.meta["title"]


def test_verdicts_follow_the_target_direction():
    assert Result("B1", "t", Target(">=", 0.95), measured=0.95).verdict == "PASS"
    assert Result("B1", "t", Target(">=", 0.95), measured=0.94).verdict == "FAIL"
    assert Result("B5", "t", Target("<=", 3.0, "s"), measured=2.5).verdict == "PASS"
    assert Result("B5", "t", Target("<=", 3.0, "s"), measured=3.5).verdict == "FAIL"
    skipped = Result("B4", "t", Target(">=", 0.95), skip_reason="no Chromium")
    assert skipped.verdict == "SKIP"
    assert "| B4 | t | - | >= 0.95 | SKIP | no Chromium |" in render_table([skipped])


def test_a_figure_that_cannot_run_is_a_skip_and_a_broken_one_an_error(tmp_path):
    ctx = Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path)

    def no_browser(_ctx):
        raise Skip("no Chromium at /usr/bin/chromium")

    def broken(_ctx):
        raise ZeroDivisionError("oops")

    FIGURES.add("T_SKIP", no_browser, title="skip", target=Target(">=", 1))
    FIGURES.add("T_ERR", broken, title="err", target=Target(">=", 1))
    try:
        skip, err = run_figure("T_SKIP", ctx), run_figure("T_ERR", ctx)
    finally:  # the registry is module state: leave it as found
        FIGURES._entries.pop("T_SKIP")
        FIGURES._entries.pop("T_ERR")
    assert (skip.verdict, skip.measured, skip.skip_reason) == ("SKIP", None, "no Chromium at /usr/bin/chromium")
    assert err.verdict == "ERROR" and "ZeroDivisionError: oops" in err.error


def test_ui_tax_says_why_it_skips_without_a_browser(tmp_path, monkeypatch):
    monkeypatch.setattr(ui_tax, "CHROMIUM", tmp_path / "no-chromium")
    result = run_figure("B4", Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path))
    assert result.verdict == "SKIP"
    assert "Chromium" in result.skip_reason and str(tmp_path) in result.skip_reason


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_every_scales_digit_runs_pass_the_checks_start_makes(scale, tmp_path):
    """B4's run at full scale asked for more digits per class than the splits leave, and the Train
    page's Start refused it: the figure was an ERROR in two full bench runs while every tiny-scale
    test passed. Each scale's runs on real data must pass the same deep preflight Start runs."""
    from kt_core.assemble import preflight

    ctx = Context(scale=SCALES[scale], device=torch.device("cpu"), threads=1, workdir=tmp_path)
    for cfg in (ui_tax.ui_config(ctx), figures.memory_config(ctx)):
        preflight(cfg, tmp_path / "runs", deep=True)


def test_lockstep_turns_every_k_batches_cover_each_plain_epoch_once():
    """With turns of k batches the plain side's epoch i runs in k-step turns between engine batches of
    epoch i and finishes at its end; each side's epoch time is the sum of its turns only."""
    from bench.harness import LockstepTurn

    events, clock = [], [0.0]

    def plain_epoch(i):
        for step in range(5):  # 5 plain steps an epoch, as many as the engine's batches
            clock[0] += 1.0  # a plain step "takes" 1 s
            events.append(f"p{i}.{step}")
            yield

    from bench.harness import SideClock

    kt_clock = SideClock(torch.device("cpu"))
    kt_clock.now = lambda: clock[0]
    turn = LockstepTurn(torch.device("cpu"), plain_epoch, every=2, kt_clock=kt_clock)
    turn.now = lambda: clock[0]
    engine = SimpleNamespace(batch_in_epoch=0)  # the engine's FitContext, as far as turns read it
    for epoch in range(3):
        for batch in range(5):
            clock[0] += 3.0  # an engine batch "takes" 3 s
            events.append(f"e{epoch}.{batch}")
            engine.batch_in_epoch = batch + 1
            assert turn.should_stop(engine) is False
        clock[0] += 0.5  # the engine's epoch end (validation, checkpoint) is the engine's time
        engine.batch_in_epoch = 0
        turn.on_epoch_end(engine, {})
        turn.should_stop(engine)  # the engine asks once more after an epoch's end: no turn there
    assert events[:8] == ["e0.0", "e0.1", "p0.0", "p0.1", "e0.2", "e0.3", "p0.2", "p0.3"]
    assert events[8:11] == ["e0.4", "p0.4", "e1.0"]  # the rest of plain epoch 0 at the engine's epoch end
    assert [e for e in events if e.startswith("p")] == [f"p{i}.{s}" for i in range(3) for s in range(5)]
    assert turn.plain_times == [5.0, 5.0, 5.0]  # epoch 0 is warm-up on both sides
    assert turn.kt_times == [15.5, 15.5]  # no start mark for the engine's first epoch
    assert kt_clock() == 3 * 15.5  # the engine's own time, as its checkpoint cadence reads it


def test_alternating_rows_hand_every_other_window_to_the_writer_and_charge_its_settling_to_it():
    """B12's windows: rows reach the writer in on windows only, the writer's settling is timed in
    the on window it belongs to, the first epoch is warm-up, and each pair is (on, the off after it)."""
    from kt_core.callbacks import Callback

    from bench.figures import AlternatingRows

    class Writer(Callback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, ctx, row):
            self.steps.append(row["step"])

    clock, writer = [0.0], Writer()

    def settle():
        clock[0] += 0.5  # the writer thread's work on the row it was handed

    windows = AlternatingRows(writer, torch.device("cpu"), every=1, settle=settle)
    windows.now = lambda: clock[0]
    engine = SimpleNamespace(batch_in_epoch=0, epoch=0, step=0)
    for epoch in range(2):
        engine.epoch, engine.batch_in_epoch = epoch, 0
        windows.on_epoch_start(engine)
        for batch in range(4):
            clock[0] += 2.0  # a batch "takes" 2 s
            engine.step += 1
            engine.batch_in_epoch = batch + 1
            windows.on_step_end(engine, {"step": engine.step})
            assert windows.should_stop(engine) is False
        windows.on_epoch_end(engine, {})
    assert writer.steps == [1, 3, 5, 7]  # the first, third ... batch of each epoch: the on windows
    assert windows.on_s == [2.5, 2.5] and windows.off_s == [2.0, 2.0]  # epoch 1 only; settling is on's
    assert windows.ratios() == [0.8, 0.8]


def test_turns_run_the_loops_k_batches_at_a_time_in_order_and_book_each_epoch_to_its_loop():
    """B30's turns: one loop runs at a time, k batches a turn, round and round; each loop's time is
    its own turns (setup in epoch 0, the work after an epoch's last batch in the next epoch); a loop
    that fails leaves the ring, the others finish, and its error reaches the caller."""
    import threading

    from bench.harness import Turns

    events, clock, lock, own = [], [0.0], threading.Lock(), {}
    turns = Turns(["a", "b", "c"], torch.device("cpu"), every=2)
    turns.now = lambda: clock[0]

    def loop(name, step_s, epochs=2, fail_at=None):
        def run():
            clock[0] += 10.0  # setup: in the loop's first turn
            for epoch in range(epochs):
                for batch in range(4):
                    if (epoch, batch) == fail_at:
                        raise RuntimeError(f"{name} broke")
                    with lock:
                        events.append(f"{name}{epoch}.{batch}")
                    clock[0] += step_s
                    turns.batch_done(name)
                clock[0] += 0.5  # the epoch's end (a checkpoint)
                own[name, epoch] = turns.own_clock(name)()  # what the loop's checkpoint cadence reads
            return name
        return run

    assert turns.run({"a": loop("a", 1.0), "b": loop("b", 2.0), "c": loop("c", 3.0)}) == {n: n for n in "abc"}
    assert events[:8] == ["a0.0", "a0.1", "b0.0", "b0.1", "c0.0", "c0.1", "a0.2", "a0.3"]
    assert sorted(events) == sorted(f"{n}{e}.{b}" for n in "abc" for e in range(2) for b in range(4))
    assert turns.epoch_times("a", 4) == [14.0, 5.0]  # setup + 4 steps; epoch 0's end + 4 steps + epoch 1's end
    assert turns.epoch_times("c", 4) == [22.0, 13.0]
    # each loop's own clock counts its turns alone, though the shared clock ran through all three
    assert own["a", 0] == 14.5 and own["a", 1] == 19.0 and own["c", 1] == 35.0 and clock[0] > 60
    with pytest.raises(ValueError, match="divide"):
        turns.epoch_times("a", 3)

    events.clear()
    turns = Turns(["a", "b"], torch.device("cpu"), every=1)  # the loops above hand on through this one now
    with pytest.raises(RuntimeError, match="a broke"):
        turns.run({"a": loop("a", 1.0, fail_at=(0, 2)), "b": loop("b", 1.0)})
    assert events == ["a0.0", "b0.0", "a0.1", "b0.1"] + [f"b{e}.{b}" for e in range(2) for b in range(4)][2:]


def test_tensorboard_figure_times_rows_that_reach_the_event_files(tmp_path):
    """B12 once timed a logger that could not make its folder and wrote nothing (a 1.00 that meant
    nothing): every row handed to TensorBoard must be read back from its event files."""
    pytest.importorskip("tensorboard")
    result = run_figure("B12", Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path))
    assert result.verdict in ("PASS", "FAIL"), result.error
    assert "read back from the event files" in result.detail
    assert list((tmp_path / "b12_tensorboard" / "0").glob("events.out.tfevents.*"))


def test_interleaving_alternates_the_order_of_the_sides():
    calls = []
    samples = interleave({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [[1.0]] * 3, "b": [[2.0]] * 3}


def test_paired_ratio_compares_runs_that_ran_side_by_side():
    # The machine slowed down by half between repeats: pairs still say "equal", overall bests would not.
    fast_then_slow = {"kt": [[100.0, 90.0], [50.0, 45.0]], "plain": [[100.0, 95.0], [50.0, 40.0]]}
    assert paired_ratio(fast_then_slow["kt"], fast_then_slow["plain"]) == 1.0
    assert paired_ratio([[95.0]], [[100.0]]) == 0.95


def test_plain_cut_refuses_a_model_whose_forward_is_not_its_children():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x) + x)  # the skip connection is not in the children

    with pytest.raises(ValueError, match="not its children in order"):
        plain.split_sequential(Residual(), 1, torch.randn(2, 4))
    prefix, rest = plain.split_sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 2,
                                          torch.randn(2, 4))
    assert not any(p.requires_grad for p in prefix.parameters())
    assert all(p.requires_grad for p in rest.parameters())


def test_plain_batches_follow_the_generator_like_iter_batches():
    from kt_core.data import TensorSplit, iter_batches

    x, y = torch.arange(20.0).view(10, 2), torch.arange(10)
    ours = list(plain.shuffled_batches(x, y, 3, torch.Generator().manual_seed(5)))
    theirs = list(iter_batches(TensorSplit(x, y), 3, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert len(ours) == len(theirs) == 4
    for (xa, ya), (xb, yb) in zip(ours, theirs):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.slow
def test_cold_demo_figures_time_one_click_from_empty_folders(tmp_path, monkeypatch):
    """B22 and B23 share one cold demo per repeat (tiny: the demo's configs cut to seconds); the
    runs land in a fresh runs folder and cache, never in the caller's."""
    monkeypatch.setenv("KT_RUNS_DIR", str(tmp_path / "mine"))
    ctx = Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path)
    ratio, seconds = run_figure("B22", ctx), run_figure("B23", ctx)
    assert ratio.verdict in ("PASS", "FAIL") and seconds.verdict in ("PASS", "FAIL"), (ratio.error, seconds.error)
    assert ratio.detail == seconds.detail  # one measurement, two figures
    timing = demo_speed._cache[id(ctx)][0]
    assert seconds.measured == pytest.approx(timing.wall_s) and ratio.measured == pytest.approx(timing.ratio)
    assert set(timing.train_s) == {"source", "transfer", "baseline"} and all(s > 0 for s in timing.train_s.values())
    assert set(timing.first_step_s) == {"source", "transfer", "baseline"}
    assert "from scratch" in timing.conclusion and "load average" in ratio.detail
    assert not (tmp_path / "mine").exists()  # the user's runs folder is left alone
    assert os.environ["KT_RUNS_DIR"] == str(tmp_path / "mine")


def test_growth_figures_run_at_tiny_scale_and_count_what_is_read(tmp_path):
    """B24-B26 at the smoke-test size: each measures three sizes; the listing opens the same
    files per run folder whatever their number, and a poll reads the same bytes whatever the
    length of the file (counts, not timings: those are the figures' business)."""
    ctx = Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path)
    results = {name: run_figure(name, ctx) for name in ("B24", "B25", "B26")}
    for result in results.values():
        assert result.verdict in ("PASS", "FAIL"), result.error
        assert result.measured > 0
    listing = results["B24"].detail
    assert [int(n) for n in re.findall(r"(\d+) files opened", listing)] == [3 * n for n in growth.SIZES["tiny"]]
    poll = results["B26"].detail
    per_poll = [int(b) for b in re.findall(r"(\d+) bytes read per poll", poll)]
    assert len(per_poll) == 3 and max(per_poll) - min(per_poll) < 100  # 10 new rows' bytes, not the file's


def test_the_experiment_growth_figure_runs_at_tiny_scale_and_counts_what_is_written(tmp_path):
    """B27 at the smoke-test size: three experiments of simulated members driven to their end,
    and the bytes written per member reported at each size (counts; the CPU ratio is the figure's)."""
    ctx = Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path)
    result = run_figure("B27", ctx)
    assert result.verdict in ("PASS", "FAIL"), result.error
    assert result.measured > 0
    sizes = [int(n) for n in re.findall(r"(\d+) members: ", result.detail)]
    assert sizes == list(growth.SIZES["tiny"])
    assert len(re.findall(r"kB written per member", result.detail)) == 3
    assert len(re.findall(r"the Experiments page [\d.]+ s CPU", result.detail)) == 3 and "experiment show" in result.detail
    assert len(re.findall(r"live view.s poll \d+ ms CPU", result.detail)) == 3


@pytest.mark.slow
def test_cache_growth_figure_measures_both_caches_and_the_refusal_at_tiny_scale(tmp_path):
    """B28 at the smoke-test size: at each of three sizes a cold process decodes and caches the
    dataset, a warm one reads it back, has its feature cache refused (the budget at half its need,
    else the figure is an ERROR) and then builds it. What is checked is what sizes cannot blur: the
    on-disk caches hold what the data takes, not more (peaks are the figure's business)."""
    ctx = Context(scale=SCALES["tiny"], device=torch.device("cpu"), threads=1, workdir=tmp_path)
    result = run_figure("B28", ctx)
    assert result.verdict in ("PASS", "FAIL"), result.error
    assert result.measured > 0
    for n in cache_growth.SIZES["tiny"]:
        assert f"{n} images: prepare" in result.detail
    on_disk = [float(x) for x in re.findall(r"(?:the dataset cache file|its file) [\d.]+ KB \(([\d.]+)x\)", result.detail)]
    assert len(on_disk) == 6 and all(0.9 <= x <= 1.3 for x in on_disk), result.detail
    assert result.detail.count("refused: peak") == 3 and cache_growth.REFUSED in result.detail


def test_synthetic_run_folders_are_valid_runs(tmp_path):
    from kt_core import rundir, runs

    ids = growth.make_runs(tmp_path, 4)
    table = runs.list_runs(tmp_path)
    assert sorted(table["id"]) == sorted(ids) and set(table["state"]) == {"completed"}
    assert table["baseline_of"].notna().sum() == 2  # every other one a from-scratch twin
    for run_id in ids:
        assert rundir.load_config(rundir.run_dir(run_id, tmp_path)).validate()
        assert len(rundir.read_metrics(rundir.run_dir(run_id, tmp_path))[0]) == 3 * 6
