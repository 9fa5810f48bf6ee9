"""`train`, `runs`, `status`, `logs`, `stop`, `resume`, `delete` and the hidden `worker` command.

    python -m kt_core train examples/quick.json            # foreground; exit 0 only when completed
    python -m kt_core train CONFIG --baseline --epochs 3   # plus its from-scratch baseline
    python -m kt_core runs --json
    python -m kt_core compare RUN RUN                      # results + the config values that differ
    python -m kt_core stop RUN ; python -m kt_core resume RUN

RUN is a run id, a unique prefix of one, a run folder path, or a run name (the newest run of
that name). Exit codes: 0 done, 1 the run did not complete (failed or stopped), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .. import headline, launcher, rundir, runs
from ..config import DISTILL_MODES, RunConfig, SourceConfig
from ..errors import KTError
from . import print_json
from .terminal import Terminal


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a run from a config file, in the foreground",
                              description="Train CONFIG in this process (logs on the console and in the run "
                                          "folder). Ctrl-C stops gracefully after the current batch; "
                                          "`resume RUN` continues. Exit code 0 only when the run completed.")
    p.add_argument("config", help="a run config JSON file (see examples/quick.json)")
    p.add_argument("--runs-dir", help="where run folders go (default: $KT_RUNS_DIR or ./runs)")
    p.add_argument("--baseline", action="store_true", help="then train the from-scratch baseline of the run")
    p.add_argument("--device", help="override train.device: auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--distill", choices=DISTILL_MODES, help="override distill.mode: off, logit or feature")
    p.add_argument("--teacher", metavar="RUN_OR_FILE",
                   help="override distill.teacher: a run (id, name, folder) or a checkpoint file (default: the source)")
    p.add_argument("--alpha", type=float, help="override distill.alpha, the weight of the SOFT (teacher) term")
    p.add_argument("--temperature", type=float, help="override distill.temperature")
    p.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="override train.nproc_per_node: processes (one per GPU) trained under torchrun + DDP")
    p.add_argument("--nnodes", type=int, metavar="M", help="override train.nnodes (several nodes: see the README)")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="override train.rdzv_endpoint: torchrun's rendezvous")
    p.add_argument("--json", action="store_true", help="print the final status and summary as JSON")
    _quiet_arg(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser("runs", help="list runs, newest first")
    p.add_argument("--runs-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = subparsers.add_parser("compare", help="runs side by side: their results and the config values that differ")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, id prefixes, folders or names")
    p.add_argument("--all", action="store_true", help="every config value, not only the ones that differ")
    p.add_argument("--runs-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_compare)

    p = subparsers.add_parser("status", help="one run's status (stale workers show as interrupted)")
    _run_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = subparsers.add_parser("logs", help="the end of a run's log.txt")
    _run_args(p)
    p.add_argument("-n", "--lines", type=int, default=40)
    p.set_defaults(func=_logs)

    p = subparsers.add_parser("stop", help="stop a running run after its current batch (checkpointed)")
    _run_args(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before SIGTERM, then SIGKILL (default 10)")
    p.set_defaults(func=_stop)

    p = subparsers.add_parser("resume", help="continue a stopped, failed or interrupted run from its last checkpoint")
    _run_args(p)
    p.add_argument("--foreground", action="store_true", help="train in this process instead of a background worker")
    _quiet_arg(p)
    p.set_defaults(func=_resume)

    p = subparsers.add_parser("delete", help="delete a run folder (not while it trains)")
    _run_args(p)
    p.set_defaults(func=_delete)

    # No help=: argparse would list the internal command as "==SUPPRESS==".
    p = subparsers.add_parser("worker",
                              description="Internal: train one run folder (started by the launcher).")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--standby", action="store_true",
                   help="import everything, then read the run folder from stdin (end-of-file: exit)")
    p.add_argument("--config", metavar="CONFIG",
                   help="under torchrun: rank 0 creates the run from CONFIG (every node runs the same command)")
    p.add_argument("--runs-dir", help="with --config: where rank 0 creates the run folder")
    p.add_argument("--serve", action="store_true",
                   help="an experiment's member process: train each run folder read from stdin, in turn, until end-of-file")
    p.set_defaults(func=_worker)


def _quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (a bar on a terminal, else one line per epoch)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id, unique id prefix, run folder, or run name")
    p.add_argument("--runs-dir")


def _distill_overrides(cfg: RunConfig, args) -> None:
    """--distill / --teacher / --alpha / --temperature onto cfg.distill, validated as a config."""
    d = cfg.distill
    if args.distill:
        d.mode = args.distill
    if args.teacher:
        kind = "file" if Path(args.teacher).expanduser().is_file() else "run"
        d.teacher = SourceConfig(kind=kind, path=args.teacher)
    if args.alpha is not None:
        d.alpha = args.alpha
    if args.temperature is not None:
        d.temperature = args.temperature
    cfg.validate()


def _train(args) -> int:
    # here, not at the top: assembling imports torch (~2 s), which listing, status, stop and
    # delete never need.
    from ..assemble import preflight

    cfg = RunConfig.from_file(args.config)
    if args.device:
        cfg.train.device = args.device
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    _distill_overrides(cfg, args)
    for key in ("nproc_per_node", "nnodes", "rdzv_endpoint"):
        if getattr(args, key) is not None:
            setattr(cfg.train, key, getattr(args, key))
    cfg.validate()  # the overrides too: a bad one is one line, before anything is built
    # Everything the worker would build first is built now, so bad input exits 2 with one line
    # and leaves no run folder; what was built is what the run trains.
    prepared = [preflight(cfg, args.runs_dir, deep=True)]
    if args.baseline:
        prepared.append(preflight(cfg.as_baseline(None), args.runs_dir, deep=True))
    terminal = Terminal(quiet=args.quiet or args.json)
    results = []
    for i, run_cfg in enumerate((cfg, None) if args.baseline else (cfg,)):
        if run_cfg is None:  # the baseline points at the transfer run it belongs to
            run_cfg = cfg.as_baseline(results[0]["run_id"])
        folder = rundir.create_run(run_cfg, args.runs_dir)
        if not args.json:
            print(f"run {folder.name} ({folder})", flush=True)
        status = _train_in_foreground(terminal, folder, "baseline" if run_cfg.baseline_of else "", prepared=prepared[i])
        # A folder deleted while it trained has no summary and nothing to reproduce (and a library
        # writer may have re-created an empty folder of that name, hence is_run, not is_dir).
        alive = rundir.is_run(folder)
        results.append({"run_id": folder.name, "state": status["state"], "error": status.get("error"),
                        "summary": rundir.read_summary(folder) if alive else {},
                        "reproduce": rundir.reproduce_command(folder) if alive else None})
        if not args.json:
            _print_result(results[-1])
        if status["state"] != "completed":
            break
    if args.json:
        print_json(results if args.baseline else results[0])
    return 0 if all(r["state"] == "completed" for r in results) and len(results) == (2 if args.baseline else 1) else 1


def _train_in_foreground(terminal: Terminal, folder, label: str = "", resume: bool = False, prepared=None) -> dict:
    """Train (or resume) a run folder in this process, its progress on the terminal; a run of
    several processes under torchrun, followed through its folder (`_train_under_torchrun`)."""
    if rundir.load_config(folder).train.world_size > 1:
        return _train_under_torchrun(terminal, folder, label, resume)
    # here, not at the top: the worker and the engine callback import torch (~2 s)
    from ..worker import run_worker
    from .train_progress import TrainProgress

    shown = TrainProgress(terminal, label)
    try:
        with terminal.tasks():  # decoding the dataset is shown too
            if resume:
                launcher.resume(folder, foreground=True, callbacks=[shown])
                return rundir.read_status(folder)
            return run_worker(folder, prepared=prepared, callbacks=[shown])
    finally:
        shown.close()


def _train_under_torchrun(terminal: Terminal, folder, label: str = "", resume: bool = False) -> dict:
    """Start torchrun on the run folder (its ranks' output in log.txt) and follow the run as the
    dashboard does. Ctrl-C asks the run to stop after the batch (every rank stops at the same
    step and checkpoints); a second Ctrl-C stops it by force."""
    from .demo_cmd import watch  # here, not at the top: only a run of several processes follows a folder

    if resume:
        launcher.resume(folder)
    else:
        launcher.start(folder)
    train = rundir.load_config(folder).train
    print(f"  {train.world_size} processes under torchrun: {launcher.shown_command(folder)}", flush=True)
    if train.nnodes > 1:
        print(f"  run the same command on the {train.nnodes - 1} other node(s); the runs folder must be one "
              "they all see", flush=True)
    followed = {label or "train": str(folder)}
    try:
        watch(terminal, followed)
    except KeyboardInterrupt:
        print("stopping after this batch (press Ctrl-C again to stop by force)", file=sys.stderr, flush=True)
        rundir.request_stop(folder)
        try:
            watch(terminal, followed)
        except KeyboardInterrupt:
            launcher.stop(folder, timeout=2.0)
    return rundir.read_status(folder)


def _print_result(result: dict) -> None:
    summary = result["summary"]
    print(f"{result['run_id']}: {result['state']}" + (f" ({result['error']})" if result.get("error") else ""))
    if summary:
        print(f"  {headline.headline(summary).format()}")
        before = headline.before_training(summary)
        if before:
            print(f"  {before}")
    for key in ("best_val_acc", "final_val_acc", "test_acc", "epochs", "train_s", "images_per_s",
                "trainable_params", "total_params"):
        value = summary.get(key)
        if value is not None:
            print(f"  {key:<17}{value:.4f}" if isinstance(value, float) else f"  {key:<17}{value}")
    for task in (summary or {}).get("tasks") or []:  # a multi-task run: a line per task, the target first
        figures = ", ".join(f"{key} {task[key]:.4f}" for key in ("final_val_acc", "test_acc")
                            if isinstance(task.get(key), float))
        print(f"  task {task['name']}{' (target)' if task.get('primary') else ''}: {task['dataset']}, "
              f"{task['num_classes']} classes, {task['train_images']} training images; {figures or 'no figures'}")


def _list(args) -> int:
    frame = runs.list_runs(args.runs_dir)
    if args.json:
        print_json(frame.assign(created=frame["created"].astype(str)).to_dict(orient="records"))
        return 0
    if frame.empty:
        print(f"no runs in {rundir.runs_root(args.runs_dir)}")
        return 0
    columns = ["id", "state", "headline", "best_val_acc", "test_acc", "epoch", "epochs", "preset", "arch",
               "dataset"]  # by importance: a narrow terminal leaves out the last ones
    Terminal().table(columns, frame[columns].astype(object).itertuples(index=False),
                     right=("epoch", "epochs", "best_val_acc", "test_acc"), drop_to_fit=True)
    return 0


def _compare(args) -> int:
    frame = runs.compare(args.runs, args.runs_dir, differing_only=not args.all)
    if args.json:
        print_json(frame.astype(object).where(frame.notna(), None).to_dict(orient="records"))
        return 0
    # One column per run, one row per field: config values read across, like a diff.
    table = frame.set_index("run_id").T.astype(object)
    Terminal().table(["field", *table.columns], ([field, *(_compact(v) for v in values)]
                                                 for field, values in table.iterrows()))
    return 0


def _compact(value):
    """4 significant digits in a comparison (3e-05 stays 3e-05, 0.912345 reads 0.9123)."""
    return f"{value:.4g}" if isinstance(value, float) and value == value else value


def _status(args) -> int:
    status = rundir.read_status(rundir.run_dir(args.run, args.runs_dir))
    if args.json:
        print_json(status)
        return 0
    fields = [("run", status["run_id"]), ("state", status["state"]),
              ("epoch", status.get("epoch")), ("step", f"{status.get('step')}/{status.get('total_steps')}")]
    if status.get("heartbeat"):
        fields.append(("heartbeat", f"{max(0.0, time.time() - status['heartbeat']):.0f} s ago"))
    if len(status.get("ranks") or []) > 1:
        fields.append(("processes", ", ".join(f"rank {m['rank']}: pid {m['pid']} on {m['host']}" for m in status["ranks"])))
    fields += [(key, status[key]) for key in ("pid", "note", "error") if status.get(key)]
    terminal = Terminal()
    terminal.table(["field", "value"], fields)
    for line in status.get("log_tail", [])[-10:]:
        print(f"  | {line}")
    return 0


def _logs(args) -> int:
    for line in rundir.log_tail(rundir.run_dir(args.run, args.runs_dir), args.lines):
        print(line)
    return 0


def _stop(args) -> int:
    status = launcher.stop(rundir.run_dir(args.run, args.runs_dir), timeout=args.timeout)
    print(f"{status['run_id']}: {status['state']}")
    return 0


def _resume(args) -> int:
    folder = rundir.run_dir(args.run, args.runs_dir)
    if args.foreground:
        status = _train_in_foreground(Terminal(quiet=args.quiet), folder, resume=True)
    else:
        launcher.resume(folder)
        status = rundir.read_status(folder)
    print(f"{folder.name}: {status['state']}")
    if args.foreground:
        _print_result({"run_id": folder.name, "state": status["state"], "error": status.get("error"),
                       "summary": rundir.read_summary(folder)})
        return 0 if status["state"] == "completed" else 1
    return 0


def _delete(args) -> int:
    folder = rundir.run_dir(args.run, args.runs_dir)
    launcher.delete(folder)
    print(f"deleted {folder}")
    return 0


def _worker(args) -> int:
    from ..worker import run_worker  # here, not at the top: the worker imports torch (~2 s)

    if args.serve:
        return _serve()
    if args.config:
        from ..worker import run_config_worker  # here, not at the top: the worker imports torch (~2 s)

        return _as_rank(1 if run_config_worker(args.config, args.runs_dir)["state"] == "failed" else 0)
    if args.standby:
        args.run_dir = _wait_for_a_run()
        if args.run_dir is None:
            return 0
    elif not args.run_dir:
        raise KTError("worker needs a run folder", "python -m kt_core worker RUN_DIR")

    # stderr is log.txt here (the launcher redirects it); run_worker logs to log.txt itself.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.StreamHandler)]:
        root.removeHandler(handler)
    status = run_worker(args.run_dir)
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # under torchrun a non-zero exit is a failed process: torchrun would end the other ranks
        # (still checkpointing a stop) and report a failure; only a failed run is one
        return _as_rank(1 if status["state"] == "failed" else 0)
    return 0 if status["state"] == "completed" else 1


def _as_rank(code: int) -> int:
    """A process torchrun started ends here, skipping the interpreter's teardown (see
    `distributed.end_process`); any other process returns `code` as usual."""
    from ..distributed import Ranks, end_process  # here, not at the top: the CLI starts without torch

    if Ranks.from_env() is not None:
        end_process(code)
    return code


def _serve() -> int:
    """Train the run folders an experiment's driver sends, one per line, until end-of-file.

    One process trains many members, so Python, torch and torch's first optimizer start once,
    not once per member. Each run still logs to its own log; stdout is the driver's log."""
    from ..worker import run_worker, warm_up  # here, not at the top: the worker imports the engine (torch)

    warm_up()  # the start-up costs this process pays once for many members
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.StreamHandler)]:
        root.removeHandler(handler)
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0  # the driver is done with us (or gone)
        if line.strip():
            run_worker(line.strip())


