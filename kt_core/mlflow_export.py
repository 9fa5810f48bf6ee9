"""Copy finished runs into an MLflow tracking server, so a team that keeps its history in MLflow
keeps KT Studio's runs there too (`python -m kt_core export-tracking RUN... --mlflow URI`).

What one KT Studio run becomes in MLflow (one MLflow run in the experiment, default "KT Studio"):
- params: the config flattened (`train.lr`, `plan.preset`, `source.arch`, ...; lists as JSON);
- metrics, with their steps (the optimizer step, as in metrics.jsonl) and wall times:
  `step/train_loss`, `step/lr`, `step/images_per_s`, `epoch/train_loss`, `epoch/train_acc`,
  `epoch/val_loss`, `epoch/val_acc`, `epoch/epoch_s`, `epoch/lr`, plus the summary's
  `best_val_acc`, `final_val_acc`, `test_acc`, `train_s`, `images_per_s` (no step);
- artifacts: `model/` (the best checkpoint's weights as safetensors, verified by reloading, with
  the run's config.json and a json of input size, normalization and class names: everything to
  use the model, and no pickle to trust), and `run/` (config.json, summary.json, metrics.jsonl,
  log.txt as they are in the run folder);
- tags: `kt_studio.run_id` (how a second export finds it: a run is exported once), the state,
  architecture, dataset, preset; the run's start and end times and FINISHED / KILLED / FAILED.

MLflow is an optional dependency (`pip install mlflow`, or `mlflow-skinny` for a client of a
server); without it the command says how to install it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from . import rundir
from .errors import KTError, RunError
from .settings import confine_path

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "KT Studio"
RUN_TAG = "kt_studio.run_id"
INSTALL_HINT = "pip install mlflow (or mlflow-skinny, a client for a tracking server)"
STEP_KEYS = ("train_loss", "lr", "images_per_s")
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "lr")
SUMMARY_KEYS = ("best_val_acc", "final_val_acc", "final_train_acc", "test_acc", "test_loss", "train_s", "images_per_s")
BATCH = 900  # MLflow takes at most 1000 metrics and 100 params per log_batch call
PARAM_BATCH = 100
PARAM_MAX = 6000  # characters of a param value MLflow stores
MLFLOW_STATE = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED", "interrupted": "FAILED"}


@dataclass
class Exported:
    run_id: str  # KT Studio's
    mlflow_run_id: str
    experiment_id: str
    already: bool  # it was exported before: nothing was logged again
    metrics: int = 0
    params: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TrackingError(KTError):
    pass


def _mlflow():
    try:
        # an optional dependency, imported when asked for
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("MLflow is not installed", INSTALL_HINT) from None
    return MlflowClient


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """`{"train": {"lr": 0.001}}` -> `{"train.lr": "0.001"}`; lists and None as JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def export_runs(run_list: Iterable[str | os.PathLike], tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                runs_dir: str | os.PathLike | None = None) -> list[Exported]:
    """Log each run into MLflow at `tracking_uri`; a run exported before is found by its tag and
    not logged twice. Runs still training are refused (their metrics are not final)."""
    folders = [rundir.run_dir(r, runs_dir) for r in run_list]  # every name resolves before anything is logged
    for folder in folders:
        state = rundir.read_status(folder)["state"]
        if state in rundir.ACTIVE_STATES:
            raise RunError(f"run {folder.name} is still {state}", "export it when it has ended (or stop it first)")
    client = _client(tracking_uri)
    experiment_id = _experiment(client, experiment)
    return [_export_one(client, experiment_id, folder) for folder in folders]


LOCAL_SCHEMES = ("file", "sqlite")


