"""AppTest of Home: the three-sentence story, system facts, active runs, and the Demo button's wiring."""

import torch
import torchvision

import kt_core.demo
from kt_core import rundir
from kt_core.demo import DemoHandle
from test_app_support import app_at, chart_traces, errors, make_run, no_exceptions


def test_home_tells_what_it_does_and_the_machine_facts():
    at = app_at()
    no_exceptions(at)
    assert at.title[0].value == "KT Studio"
    facts = dict(zip(at.dataframe[0].value["what"], at.dataframe[0].value["value"]))
    assert facts["torch"] == torch.__version__ and facts["torchvision"] == torchvision.__version__
    assert facts["devices"].startswith("cpu") and int(facts["CPU threads (torch)"]) >= 1
    assert any("No run is queued or running" in c.value for c in at.caption)


def test_active_runs_are_listed_on_home_and_in_the_sidebar(monkeypatch):
    live = make_run("in progress", done_epochs=1, state="running")
    make_run("finished")
    monkeypatch.setattr(rundir, "_worker_alive", lambda status: True)
    at = app_at()
    no_exceptions(at)
    active = at.dataframe[1].value
    assert list(active["id"]) == [live]
    links = [p.proto.label for p in at.sidebar.get("page_link")]
    assert links == ["in progress · running"]


def test_the_active_runs_list_follows_runs_as_they_start_and_end(monkeypatch):
    """The list is a fragment of its own that re-reads the runs folder, so a run that starts or
    ends after the page was drawn appears or leaves without a click (AppTest: one more run)."""
    monkeypatch.setattr(rundir, "_worker_alive", lambda status: True)
    at = app_at()
    assert [p.proto.label for p in at.sidebar.get("page_link")] == []
    live = make_run("started later", done_epochs=1, state="running")
    at.run()
    assert [p.proto.label for p in at.sidebar.get("page_link")] == ["started later · running"]
    rundir.update_status(live, state="completed")
    at.run()
    assert [p.proto.label for p in at.sidebar.get("page_link")] == []
    assert any("No run is queued or running" in c.value for c in at.caption)


def test_the_demo_button_starts_the_demo_and_draws_both_runs_with_the_conclusion(monkeypatch):
    transfer = make_run("demo-transfer-k5", acc=(0.7, 0.85, 0.93))
    scratch = make_run("demo-transfer-k5 (from scratch)", acc=(0.3, 0.5, 0.7), baseline_of=transfer)
    asked = []

    def fake_run_demo(per_class=10, runs_dir=None, device="cpu"):
        asked.append(per_class)  # the real demo trains for a minute: the browser test runs it
        return DemoHandle("src", transfer, scratch, per_class, source_reused=True)

    monkeypatch.setattr(kt_core.demo, "run_demo", fake_run_demo)
    at = app_at()
    at.select_slider(key="demo_k").set_value(5)
    at.button(key="demo_start").click().run()
    no_exceptions(at)
    assert asked == [5]
    names = [t["name"] for t in chart_traces(at)]
    assert "transfer · val acc" in names and "from scratch · val acc" in names
    # The one-line conclusion comes from the runs' headline figures (here: last-epoch val acc
    # 0.88 vs 0.65, said so), the figure the Runs page shows for them.
    assert any(s.value.startswith("Transfer: 88.0 % vs from scratch: 65.0 % with 5 labelled images per class "
                                  "(transfer wins) — ") for s in at.success)
    assert at.query_params["run"] == transfer and at.query_params["baseline"] == scratch


def test_a_failing_demo_is_a_message(monkeypatch):
    from kt_core.errors import DatasetError

    def broken(**kwargs):
        raise DatasetError("mlxtend is not installed", "pip install mlxtend")

    monkeypatch.setattr(kt_core.demo, "run_demo", broken)
    at = app_at()
    at.button(key="demo_start").click().run()
    no_exceptions(at)
    assert any("mlxtend is not installed — pip install mlxtend" in e for e in errors(at))
