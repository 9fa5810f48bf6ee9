"""Shared fixtures. Real third-party files come from KT_REAL_DATA (default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# oneDNN's AVX-512 kernels round otherwise than its AVX2 ones, and tests/data holds metrics of
# runs recorded bit for bit on AVX2 CPUs (test_engine's old checkpoints: a run resumed today must
# write exactly those rows). Every test, and the workers it starts, uses the AVX2 kernels; oneDNN
# reads this at its first convolution, so it is set before torch is imported. Elsewhere (ARM) unused.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    path = Path(os.environ.get("KT_REAL_DATA", ROOT.parent / "shared" / "data"))
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real checkpoints and datasets; its absence is said loudly, never silently.

    Under CI it must be there (CI copies ../shared beside the clone), so a missing folder fails.
    """
    path = real_data_dir()
    if path is None:
        message = ("needs the real data folder: set KT_REAL_DATA to ../shared/data "
                   "(checkpoints and datasets of the shared folder)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own runs and cache folders, so tests never see each other's runs."""
    monkeypatch.setenv("KT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "cache"))
    # No standby worker per AppTest (each would import torch); its own test turns it on.
    monkeypatch.setenv("KT_WARM_WORKER", "0")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Two cores here; keep tests predictable and leave a core for subprocess workers.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One tiny completed run (mnist_net on 3 digit classes, 2 epochs), trained in-process once
    for every test that evaluates or exports a real run."""
    from kt_core import rundir
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
    from kt_core.worker import run_worker

    torch.set_num_threads(1)
    cfg = RunConfig(name="finished", source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=5),
                    plan=TransferPlan(preset="fine_tune"),
                    train=TrainConfig(epochs=2, batch_size=16, device="cpu"))
    folder = rundir.create_run(cfg, tmp_path_factory.mktemp("runs"))
    assert run_worker(folder)["state"] == "completed"
    return folder
