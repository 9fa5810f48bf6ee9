"""`python -m kt_core demo`: the Home page's one-click demo, from the command line."""

from __future__ import annotations

import time

from .. import demo, launcher, rundir
from . import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the offline transfer story: MNIST source -> digits with K labels, vs from scratch")
    p.add_argument("--per-class", type=int, default=10, metavar="K", help="labelled target images per class (default 10)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda[:N], mps")
    p.add_argument("--detach", action="store_true", help="start the runs and return; watch them with `runs`")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    handle = demo.run_demo(per_class=args.per_class, device=args.device)
    ids = {"source": handle.source_run, "transfer": handle.transfer_run, "baseline": handle.baseline_run}
    if not args.json:
        print(f"source {handle.source_run}{' (cached)' if handle.source_reused else ''}, "
              f"transfer {handle.transfer_run}, from scratch {handle.baseline_run}")
    if args.detach:
        if args.json:
            print_json(ids)
        return 0
    try:
        states = _wait(list(ids.values()), quiet=args.json)
    except KeyboardInterrupt:
        for run_id in ids.values():
            if rundir.is_active(run_id):
                launcher.stop(run_id)
        raise
    line = demo.conclusion(handle)
    if args.json:
        print_json({**ids, "source_reused": handle.source_reused, "states": states, "conclusion": line})
    else:
        print(line or f"the demo did not complete: {states}; see `python -m kt_core logs RUN`")
    return 0 if line else 1


def _wait(run_ids: list[str], quiet: bool) -> dict[str, str]:
    """Poll the run folders (as the UI does) until every run has ended; one line per change."""
    last = None
    while True:
        states = {r: rundir.read_status(r)["state"] for r in run_ids}
        if not quiet and states != last:
            print("  " + ", ".join(f"{r.split('-', 2)[-1]}: {s}" for r, s in states.items()), flush=True)
            last = states
        if not any(s in rundir.ACTIVE_STATES for s in states.values()):
            return states
        time.sleep(0.5)
