"""The cache folder keeps to KT_CACHE_MAX_BYTES (least recently used first, only what can be
rebuilt), and `cache` shows and clears it (issue #10, resources)."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
import torch

from kt_core import cachedir, rundir
from kt_core.cli import main
from kt_core.config import DatasetConfig, RunConfig, SourceConfig
from kt_core.data import load_dataset
from kt_core.datasets.cache import save_cached
from kt_core.errors import SettingsError
from kt_core.settings import get_settings

HOUR = 3600


def entry(area: str, name: str, size: int, age_s: float):
    path = get_settings().cache_dir / area / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_past_the_limit_the_least_recently_used_rebuildable_entries_go_first(monkeypatch, caplog):
    buffer = io.BytesIO()
    torch.save({"x": [1]}, buffer)  # the size of the entry the test writes through the cache
    limit = 3000 + len(buffer.getvalue()) + 500  # room for 3 of the 4 others plus the new one
    monkeypatch.setenv("KT_CACHE_MAX_BYTES", str(limit))
    old = entry("datasets", "old.pt", 1000, 5 * HOUR)
    middle = get_settings().cache_dir / "zips" / "middle"  # an extracted zip: a folder
    middle.mkdir(parents=True)
    (middle / "a.png").write_bytes(b"x" * 1000)
    os.utime(middle, (time.time() - 4 * HOUR,) * 2)
    upload = entry("uploads", "mine.zip", 1000, 9 * HOUR)  # the user's own file: never evicted
    recent = entry("datasets", "recent.pt", 1000, 60)  # just used, maybe by another process
    new = save_cached("new", {"x": [1]})  # over the limit by less than one entry
    assert new is not None and new.exists() and upload.exists() and recent.exists()
    assert not old.exists() and middle.exists()  # the oldest went, and eviction stopped at the limit
    assert cachedir.usage()["total_bytes"] <= limit

    monkeypatch.setenv("KT_CACHE_MAX_BYTES", "2000")
    cachedir.enforce_limit()
    assert not middle.exists() and upload.exists() and recent.exists() and new.exists()
    assert "over KT_CACHE_MAX_BYTES=2000: what is left is in use, recent or the user's own" in caplog.text


def test_a_cache_hit_counts_as_a_use(monkeypatch):
    cfg = DatasetConfig(name="sklearn_digits", classes=[0, 1], per_class=3)
    load_dataset(cfg)
    (path,) = (get_settings().cache_dir / "datasets").glob("*.pt")
    os.utime(path, (time.time() - 9 * HOUR,) * 2)
    load_dataset(cfg)  # read from the cache
    assert time.time() - path.stat().st_mtime < 60


def test_an_extracted_zip_that_an_active_run_trains_from_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_CACHE_MAX_BYTES", "10")
    upload = tmp_path / "photos.zip"
    upload.write_bytes(b"PK not really a zip")
    import hashlib

    folder_name = hashlib.sha256(upload.read_bytes()).hexdigest()[:24]
    used = entry("zips", folder_name, 1000, 5 * HOUR)
    unused = entry("zips", "0" * 24, 1000, 5 * HOUR)
    run = rundir.create_run(RunConfig(source=SourceConfig(kind="arch", arch="small_cnn"),
                                      dataset=DatasetConfig(name="zip", root=str(upload))))
    rundir.update_status(run, state="running")
    cachedir.enforce_limit()
    assert used.exists() and not unused.exists()
    rundir.update_status(run, state="completed")
    cachedir.enforce_limit()
    assert not used.exists()


def test_the_cache_command_shows_and_clears(capsys):
    entry("datasets", "a.pt", 2048, HOUR)
    upload = entry("uploads", "mine.zip", 1024, HOUR)
    assert main(["cache", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["areas"]["datasets"] == {"bytes": 2048, "entries": 1, "evictable": True}
    assert shown["areas"]["uploads"]["evictable"] is False and shown["limit_bytes"] == get_settings().cache_max_bytes
    assert main(["cache", "clear"]) == 0
    assert "removed 1 cache entries" in capsys.readouterr().out
    assert upload.exists() and not list((get_settings().cache_dir / "datasets").iterdir())
    assert main(["cache", "clear", "--area", "uploads"]) == 0 and not upload.exists()


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e9"])
def test_a_nonsense_limit_is_refused_with_its_name(monkeypatch, value):
    monkeypatch.setenv("KT_CACHE_MAX_BYTES", value)
    with pytest.raises(SettingsError, match="KT_CACHE_MAX_BYTES"):
        get_settings().cache_max_bytes
