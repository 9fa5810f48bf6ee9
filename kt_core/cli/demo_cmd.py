"""`python -m kt_core demo`: the Home page's one-click demo, from the command line."""

from __future__ import annotations

import time

from .. import demo, launcher, rundir
from . import print_json
from .terminal import Terminal


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the offline transfer story: MNIST source -> digits with K labels, vs from scratch")
    p.add_argument("--per-class", type=int, default=10, metavar="K", help="labelled target images per class (default 10)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda[:N], mps")
    p.add_argument("--detach", action="store_true", help="start the runs and return; watch them with `runs`")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress while the runs train")
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
        states = watch(Terminal(quiet=args.quiet or args.json), ids)
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


def watch(terminal: Terminal, run_ids: dict[str, str], poll_s: float = 0.5) -> dict[str, str]:
    """Follow runs training in other processes through their folders (as the UI does) until all
    have ended: a bar per run on a terminal (step from status.json, val accuracy from the
    metrics file), else one line per epoch and per change of state. Returns each run's state."""
    followed = {label: _Followed(label, run_id) for label, run_id in run_ids.items()}
    try:
        while True:
            for run in followed.values():
                run.poll(terminal)
            states = {run.run_id: run.state for run in followed.values()}
            if not any(s in rundir.ACTIVE_STATES for s in states.values()):
                return states
            time.sleep(poll_s)
    finally:
        for run in followed.values():
            run.close(terminal)


class _Followed:
    def __init__(self, label: str, run_id: str):
        self.label, self.run_id = label, run_id
        self.state, self.offset, self.val_acc, self.bar = None, 0, None, None
        self.epochs = rundir.load_config(run_id).train.epochs

    def poll(self, terminal: Terminal) -> None:
        status = rundir.read_status(self.run_id)
        rows, self.offset = rundir.read_metrics(self.run_id, self.offset)
        for row in rows:
            if row.get("kind") != "epoch":
                continue
            self.val_acc = row.get("val_acc")
            if not terminal.live:
                terminal.line(f"{self.label} epoch {row['epoch']}/{self.epochs}  loss {row['train_loss']:.4f}"
                              + (f"  val_acc {self.val_acc:.4f}" if self.val_acc is not None else ""))
        if status["state"] != self.state:
            self.state = status["state"]
            if not terminal.live:
                terminal.line(f"{self.label} ({self.run_id}): {self.state}")
        if terminal.live:
            stats = f"{status.get('step') or 0}/{status.get('total_steps') or '?'}  {self.state}"
            if self.val_acc is not None:
                stats += f"  val_acc {self.val_acc:.4f}"
            text = f"{self.label} epoch {min((status.get('epoch') or 0) + 1, self.epochs)}/{self.epochs}"
            if self.bar is None:
                self.bar = terminal.bars.add(text, status.get("total_steps"), status.get("step") or 0, stats)
            else:
                terminal.bars.update(self.bar, description=text, total=status.get("total_steps"),
                                     completed=status.get("step") or 0, stats=stats)

    def close(self, terminal: Terminal) -> None:
        if self.bar is not None:
            terminal.bars.redraw(force=True)
            terminal.bars.remove(self.bar)
            self.bar = None
