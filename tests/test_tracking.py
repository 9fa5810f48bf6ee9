"""Runs in the trackers people already use: TensorBoard event files in every run folder (read back
with TensorBoard's own reader), and an MLflow round trip against a local tracking store."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
import torch

from kt_core import launcher, rundir
from kt_core.cli import main
from kt_core.callbacks import Callback
from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.worker import run_worker


def accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def tiny_config(name="tb", epochs=2, **train) -> RunConfig:
    return RunConfig(name=name, source=SourceConfig(kind="arch", arch="mnist_net"),
                     dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5),
                     plan=TransferPlan(preset="fine_tune"),
                     train=TrainConfig(epochs=epochs, batch_size=8, device="cpu", **train))


def test_every_run_writes_tensorboard_events_holding_its_metrics(finished_run):
    acc = accumulator(finished_run)
    rows, _ = rundir.read_metrics(finished_run)
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    tags = acc.Tags()
    for key in ("train_loss", "lr", "images_per_s"):
        got = scalars(acc, f"step/{key}")
        assert [s for s, _ in got] == [r["step"] for r in steps]
        assert np.allclose([v for _, v in got], [r[key] for r in steps], rtol=1e-6)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "lr"):
        got = scalars(acc, f"epoch/{key}")
        assert [s for s, _ in got] == [r["step"] for r in epochs]
        assert np.allclose([v for _, v in got], [r[key] for r in epochs], rtol=1e-6)
    # The config as text, the confusion matrix as an image (3 classes: 3 x 3 cells) and a table.
    config_tag = next(t for t in tags["tensors"] if t.startswith("config"))
    text = acc.Tensors(config_tag)[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n").removeprefix("json\n"))["name"] == "finished"
    (image,) = acc.Images("confusion_matrix")
    assert (image.width, image.height) == (3 * 28, 3 * 28) and image.step == epochs[-1]["step"]
    table_tag = next(t for t in tags["tensors"] if t.startswith("confusion_matrix"))
    table = acc.Tensors(table_tag)[0].tensor_proto.string_val[0].decode()
    assert "true \\ predicted" in table and table.count("\n") == 1 + 3


def test_a_resumed_run_keeps_one_value_per_step_in_tensorboard(tmp_path):
    folder = rundir.create_run(tiny_config(epochs=3, log_every=1), tmp_path)

    class Stop(Callback):
        def should_stop(self, ctx):
            return ctx.epoch >= 1 and ctx.batch_in_epoch == 1

    assert run_worker(folder, callbacks=[Stop()])["state"] == "stopped"
    launcher.resume(folder, foreground=True)
    assert rundir.read_status(folder)["state"] == "completed"
    acc = accumulator(folder)
    rows, _ = rundir.read_metrics(folder)
    logged = [r["step"] for r in rows if r["kind"] == "step"]
    # Steps a stopped session wrote past its checkpoint are purged, as metrics.jsonl is cut back.
    assert [s for s, _ in scalars(acc, "step/train_loss")] == logged == sorted(set(logged))
    assert [s for s, _ in scalars(acc, "epoch/val_acc")] == [r["step"] for r in rows if r["kind"] == "epoch"]


def test_without_tensorboard_the_run_goes_on_and_the_log_says_how_to_install(tmp_path, monkeypatch, caplog):
    from kt_core import tensorboard_log

    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    folder = rundir.create_run(tiny_config(epochs=1), tmp_path)
    with caplog.at_level(logging.WARNING):
        assert run_worker(folder)["state"] == "completed"
    assert not (folder / "tensorboard").exists()
    assert "pip install tensorboard" in (folder / "log.txt").read_text()


def test_kt_tensorboard_0_turns_the_event_files_off(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_TENSORBOARD", "0")
    folder = rundir.create_run(tiny_config(epochs=1), tmp_path)
    assert run_worker(folder)["state"] == "completed"
    assert not (folder / "tensorboard").exists()


# --- MLflow ------------------------------------------------------------------------------------

@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A local MLflow file store made for the test (MLflow's maintenance-mode file backend is
    allowed explicitly; a sqlite:/// store works the same but builds its schema for ~40 s)."""
    pytest.importorskip("mlflow", reason="MLflow is optional: pip install mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def test_export_tracking_logs_params_metrics_with_steps_and_the_model(finished_run, tracking_uri, capsys):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    assert main(["export-tracking", str(finished_run), "--mlflow", tracking_uri, "--json"]) == 0
    (done,) = json.loads(capsys.readouterr().out)
    assert done["run_id"] == finished_run.name and not done["already"]
    client = MlflowClient(tracking_uri=tracking_uri)
    mlrun = client.get_run(done["mlflow_run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "finished"
    assert mlrun.data.tags["kt_studio.run_id"] == finished_run.name
    config = json.loads((finished_run / "config.json").read_text())
    assert mlrun.data.params["train.lr"] == str(config["train"]["lr"])
    assert mlrun.data.params["plan.preset"] == "fine_tune" and json.loads(mlrun.data.params["dataset.classes"]) == [0, 1, 2]

    rows, _ = rundir.read_metrics(finished_run)
    for kind, key in (("step", "train_loss"), ("epoch", "val_acc"), ("epoch", "train_acc")):
        history = sorted(client.get_metric_history(done["mlflow_run_id"], f"{kind}/{key}"), key=lambda m: m.step)
        expected = [r for r in rows if r["kind"] == kind]
        assert [m.step for m in history] == [r["step"] for r in expected]
        assert np.allclose([m.value for m in history], [r[key] for r in expected])
    summary = json.loads((finished_run / "summary.json").read_text())
    assert mlrun.data.metrics["best_val_acc"] == pytest.approx(summary["best_val_acc"])

    model_dir = client.download_artifacts(done["mlflow_run_id"], "model", str(finished_run.parent / "downloaded"))
    weights = load_file(f"{model_dir}/model.safetensors")
    best = torch.load(finished_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    assert weights.keys() == best.keys() and all(torch.equal(weights[k], best[k]) for k in best)
    assert json.loads(open(f"{model_dir}/config.json").read()) == config
    assert {a.path for a in client.list_artifacts(done["mlflow_run_id"], "run")} >= {"run/config.json", "run/metrics.jsonl"}

    # A second export finds the first by its tag and logs nothing twice.
    assert main(["export-tracking", finished_run.name[:20], "--mlflow", tracking_uri, "--runs-dir",
                 str(finished_run.parent)]) == 0
    assert "already in MLflow" in capsys.readouterr().out
    assert len(client.search_runs([done["experiment_id"]])) == 1


def test_export_tracking_refuses_a_running_run_and_names_a_bad_uri(tmp_path, tracking_uri, capsys):
    folder = rundir.create_run(tiny_config(), tmp_path)
    rundir.update_status(folder, state="running", pid=os.getpid(), heartbeat=time.time())
    assert main(["export-tracking", str(folder), "--mlflow", tracking_uri]) == 2
    assert "still running" in capsys.readouterr().err
    rundir.update_status(folder, state="stopped", pid=None)
    assert main(["export-tracking", str(folder), "--mlflow", "nosuchscheme://x"]) == 2
    assert "cannot be used" in capsys.readouterr().err


def test_without_mlflow_the_command_says_how_to_install(finished_run, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    assert main(["export-tracking", str(finished_run), "--mlflow", "sqlite:///x.db"]) == 2
    assert "pip install mlflow" in capsys.readouterr().err
