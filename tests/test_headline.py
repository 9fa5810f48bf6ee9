"""The headline figure is held out: never measured on the split that chose the checkpoint, and
what the source already knows is measured before the first step."""

from __future__ import annotations

import json

import pytest
from kt_core import headline, rundir, runs
from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.data import load_dataset
from kt_core.headline import Headline


def test_a_test_split_is_carved_before_validation_when_the_dataset_has_none():
    data = load_dataset(DatasetConfig(name="sklearn_digits", val_fraction=0.5, per_class=5, seed=1, normalize="none"))
    assert data.test_origin == "carved" and data.test is not None
    n = {name: len(s) for name, s in data.splits().items()}
    assert abs(n["test"] - 0.2 * 1797) < 10 and n["train"] == 50

    def rows(split):
        return {tuple(r.flatten().tolist()) for r in split.x}

    test = rows(data.test)
    assert not test & rows(data.val) and not test & rows(data.train)  # disjoint from what chooses
    # K does not move it, and the validation split stays independent of K
    other = load_dataset(DatasetConfig(name="sklearn_digits", val_fraction=0.5, per_class=1, seed=1, normalize="none"))
    assert rows(other.test) == test and rows(other.val) == rows(data.val)


def test_a_dataset_with_its_own_test_split_keeps_it_and_none_is_carved_without_validation():
    shapes = load_dataset(DatasetConfig(name="synthetic_shapes", options={"per_class": 20, "test_per_class": 5}))
    assert shapes.test_origin == "dataset" and len(shapes.test) == 5 * len(shapes.class_names)
    plain = load_dataset(DatasetConfig(name="sklearn_digits", val_fraction=0.0))
    assert plain.test is None and plain.sizes() == {"train": 1797}
    off = load_dataset(DatasetConfig(name="sklearn_digits", test_fraction=0.0))
    assert off.test is None


@pytest.mark.parametrize("summary, value, split", [
    ({"test_acc": 0.90, "best_val_acc": 0.97, "final_val_acc": 0.95, "test_split": "dataset"}, 0.90, "test"),
    ({"test_acc": 0.88, "best_val_acc": 0.97, "test_split": "carved"}, 0.88, "test"),
    ({"best_val_acc": 0.97, "final_val_acc": 0.95}, 0.95, "val"),  # no held-out split: said so
    ({}, None, ""),
])
def test_the_headline_is_the_held_out_figure_and_never_the_best_validation_one(summary, value, split):
    head = headline.headline(summary)
    assert head.value == value and head.split == split
    assert head.value is None or head.value != summary.get("best_val_acc")
    if split == "test":
        assert head.held_out and head.checkpoint == "best" and "held-out" in head.label
        assert ("carved" in head.label) is (summary["test_split"] == "carved")
    elif split == "val":
        assert not head.held_out and "not a held-out figure" in head.label


def test_headline_format_and_the_stored_copy():
    head = Headline(0.9345, "held-out accuracy (test split, best-on-validation checkpoint)", "test", "best")
    assert head.format() == "93.5 % held-out accuracy (test split, best-on-validation checkpoint)"
    assert headline.headline({"headline": head.__dict__, "test_acc": 0.1}) == head
    assert Headline(None, "accuracy (no result yet)", "", "").format().startswith("—")
    assert headline.before_training({"test_acc": 0.9, "before_training": {"val_acc": 0.8, "test_acc": 0.7}}) \
        == "before training: 70.0 %"
    assert headline.before_training({"test_acc": 0.9}) is None


@pytest.fixture(scope="module")
def transfer_run(finished_run, tmp_path_factory):
    """A run from the finished source run on the same three classes: its head is kept."""
    from kt_core.worker import run_worker

    source = rundir.load_config(finished_run)
    cfg = RunConfig(name="kept", source=SourceConfig(kind="run", path=str(finished_run)),
                    dataset=source.dataset, plan=TransferPlan(preset="feature_extraction"),
                    train=TrainConfig(epochs=2, batch_size=16, device="cpu"))
    folder = rundir.create_run(cfg, tmp_path_factory.mktemp("runs"))
    assert run_worker(folder)["state"] == "completed"
    return folder


def test_a_kept_head_is_measured_before_the_first_step_and_the_summary_says_so(transfer_run):
    rows, _ = rundir.read_metrics(transfer_run)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    zero = epochs[0]
    assert zero["epoch"] == 0 and zero["step"] == 0 and zero["before_training"]
    assert zero["val_acc"] is not None and zero["test_acc"] is not None
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    summary = json.loads((transfer_run / "summary.json").read_text())
    assert summary["before_training"]["val_acc"] == zero["val_acc"]
    assert summary["head"].startswith("source head kept")
    assert summary["epochs"] == 2 and summary["test_split"] == "carved"
    head = headline.headline(summary)
    assert head.split == "test" and head.value == summary["test_acc"] == summary["headline"]["value"]
    frame = runs.compare([transfer_run.name], transfer_run.parent)
    assert frame["headline"].iloc[0] == head.value and frame["before_training"].iloc[0] == zero["test_acc"]


def test_the_held_out_figure_is_the_best_validation_checkpoint_on_the_test_split(transfer_run):
    from kt_core.engine import evaluate
    from kt_core.evaluate import load_run

    loaded = load_run(transfer_run, checkpoint="best")
    _, acc = evaluate(loaded.model, loaded.data.test, "cpu")
    summary = json.loads((transfer_run / "summary.json").read_text())
    assert acc == pytest.approx(summary["test_acc"])


def test_the_epoch_zero_point_is_drawn_first(transfer_run):
    from ui.curves import Series, traces

    rows, _ = rundir.read_metrics(transfer_run)
    assert rows[0]["kind"] == "epoch" and rows[0]["epoch"] == 0  # written before any step
    val = next(t for t in traces([Series("run", rows)]) if t.name == "run · val acc")
    assert val.x == [0, 1, 2] and val.y[0] == rows[0]["val_acc"]


def test_a_new_head_is_not_measured_before_training(finished_run):
    rows, _ = rundir.read_metrics(finished_run)  # a random-weight source: nothing to measure
    assert not any(r.get("before_training") for r in rows)
    assert json.loads((finished_run / "summary.json").read_text())["before_training"] is None
