"""AppTest of distillation in the UI: teacher and mode on the Train page, unlabelled images on the
Dataset page, L2-SP on the Layers page, and each loss term drawn beside the total."""

import json

from kt_core import rundir
from test_app_support import app_at, chart_traces, draft, make_run, no_exceptions


def test_the_train_page_sets_mode_teacher_and_soft_weight_and_start_would_launch_them():
    teacher = make_run("big teacher")
    at = app_at("train")
    no_exceptions(at)
    at.radio(key="distill_mode").set_value("logit").run()
    no_exceptions(at)
    assert any("alpha weights the **soft (teacher)** term" in c.value for c in at.caption)
    at.radio(key="distill_teacher_kind").set_value("run").run()
    at.slider(key="distill_alpha").set_value(0.7)
    at.number_input(key="distill_T").set_value(2.0)
    at.run()
    no_exceptions(at)
    d = draft(at).config.distill
    assert (d.mode, d.alpha, d.temperature, d.teacher.kind, d.teacher.path) == ("logit", 0.7, 2.0, "run", teacher)
    shown = json.loads(at.get("json")[0].proto.body)
    assert shown["distill"]["mode"] == "logit" and shown["distill"]["teacher"]["path"] == teacher
    at.radio(key="distill_mode").set_value("feature").run()
    at.text_input(key="distill_student_layer").input("conv2")
    at.run()
    no_exceptions(at)
    d = draft(at).config.distill
    assert (d.mode, d.student_layer, d.teacher_layer, d.adapter) == ("feature", "conv2", None, "auto")


def test_the_dataset_page_keeps_the_rest_unlabelled_and_shows_how_many():
    at = app_at("dataset")
    no_exceptions(at)
    assert at.checkbox(key="dataset_unlabelled").disabled  # no K yet: nothing is left over
    at.number_input(key="dataset_k").set_value(5).run()
    at.checkbox(key="dataset_unlabelled").check().run()
    no_exceptions(at)
    assert draft(at).config.dataset.unlabelled is True
    assert any("unlabelled" in c.value and "labels hidden" in c.value for c in at.caption)
    sizes = at.dataframe[0].value
    assert "unlabelled (train)" in list(sizes["split"])


def test_the_layers_page_sets_l2sp():
    at = app_at("layers")
    no_exceptions(at)
    at.number_input(key="layers_l2sp_alpha").set_value(0.01).run()
    no_exceptions(at)
    assert draft(at).config.plan.l2sp_alpha == 0.01


def test_each_loss_term_is_drawn_beside_the_total():
    run = make_run("distilled", epochs=2)
    folder = rundir.run_dir(run)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    with open(folder / "metrics.jsonl", "w") as f:
        for r in rows:
            if r["kind"] == "epoch":
                r.update(loss_ce=0.5 / r["epoch"], loss_kd=2.0 / r["epoch"])
            f.write(json.dumps(r) + "\n")
    at = app_at("train", run=run)
    no_exceptions(at)
    traces = {t["name"]: t for t in chart_traces(at)}
    assert traces["run · hard (CE)"]["y"] == [0.5, 0.25] and traces["run · soft (KD)"]["y"] == [2.0, 1.0]
    assert traces["run · soft (KD)"]["line"]["dash"] == "dash" and "run · train loss" in traces


def test_the_runs_page_compare_table_shows_the_method_and_its_settings():
    student, base = make_run("student"), make_run("labels only")
    folder = rundir.run_dir(student)
    summary = json.loads((folder / "summary.json").read_text())
    summary["method"] = "scratch + logit KD from the source (T=4, soft weight alpha=0.9)"
    rundir.write_json_atomic(folder / "summary.json", summary)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["distill"]["mode"] = "logit"
    (folder / "config.json").write_text(json.dumps(cfg))
    at = app_at("runs")
    at.multiselect(key="runs_overlay").set_value([student, base]).run()
    no_exceptions(at)
    table = next(d.value for d in at.dataframe if "method" in d.value.index)
    assert "logit KD" in table.loc["method"].iloc[0]
    assert list(table.loc["distill.mode"]) == ["logit", "off"]
