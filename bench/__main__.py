"""`python -m bench [--quick] [--only B1,B2] [--device auto]`: run the figures, print the table,
write it with the machine's facts to `bench/results.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import cache_growth, demo_speed, distributed, experiment_speed, figures, growth, image_folder, multitask_speed, peers, quality, ui_tax  # noqa: F401  (importing registers the figures)
from .harness import FIGURES, SCALES, Context, machine_facts, render_results_md, render_table, run_figure

RESULTS = Path(__file__).resolve().parent / "results.md"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: device {name!r} asked for, but CUDA is not available (use --device cpu or auto)")
    return device


def groups() -> dict[str, list[str]]:
    """Named groups of figures (`--only quality`), from the figures' `group` metadata."""
    found: dict[str, list[str]] = {}
    for name in FIGURES.names():
        group = FIGURES.meta(name).get("group")
        if group:
            found.setdefault(group, []).append(name)
    return found


def parse_only(text: str | None) -> list[str]:
    known = sorted(FIGURES.names(), key=lambda name: int(name[1:]))
    if not text:
        return known
    named = groups()
    wanted = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        wanted += named.get(part.lower(), [part.upper()])
    unknown = [w for w in wanted if w not in FIGURES]
    if unknown:
        raise SystemExit(f"error: unknown figure(s) {', '.join(unknown)} (valid: {', '.join(known)}; "
                         f"groups: {', '.join(sorted(named))})")
    return sorted(set(wanted), key=known.index)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute in all (= --scale quick)")
    parser.add_argument("--scale", choices=sorted(SCALES), help="full (default), quick, or tiny (smoke tests only)")
    parser.add_argument("--only", metavar="IDS", help="comma-separated figures or groups to run, e.g. B1,B7 or "
                                                      "quality (default: all)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, fixed for both sides of every ratio (default 1: steadiest on a shared machine)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to write the table (default {RESULTS.name})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure fails its target")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    names = parse_only(args.only)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    # Workers and reference processes started by B4-B6 inherit this: the same threads everywhere.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    scale = SCALES[args.scale or ("quick" if args.quick else "full")]
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="kt-bench-") as tmp:
        ctx = Context(scale=scale, device=device, threads=args.threads, workdir=Path(tmp))
        for name in names:
            figure_start = time.perf_counter()
            result = run_figure(name, ctx)
            print(f"{name} {result.verdict:5} {result.measured_text():>9}  "
                  f"({time.perf_counter() - figure_start:.0f} s)", file=sys.stderr, flush=True)
            results.append(result)
    elapsed = time.perf_counter() - started
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    args.results.write_text(render_results_md(results, machine_facts(device, args.threads), command.strip(),
                                              scale, elapsed))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(render_table(results))
        print(f"\nwritten to {args.results}")
    if any(r.verdict == "ERROR" for r in results):
        return 2
    if args.strict and any(r.verdict == "FAIL" for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
