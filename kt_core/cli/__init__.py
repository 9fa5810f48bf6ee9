"""The command line. Each command group lives in its own module with a `register(subparsers)`.

Bad input never shows a traceback: a `KTError` becomes one line on stderr naming the problem
and the fix, and a non-zero exit code (2). Set `KT_DEBUG=1` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import sys
import threading
from typing import Any, Sequence

from ..errors import KTError

# Command groups, in the order `--help` lists them.
COMMAND_MODULES = ("app_cmd", "inspect_cmd", "datasets_cmd", "runs_cmd", "eval_cmd", "demo_cmd", "drafts_cmd",
                   "tracking_cmd", "experiment_cmd", "cache_cmd")


def build_parser() -> argparse.ArgumentParser:
    # `kt-studio` (the installed command) or `python -m kt_core`: the same commands.
    installed = os.path.basename(sys.argv[0]) == "kt-studio"
    parser = argparse.ArgumentParser(
        prog="kt-studio" if installed else "python -m kt_core",
        description="KT Studio: transfer learning with PyTorch, from the command line.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


_FS_FIXES = {
    errno.ENOSPC: "free disk space, or point KT_RUNS_DIR / KT_CACHE_DIR at a disk with room",
    errno.EDQUOT: "free disk space within your quota, or use another disk",
    errno.EROFS: "the folder is read-only: use a writable one (KT_RUNS_DIR, --runs-dir, --out)",
    errno.EACCES: "you lack permission there: use a folder you can write, or fix its permissions",
    errno.EPERM: "the operation is not permitted there: use a folder you own",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "the path is a symlink loop: point the link at a real file or folder",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not args.verbose:  # library warnings (torch's, PIL's) go to the run's log, not the console
        console.addFilter(lambda record: record.name != "py.warnings")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[console])
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_failure
    try:
        return int(args.func(args) or 0)
    except KTError as exc:
        if os.environ.get("KT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The filesystem refused something (full, read-only, no permission, a path it cannot
        # take): that is the user's environment, not a bug, so one line with the fix.
        if os.environ.get("KT_DEBUG") or exc.errno not in _FS_FIXES:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} ({_FS_FIXES[exc.errno]})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `inspect ... | head` closed the pipe: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _log_thread_failure(hook_args: threading.ExceptHookArgs) -> None:
    """A library's background thread that dies (TensorBoard's event writer when the run folder is
    deleted under it) is one logged line, not a traceback under the command's own one-line error;
    the traceback stays available with -v."""
    thread = hook_args.thread.name if hook_args.thread else "a background thread"
    logging.getLogger("kt_core").warning("%s stopped: %s: %s", thread, hook_args.exc_type.__name__,
                                         hook_args.exc_value)
    logging.getLogger("kt_core").debug("%s traceback", thread,
                                       exc_info=(hook_args.exc_type, hook_args.exc_value, hook_args.exc_traceback))


def print_json(data: Any) -> None:
    """Machine-readable output for `--json` flags: one JSON document on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
