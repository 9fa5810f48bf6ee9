"""Reading checkpoints safely (kt_core.checkpoints): every format from its real producer."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
import safetensors.torch
import torch
from torch import nn

from kt_core.checkpoints import clean_state_dict, load_into, read_checkpoint
from kt_core.errors import CheckpointError, UnsafeCheckpointError
from kt_core.models import build_model, get_spec


class TinyNet(nn.Module):
    """A user's own model class: pickling an instance of it needs this code to unpickle."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class PlantsMarker:
    """A malicious payload: unpickling it creates a file (it would run any code it liked)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class TouchesOnLoad:
    """A user's class whose unpickling has a side effect: no dangerous callable is named, only
    the class itself, so trusting the file really runs its code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        open(state["marker"], "w").close()


@pytest.fixture(scope="module")
def squeezenet_sd():
    torch.manual_seed(0)
    return build_model("squeezenet1_1").state_dict()


def same_tensors(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_plain_state_dict_both_serializations(tmp_path, squeezenet_sd, zip_format):
    path = tmp_path / "weights.pth"
    torch.save(squeezenet_sd, path, _use_new_zipfile_serialization=zip_format)
    raw = read_checkpoint(path)
    assert raw.format == "state_dict" and raw.module is None
    assert same_tensors(raw.state_dict, squeezenet_sd)


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model", "net", "state_dict_ema"])
def test_training_dicts_find_the_weights_beside_optimizer_state(tmp_path, key):
    model = build_model("small_cnn", in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    torch.save({key: model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 7, "best_acc": 0.91},
               tmp_path / "ckpt.tar")
    raw = read_checkpoint(tmp_path / "ckpt.tar")
    assert raw.format == "training_dict"
    assert same_tensors(raw.state_dict, model.state_dict())
    assert raw.meta["epoch"] == 7 and raw.meta["best_acc"] == pytest.approx(0.91)
    assert any(key in fix for fix in raw.fixes)


def test_ema_weights_are_only_used_when_nothing_else_is_there(tmp_path):
    sd = build_model("mnist_net").state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"state_dict": sd, "state_dict_ema": ema, "epoch": 1}, tmp_path / "c.pt")
    raw = read_checkpoint(tmp_path / "c.pt")
    assert same_tensors(raw.state_dict, sd)
    assert any("state_dict_ema" in fix and "not used" in fix for fix in raw.fixes)


def test_lightning_checkpoint_without_lightning(tmp_path):
    sd = build_model("mnist_net").state_dict()
    ckpt = {"epoch": 3, "global_step": 420, "pytorch-lightning_version": "2.2.0",
            "state_dict": {f"model.{k}": v for k, v in sd.items()},
            "optimizer_states": [{"state": {}, "param_groups": []}], "lr_schedulers": [],
            "hyper_parameters": {"lr": 0.01, "arch": "mnist_net"}}
    torch.save(ckpt, tmp_path / "epoch=3.ckpt")
    raw = read_checkpoint(tmp_path / "epoch=3.ckpt")
    assert raw.format == "lightning"
    assert same_tensors(raw.state_dict, sd)
    assert raw.meta["global_step"] == 420 and raw.meta["hyper_parameters"]["lr"] == 0.01
    assert any("'model.'" in fix for fix in raw.fixes)


def test_data_parallel_and_compile_prefixes_are_stripped(tmp_path):
    model = build_model("mnist_net")
    wrapped = nn.DataParallel(model)  # on CPU it just wraps: keys get the real `module.` prefix
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    torch.save(wrapped.state_dict(), tmp_path / "dp.pt")
    raw = read_checkpoint(tmp_path / "dp.pt")
    assert same_tensors(raw.state_dict, model.state_dict())
    assert any("DataParallel" in fix for fix in raw.fixes)

    compiled_keys = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    sd, fixes = clean_state_dict(compiled_keys)
    assert same_tensors(sd, model.state_dict()) and len(fixes) == 2


def test_safetensors_file_and_upload(tmp_path, squeezenet_sd):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(squeezenet_sd, str(path), metadata={"arch": "squeezenet1_1"})
    raw = read_checkpoint(path)
    assert raw.format == "safetensors" and raw.meta == {"arch": "squeezenet1_1"}
    assert same_tensors(dict(sorted(raw.state_dict.items())), dict(sorted(squeezenet_sd.items())))
    # an upload (bytes with a meaningless name) is recognised by its header, not its suffix
    upload = io.BytesIO(path.read_bytes())
    upload.name = "3f2a9c.bin"
    assert read_checkpoint(upload).format == "safetensors"


