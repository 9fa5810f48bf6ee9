"""Crafted files never run code without trust, through every entry point: `inspect`, `train`
with a file source, a run whose best.pt is hostile, and the Source page. Files are generated here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hostile import HOSTILE_CHECKPOINTS, markers, torchscript_with_side_effects
from kt_core import rundir
from kt_core.checkpoints import read_checkpoint
from kt_core.cli import main
from kt_core.errors import UnsafeCheckpointError
from kt_core.pickle_scan import scan_pickle


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "outside" / "PWNED"


@pytest.fixture(autouse=True)
def _outside(marker):
    marker.parent.mkdir()


CASES = list(HOSTILE_CHECKPOINTS)


@pytest.mark.parametrize("case", CASES)
def test_read_checkpoint_refuses_without_running_anything(tmp_path, marker, case):
    make, words = HOSTILE_CHECKPOINTS[case]
    path = make(tmp_path / "model.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert words in err.value.message and "\n" not in str(err.value)
    assert markers(marker) == []
    if case != "torchscript from_file":  # hostile pickles: no advice to trust, and trust refuses too
        assert "--trust" not in err.value.hint and "likely malicious" in err.value.message
        with pytest.raises(UnsafeCheckpointError):
            read_checkpoint(path, trust=True)
        assert markers(marker) == []


def test_the_torchscript_payload_is_real_so_the_refusal_means_something(tmp_path, marker):
    path = torchscript_with_side_effects(tmp_path / "ts.pt", marker)
    read_checkpoint(path, trust=True)  # trusting it runs its __setstate__
    assert markers(marker) == [marker]


def test_the_scanner_reads_what_opcodes_do_not_what_names_say():
    from hostile import computed_global_pickle, named_global_pickle

    scan = scan_pickle(computed_global_pickle("os", "system", "true"))
    assert scan.computed == 1 and scan.hostile and scan.names == ["_codecs.decode"]
    scan = scan_pickle(named_global_pickle("collections", "OrderedDict"))
    assert scan.plain_data and not scan.hostile
    # a memoized string fed to STACK_GLOBAL is still a constant name
    blob = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
    assert scan_pickle(blob).dangerous == ["os.system"]
    import io

    state_dict = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, state_dict, _use_new_zipfile_serialization=False)
    assert scan_pickle(state_dict.getvalue()).plain_data  # a real state_dict is plain data


@pytest.mark.parametrize("case", CASES)
def test_inspect_exits_2_with_one_line_and_runs_nothing(tmp_path, marker, case, capsys):
    path = HOSTILE_CHECKPOINTS[case][0](tmp_path / "model.pt", marker)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "refused" in err[0]
    assert markers(marker) == []


def test_inspect_describes_an_archive_without_running_it(tmp_path, marker, capsys):
    path = torchscript_with_side_effects(tmp_path / "ts.pt", marker)
    assert main(["inspect", str(path), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["contents"]["tensors"] == {"2": {"shape": [3, 4], "dtype": "float"}}
    assert any(f.endswith("data.pkl") for f in out["contents"]["files"])
    assert main(["inspect", str(path)]) == 2
    assert "without running it" in capsys.readouterr().out
    assert markers(marker) == []


def _config(tmp_path, source: dict) -> str:
    cfg = {"name": "hostile", "source": source, "dataset": {"name": "sklearn_digits", "per_class": 5},
           "plan": {"preset": "fine_tune"}, "train": {"epochs": 1, "batch_size": 16, "device": "cpu"}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("case", ["torchscript from_file", "computed os.system (legacy)", "posix.system"])
def test_train_with_a_hostile_file_source_runs_nothing(tmp_path, marker, case, capsys):
    path = HOSTILE_CHECKPOINTS[case][0](tmp_path / "model.pt", marker)
    code = main(["train", _config(tmp_path, {"kind": "file", "path": str(path)}), "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refused" in err[0]  # refused before a run folder exists
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())
    assert markers(marker) == []


@pytest.mark.parametrize("case", ["torchscript from_file", "computed builtins.open (zip)"])
def test_a_run_whose_best_checkpoint_is_hostile_runs_nothing(tmp_path, marker, case, capsys):
    from test_app_support import make_run

    run = rundir.run_dir(make_run("victim"))
    HOSTILE_CHECKPOINTS[case][0](run / "checkpoints" / "best.pt", marker)
    shutil.copy(run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt")
    assert main(["inspect", str(run)]) == 2
    assert main(["eval", str(run)]) == 2
    assert main(["export", str(run), "--format", "state_dict"]) == 2
    code = main(["train", _config(tmp_path, {"kind": "run", "path": str(run)}), "--runs-dir", str(tmp_path / "r")])
    assert code == 2 and not (tmp_path / "r").exists()
    capsys.readouterr()
    assert markers(marker) == []


@pytest.mark.parametrize("allow_trust", ["1", "0"])
def test_the_source_page_refuses_a_hostile_archive_and_shows_what_it_holds(tmp_path, marker, monkeypatch, allow_trust):
    from test_app_support import app_at, errors, no_exceptions

    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    monkeypatch.setenv("KT_ALLOW_TRUST", allow_trust)
    path = torchscript_with_side_effects(tmp_path / "ts.pt", marker)
    at = app_at("source")
    at.radio(key="source_kind").set_value("file").run()
    at.text_input(key="source_path").input(str(path)).run()
    no_exceptions(at)
    assert any("TorchScript archive" in e and "runs its code" in e for e in errors(at))
    assert any("shape" in df.value.columns and "3x4" in set(df.value["shape"]) for df in at.dataframe)
    assert markers(marker) == []
