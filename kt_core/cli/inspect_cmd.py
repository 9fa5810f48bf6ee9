"""`inspect SOURCE` (what a checkpoint, run or architecture holds) and `archs` (the registry)."""

from __future__ import annotations

import argparse
import difflib
import json
from typing import Any

from ..coderef import parse_code_ref
from ..config import SourceConfig
from ..errors import AmbiguousRunError, CheckpointError, ConfigError, KTError, RunError, UnsafeCheckpointError
from ..rundir import run_dir
from ..settings import user_path
from . import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="show what a source model is: architecture, mapping report, layer tree",
        description="SOURCE is a checkpoint file (.pt/.pth/.bin/.ckpt/.th/.safetensors, TorchScript), "
                    "a KT Studio run (folder, id, id prefix or name, see `runs`), or an architecture name (see `archs`).")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--arch", help="architecture of a checkpoint file (default: inferred from its keys), or the "
                                  "user's model code: path/to/model.py:ClassName or package.module:ClassName (needs --trust)")
    p.add_argument("--arch-kwargs", metavar="JSON", help="constructor keyword arguments of user model code, e.g. '{\"hidden\": 128}'")
    p.add_argument("--head", help="user model code: the classifier module (default: found from the module graph)")
    p.add_argument("--first-conv", help="user model code: the first conv/linear layer (default: found from the module graph)")
    p.add_argument("--weights", help="named torchvision weights for an architecture, e.g. IMAGENET1K_V1")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run")
    p.add_argument("--num-classes", type=int, metavar="N", help="replace the head for N classes")
    p.add_argument("--init-unmatched", action="store_true",
                   help="accept a named architecture that takes fewer than half of the file's tensors, "
                        "initialising the rest randomly")
    p.add_argument("--trust", action="store_true",
                   help="allow arbitrary code while unpickling or importing model code (only for files you trust)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=inspect_command)

    a = subparsers.add_parser("archs", help="list the registered architectures")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=archs_command)


def source_config(args: argparse.Namespace):
    """SOURCE -> SourceConfig: an existing file, an architecture, or a run (whatever `rundir.run_dir`
    takes: a folder, a run id, a unique id prefix or a run name, as `train` does)."""
    from ..models import ARCHITECTURES  # lazy: torch costs ~2 s, other commands skip it

    text = args.source
    code = _code_fields(args)
    if user_path(text).is_file():
        return SourceConfig(kind="file", path=text, arch=args.arch, trust=args.trust,
                            init_unmatched=args.init_unmatched, **code)
    if parse_code_ref(text):  # the user's model code alone: randomly initialised
        return SourceConfig(kind="arch", arch=text, trust=args.trust, **code)
    if text in ARCHITECTURES and not user_path(text).is_dir():
        weights = None if (args.weights or "").lower() in ("", "none") else args.weights
        return SourceConfig(kind="arch", arch=text, weights=weights)
    try:
        folder = run_dir(text)
    except AmbiguousRunError:
        raise
    except RunError as not_a_run:
        path = user_path(text)
        if path.is_dir():
            raise  # a folder that is not a run: say so
        if path.suffix or any(sep in text for sep in ("/", "\\")):
            raise CheckpointError(f"{text}: no such file or run folder",
                                  "check the path (a checkpoint file, or a run folder holding config.json)") from None
        if difflib.get_close_matches(text, ARCHITECTURES.names(), n=1):
            ARCHITECTURES.entry(text)  # a mistyped architecture: raises, naming the close ones
        raise KTError(f"{text!r} is not a checkpoint file, an architecture or a run ({not_a_run.message})",
                      "give a checkpoint file's path, an architecture (`python -m kt_core archs` lists them) "
                      "or a run folder, id, id prefix or name (`python -m kt_core runs` lists them)") from None
    return SourceConfig(kind="run", path=str(folder), checkpoint=args.checkpoint)


