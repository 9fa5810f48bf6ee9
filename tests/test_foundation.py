"""The contracts every module relies on: config round trips, registries, path confinement."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kt_core.config import LayerRule, RunConfig, SourceConfig, TransferPlan
from kt_core.errors import ConfigError, KTError, PathNotAllowedError
from kt_core.registry import Registry
from kt_core.settings import confine_path

ROOT = Path(__file__).resolve().parents[1]


def test_kt_core_never_imports_streamlit():
    offenders = []
    for path in (ROOT / "kt_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert offenders == []


def test_importing_kt_core_loads_no_streamlit():
    code = "import sys, kt_core.config, kt_core.cli; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_config_round_trips_through_json():
    cfg = RunConfig(
        name="x",
        source=SourceConfig(kind="arch", arch="small_cnn"),
        plan=TransferPlan(preset="freeze_first_n", freeze_first_n=2,
                          rules=[LayerRule(pattern="head", lr_mult=10.0)]),
    )
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert isinstance(again.plan.rules[0], LayerRule)


@pytest.mark.parametrize("data, words", [
    ({"trian": {}}, ["trian", "valid keys"]),
    ({"train": {"lr": "fast"}}, ["train.lr", "float"]),
    ({"train": {"optimizer": "lamb"}}, ["lamb", "adamw"]),
    ({"train": {"epochs": 0}}, ["train.epochs"]),
    ({"source": {"kind": "arch"}}, ["source.arch"]),
    ({"plan": {"rules": [{"freeze": True}]}}, ["pattern"]),
    ({"dataset": {"classes": [3]}}, ["two classes"]),
])
def test_bad_config_names_the_key_and_the_fix(data, words):
    data.setdefault("source", {"kind": "arch", "arch": "small_cnn"})
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data)
    for word in words:
        assert word in str(err.value)


def test_bad_config_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_file(tmp_path / "missing.json")


def test_baseline_differs_only_in_initialisation():
    cfg = RunConfig(source=SourceConfig(kind="arch", arch="small_cnn"),
                    plan=TransferPlan(preset="feature_extraction"))
    base = cfg.as_baseline("run-1")
    assert base.plan.preset == "scratch" and base.baseline_of == "run-1"
    assert (base.source, base.dataset, base.train) == (cfg.source, cfg.dataset, cfg.train)


def test_registry_unknown_name_lists_valid_names():
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1, colour="red")
    reg.add("beta", 2)
    assert reg.get("alpha") == 1 and reg.meta("alpha") == {"colour": "red"}
    with pytest.raises(KTError) as err:
        reg.get("alpah")
    assert "did you mean alpha" in str(err.value) and "beta" in str(err.value)


def test_paths_are_confined_to_roots(tmp_path):
    inside = tmp_path / "root" / "a.pt"
    inside.parent.mkdir()
    inside.write_text("x")
    roots = (tmp_path / "root",)
    assert confine_path(inside, roots) == inside.resolve()
    with pytest.raises(PathNotAllowedError):
        confine_path(tmp_path / "root" / ".." / "elsewhere.pt", roots)
    (tmp_path / "root" / "link").symlink_to("/etc")
    with pytest.raises(PathNotAllowedError):
        confine_path(tmp_path / "root" / "link" / "passwd", roots)


def test_cli_bad_input_is_one_line_on_stderr(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    out = subprocess.run([sys.executable, "-m", "kt_core", "train", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
