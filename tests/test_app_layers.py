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
    key = f"{prefix}{p.preset}-{p.freeze_first_n}-{p.layer_decay}-{p.unfreeze_every}"
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