def _code_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"head": args.head, "first_conv": args.first_conv}
    if args.arch_kwargs:
        try:
            fields["arch_kwargs"] = json.loads(args.arch_kwargs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--arch-kwargs is not JSON ({exc.msg})", "write a JSON object, e.g. '{\"hidden\": 128}'") from None
        if not isinstance(fields["arch_kwargs"], dict):
            raise ConfigError("--arch-kwargs is not a JSON object", "write a JSON object, e.g. '{\"hidden\": 128}'")
    return fields


def inspect_command(args: argparse.Namespace) -> int:
    from ..sources import inspect_source  # lazy: torch costs ~2 s, other commands skip it

    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes is {args.num_classes}", "use 1 or more classes")
    try:
        info = inspect_source(source_config(args), num_classes=args.num_classes)
    except UnsafeCheckpointError as exc:
        if exc.contents:  # what could be learnt without running it, then the refusal (exit 2)
            print_json({"refused": exc.message, "contents": exc.contents}) if args.json else \
                print(render_unrun(exc.contents))
        raise
    if args.json:
        print_json(info)
    else:
        print(render(info))
    return 0


def render(info: dict[str, Any]) -> str:
    """The inspection as text: a header, the mapping report, and an indented layer table."""
    lines = [f"architecture : {info['architecture'] or 'unknown'}"
             + (f"  (candidates: {', '.join(info['candidates'])})" if len(info.get("candidates") or []) > 1 else ""),
             f"format       : {info['format']}",
             f"parameters   : {info['num_parameters']:,}"
             + (f" ({info['num_trainable']:,} trainable)" if info.get("num_trainable") is not None else ""),
             f"input size   : {tuple(info['input_size']) if info.get('input_size') else 'unknown'}"
             + (f"   normalization: mean {tuple(info['normalization'][0])}, std {tuple(info['normalization'][1])}"
                if info.get("normalization") else ""),
             f"classes      : {info.get('num_classes') or 'unknown'}"]
    report = info["load_report"]
    lines.append(f"weights      : {report['summary']}")
    for fix in report.get("fixes") or []:
        lines.append(f"  fixed: {fix}")
    for item in report.get("mismatched") or []:
        lines.append(f"  shape mismatch: {item['key']} file {tuple(item['source_shape'])} model {tuple(item['model_shape'])}")
    for what in ("missing", "unexpected"):
        keys = report.get(what) or []
        if keys:
            lines.append(f"  {what}: {', '.join(keys[:8])}" + (f" ... ({len(keys)} in all)" if len(keys) > 8 else ""))
    for note in info.get("notes") or []:
        lines.append(f"note: {note}")
    if info.get("meta"):
        shown = {k: v for k, v in info["meta"].items() if isinstance(v, (int, float, str)) and len(str(v)) < 60}
        if shown:
            lines.append("file meta    : " + ", ".join(f"{k}={v}" for k, v in list(shown.items())[:8]))
    if info.get("blocks"):
        lines.append("blocks       : " + " -> ".join(b["name"] for b in info["blocks"]))
    lines.append("")
    lines.append(f"{'layer':<44} {'type':<22} {'params':>12}  {'output':<20} block")
    for row in info["layers"]:
        name = "  " * row["depth"] + row["name"].rsplit(".", 1)[-1]
        shape = row.get("output_shape")
        shape = "x".join(map(str, shape)) if shape and all(isinstance(s, int) for s in shape) else (str(shape) if shape else "")
        count = row.get("num_parameters_total", row["num_parameters"])
        lines.append(f"{name[:44]:<44} {row['type'][:22]:<22} {count:>12,}  {shape:<20} {row.get('block') or ''}")
    return "\n".join(lines)


def render_unrun(contents: dict[str, Any]) -> str:
    """A refused archive's description: its tensors and files, read without running it."""
    lines = ["not loaded (it would run code); read from the file without running it:",
             f"files        : {contents['num_files']}"
             + (f"   classes: {', '.join(contents['classes'][:6])}" if contents.get("classes") else "")]
    tensors = contents.get("tensors") or {}
    for name, t in list(tensors.items())[:200]:
        lines.append(f"  {name:<50} {t['dtype']:<10} {'x'.join(map(str, t['shape'])) or 'scalar'}")
    if len(tensors) > 200:
        lines.append(f"  ... ({len(tensors)} tensors in all)")
    if contents.get("note"):
        lines.append(f"note: {contents['note']}")
    return "\n".join(lines)


def archs_command(args: argparse.Namespace) -> int:
    from ..models import ARCHITECTURES  # lazy: torch costs ~2 s, other commands skip it

    rows = [{"name": spec.name, "family": spec.family, "provider": spec.provider, "input_size": list(spec.input_size),
             "num_classes": spec.num_classes, "weights": list(spec.weights),
             "normalization": [list(m) for m in spec.normalization] if spec.normalization else None,
             "description": spec.description}
            for spec in (entry.obj for entry in ARCHITECTURES)]
    if args.json:
        print_json(rows)
        return 0
    print(f"{'name':<22} {'family':<20} {'input':<12} weights")
    for row in rows:
        size = "x".join(map(str, row["input_size"]))
        print(f"{row['name']:<22} {row['family']:<20} {size:<12} {', '.join(row['weights']) or '-'}")
    from ..providers import TIMM_HINT, timm_available  # lazy, as ARCHITECTURES above

    if not timm_available():
        print(f"\ntimm is not installed: {TIMM_HINT}")
    return 0
