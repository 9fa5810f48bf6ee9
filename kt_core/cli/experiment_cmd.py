"""`experiment`, `experiments` and the hidden `experiment-driver` command.

    python -m kt_core experiment examples/sample_efficiency_quick.json      # foreground, with progress
    python -m kt_core experiment SPEC.json --detach                          # start it and return
    python -m kt_core experiments
    python -m kt_core experiment show ID [--json]
    python -m kt_core experiment report ID --out report.html [--csv results.csv]
    python -m kt_core experiment stop ID ; python -m kt_core experiment resume ID
    python -m kt_core experiment delete ID [--keep-runs]

ID is an experiment id, a unique prefix of one, its folder, or its name (the newest of that name).
Exit codes: 0 done (every member completed), 1 not every member completed, 2 bad input.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import experiments as ex
from ..experiments import report, results
from ..experiments.driver import drive
from ..errors import KTError
from . import print_json
from .terminal import Terminal, format_duration

ACTIONS = ("show", "report", "stop", "resume", "delete")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment", help="run an experiment spec (many runs, one question), or show/report/stop/resume/delete one",
        description="`experiment SPEC.json` runs the experiment (foreground with progress, or --detach); "
                    "`experiment show|report|stop|resume|delete ID` acts on one. Specs: examples/sample_efficiency*.json.")
    p.add_argument("target", metavar="SPEC.json|ACTION", help=f"a spec file, or one of {', '.join(ACTIONS)}")
    p.add_argument("id", nargs="?", metavar="ID", help="the experiment (for an action)")
    p.add_argument("--detach", action="store_true", help="start the experiment's driver in the background and return")
    p.add_argument("--parallel", type=int, metavar="N", help="members at a time (default: $KT_EXPERIMENT_PARALLEL or one per core)")
    p.add_argument("--out", metavar="FILE.html", help="report: the HTML file to write")
    p.add_argument("--csv", metavar="FILE.csv", help="report: also write the members' results as CSV (default: beside --out)")
    p.add_argument("--foreground", action="store_true", help="resume: drive it in this process")
    p.add_argument("--keep-runs", action="store_true", help="delete: keep the member runs")
    p.add_argument("--runs-dir", help="the runs folder (experiments live beside it, in experiments/)")
    p.add_argument("--quiet", action="store_true", help="no progress while it runs in the foreground")
    p.add_argument("--json", action="store_true", help="machine-readable output (implies --quiet)")
    p.set_defaults(func=_experiment)

    p = subparsers.add_parser("experiments", help="list experiments, newest first")
    p.add_argument("--runs-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = subparsers.add_parser("experiment-driver", description="Internal: drive one experiment folder.")
    p.add_argument("folder")
    p.set_defaults(func=_driver)


def _experiment(args) -> int:
    if args.target in ACTIONS:
        if not args.id:
            raise KTError(f"experiment {args.target} needs an experiment id", "`python -m kt_core experiments` lists them")
        return {"show": _show, "report": _report, "stop": _stop, "resume": _resume, "delete": _delete}[args.target](args)
    if args.id:
        raise KTError(f"unknown experiment action {args.target!r}", f"use a spec file, or one of {', '.join(ACTIONS)}")
    return _run(args)


def _run(args) -> int:
    spec = ex.ExperimentSpec.from_file(args.target)
    if args.parallel is not None and args.parallel < 1:
        raise KTError(f"--parallel is {args.parallel}", "use 1 or more")
    if args.detach:
        exp_id = ex.start_experiment(spec, args.runs_dir, args.parallel)
        if args.json:
            print_json({"id": exp_id, "dir": str(ex.experiment_dir(exp_id, args.runs_dir))})
        else:
            print(f"experiment {exp_id} started; watch it with `python -m kt_core experiment show {exp_id}`")
        return 0
    ex.control.preflight(spec, args.runs_dir)
    folder = ex.create_experiment(spec, args.runs_dir, args.parallel)
    if not args.json:
        print(f"experiment {folder.name} ({folder}); Ctrl-C stops it (resume continues)", flush=True)
    return _finish(_drive_in_foreground(folder, args), args)


class ExperimentProgress:
    """The members' progress of an experiment driven in this process: a bar on a terminal
    (members done of all, how many train now, ETA from the pace so far), else one line per change."""

    def __init__(self, terminal: Terminal):
        self.terminal, self.started, self.last, self.task = terminal, time.monotonic(), None, None

    def __call__(self, progress: dict) -> None:
        counts = progress.get("counts", {})
        done, total = progress.get("done", 0), progress.get("total", 0)
        busy = counts.get("running", 0) + counts.get("queued", 0)
        extra = ", ".join(f"{s} {n}" for s, n in counts.items() if s in ("failed", "stopped", "interrupted") and n)
        elapsed = time.monotonic() - self.started
        eta = (total - done) * elapsed / done if done else None
        line = f"{done}/{total} done, {busy} training" + (f", {extra}" if extra else "")
        if self.terminal.live:
            stats = f"{line}  ETA {format_duration(eta)}"
            if self.task is None:
                self.task = self.terminal.bars.add("members", total, done, stats)
            else:
                self.terminal.bars.update(self.task, completed=done, total=total, stats=stats)
        elif line != self.last:  # one line per change, not per member state flip
            self.terminal.line(f"  {elapsed:6.1f} s  {line}")
        self.last = line

    def close(self) -> None:
        if self.task is not None:
            self.terminal.bars.redraw(force=True)
            self.terminal.bars.remove(self.task)
            self.task = None


def _drive_in_foreground(folder, args, resume: bool = False) -> dict:
    shown = ExperimentProgress(Terminal(quiet=args.quiet or args.json))
    try:
        if resume:
            exp_id = ex.resume_experiment(folder, args.runs_dir, foreground=True, on_progress=shown)
            return ex.read_experiment(exp_id, args.runs_dir)
        return drive(folder, on_progress=shown)
    finally:
        shown.close()


def _print(data: dict, args) -> None:
    """An experiment's results and conclusion, as JSON or as tables (show, and the end of a run)."""
    points = results.aggregate(data)
    verdict = results.conclude(data, points)
    if args.json:
        print_json(_show_json(data, points, verdict))
    else:
        _print_results(data, points, verdict)


