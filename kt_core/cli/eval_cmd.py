"""`eval RUN` and `export RUN --format FMT`: what a finished run is worth, and taking it away."""

from __future__ import annotations

import argparse

from ..config import EVERY_TASK
from ..rundir import CONFIG
from . import print_json


def register(subparsers) -> None:
    from ..export import EXPORTERS  # lazy: torch costs ~2 s, other commands skip it

    p = subparsers.add_parser("eval", help="evaluate a run's best checkpoint on its val or test split")
    p.add_argument("run", help="run id (folder name under the runs dir) or run folder")
    p.add_argument("--split", choices=("val", "test", "train"), default="val")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--task", default=None, metavar="NAME",
                   help="a multi-task run's task to evaluate (its head, its data; default: the target)")
    p.add_argument("--show", type=int, default=10, metavar="N", help="misclassified examples to list (text output)")
    p.add_argument("--json", action="store_true", help="the full result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress while the data is decoded and evaluated")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser("export", help="export a run's model (state_dict, safetensors, torchscript, onnx)")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--format", required=True, dest="fmt", metavar="FMT",
                   help=f"one of {', '.join(EXPORTERS.names())}")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default RUN/exports)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--no-verify", action="store_true", help="skip reading the file back to compare predictions")
    p.add_argument("--task", default=None, metavar="NAME",
                   help=f"a multi-task run's task whose network to export (model-NAME.EXT), or '{EVERY_TASK}' "
                        "for every task (default: the target's, model.EXT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_export)


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_run  # lazy: torch costs ~2 s, other commands skip it
    from .terminal import Terminal

    with Terminal(quiet=args.quiet or args.json).tasks():
        result = evaluate_run(args.run, split=args.split, device=args.device, checkpoint=args.checkpoint,
                              task=args.task)
    if args.json:
        print_json(result.to_dict())
        return 0
    task = f", task {result.task}" if result.task else ""
    print(f"run {result.run} ({result.checkpoint} checkpoint{task}), {result.split} split: {result.num_samples} images")
    print(f"accuracy {result.accuracy:.4f}   loss {result.loss:.4f}   macro F1 {result.macro_f1:.4f}")
    width = max(len("class"), *(len(c["class"]) for c in result.per_class))
    print(f"\n{'class':<{width}}  precision  recall     f1  support")
    for c in result.per_class:
        print(f"{c['class']:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    print(f"\nmisclassified: {result.num_misclassified}")
    for m in result.misclassified[: max(args.show, 0)]:
        print(f"  #{m['index']}: {m['true']} predicted as {m['predicted']} ({m['confidence']:.2f})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_run, export_run_tasks  # lazy: torch costs ~2 s, other commands skip it

    options = dict(out_dir=args.out, checkpoint=args.checkpoint, verify=not args.no_verify)
    if args.task == EVERY_TASK:
        paths = export_run_tasks(args.run, args.fmt, **options)
    else:
        paths = [export_run(args.run, args.fmt, task=args.task, **options)]
    if args.json:
        shown = [{"format": args.fmt, "path": str(p), "config": str(p.parent / CONFIG)} for p in paths]
        print_json(shown[0] if args.task != EVERY_TASK else shown)
    else:
        for path in paths:
            print(path)
    return 0
