"""`python -m kt_core inspect` and `archs`: the JSON schema, the table, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from kt_core.cli import main
from kt_core.models import build_model

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_inspect_architecture_json(capsys):
    assert main(["inspect", "small_cnn", "--num-classes", "5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "small_cnn" and info["num_classes"] == 5
    assert info["layers"][-1] == {**info["layers"][-1], "name": "fc2", "type": "Linear", "num_parameters": 1000 * 5 + 5}
    assert set(info["load_report"]) >= {"matched", "missing", "unexpected", "mismatched"}


def test_inspect_real_file_table(real_data, capsys):
    assert main(["inspect", str(real_data / "checkpoints" / "resnet20-12fca82f.th")]) == 0
    out = capsys.readouterr().out
    assert "architecture : cifar_resnet20" in out and "97 matched, 0 missing" in out
    assert "stem -> layer1 -> layer2 -> layer3 -> head" in out
    assert any(line.startswith("    conv1") and "2,304" in line and "1x16x32x32" in line for line in out.splitlines())


def test_bad_sources_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "photo.pt").write_bytes(b"\x89PNG\r\n\x1a\n0000")
    assert main(["inspect", str(tmp_path / "photo.pt")]) == 2
    assert main(["inspect", "resnt18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "PNG image" in err[0] and "did you mean resnet18" in err[1]


def test_inspect_takes_a_run_as_train_does_by_folder_id_prefix_or_name(finished_run, capsys, monkeypatch):
    monkeypatch.setenv("KT_RUNS_DIR", str(finished_run.parent))
    for text in (str(finished_run), finished_run.name, finished_run.name[:12], "finished"):
        assert main(["inspect", text, "--json"]) == 0, text
        info = json.loads(capsys.readouterr().out)
        assert (info["format"], info["meta"]["run"], info["num_classes"]) == ("kt_run", finished_run.name, 3)
    assert main(["inspect", "no-such-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a checkpoint file, an architecture or a run" in err[0]
    assert "python -m kt_core runs" in err[0] and "python -m kt_core archs" in err[0]
    assert main(["inspect", str(finished_run.parent / "gone.pt")]) == 2
    assert "no such file or run folder" in capsys.readouterr().err


def test_refused_pickle_and_trust_flag(tmp_path, capsys):
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pt")
    assert main(["inspect", str(tmp_path / "whole.pt")]) == 2
    assert "whole pickled nn.Module" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "whole.pt"), "--trust", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "pickled_module"


def test_archs_lists_the_registry(capsys):
    assert main(["archs", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mnist_net"]["input_size"] == [1, 28, 28] and "IMAGENET1K_V1" in rows["resnet18"]["weights"]


def test_module_entry_point(tmp_path):
    torch.save(build_model("mnist_net").state_dict(), tmp_path / "net.pt")
    done = subprocess.run([sys.executable, "-m", "kt_core", "inspect", str(tmp_path / "net.pt"), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["architecture"] == "mnist_net"
