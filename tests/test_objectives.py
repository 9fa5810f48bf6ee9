"""Objectives: knowledge distillation (logit, feature), unlabelled images and L2-SP.

Real runs here are mnist_net on scikit-learn's digits (offline), taught by a small run trained
once for the module (`teacher_run`).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kt_core import assemble, launcher, rundir
from kt_core.config import DatasetConfig, DistillConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.engine import Callback, fit
from kt_core.errors import ConfigError
from kt_core.objectives import (L2SP, CrossEntropy, DistillError, LayerTap, LogitKD, Objective, SetupContext, Teacher,
                                kd_loss, plain_objective)
from kt_core.data import TensorSplit
from kt_core.worker import run_worker

VOLATILE = ("time", "images_per_s", "epoch_s")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """mnist_net trained from scratch on all ten digits for two epochs: a teacher with weights."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher_runs")
    cfg = RunConfig(name="kd-teacher", source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", per_class=40),
                    plan=TransferPlan(preset="scratch"), train=TrainConfig(epochs=2, batch_size=32, device="cpu"))
    folder = rundir.create_run(cfg, root)
    assert run_worker(folder)["state"] == "completed"
    return folder


def student_cfg(teacher, mode="logit", alpha=0.9, epochs=2, preset="fine_tune", **dataset) -> RunConfig:
    """The teacher's own architecture fine-tuned from the teacher, taught by it (the seed's
    knowledge transfer network), on few digits."""
    ds = {"name": "sklearn_digits", "per_class": 5, **dataset}
    return RunConfig(name="student", source=SourceConfig(kind="run", path=str(teacher)),
                     dataset=DatasetConfig(**ds), plan=TransferPlan(preset=preset),
                     train=TrainConfig(epochs=epochs, batch_size=16, device="cpu", log_every=3, seed=1),
                     distill=DistillConfig(mode=mode, alpha=alpha))


class Rows(Callback):
    def __init__(self):
        self.rows, self.checkpoints = [], {}

    def on_step_end(self, ctx, row):
        self.rows.append(row)

    def on_epoch_end(self, ctx, row):
        self.rows.append(row)

    def on_checkpoint(self, ctx, state, tags):
        self.checkpoints.update(dict.fromkeys(tags, state))


def train(cfg: RunConfig, objective="config"):
    """prepare + fit in this process: (rows, final model state, prepared)."""
    prepared = assemble.prepare(cfg)
    rec = Rows()
    obj = prepared.objective if objective == "config" else objective
    fit(prepared.model, prepared.data, cfg, prepared.plan, [rec], objective=obj)
    return rec, {k: v.clone() for k, v in prepared.model.state_dict().items()}, prepared


def stable(rows, keys=None):
    return [{k: v for k, v in r.items() if k not in VOLATILE and (keys is None or k in keys)} for r in rows]


# --- the loss itself -----------------------------------------------------------------------