def confine_tracking_uri(tracking_uri: str, roots) -> None:
    """For the UI of a shared server: a local store (a path, file:, sqlite:) must lie under `roots`,
    as every server path typed into the UI; remote servers are not paths and pass."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme and parsed.scheme not in LOCAL_SCHEMES and len(parsed.scheme) > 1:  # "C:" is a drive
        return
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db (SQLAlchemy's forms)
        path = tracking_uri.split(":///", 1)[1] if ":///" in tracking_uri else ""
        if not path or path == ":memory:":
            return
    else:
        path = parsed.path if parsed.scheme == "file" else tracking_uri
    confine_path(path, roots)


def _client(tracking_uri: str):
    MlflowClient = _mlflow()
    from mlflow.exceptions import MlflowException  # optional dependency (present: _mlflow() checked)

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # a wrong URI fails here, before anything is logged
    except MlflowException as exc:
        raise TrackingError(f"MLflow tracking URI {tracking_uri!r} cannot be used: {exc.message}",
                            "give an http(s):// server, sqlite:///mlflow.db, or a file store with "
                            "MLFLOW_ALLOW_FILE_STORE=true") from None
    return client


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted",
                                "restore it in MLflow, or choose another with --experiment")
        return found.experiment_id
    return client.create_experiment(name)


def _export_one(client, experiment_id: str, folder: Path) -> Exported:
    from mlflow.entities import Metric, Param  # optional dependency (present: _mlflow() checked)

    previous = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{folder.name}'", max_results=1)
    if previous:
        log.info("run %s is already in MLflow as %s", folder.name, previous[0].info.run_id)
        return Exported(folder.name, previous[0].info.run_id, experiment_id, already=True)

    config = rundir.read_config_dict(folder)
    summary = rundir.read_summary(folder)
    status = rundir.read_status(folder)
    rows, _ = rundir.read_metrics(folder)
    started = min((r["time"] for r in rows if "time" in r), default=rundir.config_path(folder).stat().st_mtime)
    ended = max((r["time"] for r in rows if "time" in r), default=started)

    tags = {RUN_TAG: folder.name, "kt_studio.state": status["state"],
            "kt_studio.arch": str(summary.get("arch") or config.get("source", {}).get("arch")),
            "kt_studio.dataset": str(config.get("dataset", {}).get("name")),
            "kt_studio.preset": str(config.get("plan", {}).get("preset")),
            "mlflow.source.name": "KT Studio", "mlflow.note.content": f"KT Studio run `{folder.name}`"}
    mlrun = client.create_run(experiment_id, start_time=int(started * 1000), tags=tags,
                              run_name=config.get("name") or folder.name)
    run_id = mlrun.info.run_id
    try:
        params = [Param(k, v[:PARAM_MAX]) for k, v in flatten(config).items()]
        metrics = _metrics(rows, summary, ended, Metric)
        for i in range(0, len(params), PARAM_BATCH):
            client.log_batch(run_id, params=params[i:i + PARAM_BATCH])
        for i in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + BATCH])
        _artifacts(client, run_id, folder)
    except Exception:
        client.set_terminated(run_id, "FAILED")  # a half-logged run says so, and the next export retries
        client.delete_run(run_id)
        raise
    client.set_terminated(run_id, MLFLOW_STATE.get(status["state"], "FAILED"), end_time=int(ended * 1000))
    log.info("run %s -> MLflow run %s (%d params, %d metric values)", folder.name, run_id, len(params), len(metrics))
    return Exported(folder.name, run_id, experiment_id, already=False, metrics=len(metrics), params=len(params))


def _metrics(rows: list[dict], summary: dict, ended: float, Metric) -> list[Any]:
    out = []
    for row in rows:
        keys = STEP_KEYS if row.get("kind") == "step" else EPOCH_KEYS if row.get("kind") == "epoch" else ()
        stamp = int(row.get("time", ended) * 1000)
        for key in keys:
            value = row.get(key)
            if value is not None:
                out.append(Metric(f"{row['kind']}/{key}", float(value), stamp, int(row["step"])))
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(Metric(key, float(value), int(ended * 1000), 0))
    return out


def _artifacts(client, run_id: str, folder: Path) -> None:
    from .export import export_run  # here: exporting imports torch, which the checks before it do not need

    for path in (rundir.config_path(folder), folder / rundir.SUMMARY, rundir.metrics_path(folder),
                 rundir.log_path(folder)):
        if path.is_file():
            client.log_artifact(run_id, str(path), "run")
    if not any(rundir.checkpoint_path(folder, tag).is_file() for tag in rundir.CHECKPOINTS):
        log.warning("run %s has no checkpoint: MLflow gets its metrics but no model", folder.name)
        return
    with tempfile.TemporaryDirectory(prefix="kt-mlflow-") as tmp:
        export_run(folder, "safetensors", out_dir=tmp)  # verified by reloading
        client.log_artifacts(run_id, tmp, "model")
