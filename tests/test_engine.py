"""The engine on tiny models and in-memory data: what users rely on when they press Train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kt_core import engine
from kt_core.config import RunConfig, TrainConfig, TransferPlan
from kt_core.data import PreparedData, TensorSplit
from kt_core.callbacks import Callback
from kt_core.engine import TrainingError, fit, resolve_device
from kt_core.errors import DeviceError, KTError
from kt_core.models import Block
from kt_core.optim import OPTIMIZERS, SCHEDULERS, lr_factor
from kt_core.transfer import apply_plan

VOLATILE = ("time", "images_per_s", "epoch_s")  # wall-clock fields; everything else is reproducible


def make_data(n_train=240, n_val=80, seed=0) -> PreparedData:
    """Two classes of 1x8x8 images told apart by the sign of a fixed random projection."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 1, 8, 8, generator=g)
    w = torch.randn(64, generator=g)
    y = (x.flatten(1) @ w > 0).long()
    return PreparedData(TensorSplit(x[:n_train], y[:n_train]), TensorSplit(x[n_train:], y[n_train:]), None,
                        ["neg", "pos"], (1, 8, 8))


def make_model(seed=1, dropout=0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(dropout), nn.Linear(256, 2))


BLOCKS = [Block("features", ["0", "1"]), Block("head", ["5"])]


def config(**train) -> RunConfig:
    base = dict(epochs=3, batch_size=32, lr=0.01, device="cpu", log_every=2, optimizer="adam")
    return RunConfig(train=TrainConfig(**{**base, **train}))


class Recorder(Callback):
    def __init__(self, stop_at_step=None):
        self.rows, self.checkpoints, self.stop_at_step, self.ctx = [], {}, stop_at_step, None

    def on_fit_start(self, ctx):
        self.ctx = ctx

    def on_step_end(self, ctx, row):
        self.rows.append(row)

    def on_epoch_end(self, ctx, row):
        self.rows.append(row)

    def should_stop(self, ctx):
        return self.stop_at_step is not None and ctx.step >= self.stop_at_step

    def on_checkpoint(self, ctx, state, tags):
        # What a Checkpointer would write and read back: a deep copy, not live tensors.
        copy = torch.load(_to_bytes(state), weights_only=True)
        self.checkpoints.update(dict.fromkeys(tags, copy))


