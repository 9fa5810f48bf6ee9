"""AppTest of the Runs page over hand-written run folders: table, overlay, actions."""

import pytest

from kt_core import runs
from test_app_support import app_at, chart_traces, errors, make_run, no_exceptions


def test_every_run_is_listed_with_its_state():
    done = make_run("finished")
    stopped = make_run("halted", done_epochs=1, state="stopped")
    at = app_at("runs")
    no_exceptions(at)
    table = at.dataframe[0].value
    states = dict(zip(table["id"], table["state"]))
    assert states == {done: "completed", stopped: "stopped"}
    assert set(table["name"]) == {"finished", "halted"}


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
    assert traces[f"a · {a} (completed) · val acc"]["y"] == pytest.approx([0.55, 0.65, 0.75])
    assert traces[f"b · {b} (completed) · val acc"]["y"] == pytest.approx([0.15, 0.25, 0.35])


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
    assert runs.run_ids() == []
    assert "run" not in at.query_params


def test_resume_of_a_corrupt_run_is_an_error_message_not_a_traceback():
    a = make_run("broken", done_epochs=1, state="stopped")
    (runs.run_dir(a) / "config.json").write_text("{ not json")
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
