"""The user's own model code as a source: trust, confinement, the module graph, real formats.

The checkpoint files are built here in the formats the tools write them: a PyTorch Lightning
2.x `.ckpt` of an MLP (`trainer.save_checkpoint`: weights under `state_dict`, next to the
loops, callbacks and optimizer states) and a tinygrad `.safetensors` (`nn.state.safe_save`:
compact JSON header padded with spaces to 8 bytes, no metadata, bias-free linear layers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch

from kt_core.cli import main
from kt_core.config import ConfigError, DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.coderef import parse_code_ref
from kt_core.errors import PathNotAllowedError, RunError, TrustNotAllowedError, UntrustedCodeError, UserCodeError
from kt_core.sources import inspect_source, load_source

MLP_CODE = '''
import torch
from torch import nn
from torch.nn import functional as F

MARKER = {marker!r}
open(MARKER, "w").write("imported")  # proves when the file ran


class LitMLP(nn.Module):
    """The Lightning MNIST example's network, as a plain nn.Module."""

    def __init__(self, hidden=128):
        super().__init__()
        self.layer_1 = nn.Linear(28 * 28, hidden)
        self.layer_2 = nn.Linear(hidden, 256)
        self.layer_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.layer_1(x))
        x = F.relu(self.layer_2(x))
        return F.log_softmax(self.layer_3(x), dim=1)


class TinyNet(nn.Module):
    """tinygrad's README TinyNet, written in PyTorch."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(784, 128, bias=False)
        self.l2 = nn.Linear(128, 10, bias=False)

    def forward(self, x):
        return self.l2(F.leaky_relu(self.l1(x.flatten(1))))


class SmallConv(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, classes)
        self.aux = nn.Linear(width, 2)  # defined last, never feeds the output

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x))).flatten(1)
        return self.classifier(x)
'''


@pytest.fixture()
def code(tmp_path) -> Path:
    path = tmp_path / "code" / "model.py"
    path.parent.mkdir()
    path.write_text(MLP_CODE.format(marker=str(tmp_path / "imported.txt")))
    return path


def lightning_ckpt(path: Path, state_dict: dict) -> Path:
    """A checkpoint as Lightning 2.x's `trainer.save_checkpoint` writes it."""
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    torch.save({
        "epoch": 4, "global_step": 4690, "pytorch-lightning_version": "2.4.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 4690},
                               "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
                      "'every_n_epochs': 1, 'train_time_interval': None}": {
                          "monitor": None, "best_model_score": None, "kth_value": torch.tensor(float("inf")),
                          "dirpath": "/home/u/lightning_logs/version_0/checkpoints", "best_k_models": {},
                          "best_model_path": "", "last_model_path": ""}},
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
        "hparams_name": "kwargs", "hyper_parameters": {"hidden": 128, "lr": 0.001},
    }, path)
    return path


def tinygrad_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Bytes as tinygrad's `safe_save` lays them out."""
    headers, offset, blobs = {}, 0, []
    for key, value in tensors.items():
        blob = value.contiguous().numpy().tobytes()
        headers[key] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    header = json.dumps(headers, separators=(",", ":"))
    header += " " * ((8 - len(header) % 8) % 8)
    path.write_bytes(struct.pack("<q", len(header)) + header.encode() + b"".join(blobs))
    return path


def _class(code: Path, name: str):
    namespace: dict = {}
    exec(compile(code.read_text(), str(code), "exec"), namespace)
    return namespace[name]


def lit_mlp_checkpoint(code: Path, folder: Path) -> Path:
    """The LitMLP of `code` (its weights as built), saved as Lightning writes it to folder/mlp.ckpt."""
    return lightning_ckpt(folder / "mlp.ckpt", _class(code, "LitMLP")().state_dict())


def user_model_files(folder: Path) -> tuple[Path, Path]:
    """my_model.py (MLP_CODE; importing it writes folder/imported.txt) and a checkpoint of its LitMLP."""
    code = folder / "my_model.py"
    code.write_text(MLP_CODE.format(marker=str(folder / "imported.txt")))
    return code, lit_mlp_checkpoint(code, folder)