def _wait_for_a_run() -> str | None:
    """Standby: pay the start-up costs once, then fork a worker for each run folder the launcher
    sends, until end-of-file (the launcher retired us, or went away).

    A fork of this warm process starts training in milliseconds where a fresh worker pays ~4.5 s
    of CPU (Python, torch, the first optimizer's compiler stack, TensorBoard): the demo's click
    launches three runs at once, and three fresh start-ups fought its source's training for the
    cores. Forking is safe here: this process has no other Python thread, has run no parallel
    region and never touched a GPU (`warm_up`). Returns the folder in the forked child, which is
    from then on an ordinary worker; the standby itself returns None.

    The protocol on stdout, read by `launcher._Standby`: `ready` once warm, then `forked PID` per
    folder read; anything else there (a library's print) is ignored."""
    from .. import worker  # here, not at the top: the standby pays for importing everything a run needs now

    worker.warm_up()  # torch's first optimizer and TensorBoard's writer, before a run is waiting
    # The kernel reaps the forked workers: a finished one never lingers as a zombie that still
    # answers `os.kill(pid, 0)` for a dead run.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            return None
        folder = line.strip()
        if not folder:
            continue
        pid = os.fork()
        if pid == 0:
            return _become_worker(folder)
        print(f"forked {pid}", flush=True)


def _become_worker(folder: str) -> str:
    """In the forked child: the run's own process group (a stop signals the worker and its
    DataLoader workers, never the standby), its children waited for as usual, stdout/stderr to
    the run's log, no stdin."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    log_fd = os.open(rundir.log_path(folder), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    for fd in (log_fd, null_fd):
        os.close(fd)
    return folder