def test_kd_loss_is_hintons_formula_with_the_t_squared_factor():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for T in (1.0, 4.0):
        p_t = torch.softmax(t / T, 1)
        kl = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
        assert kd_loss(s, t, T).item() == pytest.approx(T * T * kl.item(), rel=1e-6)
    # the whole objective: (1 - alpha) * CE + alpha * T^2 * KL, alpha weighting the soft term
    model = nn.Linear(5, 5, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(5))  # the teacher's logits are its inputs: t
    teacher = Teacher(model, LayerTap(None, None))
    alpha, T = 0.9, 4.0
    objective = Objective([(1 - alpha, CrossEntropy()), (alpha, LogitKD(teacher, T))])
    objective.setup(SetupContext(model=nn.Identity(), train_split=TensorSplit(t, y), device=torch.device("cpu"),
                                 cache=True))
    total, (ce, kd) = objective(s, y, torch.arange(6), t)
    p_t = torch.softmax(t / T, 1)
    expected_kd = T * T * (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    assert kd.item() == pytest.approx(expected_kd.item(), rel=1e-6)
    assert ce.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert total.item() == pytest.approx((1 - alpha) * ce.item() + alpha * expected_kd.item(), rel=1e-6)
    assert objective.terms == ("loss_ce", "loss_kd")


def test_unlabelled_images_are_left_out_of_the_cross_entropy_and_a_batch_of_them_costs_nothing():
    term = CrossEntropy()
    logits = torch.randn(4, 3)
    term.setup(SetupContext(model=nn.Identity(), train_split=TensorSplit(logits, torch.tensor([0, 1, -1, -1])),
                            device=torch.device("cpu"), cache=False))
    y = torch.tensor([0, 1, -1, -1])
    assert term(logits, y, None, None).item() == pytest.approx(F.cross_entropy(logits[:2], y[:2]).item(), rel=1e-6)
    assert term(logits, torch.full((4,), -1), None, None).item() == 0.0


# --- runs --------------------------------------------------------------------------------------

def test_soft_weight_zero_is_exactly_a_plain_run(teacher_run):
    distilled, weights_kd, _ = train(student_cfg(teacher_run, alpha=0.0))
    plain_cfg = student_cfg(teacher_run)
    plain_cfg.distill = DistillConfig()
    plain, weights_plain, _ = train(plain_cfg)
    keys = ("kind", "step", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert stable(distilled.rows, keys) == stable(plain.rows, keys)
    assert all(torch.equal(weights_kd[k], weights_plain[k]) for k in weights_plain)
    assert "loss_kd" in distilled.rows[0] and "loss_kd" not in plain.rows[0]


def test_a_cached_teacher_gives_the_losses_of_an_uncached_one(teacher_run):
    cached, _, p_cached = train(student_cfg(teacher_run, alpha=0.9))
    cfg = student_cfg(teacher_run, alpha=0.9)
    cfg.train.feature_cache = False  # the one switch of "compute fixed functions of the image once"
    uncached, _, p_uncached = train(cfg)
    assert p_cached.objective.describe()["loss_kd"]["teacher_cached"] is True
    assert p_uncached.objective.describe()["loss_kd"]["teacher_cached"] is False
    assert len(cached.rows) == len(uncached.rows)
    for a, b in zip(stable(cached.rows), stable(uncached.rows)):
        assert a.keys() == b.keys()
        for key in ("train_loss", "loss_ce", "loss_kd", "val_acc"):
            if a.get(key) is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("mode", ["logit", "feature"])
def test_an_uncached_teacher_runs_once_per_batch_before_the_students_forward(teacher_run, mode):
    """As a plain KD loop does it: the teacher's activations are gone before the student's graph
    holds memory (running it after the student cost ~10x the page faults and ~5 % CPU time)."""
    cfg = student_cfg(teacher_run, mode=mode, epochs=2)
    cfg.train.feature_cache = False
    prepared = assemble.prepare(cfg)
    teacher = next(term.teacher for _, term in prepared.objective.parts if hasattr(term, "teacher"))
    calls, recording = [], []

    class Record(Callback):
        def on_epoch_start(self, ctx):
            recording.append(True)  # setup's probes (feature mode) come before: not batches

    teacher.model.register_forward_pre_hook(lambda m, a: calls.append("teacher") if recording else None)
    prepared.model.register_forward_pre_hook(
        lambda m, a: calls.append("student") if recording and m.training else None)  # not validation
    result = fit(prepared.model, prepared.data, cfg, prepared.plan, [Record()], objective=prepared.objective)
    assert not prepared.objective.describe()[f"loss_{'kd' if mode == 'logit' else 'feat'}"]["teacher_cached"]
    assert result.steps > 2 and calls == ["teacher", "student"] * result.steps


def test_a_frozen_backbone_is_feature_cached_under_a_cached_teacher_and_not_under_an_uncached_one(teacher_run,
                                                                                                    monkeypatch):
    """The feature cache hands the head the backbone's features instead of images; a teacher that
    was not cached (too large, say) runs on each batch's images, so the two must not meet."""
    import kt_core.objectives as objectives_module

    def run(cfg):
        prepared, rec = assemble.prepare(cfg), Rows()
        result = fit(prepared.model, prepared.data, cfg, prepared.plan, [rec], objective=prepared.objective)
        return result, rec, prepared

    cfg = student_cfg(teacher_run, preset="feature_extraction")
    cached_result, cached, p_cached = run(cfg)
    assert cached_result.feature_cache and p_cached.objective.describe()["loss_kd"]["teacher_cached"]
    monkeypatch.setattr(objectives_module, "compute_once", lambda *a, **k: None)  # the teacher's cache refused
    result, uncached, p_uncached = run(cfg)
    assert not p_uncached.objective.describe()["loss_kd"]["teacher_cached"]
    assert not result.feature_cache  # the student runs whole, on the images the teacher sees
    for a, b in zip(stable(cached.rows), stable(uncached.rows)):
        for key in ("train_loss", "loss_kd", "val_acc"):
            if a.get(key) is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_a_teacher_of_other_classes_is_refused_for_logit_distillation_with_the_ways_out(teacher_run):
    three = RunConfig(name="three", source=SourceConfig(kind="arch", arch="mnist_net"),
                      dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5),
                      plan=TransferPlan(preset="scratch"), train=TrainConfig(epochs=1, device="cpu"))
    folder = rundir.create_run(three, teacher_run.parent)
    assert run_worker(folder)["state"] == "completed"
    cfg = student_cfg(teacher_run)  # all ten digits
    cfg.distill.teacher = SourceConfig(kind="run", path=str(folder))
    with pytest.raises(DistillError) as err:
        assemble.prepare(cfg)
    assert "no class '3'" in err.value.message
    assert "feature" in err.value.hint and "fine-tune the teacher" in err.value.hint
    # a target whose classes the teacher does predict (a subset, in another order) is taught
    cfg.dataset.classes = [2, 0]
    prepared = assemble.prepare(cfg)
    assert prepared.objective.parts[1][1].teacher.class_index == [2, 0]
    # the same teacher teaches features whatever the label spaces
    cfg.dataset.classes, cfg.distill.mode = None, "feature"
    assert assemble.prepare(cfg).objective.terms == ("loss_ce", "loss_feat")


def test_a_teacher_with_random_weights_is_refused():
    cfg = RunConfig(source=SourceConfig(kind="arch", arch="mnist_net"), dataset=DatasetConfig(per_class=5),
                    plan=TransferPlan(preset="scratch"), distill=DistillConfig(mode="logit"))
    with pytest.raises(DistillError, match="random weights"):
        assemble.prepare(cfg)


def test_feature_distillation_trains_its_adapter_and_the_export_holds_the_student_alone(teacher_run, tmp_path):
    from kt_core.export import export_run
    from kt_core.rundir import load_checkpoint

    cfg = student_cfg(teacher_run, mode="feature", epochs=1)
    folder = rundir.create_run(cfg, teacher_run.parent)
    assert run_worker(folder)["state"] == "completed"
    ckpt = load_checkpoint(folder / "checkpoints" / "last.pt")
    adapter = ckpt["objective"]["loss_feat"]["adapter"]
    initial = assemble.prepare(cfg).objective.parts[1][1]
    initial.setup(SetupContext(model=assemble.prepare(cfg).model, train_split=assemble.prepare(cfg).data.train,
                               device=torch.device("cpu"), cache=False, seed=cfg.train.seed))
    assert any(not torch.equal(adapter[k], v) for k, v in initial.adapter.state_dict().items())  # it trained
    student_keys = set(assemble.prepare(cfg).model.state_dict())
    assert set(ckpt["model"]) == student_keys
    path = export_run(folder, "state_dict", tmp_path / "export")
    assert set(torch.load(path, weights_only=True)) == student_keys
    rows, _ = rundir.read_metrics(folder)
    trained = [r for r in rows if not r.get("before_training")]  # the epoch-0 row measures, it takes no step
    assert trained and all("loss_feat" in r and "loss_ce" in r for r in trained)
    summary = json.loads((folder / "summary.json").read_text())
    assert "feature KD" in summary["method"] and summary["objective"]["loss_feat"]["adapter"] == "Linear"


def test_l2sp_with_alpha_zero_is_exactly_a_plain_run_and_alpha_keeps_weights_near_the_source(teacher_run):
    cfg = student_cfg(teacher_run)
    cfg.distill = DistillConfig()
    source = {k: v.clone() for k, v in assemble.prepare(cfg).model.state_dict().items()}
    plain, weights_plain, _ = train(cfg, objective=plain_objective())
    zero = Objective([(1.0, CrossEntropy()), (1.0, L2SP(0.0, 0.0, source))])
    with_l2sp, weights_zero, _ = train(cfg, objective=zero)
    keys = ("kind", "step", "epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    assert stable(with_l2sp.rows, keys) == stable(plain.rows, keys)
    assert all(torch.equal(weights_zero[k], weights_plain[k]) for k in weights_plain)
    assert with_l2sp.rows[0]["loss_l2sp"] == 0.0

    strong = student_cfg(teacher_run)
    strong.distill, strong.plan.l2sp_alpha = DistillConfig(), 1.0
    held, weights_held, prepared = train(strong)
    assert prepared.objective.terms == ("loss_ce", "loss_l2sp") and held.rows[-1]["loss_l2sp"] > 0

    def drift(weights):
        return sum(((weights[k].float() - source[k].float()) ** 2).sum().item()
                   for k in source if k in weights and weights[k].dtype.is_floating_point)

    assert drift(weights_held) < drift(weights_plain)


def test_l2sp_toward_the_source_is_refused_from_scratch_with_the_way_out():
    with pytest.raises(ConfigError) as err:
        TransferPlan(preset="scratch", l2sp_alpha=0.01).validate()
    assert "no source weights to stay near" in err.value.message and "fine_tune" in err.value.hint
    TransferPlan(preset="scratch", l2sp_beta=0.01).validate()  # toward zero needs no source


def test_unlabelled_images_are_the_rest_of_the_pool_with_labels_hidden(teacher_run):
    from kt_core.data import load_dataset, split_labels

    data = load_dataset(DatasetConfig(name="sklearn_digits", per_class=3, unlabelled=True))
    full = load_dataset(DatasetConfig(name="sklearn_digits"))
    assert len(data.train) == 30 and len(data.train) + len(data.unlabelled) == len(full.train)
    assert bool((split_labels(data.unlabelled) == -1).all())
    assert data.sizes()["unlabelled"] == len(data.unlabelled) and "unlabelled" not in data.counts()
    assert len(data.training_split()) == len(full.train)
    with pytest.raises(ConfigError, match="distillation is off"):
        RunConfig(source=SourceConfig(arch="mnist_net"), dataset=DatasetConfig(per_class=3, unlabelled=True)).validate()
    with pytest.raises(ConfigError, match="per_class"):
        DatasetConfig(unlabelled=True).validate()
    # a run over them: train_acc counts the labelled images only, the teacher's term all of them
    rec, _, prepared = train(student_cfg(teacher_run, epochs=1, per_class=3, unlabelled=True))
    epoch = [r for r in rec.rows if r["kind"] == "epoch"][0]
    assert epoch["step"] == -(-len(full.train) // 16)
    assert 0.0 <= epoch["train_acc"] <= 1.0 and epoch["train_acc"] * 30 == pytest.approx(round(epoch["train_acc"] * 30))


def test_the_baseline_of_a_distillation_run_learns_from_labels_alone(teacher_run):
    cfg = student_cfg(teacher_run, unlabelled=True)
    base = cfg.as_baseline("x")
    assert base.distill.mode == "off" and not base.dataset.unlabelled and base.plan.preset == "scratch"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="distill"):
        RunConfig.from_dict({**cfg.to_dict(), "distill": {"mode": "logit", "alfa": 0.5}})
    assert "logit KD from the source (T=4, soft weight alpha=0.9)" in cfg.method()


# --- a real worker, killed -----------------------------------------------------------------

@pytest.mark.slow
def test_a_distillation_run_killed_with_sigkill_resumes_to_the_same_metrics(teacher_run, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = student_cfg(teacher_run, mode="feature", epochs=4, per_class=5, unlabelled=True)
    cfg.train.batch_size = 64
    whole = rundir.create_run(cfg, tmp_path)
    assert run_worker(whole)["state"] == "completed"

    run_id = launcher.launch(cfg, tmp_path)
    folder = tmp_path / run_id
    deadline = time.monotonic() + 120
    while not any(r.get("kind") == "step" and r["epoch"] >= 2 for r in rundir.read_metrics(folder)[0]):
        assert time.monotonic() < deadline, "no step row of epoch 2"
        time.sleep(0.05)
    os.kill(rundir.read_status(folder)["pid"], 9)
    while rundir.read_status(folder)["state"] != "interrupted":
        assert time.monotonic() < deadline + 15
        time.sleep(0.05)
    launcher.resume(folder)
    while rundir.read_status(folder)["state"] in rundir.ACTIVE_STATES:
        assert time.monotonic() < deadline + 240
        time.sleep(0.1)
    assert rundir.read_status(folder)["state"] == "completed"
    assert "resumed at epoch" in (folder / "log.txt").read_text()
    assert stable(rundir.read_metrics(folder)[0]) == stable(rundir.read_metrics(whole)[0])


def test_the_cli_trains_a_student_with_a_teacher_and_compare_shows_the_method(teacher_run, tmp_path, capsys):
    from kt_core.cli import main

    cfg = student_cfg(teacher_run, epochs=1)
    cfg.distill = DistillConfig()
    path = tmp_path / "student.json"
    path.write_text(cfg.to_json())
    root = str(teacher_run.parent)
    assert main(["train", str(path), "--runs-dir", root, "--distill", "logit", "--teacher", str(teacher_run),
                 "--alpha", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    folder = rundir.run_dir(result["run_id"], root)
    saved = RunConfig.from_file(folder / "config.json").distill
    assert (saved.mode, saved.alpha, saved.teacher.kind) == ("logit", 0.5, "run")
    assert main(["compare", folder.name, teacher_run.name, "--runs-dir", root, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert any("logit KD" in str(row.get("method")) for row in table)
    assert any(row.get("distill.mode") == "logit" for row in table)
    assert main(["train", str(path), "--runs-dir", root, "--alpha", "1.5"]) != 0
    assert "distill.alpha" in capsys.readouterr().err