def _to_bytes(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


# --- devices ---------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_asking_for_a_missing_gpu_fails_before_anything_starts(name):
    model = make_model()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(DeviceError, match="no usable CUDA GPU") as err:
        fit(model, make_data(), config(device=name))
    assert "cpu" in err.value.hint
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(DeviceError, match="not a valid CUDA device" if torch.cuda.is_available() else "CUDA"):
        resolve_device("cuda:x")
    with pytest.raises(DeviceError):
        resolve_device("tpu")


# --- training ----------------------------------------------------------------------------------

def test_fit_learns_and_logs_the_contract_rows():
    rec = Recorder()
    result = fit(make_model(), make_data(), config(epochs=4), callbacks=[rec])
    assert result.state == "completed" and result.epochs == 4
    assert result.steps == 4 * math.ceil(240 / 32)
    assert result.final_val_acc > 0.8  # a linearly separable problem is learned
    steps = [r for r in rec.rows if r["kind"] == "step"]
    epochs = [r for r in rec.rows if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [1] + list(range(2, result.steps + 1, 2))  # step 1: feedback at once
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert set(steps[0]) >= {"step", "epoch", "train_loss", "lr", "images_per_s"}
    assert set(epochs[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "lr"}
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert result.best_val_acc == max(r["val_acc"] for r in epochs)
    assert set(rec.checkpoints) == {"last", "best"}
    assert rec.checkpoints["last"]["epoch"] == 4 and rec.checkpoints["last"]["step"] == result.steps


class Predictions(Callback):
    """Each training batch's predicted classes, taken from the model's forward as it ran."""

    def __init__(self):
        self.by_batch = []

    def on_fit_start(self, ctx):
        def keep(module, args, out):
            if module.training:
                self.by_batch.append(out.detach().argmax(1))
        ctx.forward.register_forward_hook(keep)


@pytest.mark.parametrize("log_every", [1, 7, 1000])  # a row every batch, mid-window, never within an epoch
def test_train_acc_is_the_share_of_the_epochs_images_predicted_right_at_their_step(log_every):
    # The engine counts correct predictions in windows (`_Uncounted`), not at every batch; every
    # window length, including more batches than it holds at once (120 here), must count each once.
    data, batch = make_data(), 2
    assert math.ceil(len(data.train) / batch) > engine._Uncounted.MAX_HELD
    seen, rec = Predictions(), Recorder()
    fit(make_model(), data, config(epochs=2, batch_size=batch, log_every=log_every), callbacks=[seen, rec])
    rows = [r for r in rec.rows if r["kind"] == "epoch"]
    per_epoch = math.ceil(len(data.train) / batch)
    for epoch, row in enumerate(rows):
        order = torch.randperm(len(data.train), generator=engine.epoch_generator(0, epoch))
        labels = data.train.y[order].split(batch)
        right = sum(int((p == y).sum()) for p, y in zip(seen.by_batch[epoch * per_epoch:], labels))
        assert row["train_acc"] == right / len(data.train)


def test_correct_predictions_are_counted_alike_for_heads_of_different_widths():
    # A multi-task run's batches come from heads of different widths: counted batch by batch.
    sums = torch.zeros(3, dtype=torch.float64)
    counter = engine._Uncounted(sums)
    batches = [(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([1, 1])),
               (torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([2]))]
    for out, y in batches:
        counter.add(torch.tensor(0.0), out, y)
    assert sums.tolist() == [0.0, 0.0, 0.0]  # nothing counted before someone reads
    counter.count()
    assert sums.tolist() == [0.0, 2.0, 3.0]


@pytest.mark.parametrize("host_loss", [True, False])
def test_the_loss_sum_is_the_sequential_float64_sum_bit_for_bit_wherever_it_is_held(host_loss):
    # On the CPU the loss sum is a Python float between reads; the rows (and a resumed run's,
    # whose twin read at other steps) must stay exactly the tensor adds' sums, read at any step.
    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(300, generator=gen) * 3  # float32, as a batch's mean loss is
    ns = torch.randint(1, 65, (300,), generator=gen).tolist()
    truth = torch.tensor(1.25, dtype=torch.float64)  # an epoch resumed with a sum already there
    for loss, n in zip(losses, ns):
        truth.add_(loss, alpha=n)
    sums = torch.tensor([1.25, 0.0, 0.0], dtype=torch.float64)
    counter = engine._Uncounted(sums, host_loss=host_loss)
    for i, (loss, n) in enumerate(zip(losses, ns)):
        counter.add(loss.clone().requires_grad_(), torch.zeros(n, 2), torch.zeros(n, dtype=torch.long))
        if i % 7 == 3:
            counter.count_seen()  # a step row
    counter.count()
    assert sums[0].item() == truth.item()  # equal, not close
    assert sums[2].item() == sum(ns)


def test_the_held_outputs_are_counted_before_they_outgrow_their_bound(monkeypatch):
    # A wide head's logits are held at most MAX_HELD_VALUES at a time: memory does not grow with
    # the epoch, and what was counted early is not counted again.
    monkeypatch.setattr(engine._Uncounted, "MAX_HELD_VALUES", 1000)
    sums = torch.zeros(3, dtype=torch.float64)
    counter = engine._Uncounted(sums)
    out, y = torch.eye(100)[:4], torch.arange(4)  # 4 x 100 logits (400 values), all predicted right
    for _ in range(5):
        counter.add(torch.tensor(0.0), out, y)  # the third add reaches the bound
        assert counter.held_values < 1000
    counter.count_seen()
    assert sums.tolist() == [0.0, 12.0, 20.0]  # the first three batches counted on the way; all seen
    counter.count()
    assert sums.tolist() == [0.0, 20.0, 20.0]


def test_same_seed_gives_identical_metrics_and_another_seed_does_not():
    def run(seed):
        rec = Recorder()
        fit(make_model(dropout=0.3), make_data(), config(seed=seed), callbacks=[rec])
        return stable(rec.rows)

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_a_nan_loss_fails_with_a_hint_to_lower_the_learning_rate():
    torch.manual_seed(0)
    deep = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    with pytest.raises(TrainingError, match=r"loss became (NaN|infinite) at step \d+") as err:
        fit(deep, make_data(), config(optimizer="sgd", lr=1e6, epochs=2))
    assert err.value.hint == "lower the learning rate, now 1e+06"


def test_a_nan_injected_mid_run_is_caught_at_the_next_logged_step():
    class Poison(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1 if self.training else 0
            return x * float("nan") if self.calls == 5 else x

    model = nn.Sequential(make_model(), Poison())
    with pytest.raises(TrainingError, match="loss became NaN at step 6"):
        fit(model, make_data(), config(log_every=2))


def test_frozen_parameters_never_enter_the_optimizer_and_stay_bit_identical():
    model = make_model()
    plan = apply_plan(model, TransferPlan(preset="feature_extraction"), BLOCKS)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("5.")}
    rec = Recorder()
    fit(model, make_data(), config(feature_cache=False), plan, callbacks=[rec])
    in_optimizer = {id(p) for g in rec.ctx.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(model[5].weight), id(model[5].bias)}
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # BatchNorm buffers included


def test_feature_cache_trains_the_head_exactly_like_the_full_forward_pass():
    def run(cache):
        model = make_model()  # same init both times; no dropout, frozen BatchNorm in eval mode
        plan = apply_plan(model, TransferPlan(preset="feature_extraction"), BLOCKS, seed=0)
        rec = Recorder()
        result = fit(model, make_data(), config(feature_cache=cache, epochs=3), plan, callbacks=[rec])
        return result, model, rec

    cached, cached_model, cached_rec = run(True)
    full, full_model, full_rec = run(False)
    assert cached.feature_cache and not full.feature_cache
    # The cached features are the backbone's eval-mode output, which is what a frozen backbone
    # with frozen BatchNorm computes anyway: the head follows the same trajectory.
    torch.testing.assert_close(cached_model[5].weight, full_model[5].weight, rtol=1e-4, atol=1e-5)
    for a, b in zip(stable(cached_rec.rows), stable(full_rec.rows)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == (pytest.approx(b[key], rel=1e-4, abs=1e-5) if isinstance(b[key], float) else b[key]), key
    # The checkpoint holds the whole model, so a cached run is a normal run to everyone else.
    assert set(cached_rec.checkpoints["last"]["model"]) == set(full_model.state_dict())


def test_a_feature_cache_over_the_memory_budget_is_not_made_and_the_run_trains_the_same(caplog):
    """Never an out-of-memory kill: a cache that would pass its budget is refused, in words, and
    the head trains on the frozen layers' output batch by batch, to the same weights."""
    def run(budget):
        model = make_model()
        plan = apply_plan(model, TransferPlan(preset="feature_extraction"), BLOCKS, seed=0)
        return fit(model, make_data(), config(epochs=2), plan, cache_budget=budget), model

    data = make_data()
    need = 4 * 256 * (len(data.train) + len(data.val))  # make_model: 256 float32 features into the head
    with caplog.at_level("WARNING", logger="kt_core.engine"):
        refused, refused_model = run(need - 1)
    fits, fits_model = run(need)
    assert not refused.feature_cache and fits.feature_cache
    message = next(r.getMessage() for r in caplog.records if "feature cache not made" in r.getMessage())
    assert f"{len(data.train) + len(data.val)} images" in message and "KT_FEATURE_CACHE_MAX_BYTES" in message
    torch.testing.assert_close(refused_model[5].weight, fits_model[5].weight, rtol=1e-4, atol=1e-5)


def test_the_worker_holds_the_feature_cache_to_its_setting(tmp_path, monkeypatch):
    from kt_core import rundir
    from kt_core.config import DatasetConfig, SourceConfig
    from kt_core.worker import run_worker

    monkeypatch.setenv("KT_FEATURE_CACHE_MAX_BYTES", "1000")
    cfg = RunConfig(source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", per_class=5),
                    plan=TransferPlan(preset="feature_extraction"),
                    train=TrainConfig(epochs=1, batch_size=16, device="cpu"))
    folder = rundir.create_run(cfg, tmp_path)
    assert run_worker(folder)["state"] == "completed"
    assert rundir.read_summary(folder)["feature_cache"] is False
    assert "feature cache not made" in (folder / "log.txt").read_text()


def test_feature_cache_is_not_used_when_images_are_augmented_or_the_backbone_trains():
    model = make_model()
    plan = apply_plan(model, TransferPlan(preset="fine_tune"), BLOCKS)
    assert not fit(model, make_data(), config(epochs=1), plan).feature_cache
    data = make_data()
    data.augment = "light"
    model = make_model()
    plan = apply_plan(model, TransferPlan(preset="feature_extraction"), BLOCKS)
    assert not engine.feature_cache_eligible(config(), data, plan)


# --- stop and resume -----------------------------------------------------------------------

@pytest.mark.parametrize("preset, stop_at", [("fine_tune", 11), ("gradual_unfreeze", 12), ("fine_tune", 8)])
def test_a_stop_mid_epoch_resumes_to_exactly_the_uninterrupted_run(preset, stop_at):
    """Batch order, RNG, optimizer, schedule and unfrozen blocks all continue where they were."""
    cfg = config(epochs=3, scheduler="cosine", warmup_epochs=0.5, seed=3,
                 optimizer="sgd", lr=0.05)
    cfg.plan = TransferPlan(preset=preset, unfreeze_every=1)

    def start():
        model = make_model(dropout=0.2)
        return model, apply_plan(model, cfg.plan, BLOCKS, seed=0)

    model, plan = start()
    whole = Recorder()
    fit(model, make_data(), cfg, plan, callbacks=[whole])

    model, plan = start()
    first = Recorder(stop_at_step=stop_at)
    stopped = fit(model, make_data(), cfg, plan, callbacks=[first])
    assert stopped.state == "stopped" and stopped.steps == stop_at
    state = first.checkpoints["last"]
    assert state["step"] == stop_at

    model, plan = start()
    second = Recorder()
    resumed = fit(model, make_data(), cfg, plan, callbacks=[second], resume_state=state)
    assert resumed.state == "completed" and resumed.epochs == 3
    assert stable(first.rows + second.rows) == stable(whole.rows)


def test_early_stopping_stops_after_patience_epochs_without_a_better_val_acc():
    data = make_data()
    data.train.y = data.train.y[torch.randperm(len(data.train.y), generator=torch.Generator().manual_seed(0))]
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))  # lr ~ 0: val_acc never improves after epoch 1
    result = fit(linear, data, config(epochs=20, early_stopping=2, lr=1e-12, optimizer="sgd"))
    assert result.early_stopped and result.epochs == 3 and result.state == "completed"


def test_gradient_clipping_bounds_each_update():
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, make_data(n_train=32), config(epochs=1, optimizer="sgd", momentum=0.0, lr=1.0, grad_clip=1e-3))
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert 0 < moved.norm() <= 1e-3 * 1.0001


# --- schedules ---------------------------------------------------------------------------------

def test_schedules_warm_up_linearly_and_end_where_they_should():
    t = TrainConfig(scheduler="cosine", warmup_epochs=1, epochs=10)
    per_epoch, total = 10, 100
    assert [lr_factor(s, total, per_epoch, t) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_factor(10, total, per_epoch, t) == pytest.approx(1.0)
    assert lr_factor(99, total, per_epoch, t) < 0.01
    step = TrainConfig(scheduler="step", step_size=3, gamma=0.5)
    assert [lr_factor(s * 10, total, per_epoch, step) for s in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.5, 0.25])
    one = TrainConfig(scheduler="onecycle", epochs=10)
    peak = max(range(total), key=lambda s: lr_factor(s, total, per_epoch, one))
    assert 25 <= peak <= 35 and lr_factor(0, total, per_epoch, one) == pytest.approx(1 / 25)
    assert lr_factor(total, total, per_epoch, one) < 1e-4


def test_the_logged_lr_follows_the_schedule_per_group():
    model = make_model()
    cfg = config(epochs=2, scheduler="cosine", log_every=1)
    cfg.plan = TransferPlan(preset="discriminative", layer_decay=0.5)
    plan = apply_plan(model, cfg.plan, BLOCKS)
    rec = Recorder()
    fit(model, make_data(), cfg, plan, callbacks=[rec])
    lrs = [r["lr"] for r in rec.rows if r["kind"] == "step"]
    assert lrs[0] == pytest.approx(0.01 * lr_factor(1, 16, 8, cfg.train))
    assert lrs == sorted(lrs, reverse=True)
    heads = {g["name"]: g["lr"] / g["initial_lr"] for g in rec.ctx.optimizer.param_groups}
    assert len(set(round(v, 12) for v in heads.values())) == 1  # one schedule for every group


def test_unknown_optimizer_lists_the_valid_names():
    with pytest.raises(KTError, match="adamw"):
        OPTIMIZERS.get("lamb")


# --- checkpoints of earlier versions -------------------------------------------------------------

OLD_CHECKPOINTS = Path(__file__).parent / "data" / "checkpoints_before_plan_refactor.pt"


@pytest.mark.parametrize("case", ["gradual_cosine", "finetune_constant", "discriminative_step"])
def test_checkpoints_of_the_engine_before_the_per_step_lr_resume_to_its_very_metrics(case):
    """tests/data/checkpoints_before_plan_refactor.pt was written by the engine that stepped a
    LambdaLR and rebuilt it when gradual unfreezing added a group: a run stopped mid-epoch, the
    rows it had written, and the rows of the same run uninterrupted. Resumed today it continues to
    those rows, and a fresh run today writes them too: the metrics did not change.

    Close, not equal: the file was written on another CPU (an AMD EPYC), and kernels' last bits
    differ between CPUs (oneDNN picks its kernels by instruction set): on an Intel Xeon (2026-12-03)
    the training losses agree to ~2e-7, the validation losses to ~0.5 % and one validation image
    of 80 flips (why validation drifts so much more than training was not found: the weights and
    the BatchNorm statistics agree to ~1e-7). A wrong learning rate or group layout after the
    resume moves the training losses by 1e-2 and more."""
    old = torch.load(OLD_CHECKPOINTS, weights_only=True)[case]
    cfg = config(**old["train"])
    # one rate for every layer, as that engine trained them (fine_tune's default now trains
    # transferred layers at a fraction of it: kt_core.presets.TRANSFERRED_LR_MULT)
    cfg.plan = TransferPlan(**{"transferred_lr_mult": 1.0, **old["plan"]})

    def start():
        model = make_model(dropout=0.2)
        return model, apply_plan(model, cfg.plan, BLOCKS, seed=0)

    model, plan = start()
    rest = Recorder()
    fit(model, make_data(), cfg, plan, callbacks=[rest], resume_state=old["checkpoint"])
    assert_rows_close(old["rows_before_stop"] + stable(rest.rows), old["whole_rows"])
    model, plan = start()
    today = Recorder()
    fit(model, make_data(), cfg, plan, callbacks=[today])
    assert_rows_close(stable(today.rows), old["whole_rows"])


def assert_rows_close(rows, expected):
    """Rows equal but for float drift between CPUs: training metrics to 1e-5, validation's to a
    percent or two (one image of the 80)."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row.keys() == want.keys(), (row, want)
        for key, value in want.items():
            if isinstance(value, float):
                value = pytest.approx(value, rel=2e-2, abs=0.02) if key.startswith("val_") else pytest.approx(value, rel=1e-5)
            assert row[key] == value, (key, row, want)


def test_a_checkpoint_with_a_group_per_block_resumes_into_the_merged_groups():
    """Blocks trained with equal settings are one optimizer group now (`optim.merge_equal_groups`);
    the old engine's fine-tune checkpoint has one per block, and resumes (to its very rows, above)."""
    old = torch.load(OLD_CHECKPOINTS, weights_only=True)["finetune_constant"]
    cfg = config(**old["train"])
    cfg.plan = TransferPlan(**{"transferred_lr_mult": 1.0, **old["plan"]})
    model = make_model(dropout=0.2)
    rec = Recorder()
    fit(model, make_data(), cfg, apply_plan(model, cfg.plan, BLOCKS, seed=0), callbacks=[rec],
        resume_state=old["checkpoint"])
    assert len(old["checkpoint"]["optimizer"]["param_groups"]) == 2
    assert [g["name"] for g in rec.ctx.optimizer.param_groups] == ["features+head"]


@pytest.mark.parametrize("mult, names", [(1.0, ["features+head"]), (0.1, ["features", "head"])])
def test_blocks_with_equal_settings_share_one_optimizer_group(mult, names):
    """A group costs a step ~100 us of Python on a small CPU (3-4 % of a tiny MLP's step, bench B1):
    blocks at the same lr and weight decay are one group, blocks at different lrs stay apart."""
    model = make_model()
    cfg = config(epochs=1)
    cfg.plan = TransferPlan(preset="fine_tune", transferred_lr_mult=mult)
    rec = Recorder()
    fit(model, make_data(), cfg, apply_plan(model, cfg.plan, BLOCKS), callbacks=[rec])
    assert [g["name"] for g in rec.ctx.optimizer.param_groups] == names


def test_merged_groups_update_every_parameter_exactly_as_the_separate_groups_do():
    from kt_core.optim import merge_equal_groups

    def trained(merge):
        model = make_model()
        groups = [{"params": list(model[0].parameters()), "lr": 0.01, "name": "a"},
                  {"params": list(model[1].parameters()), "lr": 0.1, "name": "b"},
                  {"params": list(model[5].parameters()), "lr": 0.01, "name": "c"}]
        merged, layout = merge_equal_groups(groups)
        assert layout == [[0, 2], [1]] and [g["name"] for g in merged] == ["a+c", "b"]
        optimizer = torch.optim.AdamW(merged if merge else groups)
        x, y = make_data().train.x[:32], make_data().train.y[:32]
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model.state_dict()

    merged, separate = trained(True), trained(False)
    assert all(torch.equal(merged[k], separate[k]) for k in merged)


def test_the_config_accepts_exactly_the_registered_optimizers_and_schedules():
    for optimizer in OPTIMIZERS.names():
        for scheduler in SCHEDULERS.names():
            TrainConfig(optimizer=optimizer, scheduler=scheduler).validate()
    for field, registry in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS)):
        with pytest.raises(KTError, match=f"train.{field}") as err:
            TrainConfig(**{field: "lamb"}).validate()
        assert all(name in err.value.hint for name in registry.names())


