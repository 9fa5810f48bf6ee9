"""AppTest of the Layers page: edits in the layer tree become plan rules, the cost follows."""

from kt_core.config import TransferPlan
from test_app_support import app_at, draft, errors, no_exceptions


def metrics(at):
    return {m.label: m.value for m in at.metric}


def edit(at, prefix, rows):
    """Edit a data_editor as the browser does: its widget state holds the edited cells by row.

    (AppTest has no data_editor driver; the editors' keys carry the preset's signature.)
    """
    p = draft(at).config.plan
    key = f"{prefix}{p.preset}-{p.freeze_first_n}-{p.layer_decay}-{p.unfreeze_every}-{p.head}"
    at.session_state[key] = {"edited_rows": rows, "added_rows": [], "deleted_rows": []}
    return at.run()


def test_the_blocks_of_the_source_are_listed_with_their_preset_settings():
    at = app_at("layers")
    no_exceptions(at)
    blocks = at.dataframe[0].value
    assert list(blocks["block"]) == ["conv1", "conv2", "fc1", "head"]  # small_cnn, input -> output
    assert list(blocks["transfer"]) == [True, True, True, False]  # fine_tune: a new head
    assert not blocks["freeze"].any()
    assert metrics(at)["Trainable parameters"] == f"{blocks['params'].sum():,}"


def test_freezing_a_block_and_scaling_an_lr_become_rules_and_the_cost_drops():
    at = app_at("layers")
    blocks = at.dataframe[0].value
    edit(at, "layers_blocks_", {0: {"freeze": True}, 1: {"lr_mult": 0.1}})
    no_exceptions(at)
    plan = draft(at).config.plan
    assert [(r.pattern, r.transfer, r.freeze, r.lr_mult) for r in plan.rules] == [
        ("conv1", None, True, None), ("conv2", None, None, 0.1)]
    trainable = blocks["params"].sum() - blocks["params"][0]
    assert metrics(at)["Trainable parameters"] == f"{trainable:,}"
    assert metrics(at)["Training work saved"] != "0%"


def test_a_per_layer_override_names_the_module():
    at = app_at("layers")
    edit(at, "layers_units_", {2: {"transfer": False}})  # the third parameter-owning module: fc1.*
    no_exceptions(at)
    plan = draft(at).config.plan
    assert len(plan.rules) == 1 and plan.rules[0].transfer is False and plan.rules[0].pattern.startswith("fc1")


def test_a_linear_probe_trains_only_the_head_and_turns_the_feature_cache_on():
    at = app_at("layers")
    at.selectbox(key="layers_preset").select("linear_probe").run()
    no_exceptions(at)
    blocks = at.dataframe[0].value
    assert list(blocks["freeze"]) == [True, True, True, False]
    shown = metrics(at)
    assert shown["Trainable parameters"] == f"{int(blocks['params'].iloc[-1]):,}"
    assert shown["Feature cache"] == "on"
    assert draft(at).config.plan.preset == "linear_probe"


def test_feature_extraction_trains_the_classifier_block_and_keeps_the_feature_cache_on():
    at = app_at("layers")
    at.selectbox(key="layers_preset").select("feature_extraction").run()
    no_exceptions(at)
    blocks = at.dataframe[0].value
    assert list(blocks["freeze"]) == [True, True, False, False]  # small_cnn's classifier: fc1 + head
    assert metrics(at)["Trainable parameters"] == f"{int(blocks['params'].iloc[-2:].sum()):,}"
    assert metrics(at)["Feature cache"] == "on"


def test_the_plan_carries_to_the_train_page_config():
    at = app_at("layers")
    at.selectbox(key="layers_preset").select("freeze_first_n").run()
    at.number_input(key="layers_freeze_n").set_value(2).run()
    no_exceptions(at)
    assert draft(at).config.plan == TransferPlan(preset="freeze_first_n", freeze_first_n=2)
    at.switch_page("app_pages/train.py").run()
    import json

    shown = json.loads(at.get("json")[0].proto.body)
    assert shown["plan"]["preset"] == "freeze_first_n" and shown["plan"]["freeze_first_n"] == 2


def test_too_many_frozen_blocks_is_a_message_not_a_traceback():
    at = app_at("layers")
    at.selectbox(key="layers_preset").select("freeze_first_n").run()
    at.number_input(key="layers_freeze_n").set_value(9).run()
    no_exceptions(at)
    assert any("freeze_first_n is 9" in e for e in errors(at))


def test_a_negative_lr_multiplier_is_refused_not_turned_positive_and_blocks_start():
    at = app_at("layers")
    edit(at, "layers_blocks_", {1: {"lr_mult": -0.5}})
    no_exceptions(at)
    assert any("lr_mult" in e and "-0.5" in e for e in errors(at)), errors(at)
    assert [(r.pattern, r.lr_mult) for r in draft(at).config.plan.rules] == [("conv2", -0.5)], errors(at)
    at.run()  # the next rerun still shows the cell as typed, and the message
    no_exceptions(at)
    assert at.dataframe[0].value["lr_mult"].tolist()[1] == -0.5
    assert any("lr_mult" in e and "-0.5" in e for e in errors(at))
    at.switch_page("app_pages/train.py").run()
    assert at.button(key="train_start").disabled
    assert any("Start is blocked" in e and "lr_mult" in e for e in errors(at))


# --- the head: the source's when the target's classes are the source's ----------------------------

def _digits_checkpoint(tmp_path, monkeypatch):
    """A small_cnn state_dict with 10 outputs (as a model trained on the 10 digits would have)."""
    import torch

    from kt_core.config import SourceConfig
    from kt_core.models import build_model

    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    path = tmp_path / "digits_cnn.pt"
    torch.save(build_model("small_cnn", num_classes=10).state_dict(), path)
    return SourceConfig(kind="file", path=str(path), arch="small_cnn")


def test_a_source_head_with_the_targets_classes_is_kept_and_the_page_says_so(tmp_path, monkeypatch):
    from test_app_support import set_piece

    at = app_at("layers")
    set_piece(at, "source", _digits_checkpoint(tmp_path, monkeypatch))
    at.run()
    no_exceptions(at)
    assert any("Head:" in m.value and "source head kept" in m.value for m in at.markdown), \
        [m.value for m in at.markdown]
    assert list(at.dataframe[0].value["transfer"]) == [True, True, True, True]  # the head's weights transfer

    at.radio(key="layers_head").set_value("new").run()
    no_exceptions(at)
    assert draft(at).config.plan.head == "new"
    assert any("Head:" in m.value and "new head (chosen)" in m.value for m in at.markdown)
    assert list(at.dataframe[0].value["transfer"]) == [True, True, True, False]


def test_keeping_a_head_of_another_size_is_refused_with_the_fix(tmp_path, monkeypatch):
    from kt_core.config import DatasetConfig
    from test_app_support import set_piece

    at = app_at("layers")
    set_piece(at, "source", _digits_checkpoint(tmp_path, monkeypatch))
    set_piece(at, "dataset", DatasetConfig(name="sklearn_digits", classes=[0, 1, 2]))
    at.run()
    assert any("new head" in m.value for m in at.markdown)  # auto: 3 classes, a 10-output head
    at.radio(key="layers_head").set_value("keep").run()
    no_exceptions(at)
    assert any("head is \"keep\" but the target has 3 classes" in e for e in errors(at)), errors(at)
