"""Bad input is refused before anything is made: every malformed config or bad checkpoint given to
`train` exits 2 with ONE `error: ...` line and leaves no run folder; the loader itself only ever
raises ConfigError (hypothesis fuzzes it), and a config it accepts round-trips exactly."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kt_core.cli import main
from kt_core.config import RunConfig
from kt_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "bad input", "source": {"kind": "arch", "arch": "mnist_net"},
        "dataset": {"name": "sklearn_digits", "per_class": 5, "classes": [0, 1, 2]},
        "plan": {"preset": "fine_tune"}, "train": {"epochs": 1, "batch_size": 16, "device": "cpu"}}


def with_(section: str | None, **values) -> dict:
    data = copy.deepcopy(GOOD)
    (data[section] if section else data).update(values)
    return data


# name -> (config, words the one line must contain). Each would have cost a traceback, a
# minutes-long validation, gigabytes, or a failed run folder.
BAD_CONFIGS = {
    "image_size 100000": (with_("dataset", image_size=100_000), "dataset.image_size"),
    "seed 2**70": (with_("train", seed=2**70), "train.seed"),
    "step_size 0": (with_("train", step_size=0), "train.step_size"),
    "lr Infinity": (with_("train", lr=float("inf")), "train.lr"),
    "lr NaN": (with_("train", lr=float("nan")), "train.lr"),
    "batch_size 1e9": (with_("train", batch_size=10**9), "train.batch_size"),
    "batch_size float": (with_("train", batch_size=1e9), "train.batch_size"),
    "warmup -5": (with_("train", warmup_epochs=-5), "train.warmup_epochs"),
    "num_workers -1": (with_("train", num_workers=-1), "train.num_workers"),
    "early_stopping -1": (with_("train", early_stopping=-1), "train.early_stopping"),
    "version 99": (with_(None, version=99), "version"),
    "10 MB name": (with_(None, name="x" * 10_000_000), "over 1 MB"),
    "100,000-character name": (with_(None, name="x" * 100_000), "name: 100,000 characters"),
    "250,000 rules": (with_("plan", rules=[{"pattern": f"r{i}"} for i in range(250_000)]), "over 1 MB"),
    "5,000 rules": (with_("plan", rules=[{"pattern": f"r{i}"} for i in range(5_000)]), "plan.rules: 5,000 entries"),
    "unknown architecture": (with_("source", arch="resnet9000"), "resnet9000"),
    "unknown weights": (with_("source", arch="resnet18", weights="NOPE_V9"), "NOPE_V9"),
    "unknown dataset": (with_("dataset", name="imagenet-22k"), "imagenet-22k"),
    "missing class": (with_("dataset", classes=[0, 42]), "42"),
    "per_class too large": (with_("dataset", per_class=100_000), "per_class"),
    "rule matching nothing": (with_("plan", rules=[{"pattern": "no_such_block", "freeze": True}]), "no_such_block"),
    "missing source file": (with_("source", kind="file", path="/no/such/model.pt"), "does not exist"),
    "NUL in a path": (with_("source", kind="file", path="/tmp/a\x00b.pt"), "NUL"),
    "over-long path": (with_("source", kind="file", path="/tmp/" + "a" * 5000), "over the limit of 4,096"),
    "over-long file name": (with_("source", kind="file", path="/tmp/" + "a" * 300 + ".pt"), "too long"),
    "symlink loop": (with_("source", kind="file", path="LOOP"), "symlink loop"),
    "unknown key": (with_("train", epochs_=3), "unknown key"),
    "unknown device": (with_("train", device="tpu"), "device"),
}


def _train(tmp_path: Path, data: dict | str, capsys) -> tuple[int, list[str]]:
    if isinstance(data, dict) and data["source"].get("path") == "LOOP":
        (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
        (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
        data = copy.deepcopy(data)
        data["source"]["path"] = str(tmp_path / "a.pt")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(data if isinstance(data, str) else json.dumps(data))
    code = main(["train", str(cfg), "--runs-dir", str(tmp_path / "r")])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_malformed_config_exits_2_with_one_line_and_no_run_folder(tmp_path, case, capsys):
    data, words = BAD_CONFIGS[case]
    code, err = _train(tmp_path, data, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert err[0].endswith(")") and len(err[0]) < 2000  # the fix in brackets; no 10 MB echo
    assert not list((tmp_path / "r").glob("*")), "a run folder was left behind"


def test_hostile_json_text_is_refused_in_one_line(tmp_path, capsys):
    for text in ("[" * 100_000 + "]" * 100_000, '{"name": ' * 5000 + "1" + "}" * 5000, "{" + " " * (2 << 20) + "}"):
        code, err = _train(tmp_path, text, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err[:3]


def _bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    from hostile import computed_global_pickle, torch_zip

    good = tmp_path / "good.pt"
    torch.save({"conv1.weight": torch.zeros(20, 1, 5, 5)}, good)
    files = {
        "empty": b"", "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "png renamed": b"\x89PNG\r\n\x1a\n" + os.urandom(64), "random": b"\x13\x37" + os.urandom(200),
        "text": b'{"not": "weights"}', "pickle protocol 4 with code": computed_global_pickle("os", "getcwd"),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.pt"
        paths[name].write_bytes(data)
    paths["zip without data.pkl"] = torch_zip(tmp_path / "nodata.pt", b"")
    (tmp_path / "nodata2.pt").write_bytes(b"")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    paths["a list"] = tmp_path / "list.pt"
    torch.save({"epoch": 3}, tmp_path / "noweights.pt")
    paths["no weights"] = tmp_path / "noweights.pt"
    return paths


def test_every_bad_checkpoint_given_to_train_exits_2_with_one_line(tmp_path, capsys):
    for name, path in _bad_checkpoints(tmp_path).items():
        code, err = _train(tmp_path, with_("source", kind="file", path=str(path)), capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (name, err)
        assert not list((tmp_path / "r").glob("*")), name


def test_library_warnings_add_no_line_to_the_refusal(tmp_path):
    """In a real process: torch's pickle-protocol UserWarning goes to the log, not the console."""
    from hostile import computed_global_pickle

    (tmp_path / "p4.pt").write_bytes(computed_global_pickle("os", "getcwd"))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(with_("source", kind="file", path=str(tmp_path / "p4.pt"))))
    out = subprocess.run([sys.executable, "-m", "kt_core", "train", str(cfg), "--runs-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert "UserWarning" not in out.stderr and not (tmp_path / "r").exists()


# --- the loader, fuzzed -------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                     max_leaves=12)
_paths = [(None, k) for k in GOOD] + [(s, k) for s in ("source", "dataset", "plan", "train")
                                      for k in RunConfig.from_dict(GOOD).to_dict()[s]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(_paths), _json), min_size=1, max_size=4))
def test_the_loader_refuses_with_config_error_or_round_trips(edits):
    data = copy.deepcopy(GOOD)
    for (section, key), value in edits:
        (data.setdefault(section, {}) if section and isinstance(data.get(section), dict) else data)[key] = value
    try:
        cfg = RunConfig.from_dict(data)
    except ConfigError as exc:
        assert exc.message and exc.hint and "\n" not in str(exc)
        return
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg  # the strict round trip: what is accepted is what is saved