def test_the_same_config_assembles_the_same_weights_whatever_the_process_rng_holds():
    """Weights no file supplies (an architecture without weights, a new head, an adapted first
    layer) come from the run's seed: two assemblies of one config are identical, a new seed differs."""
    from kt_core.assemble import prepare
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan

    def weights(seed, noise):
        torch.manual_seed(noise)  # what an earlier run in this process (the warm worker) left behind
        cfg = RunConfig(source=SourceConfig(kind="arch", arch="mnist_net"),
                        dataset=DatasetConfig(name="sklearn_digits", classes=[0, 1, 2], per_class=3, channels=3),
                        plan=TransferPlan(preset="fine_tune"), train=TrainConfig(epochs=1, seed=seed))
        return prepare(cfg).model.state_dict()

    first, second, other = weights(5, noise=1), weights(5, noise=2), weights(6, noise=1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_images_per_s_and_train_s_are_each_one_figure(tmp_path):
    """images/s is the step rows' figure (images per second of optimizer steps) in the summary
    too; train_s is the time waited: every epoch plus the feature extraction (issue #11)."""
    from kt_core import rundir
    from kt_core.config import DatasetConfig, RunConfig, SourceConfig, TrainConfig, TransferPlan
    from kt_core.worker import run_worker

    cfg = RunConfig(source=SourceConfig(kind="arch", arch="mnist_net"),
                    dataset=DatasetConfig(name="sklearn_digits", per_class=20),
                    plan=TransferPlan(preset="feature_extraction"),
                    train=TrainConfig(epochs=3, batch_size=16, log_every=1, device="cpu"))
    folder = rundir.create_run(cfg, tmp_path)
    assert run_worker(folder)["state"] == "completed"
    summary, rows = rundir.read_summary(folder), rundir.read_metrics(folder)[0]
    rates = [r["images_per_s"] for r in rows if r["kind"] == "step"]
    # the run's figure is the windows' figure over the whole run: within the range of its windows
    assert min(rates) * 0.8 <= summary["images_per_s"] <= max(rates) * 1.2, (summary["images_per_s"], rates)
    epochs_s = sum(r["epoch_s"] for r in rows if r["kind"] == "epoch")
    assert summary["feature_cache_s"] > 0
    assert summary["train_s"] == pytest.approx(epochs_s + summary["feature_cache_s"])


def test_processes_agree_on_a_stop_only_where_asked_to_and_a_stop_asked_between_is_kept():
    # Under several processes the loop agrees at its step rows only (a collective per batch costs
    # a small DDP step a few percent): a stop asked in between must wait for the next, not vanish.
    from types import SimpleNamespace

    class Ranks:
        def __init__(self):
            self.calls = []

        def any(self, flag, device):
            self.calls.append(flag)
            return flag

    class AskOnce(Callback):  # the STOP file is looked at now and then: True once, then False
        def __init__(self):
            self.answers = iter([True])

        def should_stop(self, ctx):
            return next(self.answers, False)

    ranks = Ranks()
    ctx = SimpleNamespace(callbacks=[AskOnce()], stop_requested=False, ranks=ranks,
                          device=torch.device("cpu"))
    assert engine._should_stop(ctx, agree=False) is False and ranks.calls == []
    assert engine._should_stop(ctx, agree=False) is False and ranks.calls == []
    assert engine._should_stop(ctx, agree=True) is True and ranks.calls == [True]
    one = SimpleNamespace(callbacks=[AskOnce()], stop_requested=False, ranks=None)
    assert engine._should_stop(one, agree=False) is True  # one process: at once, nothing to agree on