def test_code_references_are_told_from_registry_names():
    assert parse_code_ref("resnet18") is None and parse_code_ref(None) is None
    ref = parse_code_ref("models/net.py:Net")
    assert ref.is_file and ref.target == "models/net.py" and ref.class_name == "Net"
    ref = parse_code_ref("mypkg.models:ResNet")
    assert not ref.is_file and ref.target == "mypkg.models"
    assert parse_code_ref(r"C:\work\net.py:Net").target == r"C:\work\net.py"
    assert parse_code_ref("net.py:not a class") is None


def test_user_code_is_not_imported_without_trust(tmp_path, code):
    ckpt = lit_mlp_checkpoint(code, tmp_path)
    (tmp_path / "imported.txt").unlink()  # _class ran it; the loader must not
    with pytest.raises(UntrustedCodeError) as err:
        load_source(SourceConfig(kind="file", path=str(ckpt), arch=f"{code}:LitMLP"))
    assert "--trust" in err.value.hint and "runs it" in err.value.message
    assert not (tmp_path / "imported.txt").exists(), "the code ran without trust"


def test_lightning_mlp_loads_with_the_users_class_every_key_matched(tmp_path, code):
    original = _class(code, "LitMLP")()
    ckpt = lightning_ckpt(tmp_path / "epoch=4-step=4690.ckpt", original.state_dict())
    src = load_source(SourceConfig(kind="file", path=str(ckpt), arch=f"{code}:LitMLP", trust=True))
    assert src.format == "lightning"
    assert src.report.strict and sorted(src.report.matched) == sorted(original.state_dict())
    assert (src.spec.head, src.spec.first_conv) == ("layer_3", "layer_1")  # log_softmax after the head
    assert src.input_size == (1, 28, 28) and src.num_classes == 10
    assert src.meta["epoch"] == 4 and src.meta["hyper_parameters"] == {"hidden": 128, "lr": 0.001}
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(src.model.eval()(x), original.eval()(x))  # the very weights
    info = inspect_source(SourceConfig(kind="file", path=str(ckpt), arch=f"{code}:LitMLP", trust=True), num_classes=3)
    assert [b["name"] for b in info["blocks"]][-1] == "head" and "layer_3" in info["blocks"][-1]["modules"]
    assert info["num_classes"] == 3 and info["output_shape"] == [1, 3]
    assert any("head layer_3 replaced: 10 -> 3" in f for f in info["load_report"]["fixes"])
    assert {r["name"] for r in info["layers"]} == {"layer_1", "layer_2", "layer_3"}


def test_tinygrad_bias_free_safetensors_loads_every_key(tmp_path, code):
    weights = {"l1.weight": torch.randn(128, 784), "l2.weight": torch.randn(10, 128)}
    path = tinygrad_safetensors(tmp_path / "tinynet.safetensors", weights)
    src = load_source(SourceConfig(kind="file", path=str(path), arch=f"{code}:TinyNet", trust=True),
                      num_classes=4)
    assert src.format == "safetensors"
    assert sorted(src.report.matched) == ["l1.weight", "l2.weight"] and not src.report.mismatched
    assert torch.equal(src.model.l1.weight, weights["l1.weight"])
    assert src.model.l2.out_features == 4 and src.model.l2.bias is None  # a new head, bias-free like the old


def test_head_and_first_layer_from_the_graph_and_correctable(tmp_path, code):
    cfg = SourceConfig(kind="arch", arch=f"{code}:SmallConv", trust=True, arch_kwargs={"width": 4})
    src = load_source(cfg)
    # `aux` is the last Linear defined, but `classifier` is the one whose output is the logits.
    assert (src.spec.head, src.spec.first_conv) == ("classifier", "stem")
    assert src.input_size[0] == 3 and src.model.stem.out_channels == 4 and src.num_classes == 5
    assert src.format == "random_init"
    corrected = load_source(SourceConfig(kind="arch", arch=f"{code}:SmallConv", trust=True, head="aux"), num_classes=7)
    assert corrected.model.aux.out_features == 7 and corrected.model.classifier.out_features == 5
    grey = load_source(cfg, in_channels=1)
    assert grey.model.stem.in_channels == 1
    with pytest.raises(UserCodeError, match="no module named 'nope'"):
        load_source(SourceConfig(kind="arch", arch=f"{code}:SmallConv", trust=True, head="nope"))
    with pytest.raises(UserCodeError, match="arch_kwargs"):
        load_source(SourceConfig(kind="arch", arch=f"{code}:SmallConv", trust=True, arch_kwargs={"depth": 3}))


