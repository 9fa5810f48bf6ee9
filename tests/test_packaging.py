"""`pip install .` gives a working `kt-studio` command, with the app's files inside the package.

The install goes into a fresh venv that reuses this environment's installed packages (torch is
6 GB; a .pth file puts this venv's site-packages on the new one's path), `--no-deps` and without
build isolation, from a copy of the source tree, so nothing is downloaded and the checkout gets
no build/ or egg-info debris.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "runs", ".kt_cache", "__pycache__", "*.egg-info", "build",
                                    "test-artifacts", ".pytest_cache")


def _pip_works() -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _pip_works(), reason="pip is not available in this environment")
def test_pip_install_gives_the_kt_studio_command_and_the_packaged_app(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # This environment's packages (torch, streamlit, setuptools...) without copying them.
    (site / "_kt_reuse_project_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
         "--ignore-installed", "--no-index", "-q", str(source)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]

    def kt_studio(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv / "bin" / "kt-studio", *args], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)  # not the checkout: only the installed package can answer

    shown = kt_studio("--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: kt-studio")
    for command in ("app", "train", "runs", "compare", "eval", "export", "demo", "export-tracking"):
        assert command in shown.stdout
    where = subprocess.run([python, "-c", "import kt_core; print(kt_core.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(site)

    app = Path(kt_studio("app", "--print-path").stdout.strip())
    assert app == site / "kt_studio_app" / "app.py"
    for part in ("app_pages/home.py", "app_pages/train.py", "ui/live_chart.py", "ui/live_chart.js",
                 ".streamlit/config.toml"):
        assert (app.parent / part).is_file(), part
    assert (app.parent / ".streamlit" / "config.toml").read_text() == (ROOT / ".streamlit" / "config.toml").read_text()
    # The installed app runs: its pages import `ui` from the package, not from a checkout.
    home = subprocess.run([python, "-c", (
        "from streamlit.testing.v1 import AppTest; import sys\n"
        f"at = AppTest.from_file({str(app)!r}, default_timeout=120).run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "import ui; print(ui.__file__); print(any('KT Studio' in m.value for m in at.markdown))")],
        capture_output=True, text=True, timeout=240, env={**env, "KT_WARM_WORKER": "0"}, cwd=tmp_path)
    assert home.returncode == 0, home.stderr[-3000:]
    ui_file, shows_home = home.stdout.split()[-2:]
    assert Path(ui_file).is_relative_to(app.parent) and shows_home == "True"
