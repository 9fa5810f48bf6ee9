"""Outputs shared between runs: a frozen source's features and a teacher's outputs, computed by one
run and found by the next that feeds the same images through the same weights (an experiment's
members). A run that finds them trains exactly what it would have trained computing them, and
says so in its log; anything they depend on changed, they are computed again."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
import torch

from kt_core import assemble, cachedir, rundir
from kt_core.config import DatasetConfig, DistillConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
from kt_core.engine import Callback, fit
from kt_core.image_cache import content_key
from kt_core.shared_outputs import OutputStore
from kt_core.worker import run_worker

VOLATILE = ("time", "images_per_s", "epoch_s")
FOUND = "found in the shared cache"


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """mnist_net trained from scratch for one epoch: a source with weights of its own."""
    torch.set_num_threads(1)
    cfg = RunConfig(name="shared-source", source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", per_class=20),
                    plan=TransferPlan(preset="scratch"), train=TrainConfig(epochs=1, batch_size=32, device="cpu"))
    folder = rundir.create_run(cfg, tmp_path_factory.mktemp("source_runs"))
    assert run_worker(folder)["state"] == "completed"
    return folder


def member(source, preset="feature_extraction", seed=0, **distill) -> RunConfig:
    return RunConfig(name=f"member-{preset}-{seed}", source=SourceConfig(kind="run", path=str(source)),
                     dataset=DatasetConfig(name="sklearn_digits", per_class=5, val_fraction=0.3),
                     plan=TransferPlan(preset=preset),
                     train=TrainConfig(epochs=2, batch_size=16, device="cpu", log_every=2, seed=seed),
                     distill=DistillConfig(**distill) if distill else DistillConfig())


class Rows(Callback):
    def __init__(self):
        self.rows = []

    def on_step_end(self, ctx, row):
        self.rows.append({k: v for k, v in row.items() if k not in VOLATILE})

    def on_epoch_end(self, ctx, row):
        self.rows.append({k: v for k, v in row.items() if k not in VOLATILE})


def train(cfg: RunConfig, store=None, edit=None):
    """prepare + fit in this process: (rows, final weights, fit result)."""
    prepared = assemble.prepare(cfg)
    if edit is not None:
        edit(prepared.model)
    rec = Rows()
    result = fit(prepared.model, prepared.data, cfg, prepared.plan, [rec], store=store, **prepared.fit_options())
    return rec.rows, {k: v.clone() for k, v in prepared.model.state_dict().items()}, result


def same(a, b) -> bool:
    rows_a, weights_a, _ = a
    rows_b, weights_b, _ = b
    return rows_a == rows_b and weights_a.keys() == weights_b.keys() and all(
        torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_feature_extraction_members_share_the_frozen_features_and_train_exactly_as_unshared(source_run, tmp_path,
                                                                                               caplog):
    caplog.set_level(logging.INFO, logger="kt_core")
    store = OutputStore(tmp_path / "outputs")
    alone = train(member(source_run))
    first = train(member(source_run), store)
    assert alone[2].feature_cache and FOUND not in caplog.text
    assert len(list(store.root.glob("*.pt"))) == 2  # the training split's features and the validation split's
    caplog.clear()
    again = train(member(source_run), store)
    assert caplog.text.count(FOUND) == 2
    assert same(alone, first) and same(alone, again)  # metrics rows and final weights, bit for bit
    # another seed: another head, the same frozen backbone over the same images
    caplog.clear()
    other_alone, other_shared = train(member(source_run, seed=1)), None
    assert caplog.text.count(FOUND) == 0
    other_shared = train(member(source_run, seed=1), store)
    assert caplog.text.count(FOUND) == 2 and same(other_alone, other_shared)


def test_a_changed_frozen_weight_or_other_images_compute_the_features_again(source_run, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kt_core")
    store = OutputStore(tmp_path / "outputs")
    train(member(source_run), store)

    def nudge(model):
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)  # the first conv: frozen, before the head

    caplog.clear()
    train(member(source_run), store, edit=nudge)
    assert FOUND not in caplog.text and len(list(store.root.glob("*.pt"))) == 4
    other = member(source_run)
    other.dataset = dataclasses.replace(other.dataset, per_class=6)  # other training images
    caplog.clear()
    train(other, store)
    assert caplog.text.count(FOUND) <= 1  # its validation split may be the same images; never its training split


def test_a_cached_teacher_is_shared_and_distillation_trains_exactly_as_unshared(source_run, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kt_core")
    store = OutputStore(tmp_path / "outputs")
    cfg = member(source_run, preset="fine_tune", mode="logit")
    alone = train(cfg)
    first = train(cfg, store)
    caplog.clear()
    again = train(cfg, store)
    assert "teacher" in caplog.text and caplog.text.count(FOUND) == 1
    assert same(alone, first) and same(alone, again)


def test_a_worker_run_that_finds_the_features_says_so_in_its_log_and_the_cache_lists_them(source_run, tmp_path):
    runs = tmp_path / "runs"
    one = rundir.create_run(member(source_run, seed=0), runs)
    two = rundir.create_run(member(source_run, seed=1), runs)
    assert run_worker(one)["state"] == "completed" and run_worker(two)["state"] == "completed"
    assert FOUND not in rundir.log_path(one).read_text()
    assert rundir.log_path(two).read_text().count(FOUND) == 2
    area = cachedir.usage()["areas"]["outputs"]
    assert area["entries"] == 2 and area["evictable"] and area["bytes"] > 0


def test_the_store_writes_whole_files_only_and_keeps_to_the_cache_limit(tmp_path, monkeypatch):
    store = OutputStore(tmp_path / "outputs")
    value = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    key = content_key("test", value)
    assert content_key("test", value.clone()) == key and content_key("test", value + 1) != key
    assert store.load(key) is None

    # writers racing on one key and a reader beside them: the reader sees nothing or the whole tensor
    seen = []

    def write():
        for _ in range(20):
            store.save(key, value)

    def read():
        for _ in range(200):
            got = store.load(key)
            if got is not None:
                seen.append(torch.equal(got, value))

    threads = [threading.Thread(target=write) for _ in range(3)] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(seen) and torch.equal(store.load(key), value)
    assert [p.name for p in store.root.iterdir()] == [f"{key}.pt"]  # no temp file left behind

    store.path(key).write_bytes(b"not a tensor")  # damaged: ignored, computed again
    assert store.load(key) is None
    monkeypatch.setenv("KT_CACHE_MAX_BYTES", "1000")  # larger than the whole limit: not kept
    assert store.save(content_key("big", value), value) is None