def test_a_module_reference_and_clear_errors_for_bad_references(tmp_path, code, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(MLP_CODE.format(marker=str(tmp_path / "pkg.txt")))
    monkeypatch.syspath_prepend(str(tmp_path))
    src = load_source(SourceConfig(kind="arch", arch="mypkg.nets:TinyNet", trust=True))
    assert src.spec.head == "l2" and src.input_size == (1, 28, 28)
    with pytest.raises(UserCodeError, match="LitMLP, SmallConv, TinyNet"):
        load_source(SourceConfig(kind="arch", arch=f"{code}:Missing", trust=True))
    with pytest.raises(UserCodeError, match="does not exist"):
        load_source(SourceConfig(kind="arch", arch=f"{tmp_path}/nope.py:Net", trust=True))
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise ValueError('oops')\n")
    with pytest.raises(UserCodeError, match="importing broken.py failed: ValueError: oops"):
        load_source(SourceConfig(kind="arch", arch=f"{broken}:Net", trust=True))


def test_the_ui_confines_the_code_and_obeys_kt_allow_trust(tmp_path, code, monkeypatch):
    cfg = SourceConfig(kind="arch", arch=f"{code}:TinyNet", trust=True)
    with pytest.raises(PathNotAllowedError):
        load_source(cfg, roots=(tmp_path / "elsewhere",))
    assert load_source(cfg, roots=(tmp_path,)).arch == cfg.arch
    monkeypatch.setenv("KT_ALLOW_TRUST", "0")
    (tmp_path / "imported.txt").unlink(missing_ok=True)
    with pytest.raises(TrustNotAllowedError, match="KT_ALLOW_TRUST=0"):
        load_source(cfg, roots=(tmp_path,))
    with pytest.raises(TrustNotAllowedError, match="does not run user code"):  # not ticked: no box to tick there
        load_source(dataclasses.replace(cfg, trust=False), roots=(tmp_path,))
    assert not (tmp_path / "imported.txt").exists()  # refused before a line of it ran
    assert load_source(cfg).arch == cfg.arch  # the CLI is the local user's own


def test_a_dashboard_launch_holds_the_code_to_the_roots_and_kt_allow_trust(tmp_path, code, monkeypatch):
    """`launcher.launch(confined=True)` (the dashboard): the model code is a server path like the
    checkpoint, and KT_ALLOW_TRUST=0 refuses it as it refuses a trusted pickle; neither runs it
    nor leaves a run folder."""
    from kt_core import launcher

    ckpt = lit_mlp_checkpoint(code, tmp_path)
    cfg = RunConfig(name="user code", source=SourceConfig(kind="file", path=str(ckpt), arch=f"{code}:LitMLP",
                                                          trust=True),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1], per_class=5),
                    plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(epochs=1, batch_size=8))
    (tmp_path / "imported.txt").unlink(missing_ok=True)
    monkeypatch.setenv("KT_ALLOWED_ROOTS", f"{tmp_path / 'runs'}{os.pathsep}{ckpt}")  # the file, not the code
    with pytest.raises(PathNotAllowedError, match="model.py is outside"):
        launcher.launch(cfg, confined=True)
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(tmp_path))
    monkeypatch.setenv("KT_ALLOW_TRUST", "0")
    with pytest.raises(TrustNotAllowedError, match="KT_ALLOW_TRUST=0"):
        launcher.launch(cfg, confined=True)
    assert not (tmp_path / "imported.txt").exists()
    assert not list((tmp_path / "runs").glob("*/config.json"))


