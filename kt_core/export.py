"""Export a trained model: state_dict, safetensors, TorchScript, ONNX.

Each format is an entry of `EXPORTERS` with a `save` and a `load` (the loader returns a
predict function), so every export can be checked the way a user would use it: reload the file
with that format's own loader and compare predictions with the model (`verify_export`).
`export_run` writes into `RUN/exports/` with a copy of the run's `config.json` beside the file
and a small `<file>.json` that says how to feed the model (input size, normalization, classes).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import rundir
from .errors import KTError
from .registry import Registry

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


class ExportError(KTError):
    """A model that cannot be written or read back in the asked format."""


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    description: str
    save: Callable[[nn.Module, Path, torch.Tensor], None]
    # load(path, model_factory) -> predict function; model_factory builds a fresh model of the
    # same architecture for formats that hold weights only.
    load: Callable[[Path, Callable[[], nn.Module] | None], Predictor]
    requires: tuple[str, ...] = ()


EXPORTERS: Registry[ExportFormat] = Registry("export format")


def _register(fmt: ExportFormat) -> None:
    EXPORTERS.add(fmt.name, fmt, suffix=fmt.suffix, description=fmt.description, requires=fmt.requires)


def _weights_predictor(state_dict: dict, model_factory) -> Predictor:
    if model_factory is None:
        raise ExportError("this format holds weights only; reading it back needs the architecture",
                          "pass a function that builds the model")
    model = model_factory()
    model.load_state_dict(state_dict)
    model.eval()
    return lambda x: model(x)


# --- state_dict ---------------------------------------------------------------------------------

def _save_state_dict(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def _load_state_dict(path: Path, model_factory) -> Predictor:
    return _weights_predictor(torch.load(path, map_location="cpu", weights_only=True), model_factory)


_register(ExportFormat("state_dict", ".pt", "PyTorch state_dict (torch.load(weights_only=True) + load_state_dict)",
                       _save_state_dict, _load_state_dict))


# --- safetensors --------------------------------------------------------------------------------

def _save_safetensors(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    from safetensors.torch import save_file  # here, not at the top: only this format needs it

    # clone: safetensors refuses tensors that share memory (tied weights) or are not contiguous
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt", "producer": "kt-studio"})


def _load_safetensors(path: Path, model_factory) -> Predictor:
    from safetensors.torch import load_file  # here, not at the top: only this format needs it

    return _weights_predictor(load_file(str(path)), model_factory)


_register(ExportFormat("safetensors", ".safetensors", "safetensors weights (no pickle; safetensors.torch.load_file)",
                       _save_safetensors, _load_safetensors, ("safetensors",)))


# --- TorchScript --------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_jit():
    # torch marks TorchScript deprecated (FutureWarning); it is still what many C++ and mobile
    # deployments load, so we keep offering it without repeating the warning to every user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _save_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(path))


def _load_torchscript(path: Path, model_factory) -> Predictor:
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return lambda x: module(x)


_register(ExportFormat("torchscript", ".torchscript.pt", "TorchScript (traced; torch.jit.load, no Python class needed)",
                       _save_torchscript, _load_torchscript))


# --- ONNX ---------------------------------------------------------------------------------------

def _require(module: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ExportError(f"{what} needs the {module} package, which is not installed",
                          f"pip install {module}") from None


def _save_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    batch = torch.export.Dim("batch")
    # The exporter prints its progress on stdout; keep stdout clean for `--json` output.
    with contextlib.redirect_stdout(io.StringIO()) as chatter:
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False)
    log.debug("onnx exporter: %s", chatter.getvalue().strip())


def _load_onnx(path: Path, model_factory) -> Predictor:
    _require("onnxruntime", "running an ONNX model")
    import onnxruntime as ort  # here, not at the top: an optional dependency (requirements-dev)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


_register(ExportFormat("onnx", ".onnx", "ONNX (dynamic batch; onnxruntime.InferenceSession)",
                       _save_onnx, _load_onnx, ("onnx", "onnxscript")))


# --- entry points -------------------------------------------------------------------------------

def _example_batch(example_input: torch.Tensor) -> torch.Tensor:
    example = example_input.detach().cpu().float()
    if example.ndim < 2:
        raise ExportError(f"the example input has shape {tuple(example.shape)}", "give a batch N x C x H x W")
    # ONNX's dynamic batch needs an example with more than one image (a size-1 dim is specialised)
    return example if example.shape[0] >= 2 else example.expand(2, *example.shape[1:]).clone()


def export_model(model: nn.Module, fmt: str, path: str | os.PathLike, example_input: torch.Tensor) -> Path:
    """Write `model` (in eval mode, on CPU) to `path` in format `fmt`, atomically.

    The model is copied first, so the caller's model keeps its device and mode.
    """
    spec = EXPORTERS.get(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example_batch(example_input)
    frozen = _cpu_eval_copy(model)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            spec.save(frozen, Path(tmp), example)
        except KTError:
            raise
        except Exception as exc:  # exporters fail in many ways; the user needs the format and the reason
            raise ExportError(f"cannot export the model as {fmt}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                              "try the state_dict or safetensors format, which export any model") from None
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("exported %s to %s (%.1f kB)", fmt, path, path.stat().st_size / 1024)
    return path


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model).cpu().eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def load_export(path: str | os.PathLike, fmt: str, model_factory: Callable[[], nn.Module] | None = None) -> Predictor:
    """Read an exported file back with its format's own loader; returns a predict function."""
    return EXPORTERS.get(fmt).load(Path(path), model_factory)


