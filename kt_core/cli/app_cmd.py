"""`kt-studio app` (or `python -m kt_core app`): the dashboard, wherever KT Studio is installed.

    kt-studio app                       # http://localhost:8501
    kt-studio app --port 8600 -- --server.address 0.0.0.0

Runs `streamlit run` on the app this package holds: the repository's app.py in a checkout or an
editable install, `kt_studio_app/app.py` in an installed package (the same files; its
`.streamlit/config.toml` beside it, which Streamlit reads as the script's own config).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from ..errors import KTError


def register(subparsers) -> None:
    p = subparsers.add_parser("app", help="start the dashboard (streamlit run on the packaged app)",
                              description="Start KT Studio's dashboard. Arguments after -- go to `streamlit run`.")
    p.add_argument("--port", type=int, default=8501, help="the port to serve on (default 8501)")
    p.add_argument("--print-path", action="store_true", help="print the app script's path and exit")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help="more `streamlit run` options, after --")
    p.set_defaults(func=_app)


def app_script() -> Path:
    """The dashboard's entry script: the installed package's, else the checkout's."""
    spec = importlib.util.find_spec("kt_studio_app")
    candidates = [Path(spec.origin).parent / "app.py"] if spec and spec.origin else []
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / "app.py" for p in spec.submodule_search_locations]
    candidates.append(Path(__file__).resolve().parents[2] / "app.py")  # a source checkout
    for path in candidates:
        if path.is_file():
            return path
    raise KTError("KT Studio's app files are not installed with this kt_core",
                  "reinstall the package (`pip install kt-studio`), or run from a checkout: `make run`")


def _app(args) -> int:
    script = app_script()
    if args.print_path:
        print(script)
        return 0
    extra = [a for a in args.streamlit_args if a != "--"]
    if importlib.util.find_spec("streamlit") is None:  # looked up, not imported: kt_core imports no Streamlit
        raise KTError("Streamlit is not installed", "pip install streamlit (or reinstall kt-studio)")
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port), *extra]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:  # Ctrl-C reached Streamlit too; it shuts down on its own
        return 0
