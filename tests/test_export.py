"""Exports round-trip: each file reloads with its format's own loader and predicts what the model does."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from kt_core.cli import main
from kt_core.errors import KTError
from kt_core.export import EXPORTERS, ExportError, export_model, export_run, verify_export

# Our tests load TorchScript files the way users do; torch's deprecation notice is not news here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


class SmallNet(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.features(x))


def trained_like_model() -> SmallNet:
    torch.manual_seed(0)
    model = SmallNet()
    bn = model.features[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)  # eval-mode BN must use these, not batch statistics
    return model


# Each format read back the way a user would, with no help from kt_core.
def reload_state_dict(path):
    model = SmallNet()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def reload_safetensors(path):
    from safetensors.torch import load_file

    model = SmallNet()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def reload_torchscript(path):
    return torch.jit.load(str(path))


def reload_onnx(path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


RELOADERS = {"state_dict": reload_state_dict, "safetensors": reload_safetensors,
             "torchscript": reload_torchscript, "onnx": reload_onnx}


def test_every_registered_format_has_a_round_trip_test():
    assert set(EXPORTERS.names()) == set(RELOADERS)


@pytest.mark.parametrize("fmt", list(RELOADERS))
def test_export_round_trips_to_the_same_predictions(fmt, tmp_path):
    model = trained_like_model()
    model.train()  # export must switch to eval mode itself, on a copy
    path = export_model(model, fmt, tmp_path / f"m{EXPORTERS.meta(fmt)['suffix']}", torch.zeros(1, 3, 16, 16))
    assert path.is_file() and path.stat().st_size > 0
    assert model.training and all(p.requires_grad for p in model.parameters())  # caller's model untouched
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind

    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # another batch size
    reloaded = RELOADERS[fmt](path)
    with torch.no_grad():
        expected = model.eval()(x)
        got = reloaded(x)
    assert got.shape == (5, 4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert verify_export(path, fmt, model, x) < 1e-4


def test_verify_export_catches_a_file_that_predicts_differently(tmp_path):
    path = export_model(trained_like_model(), "state_dict", tmp_path / "m.pt", torch.zeros(2, 3, 16, 16))
    torch.manual_seed(5)
    with pytest.raises(ExportError, match="predicts differently"):
        verify_export(path, "state_dict", SmallNet(), torch.randn(2, 3, 16, 16))


def test_onnx_without_the_onnx_package_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(KTError) as info:
        export_model(trained_like_model(), "onnx", tmp_path / "m.onnx", torch.zeros(2, 3, 16, 16))
    assert "onnx" in info.value.message and info.value.hint == "pip install onnx"
    assert not list(tmp_path.iterdir())


def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(KTError) as info:
        export_model(trained_like_model(), "onxx", tmp_path / "m", torch.zeros(2, 3, 16, 16))
    assert "onxx" in str(info.value) and "did you mean onnx" in info.value.hint


def test_a_model_that_cannot_be_traced_fails_with_the_format_and_a_fix(tmp_path):
    class NeedsTwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(ExportError) as info:
        export_model(NeedsTwoInputs(), "torchscript", tmp_path / "m.pt", torch.zeros(2, 3))
    assert "torchscript" in info.value.message and "state_dict" in info.value.hint


# --- a real run -----------------------------------------------------------------------------

def test_export_run_writes_the_file_beside_the_config_and_how_to_feed_it(finished_run):
    from kt_core.evaluate import load_run

    path = export_run(finished_run, "safetensors")
    assert path == finished_run / "exports" / "model.safetensors"
    assert (path.parent / "config.json").read_text() == (finished_run / "config.json").read_text()
    meta = json.loads((path.parent / "model.safetensors.json").read_text())
    assert meta["class_names"] == ["0", "1", "2"] and meta["input_size"] == [1, 28, 28]
    assert meta["format"] == "safetensors" and meta["checkpoint"] == "best"

    from safetensors.torch import load_file

    run = load_run(finished_run)
    weights = load_file(str(path))
    assert weights.keys() == run.model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in run.model.state_dict().items())


def test_cli_export(finished_run, tmp_path, capsys):
    assert main(["export", str(finished_run), "--format", "torchscript", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "out" / "model.torchscript.pt")
    assert (tmp_path / "out" / "config.json").is_file()
    module = torch.jit.load(out)
    assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 3)

    assert main(["export", str(finished_run), "--format", "pickle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown export format 'pickle'" in err[0] and "safetensors" in err[0]


def test_cli_export_of_a_missing_run_is_one_clear_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no-such-run"), "--format", "state_dict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
