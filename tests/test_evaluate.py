"""Evaluation: metrics checked against hand counts, misclassified examples, runs and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kt_core.cli import main
from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.data import TensorSplit
from kt_core.errors import DatasetError, KTError, RunError
from kt_core.evaluate import evaluate_model, evaluate_run, load_run

# The "model" is the identity: each input row *is* the logits, so every number below is known.
LOGITS = torch.tensor([
    [4.0, 0.0, 0.0],  # 0 -> 0
    [3.0, 0.0, 0.0],  # 0 -> 0
    [0.0, 0.0, 5.0],  # 0 -> 2, very confident
    [0.0, 2.0, 0.0],  # 1 -> 1
    [1.0, 0.0, 0.0],  # 1 -> 0, barely
    [0.0, 0.0, 3.0],  # 2 -> 2
])
LABELS = torch.tensor([0, 0, 0, 1, 1, 2])
NAMES = ["cat", "dog", "owl"]


def test_metrics_match_hand_counts():
    result = evaluate_model(nn.Identity(), TensorSplit(LOGITS, LABELS), NAMES, batch_size=4)
    assert result.num_samples == 6
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.loss == pytest.approx(nn.functional.cross_entropy(LOGITS, LABELS).item())
    assert result.confusion == [[2, 0, 1], [1, 1, 0], [0, 0, 1]]
    per_class = {c["class"]: c for c in result.per_class}
    assert per_class["cat"]["precision"] == pytest.approx(2 / 3) and per_class["cat"]["recall"] == pytest.approx(2 / 3)
    assert per_class["dog"]["precision"] == 1.0 and per_class["dog"]["recall"] == 0.5
    assert per_class["owl"]["precision"] == 0.5 and per_class["owl"]["recall"] == 1.0
    assert per_class["owl"]["f1"] == pytest.approx(2 / 3)
    assert [c["support"] for c in result.per_class] == [3, 2, 1]
    assert result.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 2 / 3) / 3)


def test_misclassified_examples_most_confident_first_with_their_split_index():
    result = evaluate_model(nn.Identity(), TensorSplit(LOGITS, LABELS), NAMES, max_misclassified=None)
    assert result.num_misclassified == 2
    first, second = result.misclassified
    assert (first["index"], first["true"], first["predicted"]) == (2, "cat", "owl")
    assert first["confidence"] == pytest.approx(LOGITS[2].softmax(0)[2].item())
    assert (second["index"], second["true"], second["predicted"]) == (4, "dog", "cat")
    assert first["confidence"] > second["confidence"]
    capped = evaluate_model(nn.Identity(), TensorSplit(LOGITS, LABELS), NAMES, max_misclassified=1)
    assert [m["index"] for m in capped.misclassified] == [2] and capped.num_misclassified == 2
    json.dumps(result.to_dict())  # plain data, ready for --json and the UI


def test_a_class_missing_from_the_split_gets_zeros_not_a_crash():
    result = evaluate_model(nn.Identity(), TensorSplit(LOGITS[:3], LABELS[:3]), NAMES)
    owl = result.per_class[2]
    assert owl["support"] == 0 and owl["recall"] == 0.0 and owl["precision"] == 0.0


def test_evaluation_restores_the_model_mode():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    model.train()
    a = evaluate_model(model, TensorSplit(LOGITS, LABELS), NAMES)
    b = evaluate_model(model, TensorSplit(LOGITS, LABELS), NAMES)
    assert model.training
    assert a.accuracy == b.accuracy and a.loss == b.loss  # dropout off during evaluation


@pytest.mark.parametrize("model, split, names, error, words", [
    (nn.Identity(), TensorSplit(LOGITS, LABELS), ["a", "b"], KTError, ["3", "2 classes"]),
    (nn.Identity(), TensorSplit(LOGITS[:0], LABELS[:0]), NAMES, DatasetError, ["empty"]),
])
def test_mismatches_fail_clearly(model, split, names, error, words):
    with pytest.raises(error) as info:
        evaluate_model(model, split, names)
    assert all(w in str(info.value) for w in words) and info.value.hint


# --- a real run -----------------------------------------------------------------------------

def test_evaluate_run_uses_the_best_checkpoint_on_the_runs_own_split(finished_run):
    from kt_core.engine import evaluate

    result = evaluate_run(finished_run, "val")
    run = load_run(finished_run)
    loss, acc = evaluate(run.model, run.data.val)  # the engine's own numbers agree
    assert result.accuracy == pytest.approx(acc) and result.loss == pytest.approx(loss, rel=1e-5)
    assert result.num_samples == len(run.data.val) and result.class_names == ["0", "1", "2"]
    assert result.run == finished_run.name and result.checkpoint == "best"
    summary = json.loads((finished_run / "summary.json").read_text())
    assert result.accuracy == pytest.approx(summary["best_val_acc"])
    saved = json.loads((finished_run / "eval" / "val.json").read_text())
    assert saved["accuracy"] == result.accuracy and saved["confusion"] == result.confusion


def test_cli_eval_json_and_text(finished_run, capsys):
    assert main(["eval", str(finished_run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"accuracy", "confusion", "per_class", "misclassified", "loss"} <= set(data)
    assert sum(map(sum, data["confusion"])) == data["num_samples"]

    assert main(["eval", str(finished_run), "--checkpoint", "last"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "precision" in text and "misclassified" in text


def test_cli_eval_errors_are_one_line(finished_run, tmp_path, capsys):
    assert main(["eval", str(finished_run), "--split", "test"]) == 0  # the carved, held-out test split
    capsys.readouterr()

    assert main(["eval", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_a_run_without_checkpoints_cannot_be_evaluated_yet(tmp_path):
    from kt_core import rundir
    from kt_core.config import RunConfig, SourceConfig

    folder = rundir.create_run(RunConfig(source=SourceConfig(kind="arch", arch="mnist_net")), tmp_path)
    with pytest.raises(KTError, match="no checkpoint"):
        evaluate_run(folder)


# --- runs whose source is gone ------------------------------------------------------------------

def trained(source: SourceConfig, classes, runs_dir, name="run", preset="fine_tune"):
    from kt_core import rundir
    from kt_core.worker import run_worker

    cfg = RunConfig(name=name, source=source, plan=TransferPlan(preset=preset),
                    dataset=DatasetConfig(name="sklearn_digits", classes=classes, per_class=5),
                    train=TrainConfig(epochs=1, batch_size=16, device="cpu"))
    folder = rundir.create_run(cfg, runs_dir)
    status = run_worker(folder)
    assert status["state"] == "completed", status.get("error")
    return folder


def no_rebuild_through_the_source(*args, **kwargs):
    raise AssertionError("the run's model must be rebuilt from its checkpoint, not through assemble.prepare")


def test_a_run_is_evaluated_and_exported_after_its_source_run_is_deleted(tmp_path, monkeypatch):
    from kt_core import assemble, data, launcher
    from kt_core.export import export_run

    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("KT_RUNS_DIR", str(runs_dir))
    source = trained(SourceConfig(kind="arch", arch="mnist_net"), [0, 1, 2], runs_dir, "digits source", "scratch")
    target = trained(SourceConfig(kind="run", path="digits source"), [3, 4], runs_dir)  # by name, as train takes it
    before = evaluate_run(target, save=False)
    launcher.delete(source)
    monkeypatch.setattr(assemble, "prepare", no_rebuild_through_the_source)
    after = evaluate_run(target, save=False)
    assert (after.accuracy, after.loss, after.confusion) == (before.accuracy, before.loss, before.confusion)
    assert after.class_names == ["3", "4"]
    summary = json.loads((target / "summary.json").read_text())
    assert after.accuracy == pytest.approx(summary["best_val_acc"])

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("export needs no dataset"))
    path = export_run(target, "state_dict")
    meta = json.loads((path.parent / f"{path.name}.json").read_text())
    assert meta["class_names"] == ["3", "4"] and meta["input_size"] == [1, 28, 28] and meta["arch"] == "mnist_net"
    assert len(meta["normalization"][0]) == 1


def test_a_file_source_may_go_unless_the_model_runs_its_code(tmp_path, monkeypatch):
    from kt_core.models import build_model
    from kt_core.rundir import load_checkpoint

    runs_dir = tmp_path / "runs"
    weights = tmp_path / "net.pt"
    torch.save(build_model("mnist_net").state_dict(), weights)
    run = trained(SourceConfig(kind="file", path=str(weights)), [0, 1, 2], runs_dir)
    expected = evaluate_run(run, save=False)
    weights.unlink()
    assert evaluate_run(run, save=False).confusion == expected.confusion
    # A checkpoint written before `built_from` was recorded: a gone file source -> its architecture.
    for ckpt in (run / "checkpoints").glob("*.pt"):
        state = load_checkpoint(ckpt)
        assert state.pop("built_from") == "arch"
        ckpt.unlink()  # best.pt may be a hard link to last.pt
        torch.save(state, ckpt)
    assert evaluate_run(run, save=False).confusion == expected.confusion

    # TorchScript: the model is the file's own code, with a new head; it needs the file.
    script = tmp_path / "ts.pt"
    with pytest.warns(FutureWarning):
        torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 7))
                         ).save(str(script))
    run = trained(SourceConfig(kind="file", path=str(script), trust=True), [0, 1, 2], runs_dir)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["built_from"] == "source"
    expected = evaluate_run(run, save=False)
    summary = json.loads((run / "summary.json").read_text())
    assert expected.accuracy == pytest.approx(summary["best_val_acc"])
    script.unlink()
    with pytest.raises(RunError, match="runs the code of its source") as err:
        evaluate_run(run, save=False)
    assert str(script) in err.value.message and "put the source file back" in err.value.hint


@pytest.mark.real_data
def test_a_real_third_party_checkpoint_scores_its_published_accuracy_on_real_mnist(real_data):
    """pytorch/examples' MNIST Net: 98.94 % on the official test set with Normalize(0.1307, 0.3081)."""
    from kt_core.config import SourceConfig
    from kt_core.data import read_idx
    from kt_core.sources import load_source

    model = load_source(SourceConfig(kind="file", path=str(real_data / "checkpoints" / "mnist_cnn.pt"))).model
    x = read_idx(real_data / "mnist" / "t10k-images-idx3-ubyte.gz").float().div(255).sub(0.1307).div(0.3081)
    y = read_idx(real_data / "mnist" / "t10k-labels-idx1-ubyte.gz").long()
    result = evaluate_model(model, TensorSplit(x.unsqueeze(1), y), [str(d) for d in range(10)], batch_size=1000)
    assert result.accuracy == pytest.approx(0.9894, abs=5e-5)
    assert result.num_misclassified == 106
    assert [c["support"] for c in result.per_class] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert sum(result.confusion[d][d] for d in range(10)) == 9894


@pytest.mark.parametrize("seed", range(6))
def test_per_class_metrics_are_scikit_learns(seed):
    # the reference users compare against, over random predictions of 5 classes, some of them
    # never predicted or absent from the labels (where scikit-learn's zero_division=0 applies)
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from kt_core.evaluate import confusion_counts, per_class_metrics

    g = torch.Generator().manual_seed(seed)
    k = 5
    labels = torch.randint(0, k - seed % 3, (40,), generator=g)
    predicted = torch.randint(seed % 2, k, (40,), generator=g)
    confusion = confusion_counts(labels, predicted, k)
    assert (confusion == confusion_matrix(labels.numpy(), predicted.numpy(), labels=list(range(k)))).all()
    ours = per_class_metrics(confusion)
    theirs = precision_recall_fscore_support(labels.numpy(), predicted.numpy(), labels=list(range(k)), zero_division=0)
    for mine, reference in zip(ours, theirs):
        assert mine == pytest.approx(reference, abs=1e-12)