def test_config_round_trip_and_user_code_keys_need_user_code():
    cfg = RunConfig(source=SourceConfig(kind="file", path="m.pt", arch="net.py:Net", arch_kwargs={"w": 2},
                                        head="fc", trust=True))
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="source.arch_kwargs applies to user model code only"):
        SourceConfig(kind="arch", arch="resnet18", arch_kwargs={"w": 2}).validate()
    # The recorded absolute path of a deep project folder still fits (a path's length, not a name's).
    deep = "/" + "/".join(["a_long_project_folder_name"] * 40) + "/model.py:Net"
    SourceConfig(kind="file", path="m.pt", arch=deep, code_sha256="0" * 64, trust=True).validate()
    with pytest.raises(ConfigError, match="source.head: 201 characters is over the limit"):
        SourceConfig(kind="file", path="m.pt", arch="net.py:Net", head="h" * 201).validate()
    with pytest.raises(ConfigError, match="source.arch_kwargs: 65 entries"):
        SourceConfig(kind="file", path="m.pt", arch="net.py:Net", arch_kwargs={f"k{i}": i for i in range(65)}).validate()


def test_inspect_cli_takes_a_code_reference(tmp_path, code, capsys):
    ckpt = lit_mlp_checkpoint(code, tmp_path)
    assert main(["inspect", str(ckpt), "--arch", f"{code}:LitMLP"]) != 0
    assert "--trust" in capsys.readouterr().err
    assert main(["inspect", str(ckpt), "--arch", f"{code}:LitMLP", "--trust", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["load_report"]["strict"] and len(info["load_report"]["matched"]) == 6
    assert info["architecture"] == f"{code}:LitMLP"


def test_a_run_from_user_code_records_it_and_eval_export_rebuild_from_it(tmp_path, code, monkeypatch):
    from kt_core import rundir
    from kt_core.evaluate import evaluate_run, load_run
    from kt_core.export import export_run
    from kt_core.worker import run_worker

    ckpt = lit_mlp_checkpoint(code, tmp_path)
    relative = Path("code") / "model.py"
    cfg = RunConfig(name="user code", source=SourceConfig(kind="file", path=str(ckpt), arch=f"{relative}:LitMLP",
                                                          trust=True),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5),
                    plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(epochs=1, batch_size=16))
    with monkeypatch.context() as m:
        m.chdir(tmp_path)  # the reference is relative to where the user started
        folder = rundir.create_run(cfg)
    saved = json.loads((folder / "config.json").read_text())["source"]
    assert saved["arch"] == f"{code.resolve()}:LitMLP"  # absolute: eval may run from anywhere
    assert saved["code_sha256"] == hashlib.sha256(code.read_bytes()).hexdigest()
    assert run_worker(folder)["state"] == "completed"
    state = torch.load(folder / "checkpoints" / "best.pt", weights_only=False)
    assert state["built_from"] == "code" and state["config"]["source"]["code_sha256"] == saved["code_sha256"]
    assert 0.0 <= evaluate_run(folder).accuracy <= 1.0
    assert export_run(folder, "state_dict").is_file()

    # A run of that run (its source is the run): rebuilt from the code the first run recorded.
    second = rundir.create_run(RunConfig(name="from the user-code run", source=SourceConfig(kind="run", path=str(folder)),
                                         dataset=cfg.dataset, plan=TransferPlan(preset="fine_tune"),
                                         train=TrainConfig(epochs=1, batch_size=16)))
    assert run_worker(second)["state"] == "completed"
    assert torch.load(second / "checkpoints" / "best.pt", weights_only=False)["built_from"] == "code"
    assert load_run(second).model.layer_3.out_features == 3

    code.write_text(code.read_text() + "\n# an edit that changes nothing\n")
    assert load_run(folder).model is not None  # still fits: warned in the log, not refused
    code.write_text(code.read_text().replace("nn.Linear(hidden, 256)", "nn.Linear(hidden, 64)")
                    .replace("nn.Linear(256, 10)", "nn.Linear(64, 10)"))
    with pytest.raises(RunError, match="changed since the run recorded it"):
        load_run(folder)
    code.unlink()
    with pytest.raises(RunError, match="is gone"):
        load_run(folder)


def test_a_stopped_user_code_run_resumes_from_its_code_and_says_when_the_code_is_gone(tmp_path, code, caplog):
    """Resume rebuilds the model from the code the run recorded (path and hash): an edited file
    resumes with a warning in the log, a deleted one fails with a line that names it."""
    from kt_core import launcher, rundir
    from kt_core.callbacks import Callback
    from kt_core.worker import run_worker

    class StopAfterFirstEpoch(Callback):
        def __init__(self, folder):
            self.folder = folder

        def on_epoch_end(self, ctx, row):
            rundir.request_stop(self.folder)

    ckpt = lit_mlp_checkpoint(code, tmp_path)
    cfg = RunConfig(name="user code", source=SourceConfig(kind="file", path=str(ckpt), arch=f"{code}:LitMLP",
                                                          trust=True),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5),
                    plan=TransferPlan(preset="feature_extraction"), train=TrainConfig(epochs=3, batch_size=16))
    folder = rundir.create_run(cfg)
    assert run_worker(folder, callbacks=[StopAfterFirstEpoch(folder)])["state"] == "stopped"
    code.write_text(code.read_text() + "\n# an edit that changes nothing\n")
    with caplog.at_level("WARNING"):
        launcher.resume(folder.name, foreground=True)
    assert rundir.read_status(folder)["state"] == "completed"
    assert "changed since the run recorded it" in caplog.text

    second = rundir.create_run(cfg)
    assert run_worker(second, callbacks=[StopAfterFirstEpoch(second)])["state"] == "stopped"
    code.unlink()
    launcher.resume(second.name, foreground=True)
    status = rundir.read_status(second)
    assert status["state"] == "failed" and "is gone" in status["error"] and "model.py" in status["error"]


