"""AppTest of the Source page: architecture -> layer tree and report; files refused with messages."""

import torch
from torch import nn

from kt_core import launcher, rundir
from test_app_support import app_at, draft, errors, make_run, no_exceptions


def layer_table(at):
    table = next(df.value for df in at.dataframe if "layer" in df.value.columns).copy()
    table["name"] = table["layer"].str.strip("\u2003")  # the full module name, indented by depth
    return table


def test_choosing_an_architecture_shows_its_layer_tree_and_the_source_config():
    at = app_at("source")
    no_exceptions(at)
    at.radio(key="source_kind").set_value("arch")
    at.selectbox(key="source_arch").select("mnist_net").run()
    no_exceptions(at)
    table = layer_table(at)
    assert list(table["name"]) == ["conv1", "conv2", "fc1", "fc2"] or {"conv1", "conv2", "fc1", "fc2"} <= set(table["name"])
    params = dict(zip(table["name"], table["params"]))
    assert params["conv1"] == 20 * 1 * 5 * 5 + 20 and params["fc2"] == 500 * 10 + 10
    shown = next(df.value for df in at.dataframe if "layer" in df.value.columns)
    assert list(shown.columns) == ["layer", "type", "block", "params", "output"]  # one name column, not two
    source = draft(at).config.source
    assert (source.kind, source.arch, source.weights) == ("arch", "mnist_net", None)
    assert any(m.value == "Architecture **mnist\\_net**" for m in at.markdown)  # whole, never cut
    assert at.selectbox(key="source_weights").value == "(random initialisation)"


def test_a_real_legacy_checkpoint_by_server_path_is_loaded_with_its_report(real_data, monkeypatch):
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(real_data))
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.text_input(key="source_path").input(str(real_data / "checkpoints" / "mnist_cnn.pt")).run()
    no_exceptions(at)
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert any(m.value == "Architecture **mnist\\_net**" for m in at.markdown)
    assert metrics["Matched keys"] == "8" and metrics["Missing"] == "0" and metrics["Shape mismatch"] == "0"