@torch.no_grad()
def verify_export(path: str | os.PathLike, fmt: str, model: nn.Module, example_input: torch.Tensor,
                  atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """Reload the export and compare its predictions with `model`'s; returns the largest difference.

    Raises ExportError when the outputs differ beyond the tolerance.
    """
    reference = _cpu_eval_copy(model)
    predict = load_export(path, fmt, lambda: _cpu_eval_copy(model))
    x = _example_batch(example_input)
    expected, got = reference(x), predict(x)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=atol, rtol=rtol):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
        raise ExportError(f"the {fmt} export of {Path(path).name} predicts differently from the model (max diff {diff:.3g})",
                          "use the state_dict or safetensors format for this model")
    return (got - expected).abs().max().item()


def export_run(run: str | os.PathLike, fmt: str, out_dir: str | os.PathLike | None = None,
               checkpoint: str = "best", verify: bool = True, roots: tuple[Path, ...] | None = None,
               task: str | None = None) -> Path:
    """Export a run's model (its best checkpoint) into `out_dir` (default `RUN/exports/`).

    Beside the file go the run's `config.json` and `<file>.json`: format, input size,
    normalization and class names, everything needed to feed the model. The model is rebuilt
    from the checkpoint alone (which also holds that metadata): neither the source nor the
    dataset is loaded. With `verify`, the file is read back with its format's loader and must
    predict what the model predicts. `roots`: the dashboard's (see `evaluate.load_run`).
    `task`: of a multi-task run, the network of that task (the shared trunk with its head), written
    as `model-<task>.<ext>`; None: the target's (`export_run_tasks` writes every task's).
    """
    from .evaluate import load_run  # here, not at the top: evaluate imports scikit-learn (~1 s)

    spec = EXPORTERS.get(fmt)  # an unknown format fails before anything is loaded
    loaded = load_run(run, checkpoint, device="cpu", with_data=False, roots=roots, task=task)
    out = Path(out_dir) if out_dir is not None else rundir.exports_dir(loaded.run_dir)
    input_size = tuple(loaded.input_size)
    try:
        return _export_into(out, spec, fmt, loaded, input_size, verify)
    except OSError as exc:  # a read-only or full run folder: say where, and the way out
        raise ExportError(f"cannot write the export to {out} ({exc.strerror or exc})",
                          "free disk space, or give a writable folder with --out DIR") from None


def _export_into(out: Path, spec, fmt: str, loaded, input_size: tuple, verify: bool) -> Path:
    stem = "model" if loaded.task is None else f"model-{loaded.task}"
    path = export_model(loaded.model, fmt, out / f"{stem}{spec.suffix}", torch.zeros(2, *input_size))
    diff = None
    if verify:
        diff = verify_export(path, fmt, loaded.model,
                             torch.randn(3, *input_size, generator=torch.Generator().manual_seed(0)))
    shutil.copyfile(rundir.config_path(loaded.run_dir), out / rundir.CONFIG)
    meta = {
        "format": fmt,
        "file": path.name,
        "run": loaded.run_dir.name,
        "checkpoint": loaded.checkpoint,
        "task": loaded.task,  # None: the run's target (a multi-task run's extra tasks have their own file)
        "arch": loaded.arch,
        "input_size": list(input_size),
        "normalization": [list(v) for v in loaded.normalization] if loaded.normalization else None,
        "class_names": list(loaded.class_names),
        "how_to_load": spec.description,
        "verified_max_diff": None if diff is None else float(diff),  # None: not verified
    }
    (out / f"{path.name}.json").write_text(json.dumps(meta, indent=1))
    log.info("run %s exported as %s to %s", loaded.run_dir.name, fmt, path)
    return path


def export_run_tasks(run: str | os.PathLike, fmt: str, out_dir: str | os.PathLike | None = None,
                     checkpoint: str = "best", verify: bool = True, roots: tuple[Path, ...] | None = None
                     ) -> list[Path]:
    """Every task's network of a run (the target's first; a single-task run: its one model)."""
    from .multitask import task_names  # with evaluate's import cost, as export_run

    names = task_names(rundir.load_config(rundir.run_dir(run)))
    return [export_run(run, fmt, out_dir, checkpoint, verify, roots, task=None if i == 0 else name)
            for i, name in enumerate(names)]