def _finish(data: dict, args) -> int:
    _print(data, args)
    counts = (data.get("progress") or {}).get("counts", {})
    all_done = data.get("state") == "completed" and counts.get("completed", 0) == len(data.get("members") or [])
    return 0 if all_done else 1


def _show_json(data: dict, points, verdict) -> dict:
    clean = points.astype(object).where(points.notna(), None).to_dict(orient="records")
    return {"id": data.get("id"), "name": data.get("name"), "kind": data.get("kind"), "state": data.get("state"),
            "error": data.get("error"), "progress": data.get("progress"), "source_run": data.get("source_run"),
            "members": data.get("members"), "points": clean, "verdict": verdict.to_dict(),
            "dir": data.get("dir")}


def _print_results(data: dict, points, verdict) -> None:
    progress = data.get("progress") or {}
    print(f"{data.get('id')}: {data.get('state')}  {progress.get('done', 0)}/{progress.get('total', 0)} members done"
          + (f"  error: {data['error']}" if data.get("error") else ""))
    if len(points):
        shown = points.drop(columns=["x"]).copy()
        for c in ("mean", "std", "min", "max"):
            shown[c] = shown[c].map(lambda v: f"{v:.3f}")
        print(shown.to_string(index=False))
    metric = next((m for m in _metrics(data)), None)
    if metric:
        print(f"(accuracy: {metric}; mean and standard deviation over seeds)")
    for line in verdict.lines:
        print(f"- {line}")


def _metrics(data: dict):
    table = results.member_table(data)
    return sorted(set(table["metric"].dropna())) if "metric" in table else []


def _show(args) -> int:
    _print(ex.read_experiment(args.id, args.runs_dir), args)
    return 0


def _report(args) -> int:
    if not args.out:
        raise KTError("experiment report needs --out FILE.html", "for example --out report.html")
    out = Path(args.out)
    csv = Path(args.csv) if args.csv else out.with_suffix(".csv")
    report.write_report(args.id, out, csv, runs_dir=args.runs_dir)
    print(f"wrote {out} and {csv}")
    return 0


def _stop(args) -> int:
    data = ex.stop_experiment(args.id, args.runs_dir)
    print(f"{data['id']}: {data['state']}")
    return 0


def _resume(args) -> int:
    if args.foreground:
        return _finish(_drive_in_foreground(args.id, args, resume=True), args)
    exp_id = ex.resume_experiment(args.id, args.runs_dir)
    print(f"{exp_id}: {ex.read_experiment(exp_id, args.runs_dir)['state']} (driver restarted)")
    return 0


def _delete(args) -> int:
    folder = ex.experiment_dir(args.id, args.runs_dir)
    deleted = ex.delete_experiment(folder, keep_runs=args.keep_runs)
    print(f"deleted {folder}" + (f" and its {len(deleted)} member runs" if deleted else ""))
    return 0


def _list(args) -> int:
    rows = ex.list_experiments(args.runs_dir)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no experiments in {ex.experiments_root(args.runs_dir)}")
        return 0
    for r in rows:
        print(f"{r['id']}  {r.get('kind') or '-':<18} {r.get('state') or '-':<12} {r.get('done', 0)}/{r.get('total', 0)}"
              + (f"  {r['error']}" if r.get("error") else ""))
    return 0


def _driver(args) -> int:
    data = drive(args.folder)
    sys.stdout.flush()
    return 0 if data.get("state") == "completed" else 1