def test_a_pickled_module_is_refused_with_a_message_and_the_page_keeps_working(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.text_input(key="source_path").input(str(path)).run()
    no_exceptions(at)
    assert any("refused" in e and "state_dict" in e for e in errors(at))
    assert at.checkbox(key="source_trust").value is False
    # The app keeps working: another choice loads normally.
    at.radio(key="source_kind").set_value("arch").run()
    no_exceptions(at)
    assert not errors(at) and layer_table(at) is not None


def test_paths_outside_the_allowed_roots_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.text_input(key="source_path").input("/etc/passwd").run()
    no_exceptions(at)
    assert any("outside the folders this server may read" in e for e in errors(at))


def test_the_trust_opt_in_is_hidden_when_the_administrator_disables_it(monkeypatch):
    monkeypatch.setenv("KT_ALLOW_TRUST", "0")
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    assert not [c for c in at.checkbox if c.key == "source_trust"]


def test_a_completed_run_can_be_picked_as_the_source():
    run = make_run("source run")
    make_run("unfinished", done_epochs=1, state="stopped")
    at = app_at("source")
    at.radio(key="source_kind").set_value("run").run()
    picker = at.selectbox(key="source_run")
    assert picker.value == run
    assert len(picker.options) == 1 and picker.options[0].startswith("source run · ")  # a name, a date, accuracy
    assert picker.options[0].endswith("· 75.0 % (completed)")
    source = draft(at).config.source
    assert (source.kind, source.path, source.checkpoint) == ("run", run, "best")
    # A hand-written run has no checkpoint: that is said, not thrown.
    no_exceptions(at)
    assert any("no checkpoint" in e for e in errors(at))


def test_train_a_source_model_first_launches_a_scratch_run_and_keeps_the_source_until_it_completes():
    at = app_at("source")
    at.radio(key="source_kind").set_value("train").run()
    at.selectbox(key="src_train_dataset").select("sklearn_digits")
    at.number_input(key="src_train_epochs").set_value(1)
    at.button(key="src_train_start").click().run()
    no_exceptions(at)
    [run] = rundir.run_ids()
    try:
        cfg = rundir.load_config(run)
        assert (cfg.plan.preset, cfg.dataset.name, cfg.source.arch, cfg.train.epochs) == \
            ("scratch", "sklearn_digits", "small_cnn", 1)
        source = draft(at).config.source  # still the one the user had: the new one has not completed
        assert (source.kind, source.arch) == ("arch", "small_cnn")
        assert draft(at).extras["source_training"] == run
    finally:
        if rundir.is_active(run):
            launcher.stop(run, timeout=1)  # cleanup: SIGTERM soon, the test does not need the training


def test_the_source_cache_key_follows_the_checkpoint_a_run_source_really_uses():
    from kt_core.config import SourceConfig
    from ui.source_view import _stamp

    run = make_run("only last")
    checkpoints = rundir.run_dir(run) / "checkpoints"
    cfg = SourceConfig(kind="run", path=run, checkpoint="best")
    assert _stamp(cfg) == "missing"  # load_source says what is wrong
    (checkpoints / "last.pt").write_bytes(b"epoch 1")
    first = _stamp(cfg)
    assert first.startswith("last.pt:")  # no best.pt: the loader uses last.pt, so the key follows it
    (checkpoints / "last.pt").write_bytes(b"epoch 2, rewritten")
    assert _stamp(cfg) not in (first, "missing")
    assert _stamp(SourceConfig(kind="run", path="only last")) == _stamp(cfg)  # by name too
    (checkpoints / "best.pt").write_bytes(b"best")
    assert _stamp(cfg).startswith("best.pt:")


def test_a_failed_source_training_leaves_the_source_and_says_so_without_a_resume_advice():
    run = make_run("source: small_cnn on sklearn_digits", done_epochs=1, state="failed")
    rundir.update_status(run, error="loss became NaN at step 4 (lower the learning rate)")
    at = app_at("source")
    draft(at).extras["source_training"] = run
    at.radio(key="source_kind").set_value("train").run()
    no_exceptions(at)
    assert (draft(at).config.source.kind, draft(at).config.source.arch) == ("arch", "small_cnn")
    [message] = [e for e in errors(at) if "source run failed" in e]
    assert "loss became NaN" in message and "unchanged" in message and "resume" not in message


def test_a_completed_source_training_becomes_the_source():
    run = make_run("source: small_cnn on sklearn_digits")
    at = app_at("source")
    draft(at).extras["source_training"] = run
    at.radio(key="source_kind").set_value("train").run()
    no_exceptions(at)
    assert (draft(at).config.source.kind, draft(at).config.source.path) == ("run", run)


def test_the_datasets_offered_for_a_source_model_need_no_path():
    at = app_at("source")
    at.radio(key="source_kind").set_value("train").run()
    from kt_core.data import available_datasets

    needs_path = {d["name"] for d in available_datasets() if d.get("needs_root")}
    offered = set(at.selectbox(key="src_train_dataset").options)
    assert offered and not offered & needs_path


def test_an_architecture_forced_on_a_file_it_does_not_fit_is_an_error_with_random_init_as_a_choice(
        tmp_path, monkeypatch):
    from kt_core.models import build_model

    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    path = tmp_path / "mnist_net.pt"
    torch.save(build_model("mnist_net").state_dict(), path)
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.text_input(key="source_path").input(str(path))
    at.selectbox(key="source_file_arch").select("cifar_resnet20").run()
    no_exceptions(at)
    assert any("none of its 8 weights fit cifar_resnet20" in e for e in errors(at))
    at.button(key="source_random_init").click().run()
    no_exceptions(at)
    source = draft(at).config.source
    assert (source.kind, source.arch, source.weights) == ("arch", "cifar_resnet20", None)
    assert not errors(at)


def test_a_checkpoint_with_the_users_model_code_from_server_paths(tmp_path, monkeypatch):
    from test_usercode import user_model_files

    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    code, ckpt = user_model_files(tmp_path)
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.text_input(key="source_path").input(str(ckpt)).run()
    at.selectbox(key="source_file_arch").select("(my model code: a .py file)").run()
    at.text_input(key="source_code_path").input(str(code)).run()
    assert at.selectbox(key="source_code_class").options == ["LitMLP", "TinyNet", "SmallConv"]  # read, not run
    at.selectbox(key="source_code_class").select("LitMLP").run()
    no_exceptions(at)
    assert any("needs your explicit trust" in e for e in errors(at))  # not imported without the box
    at.checkbox(key="source_trust").check().run()
    no_exceptions(at)
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert any(m.value.startswith("Architecture **") and m.value.endswith(":LitMLP**") for m in at.markdown)
    assert (metrics["Matched keys"], metrics["Missing"], metrics["Unexpected"]) == ("6", "0", "0")
    assert {"layer_1", "layer_2", "layer_3"} <= set(layer_table(at)["name"])
    source = draft(at).config.source
    assert (source.arch, source.trust, source.path) == (f"{code}:LitMLP", True, str(ckpt))


def test_model_code_outside_the_allowed_roots_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.selectbox(key="source_file_arch").select("(my model code: a .py file)").run()
    at.text_input(key="source_code_path").input(str(tmp_path / "model.py")).run()
    no_exceptions(at)
    assert any("outside the folders this server may read" in e for e in errors(at))


def test_a_forced_architecture_that_does_not_fit_is_an_error_with_the_files_facts(tmp_path, monkeypatch):
    from test_usercode import user_model_files

    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    code, ckpt = user_model_files(tmp_path)
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.text_input(key="source_path").input(str(ckpt)).run()
    at.selectbox(key="source_file_arch").select("mnist_net").run()
    no_exceptions(at)
    assert any("none of its 6 weights fit mnist_net" in e and "my model code" in e for e in errors(at))
    assert any("format: lightning" in c.value and "epoch=4" in c.value for c in at.caption)
    at.checkbox(key="source_init_unmatched").check().run()
    no_exceptions(at)
    assert not errors(at)
    assert any("randomly initialised, as asked" in w.value for w in at.warning)
