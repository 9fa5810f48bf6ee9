"""A shared server's settings hold in kt_core, not only on the pages: every path of a config the
dashboard launches, resumes, re-runs, evaluates or exports lies under KT_ALLOWED_ROOTS, and trust
is refused where KT_ALLOW_TRUST=0, in the launcher and again in the worker. The CLI stays free."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from hostile import markers, trusted_only_pickle
from kt_core import launcher, rundir
from kt_core.assemble import preflight
from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.errors import PathNotAllowedError, TrustNotAllowedError
from kt_core.worker import run_worker


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A shared server: roots = tmp/allowed, trust forbidden; `outside` lies outside the roots."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    monkeypatch.setenv("KT_ALLOWED_ROOTS", str(allowed))
    monkeypatch.setenv("KT_ALLOW_TRUST", "0")
    return allowed, outside


def config(source: SourceConfig, **dataset) -> RunConfig:
    return RunConfig(name="shared", source=source,
                     dataset=DatasetConfig(**({"name": "sklearn_digits", "per_class": 5} | dataset)),
                     plan=TransferPlan(preset="fine_tune"), train=TrainConfig(epochs=1, batch_size=16, device="cpu"))


def no_run_folders() -> bool:
    return not list(rundir.runs_root().glob("*/config.json"))


def test_a_dashboard_launch_outside_the_roots_is_refused_before_a_run_folder_exists(server):
    allowed, outside = server
    trusted_only_pickle(outside / "model.pt", outside / "PWNED")
    cases = [config(SourceConfig(kind="file", path=str(outside / "model.pt"))),
             config(SourceConfig(kind="file", path=str(allowed / ".." / "outside" / "model.pt"))),
             config(SourceConfig(kind="run", path=str(outside))),
             config(SourceConfig(kind="arch", arch="small_cnn"), name="image_folder", root=str(outside))]
    for cfg in cases:
        with pytest.raises(PathNotAllowedError, match="outside the folders this server may read"):
            launcher.launch(cfg, confined=True)
    assert no_run_folders()


def test_trust_is_refused_for_the_dashboard_with_the_setting_named(server):
    allowed, _ = server
    trusted_only_pickle(allowed / "model.pt", allowed / "PWNED")
    cfg = config(SourceConfig(kind="file", path=str(allowed / "model.pt"), trust=True))
    with pytest.raises(TrustNotAllowedError) as err:
        launcher.launch(cfg, confined=True)
    assert "KT_ALLOW_TRUST=0" in err.value.message and "state_dict" in err.value.hint
    assert no_run_folders() and markers(allowed / "PWNED") == []


def test_the_worker_of_a_dashboard_run_enforces_the_settings_itself(server):
    """Whatever reached the run folder (an edited config, a swapped symlink): the worker holds it
    to the roots and the trust setting again, and the run fails with the reason."""
    allowed, outside = server
    trusted_only_pickle(allowed / "model.pt", allowed / "PWNED")
    trusted = rundir.create_run(config(SourceConfig(kind="file", path=str(allowed / "model.pt"), trust=True)),
                              confined=True)
    assert run_worker(trusted)["state"] == "failed"
    assert "KT_ALLOW_TRUST=0" in rundir.read_status(trusted)["error"] and markers(allowed / "PWNED") == []

    (allowed / "link.pt").symlink_to(outside / "model.pt")
    trusted_only_pickle(outside / "model.pt", outside / "PWNED")
    escaped = rundir.create_run(config(SourceConfig(kind="file", path=str(allowed / "link.pt"))), confined=True)
    assert run_worker(escaped)["state"] == "failed"
    assert "outside the folders" in rundir.read_status(escaped)["error"]


def test_resume_from_the_dashboard_refuses_a_trusting_config(server):
    allowed, _ = server
    trusted_only_pickle(allowed / "model.pt", allowed / "PWNED")
    folder = rundir.create_run(config(SourceConfig(kind="file", path=str(allowed / "model.pt"), trust=True)))
    rundir.update_status(folder, state="failed")
    with pytest.raises(TrustNotAllowedError):
        launcher.resume(folder, confined=True)
    assert rundir.read_status(folder)["state"] == "failed" and markers(allowed / "PWNED") == []


def test_evaluating_from_the_dashboard_never_loads_a_trusted_source(server, monkeypatch):
    """A run whose model is its source file's own code: evaluating it loads that file again,
    which the dashboard may only do where trust is allowed."""
    from kt_core.evaluate import load_run
    from kt_core.settings import get_settings

    allowed, _ = server
    monkeypatch.setenv("KT_ALLOW_TRUST", "1")
    trusted_only_pickle(allowed / "model.pt", allowed / "PWNED")
    folder = rundir.create_run(config(SourceConfig(kind="file", path=str(allowed / "model.pt"), trust=True)))
    assert run_worker(folder)["state"] == "completed"  # the CLI's way: the local user trusted it
    os.remove(allowed / "PWNED")
    monkeypatch.setenv("KT_ALLOW_TRUST", "0")
    with pytest.raises(TrustNotAllowedError):
        load_run(folder, roots=get_settings().dashboard_roots)
    assert markers(allowed / "PWNED") == []


def test_the_cli_stays_unconfined(server):
    _, outside = server
    trusted_only_pickle(outside / "model.pt", outside / "PWNED")
    cfg = config(SourceConfig(kind="file", path=str(outside / "model.pt"), trust=True))
    preflight(cfg)  # no roots: the local user's own files and choices
    folder = rundir.create_run(cfg)
    assert run_worker(folder)["state"] == "completed" and markers(outside / "PWNED")


def test_an_image_folder_does_not_follow_links_out_of_the_roots(server):
    from kt_core.data import load_dataset
    from kt_core.datasets.sources import scan_image_tree
    from kt_core.settings import get_settings

    allowed, outside = server
    for cls in ("a", "b"):
        (allowed / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(allowed / "imgs" / cls / f"{i}.png")
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (allowed / "imgs" / "a" / "secret.png").symlink_to(outside / "secret.png")
    raw = scan_image_tree(allowed / "imgs", roots=get_settings().dashboard_roots)
    names = [n for split in raw.splits.values() for n in split.names]
    assert "a/secret.png" not in names and len(names) == 6
    assert any("lead out of the folders this server may read" in w for w in raw.warnings)
    local = scan_image_tree(allowed / "imgs")  # the CLI reads the link, as the local user asked
    assert "a/secret.png" in [n for split in local.splits.values() for n in split.names]
    # and the dashboard's loader passes its roots down to the scan
    cfg = DatasetConfig(name="image_folder", root=str(allowed / "imgs"), val_fraction=0.34, image_size=8)
    assert any("lead out of" in w for w in load_dataset(cfg, roots=get_settings().dashboard_roots).warnings)
