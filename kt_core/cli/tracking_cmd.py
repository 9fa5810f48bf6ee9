"""`export-tracking RUN... --mlflow URI`: finished runs into the tracker a team already uses.

    python -m kt_core export-tracking demo-transfer-k10 --mlflow sqlite:///mlflow.db
    python -m kt_core export-tracking RUN RUN --mlflow http://mlflow.example:5000 --experiment transfer

TensorBoard needs no command: every run writes its event files (`tensorboard --logdir runs`).
"""

from __future__ import annotations

import argparse

from . import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("export-tracking",
                              help="log runs (params, metrics with steps, the model) into an MLflow tracking server",
                              description="Log each RUN's config as params, its step and epoch metrics with their "
                                          "steps, and its model (safetensors + config) into MLflow. A run exported "
                                          "before is found by its tag and not logged twice. Needs `pip install mlflow`.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, id prefixes, folders or names")
    p.add_argument("--mlflow", required=True, metavar="URI",
                   help="the tracking URI: http(s)://server, sqlite:///mlflow.db, databricks, ...")
    p.add_argument("--experiment", default=None, help='MLflow experiment (default "KT Studio"; created if missing)')
    p.add_argument("--runs-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..mlflow_export import DEFAULT_EXPERIMENT, export_runs  # here: it reads runs through torch-free modules, but the model export needs torch

    done = export_runs(args.runs, args.mlflow, args.experiment or DEFAULT_EXPERIMENT, args.runs_dir)
    if args.json:
        print_json([d.to_dict() for d in done])
        return 0
    for d in done:
        what = "already in MLflow" if d.already else f"logged {d.params} params, {d.metrics} metric values and the model"
        print(f"{d.run_id}: {what} (MLflow run {d.mlflow_run_id}, experiment {d.experiment_id})")
    return 0