def test_torchscript_archive_is_refused_unless_trusted_and_described_without_running(tmp_path):
    model = TinyNet().eval()
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, yet users still have these files
        torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(tmp_path / "scripted.pt")
    assert "TorchScript archive holding 4 tensors" in err.value.message and "runs its code" in err.value.message
    assert "state_dict()" in err.value.hint and "--trust" in err.value.hint
    contents = err.value.contents
    assert {k: v["shape"] for k, v in contents["tensors"].items()} == {
        k: list(v.shape) for k, v in model.state_dict().items()}
    assert any(f.endswith("data.pkl") for f in contents["files"])
    assert any("TinyNet" in c for c in contents["classes"])

    raw = read_checkpoint(tmp_path / "scripted.pt", trust=True)
    assert raw.format == "torchscript" and raw.module is not None
    assert set(raw.state_dict) == set(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(raw.module(x), model(x))
    assert [n for n, _ in raw.module.named_modules()] == [n for n, _ in model.named_modules()]


def test_kt_run_checkpoint(tmp_path):
    from kt_core.config import RunConfig, SourceConfig

    model = build_model("small_cnn", num_classes=4, in_channels=1)
    cfg = RunConfig(source=SourceConfig(kind="arch", arch="small_cnn"))
    torch.save({"model": model.state_dict(), "optimizer": {}, "scheduler": None, "epoch": 2, "step": 40,
                "best_val_acc": 0.75, "config": cfg.to_dict(), "arch": "small_cnn", "kt_studio_version": "0.1.0"},
               tmp_path / "best.pt")
    raw = read_checkpoint(tmp_path / "best.pt")
    assert raw.format == "kt_run" and raw.arch == "small_cnn"
    assert same_tensors(raw.state_dict, model.state_dict())
    assert raw.meta["config"]["source"]["arch"] == "small_cnn" and raw.meta["best_val_acc"] == 0.75


# --- safety ----------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "innocent.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": PlantsMarker(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert "io.open" in err.value.message and "malicious" in err.value.message
    assert not marker.exists(), "the payload ran while loading without trust"


def test_a_hostile_pickle_stays_refused_even_when_trusted(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": PlantsMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(tmp_path / "evil.pt", trust=True)
    assert "trust" not in err.value.hint.replace("even as trusted", "") and not marker.exists()


def test_trust_really_unpickles_so_the_marker_proves_the_refusal(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": TouchesOnLoad(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="needs code from .*TouchesOnLoad"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    read_checkpoint(tmp_path / "evil.pt", trust=True)
    assert marker.exists()  # so the same check above would have caught code running


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_module_is_refused_with_its_class_and_loaded_with_trust(tmp_path, zip_format, caplog):
    model = TinyNet()
    path = tmp_path / "whole_model.pt"
    torch.save(model, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert "whole pickled nn.Module of class" in err.value.message and "TinyNet" in err.value.message
    assert "state_dict" in err.value.hint and "--trust" in err.value.hint

    raw = read_checkpoint(path, trust=True)
    assert raw.format == "pickled_module" and isinstance(raw.module, TinyNet)
    assert same_tensors(raw.state_dict, model.state_dict())
    assert "weights_only=False" in caplog.text  # the opt-in is logged as a warning


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")


BAD_FILES = {
    "empty": (lambda p, good: p.write_bytes(b""), "empty"),
    "truncated zip": (lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "truncated or corrupt"),
    "png renamed": (lambda p, good: p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64)), "PNG image"),
    "random bytes": (lambda p, good: p.write_bytes(b"\x13\x37" + os.urandom(254)), "not a PyTorch checkpoint"),
    "zip of text": (lambda p, good: _zip_of_text(p), "no data.pkl"),
    "json text": (lambda p, good: p.write_text('{"a": 1}'), "JSON"),
    "list": (lambda p, good: torch.save([torch.zeros(1)], p), "not model weights"),
    "dict without weights": (lambda p, good: torch.save({"epoch": 3, "lr": 0.1}, p), "without model weights"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_give_one_clear_line(tmp_path, case):
    good = tmp_path / "good.pt"
    torch.save(build_model("mnist_net").state_dict(), good)
    make, words = BAD_FILES[case]
    bad = tmp_path / "bad.pt"
    make(bad, good)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(bad)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert words in err.value.message and err.value.hint
    assert "\n" not in str(err.value)


def test_truncated_legacy_file_and_missing_paths(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(build_model("mnist_net").state_dict(), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


# --- mapping onto a model --------------------------------------------------------------------


def test_load_into_reports_head_and_first_conv_fixes():
    spec = get_spec("small_cnn")
    source = build_model("small_cnn", num_classes=10, in_channels=3)
    target = build_model("small_cnn", num_classes=5, in_channels=1)
    sd = dict(source.state_dict(), extra_weight=torch.zeros(1))
    report = load_into(target, sd, spec)
    assert {m["key"] for m in report.mismatched} == {"fc2.weight", "fc2.bias"}
    assert report.mismatched[0]["source_shape"] in ([10, 1000], [10])
    assert report.unexpected == ["extra_weight"] and report.missing == []
    assert "conv1.weight" in report.matched and "fc1.weight" in report.matched
    assert torch.equal(target.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(target.fc1.weight, source.fc1.weight)
    assert any("re-initialised" in f for f in report.fixes) and any("adapted" in f for f in report.fixes)
    assert not report.strict and report.to_dict()["summary"].startswith(f"{len(report.matched)} matched")


def test_load_into_strips_a_prefix_only_the_file_has_and_lists_missing_keys():
    model = build_model("mnist_net")
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc2")}
    fresh = build_model("mnist_net")
    report = load_into(fresh, sd, get_spec("mnist_net"))
    assert sorted(report.missing) == ["fc2.bias", "fc2.weight"]
    assert any("'backbone.'" in f for f in report.fixes)
    assert torch.equal(fresh.conv2.weight, model.conv2.weight)


def test_real_cifar_resnet_checkpoint_is_a_dataparallel_training_dict(real_data):
    raw = read_checkpoint(real_data / "checkpoints" / "resnet20-12fca82f.th")
    assert raw.format == "training_dict"
    assert raw.meta["best_prec1"] == pytest.approx(91.78, abs=0.01)
    assert not any(k.startswith("module.") for k in raw.state_dict)
    assert "layer3.2.conv2.weight" in raw.state_dict


def test_real_legacy_mnist_state_dict(real_data):
    raw = read_checkpoint(real_data / "checkpoints" / "mnist_cnn.pt")
    assert raw.format == "state_dict"
    assert {k: tuple(v.shape) for k, v in raw.state_dict.items()}["fc1.weight"] == (500, 800)