def test_inspect_cli_takes_the_code_alone_with_its_arguments_and_corrections(tmp_path, code, capsys):
    assert main(["inspect", f"{code}:SmallConv", "--trust", "--arch-kwargs", '{"width": 6}', "--head", "aux",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "random_init" and info["num_classes"] == 2  # aux: 2 outputs
    assert "aux" in info["blocks"][-1]["modules"]
    assert main(["inspect", f"{code}:SmallConv", "--trust", "--arch-kwargs", "[1]"]) != 0
    assert "not a JSON object" in capsys.readouterr().err


# --- honest mapping: a named architecture that takes under half of the file is an error ---------


def test_a_forced_architecture_that_takes_under_half_of_the_file_is_an_error(tmp_path, code):
    from kt_core.sources import ArchitectureMismatchError, WeakMatchError

    ckpt = lit_mlp_checkpoint(code, tmp_path)
    with pytest.raises(WeakMatchError) as err:
        load_source(SourceConfig(kind="file", path=str(ckpt), arch="mnist_net"))
    assert "none of its 6 weights fit mnist_net" in err.value.message and "mlp.ckpt" in err.value.message
    assert isinstance(err.value, ArchitectureMismatchError) and err.value.raw.format == "lightning"
    assert "model.py:ClassName --trust" in err.value.hint and "--init-unmatched" in err.value.hint
    src = load_source(SourceConfig(kind="file", path=str(ckpt), arch="mnist_net", init_unmatched=True))
    assert any("only 0 of the file's 6 tensors fit mnist_net" in n for n in src.notes)
    # A file that mostly fits names the closest registered architectures.
    sd = {k: v for k, v in __import__("kt_core.models", fromlist=["build_model"]).build_model("mnist_net")
          .state_dict().items() if not k.startswith("conv")}
    sd.update({"extra.weight": torch.zeros(3, 3), "extra2.weight": torch.zeros(3, 3), "extra3.weight": torch.zeros(3),
               "extra4.weight": torch.zeros(3), "extra5.weight": torch.zeros(3)})
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(WeakMatchError) as err:
        load_source(SourceConfig(kind="file", path=str(tmp_path / "partial.pt"), arch="small_cnn"))
    assert "small_cnn takes only 1 of its 9 tensors" in err.value.message
    assert "closest registered architectures: mnist_net (4 of 9)" in err.value.hint


def test_inspect_cli_refuses_a_weak_match_unless_asked(tmp_path, code, capsys):
    ckpt = lit_mlp_checkpoint(code, tmp_path)
    assert main(["inspect", str(ckpt), "--arch", "mnist_net"]) == 2
    assert "none of its 6 weights fit mnist_net" in capsys.readouterr().err
    assert main(["inspect", str(ckpt), "--arch", "mnist_net", "--init-unmatched", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["load_report"]["unexpected"]


def test_uploads_keep_the_users_file_name_so_errors_name_it(tmp_path):
    from kt_core.checkpoints import read_checkpoint
    from kt_core.errors import CheckpointError
    from ui.source_view import save_upload, upload_dir

    class Upload:
        def __init__(self, name, data):
            self.name, self._data = name, data

        def getvalue(self):
            return self._data

    path = save_upload(Upload("my weights (v2).pt", b"\x89PNG not a checkpoint"))
    assert path.name == "my weights (v2).pt" and path.parent.parent == upload_dir()
    with pytest.raises(CheckpointError, match=r"my weights \(v2\).pt is a PNG image"):
        read_checkpoint(path)
    sneaky = save_upload(Upload("../../etc/evil.pt", b"x"))
    assert sneaky.parent.parent == upload_dir() and sneaky.name == "evil.pt"


def test_a_teacher_of_user_code_is_recorded_like_a_source_and_resume_checks_it(tmp_path, code, monkeypatch, caplog):
    """A distillation teacher given as user model code is saved with its absolute path and hash
    (config.json and the checkpoint), so a resume says when the teacher's code changed and fails,
    naming it, when it is gone: the teacher is rebuilt on resume like the source."""
    from kt_core import launcher, rundir
    from kt_core.callbacks import Callback
    from kt_core.config import DistillConfig
    from kt_core.worker import run_worker

    class StopAfterFirstEpoch(Callback):
        def __init__(self, folder):
            self.folder = folder

        def on_epoch_end(self, ctx, row):
            rundir.request_stop(self.folder)

    ckpt = lightning_ckpt(tmp_path / "mlp.ckpt", _class(code, "LitMLP")().state_dict())
    relative = Path("code") / "model.py"
    teacher = SourceConfig(kind="file", path=str(ckpt), arch=f"{relative}:LitMLP", trust=True)
    cfg = RunConfig(name="taught by user code", source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", per_class=3),
                    plan=TransferPlan(preset="scratch"), distill=DistillConfig(mode="logit", teacher=teacher),
                    train=TrainConfig(epochs=3, batch_size=16))
    digest = hashlib.sha256(code.read_bytes()).hexdigest()
    with monkeypatch.context() as m:
        m.chdir(tmp_path)  # the reference is relative to where the user started
        folder, second = rundir.create_run(cfg), rundir.create_run(cfg)
    saved = json.loads((folder / "config.json").read_text())["distill"]["teacher"]
    assert saved["arch"] == f"{code.resolve()}:LitMLP" and saved["code_sha256"] == digest
    assert json.loads((folder / "config.json").read_text())["source"]["code_sha256"] is None  # a registry student
    assert run_worker(folder, callbacks=[StopAfterFirstEpoch(folder)])["state"] == "stopped"
    state = torch.load(folder / "checkpoints" / "last.pt", weights_only=False)
    assert state["config"]["distill"]["teacher"]["code_sha256"] == digest

    code.write_text(code.read_text() + "\n# an edit that changes nothing\n")
    with caplog.at_level("WARNING"):
        launcher.resume(folder, foreground=True)
    assert rundir.read_status(folder)["state"] == "completed"
    assert "changed since the run recorded it" in caplog.text and "model.py" in caplog.text

    assert run_worker(second, callbacks=[StopAfterFirstEpoch(second)])["state"] == "stopped"
    code.unlink()
    launcher.resume(second, foreground=True)
    status = rundir.read_status(second)
    assert status["state"] == "failed" and "is gone" in status["error"] and "model.py" in status["error"]
