"""Source models from architectures, files and runs (kt_core.sources), checked on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kt_core.config import RunConfig, SourceConfig
from kt_core.data import read_idx
from kt_core.errors import CheckpointError, KTError, PathNotAllowedError, RunError
from kt_core.datasets.transforms import IMAGENET_NORMALIZATION
from kt_core.models import build_model
from kt_core.sources import UnknownArchitectureError, inspect_source, load_source

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def normalize(x: torch.Tensor, normalization) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalization)
    return (x - mean) / std


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(y), batch))
    return correct / len(y)


def test_real_mnist_checkpoint_reaches_its_published_accuracy(real_data):
    src = load_source(SourceConfig(kind="file", path=str(real_data / "checkpoints" / "mnist_cnn.pt")))
    assert src.arch == "mnist_net" and src.format == "state_dict" and src.report.strict
    assert src.input_size == (1, 28, 28) and src.normalization == ((0.1307,), (0.3081,))
    images = read_idx(real_data / "mnist" / "t10k-images-idx3-ubyte.gz").float().div(255).unsqueeze(1)
    labels = read_idx(real_data / "mnist" / "t10k-labels-idx1-ubyte.gz").long()
    assert accuracy(src.model, normalize(images, src.normalization), labels) == pytest.approx(0.9894, abs=1e-9)


def test_real_cifar_resnet20_loads_strictly_and_classifies(real_data):
    from PIL import Image

    src = load_source(SourceConfig(kind="file", path=str(real_data / "checkpoints" / "resnet20-12fca82f.th")))
    assert src.arch == "cifar_resnet20" and src.candidates == ["cifar_resnet20"]
    report = src.report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == [] and report.strict
    assert len(report.matched) == 97
    assert sum(p.numel() for p in src.model.parameters()) == pytest.approx(0.27e6, rel=0.01)
    assert src.normalization == IMAGENET_NORMALIZATION and src.meta["best_prec1"] == pytest.approx(91.78, abs=0.01)
    # The keys fitting proves the names; the forward pass (option-A shortcuts) needs real images.
    xs, ys = [], []
    for label, name in enumerate(CIFAR_CLASSES):
        for path in sorted((real_data / "cifar10_jpg" / "test" / name).iterdir())[:30]:
            xs.append(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1))
            ys.append(label)
    x = normalize(torch.stack(xs).float().div(255), src.normalization)
    assert accuracy(src.model, x, torch.tensor(ys)) > 0.7  # about 81 % on the whole JPEG test set


def test_adapt_fits_the_source_to_the_target_task(real_data):
    src = load_source(SourceConfig(kind="file", path=str(real_data / "checkpoints" / "resnet20-12fca82f.th")),
                      num_classes=4, in_channels=1)
    assert src.num_classes == 4 and src.input_size == (1, 32, 32)
    assert len(src.normalization[0]) == 1
    assert src.model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    assert any("4 classes" in f for f in src.report.fixes) and any("adapted to 1" in f for f in src.report.fixes)


def test_from_scratch_twin_keeps_the_data_contract(real_data):
    cfg = SourceConfig(kind="file", path=str(real_data / "checkpoints" / "mnist_cnn.pt"))
    pretrained = load_source(cfg)
    scratch = load_source(cfg, pretrained=False)
    assert scratch.arch == pretrained.arch
    assert scratch.input_size == pretrained.input_size and scratch.normalization == pretrained.normalization
    assert not torch.equal(scratch.model.conv1.weight, pretrained.model.conv1.weight)


def test_architecture_source_random_init():
    src = load_source(SourceConfig(kind="arch", arch="small_cnn"), num_classes=3, in_channels=1)
    assert src.format == "random_init" and src.input_size == (1, 28, 28)
    assert src.model(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
    assert src.notes and "random" in src.notes[0]


def test_named_architecture_that_does_not_fit_is_reported(tmp_path):
    torch.save(build_model("cifar_resnet20").state_dict(), tmp_path / "r20.pt")
    src = load_source(SourceConfig(kind="file", path=str(tmp_path / "r20.pt"), arch="cifar_resnet32"))
    assert src.arch == "cifar_resnet32"
    assert src.report.missing and not src.report.unexpected
    assert any("fit cifar_resnet20, not cifar_resnet32" in n for n in src.notes)


def test_adapted_channels_normalise_as_the_adapted_first_conv_reads_them():
    from kt_core.datasets.transforms import adapt_normalization

    src = load_source(SourceConfig(kind="arch", arch="cifar_resnet20"))
    rgb = src.normalization
    src.adapt(in_channels=2)
    assert src.normalization == adapt_normalization(rgb, 2) == (rgb[0][:2], rgb[1][:2])
    two_channel = src.model.conv1.weight.detach().clone()
    src.adapt(in_channels=3)  # the odd case: channel 2 is read like channel 0, weights and statistics alike
    assert src.normalization == adapt_normalization(src_two := (rgb[0][:2], rgb[1][:2]), 3)
    assert src.normalization == (src_two[0] + src_two[0][:1], src_two[1] + src_two[1][:1])
    assert torch.allclose(src.model.conv1.weight[:, 2], two_channel[:, 0] * 2 / 3)


def save_script(model: nn.Module, path: Path) -> None:
    with pytest.warns(FutureWarning):  # torch marks TorchScript deprecated
        torch.jit.script(model).save(str(path))


def test_a_torchscript_source_is_tried_once_however_often_it_is_looked_at(tmp_path, monkeypatch):
    from kt_core import sources

    save_script(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 7)).eval(),
                tmp_path / "ts32.pt")  # takes 1x32x32 only
    calls = []
    real = sources.dry_run
    monkeypatch.setattr(sources, "dry_run", lambda model, size: calls.append(tuple(size)) or real(model, size))
    cfg = SourceConfig(kind="file", path=str(tmp_path / "ts32.pt"), trust=True)
    info = inspect_source(cfg)
    assert info["input_size"] == [1, 32, 32] and info["num_classes"] == 7 and info["output_shape"] == [1, 7]
    assert calls == [(1, 28, 28), (1, 32, 32)]  # one wrong guess, then the one pass that worked: reused
    calls.clear()
    info = inspect_source(cfg, num_classes=3)  # a new head on top: its shapes follow from the body's
    assert info["output_shape"] == [1, 3] and info["num_classes"] == 3
    assert calls == [(1, 28, 28), (1, 32, 32)]
    src = load_source(cfg)
    calls.clear()
    rows = {row["name"]: row for row in sources.layer_rows(src)}
    assert src.trial()[0][""] == [1, 7] and calls == []  # the UI's layer tree reuses it too
    assert src.model(torch.zeros(2, 1, 32, 32)).shape == (2, 7) and rows


def test_torchscript_source_gets_a_head_on_top(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 7)).eval()
    with pytest.warns(FutureWarning):
        torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    with pytest.raises(KTError, match="TorchScript archive"):
        load_source(SourceConfig(kind="file", path=str(tmp_path / "ts.pt")))
    src = load_source(SourceConfig(kind="file", path=str(tmp_path / "ts.pt"), trust=True))
    assert src.format == "torchscript" and src.arch is None
    assert src.input_size == (1, 28, 28) and src.num_classes == 7  # found by a trial forward pass
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(src.model(x), model(x))
    src.adapt(num_classes=3)
    assert src.model(x).shape == (2, 3)
    with pytest.raises(KTError, match="cannot be adapted"):
        src.adapt(in_channels=3)


def test_unknown_architecture_is_still_inspectable(tmp_path):
    sd = {"encoder.0.weight": torch.zeros(8, 3, 3, 3), "encoder.0.bias": torch.zeros(8),
          "encoder.1.weight": torch.ones(8), "encoder.1.bias": torch.zeros(8),
          "encoder.1.running_mean": torch.zeros(8), "encoder.1.running_var": torch.ones(8),
          "classifier.weight": torch.zeros(5, 8), "classifier.bias": torch.zeros(5)}
    torch.save(sd, tmp_path / "mine.pt")
    cfg = SourceConfig(kind="file", path=str(tmp_path / "mine.pt"))
    with pytest.raises(UnknownArchitectureError) as err:
        load_source(cfg)
    assert "--arch" in err.value.hint and "TorchScript" in err.value.hint
    info = inspect_source(cfg)
    assert info["architecture"] is None and info["num_parameters"] == 8 * 27 + 8 + 16 + 40 + 5
    layers = {row["name"]: row for row in info["layers"]}
    assert layers["encoder.0"]["type"].startswith("Conv2d") and layers["encoder.0"]["shapes"]["weight"] == [8, 3, 3, 3]
    assert layers["encoder.1"]["type"].startswith("BatchNorm") and layers["classifier"]["num_parameters"] == 45
    assert "no known architecture matched" in info["notes"][0]
    json.dumps(info)


def test_inspect_source_json_schema(real_data):
    info = inspect_source(SourceConfig(kind="file", path=str(real_data / "checkpoints" / "resnet20-12fca82f.th")),
                          num_classes=5)
    assert info["architecture"] == "cifar_resnet20" and info["num_classes"] == 5
    assert info["num_parameters"] == sum(row["num_parameters"] for row in info["layers"])
    assert {"name", "type", "num_parameters"} <= set(info["layers"][0])
    assert {"matched", "missing", "unexpected", "mismatched"} <= set(info["load_report"])
    assert [b["name"] for b in info["blocks"]] == ["stem", "layer1", "layer2", "layer3", "head"]
    assert info["output_shape"] == [1, 5] and info["input_size"] == [3, 32, 32]
    json.dumps(info)


def test_file_paths_are_confined_when_roots_are_given(tmp_path, real_data):
    cfg = SourceConfig(kind="file", path=str(real_data / "checkpoints" / "mnist_cnn.pt"))
    with pytest.raises(PathNotAllowedError):
        load_source(cfg, roots=(tmp_path,))
    assert load_source(cfg, roots=(real_data.resolve(),)).arch == "mnist_net"


def make_run(runs_dir: Path, run_id: str, which=("best",), classes: int = 4) -> tuple[Path, nn.Module]:
    """A run folder as the engine writes it: config.json and checkpoints/{best,last}.pt."""
    folder = runs_dir / run_id
    (folder / "checkpoints").mkdir(parents=True)
    cfg = RunConfig(name="digits source", source=SourceConfig(kind="arch", arch="small_cnn"))
    cfg.dataset.channels = 1
    (folder / "config.json").write_text(cfg.to_json())
    model = build_model("small_cnn", num_classes=classes, in_channels=1)
    for name in which:
        torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "scheduler": None,
                    "epoch": 3, "step": 120, "best_val_acc": 0.93, "config": cfg.to_dict(), "arch": "small_cnn",
                    "kt_studio_version": "0.1.0"}, folder / "checkpoints" / f"{name}.pt")
    return folder, model


def test_completed_run_by_folder_and_by_id(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("KT_RUNS_DIR", str(runs_dir))
    folder, model = make_run(runs_dir, "20240101-120000-digits")
    for path in (str(folder), "20240101-120000-digits"):
        src = load_source(SourceConfig(kind="run", path=path))
        assert src.format == "kt_run" and src.arch == "small_cnn" and src.report.strict
        assert src.num_classes == 4 and src.input_size == (1, 28, 28)  # the run's head and channels
        assert torch.equal(src.model.fc2.weight, model.fc2.weight)
        assert src.meta["run"] == "20240101-120000-digits" and src.meta["best_val_acc"] == 0.93


def test_run_falls_back_to_last_and_refuses_what_is_not_a_run(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("KT_RUNS_DIR", str(runs_dir))
    make_run(runs_dir, "only-last", which=("last",))
    src = load_source(SourceConfig(kind="run", path="only-last", checkpoint="best"))
    assert any("using last.pt" in n for n in src.notes)
    make_run(runs_dir, "no-checkpoint", which=())
    with pytest.raises(RunError, match="no checkpoint"):
        load_source(SourceConfig(kind="run", path="no-checkpoint"))
    with pytest.raises(RunError, match="no run"):
        load_source(SourceConfig(kind="run", path="../etc"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunError, match="config.json is missing"):
        load_source(SourceConfig(kind="run", path=str(tmp_path / "plain")))


def test_a_run_source_by_name_or_id_prefix_as_train_takes_it(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("KT_RUNS_DIR", str(runs_dir))
    make_run(runs_dir, "20240101-120000-digits")
    make_run(runs_dir, "20240102-090000-digits", classes=5)
    newest = load_source(SourceConfig(kind="run", path="digits source"))  # the name: the newest such run
    assert newest.meta["run"] == "20240102-090000-digits" and newest.num_classes == 5
    assert load_source(SourceConfig(kind="run", path="20240101")).meta["run"] == "20240101-120000-digits"
    with pytest.raises(RunError, match="matches 2 runs") as err:
        load_source(SourceConfig(kind="run", path="2024"))
    assert "more of the run id" in err.value.hint
    with pytest.raises(RunError, match="no run 'nope'") as err:
        load_source(SourceConfig(kind="run", path="nope"))
    assert "python -m kt_core runs" in err.value.hint


def test_run_sources_are_confined_when_roots_are_given(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("KT_RUNS_DIR", str(runs_dir))
    make_run(runs_dir, "20240101-120000-digits")
    outside, _ = make_run(tmp_path / "elsewhere", "outside")
    roots = ((tmp_path / "allowed").resolve(),)
    # ids and names are looked up in the server's own runs folder, which is always readable
    assert load_source(SourceConfig(kind="run", path="digits source"), roots=roots).meta["run"] == "20240101-120000-digits"
    (runs_dir / "linked").symlink_to(outside, target_is_directory=True)  # but not what it links to
    for path in (str(outside), str(runs_dir / ".." / "elsewhere" / "outside"), "linked"):
        with pytest.raises(PathNotAllowedError):
            load_source(SourceConfig(kind="run", path=path), roots=roots)
    assert load_source(SourceConfig(kind="run", path=str(outside)), roots=(tmp_path.resolve(),)).meta["run"] == "outside"



def test_a_confined_lookup_says_nothing_about_folders_outside_the_roots(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("KT_RUNS_DIR", str(runs_dir))
    make_run(runs_dir, "20240101-120000-digits")
    make_run(tmp_path / "cwd", "secret")  # a run folder in the server's working directory
    monkeypatch.chdir(tmp_path / "cwd")
    roots = ((tmp_path / "allowed").resolve(),)  # the working directory is not a root
    # A bare word is a run id or name in the runs folder: ./secret is never looked at, so the
    # answer is the same whether it exists or not.
    with pytest.raises(RunError, match="no run 'secret'"):
        load_source(SourceConfig(kind="run", path="secret"), roots=roots)
    with pytest.raises(RunError, match="no run 'missing'"):
        load_source(SourceConfig(kind="run", path="missing"), roots=roots)
    for path in ("./secret", "..", "~/anything"):  # plainly paths: refused as such
        with pytest.raises(PathNotAllowedError):
            load_source(SourceConfig(kind="run", path=path), roots=roots)
    assert load_source(SourceConfig(kind="run", path="20240101"), roots=roots).meta["run"] == "20240101-120000-digits"
    # A name starting with "~" is a name, not another user's home folder.
    with pytest.raises(RunError, match="no run '~draft'"):
        load_source(SourceConfig(kind="run", path="~draft"), roots=roots)


class WholeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


def test_a_refused_file_stays_refused_through_load_source(tmp_path):
    torch.save(WholeModel(), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_source(SourceConfig(kind="file", path=str(tmp_path / "whole.pt")))
    src = load_source(SourceConfig(kind="file", path=str(tmp_path / "whole.pt"), trust=True))
    assert src.format == "pickled_module" and isinstance(src.model, WholeModel)
