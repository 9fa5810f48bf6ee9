"""The transfer plan does exactly what it says: parameters compared before and after training."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from kt_core.config import LayerRule, RunConfig, TransferPlan
from kt_core.errors import ConfigError, KTError
from kt_core.models import blocks as model_blocks
from kt_core.presets import PRESETS
from kt_core.transfer import GradualUnfreezing, apply_plan, bn_stat_warnings, estimate_cost, preview_plan


class TinyNet(nn.Module):
    """Stem (conv + BN), two stages with BN, a linear head: every kind of unit a plan meets.

    Convolutions have no bias, as in ResNets: a bias before a BatchNorm in train mode gets a zero
    gradient, so it could not show whether it trained.
    """

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.stage1 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.pool(self.stage2(self.stage1(x))).flatten(1))


BLOCK_OF = {"conv": "stem", "bn": "stem", "stage1": "stage1", "stage2": "stage2", "fc": "head"}


def block_of(name: str) -> str:
    return BLOCK_OF[name.split(".")[0]]


def source_model(seed: int = 100) -> TinyNet:
    """A "pretrained" model: random weights plus BatchNorm statistics that are not the defaults
    (seeded apart from apply_plan's default seed 0, which would redraw the very same weights)."""
    torch.manual_seed(seed)
    model = TinyNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(100)
    return model


def batch(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(model, result, steps: int = 3, lr: float = 0.1) -> None:
    """A plain PyTorch loop over the plan's param groups and train mode."""
    optimizer = torch.optim.SGD(result.param_groups(lr, 1e-4), lr=lr, momentum=0.9)
    x, y = batch()
    for _ in range(steps):
        result.train_mode(model)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def changed(before, after) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_blocks_of_the_test_model():
    names = [(b.name, b.modules) for b in model_blocks(TinyNet())]
    assert names == [("stem", ["conv", "bn"]), ("stage1", ["stage1"]), ("stage2", ["stage2", "pool"]),
                     ("head", ["fc"])]


def test_the_config_accepts_exactly_the_registered_presets():
    for name in PRESETS.names():
        TransferPlan(preset=name).validate()
    with pytest.raises(ConfigError, match="plan.preset") as err:
        TransferPlan(preset="fine_tune_all").validate()
    assert all(name in err.value.hint for name in PRESETS.names())


# preset -> blocks frozen at the start
FROZEN = {
    "feature_extraction": {"stem", "stage1", "stage2"},
    "fine_tune": set(),
    "freeze_first_n": {"stem", "stage1"},
    "gradual_unfreeze": {"stem", "stage1", "stage2"},
    "discriminative": set(),
    "scratch": set(),
}


@pytest.mark.parametrize("preset", sorted(FROZEN))
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_each_preset_freezes_exactly_what_it_says(preset, bn_mode):
    model = source_model()
    source = snapshot(model)
    result = apply_plan(model, TransferPlan(preset=preset, freeze_first_n=2, bn_mode=bn_mode), model_blocks(model))
    start = snapshot(model)
    train_steps(model, result)
    after = snapshot(model)
    frozen_blocks = FROZEN[preset]

    params = dict(model.named_parameters())
    for name, p in params.items():
        frozen = block_of(name) in frozen_blocks
        assert p.requires_grad is not frozen, name
        # frozen parameters are bit-identical; every trained one moved
        assert torch.equal(start[name], after[name]) is frozen, name
    for name in (k for k in after if k not in params):  # BatchNorm buffers
        frozen = block_of(name) in frozen_blocks
        if frozen and bn_mode == "eval":
            assert torch.equal(start[name], after[name]), f"{name} changed in a frozen BN in eval mode"
        else:
            assert not torch.equal(start[name], after[name]), f"{name} should track the target data"
    # only the head is new, except for the scratch baseline, which re-initialises everything
    reset = {k for k in changed(source, start)}
    expected_reset = set(source) if preset == "scratch" else {"fc.weight", "fc.bias"}
    assert reset == expected_reset
    assert result.trainable_parameters == sum(p.numel() for p in params.values() if p.requires_grad)
    assert result.total_parameters == sum(p.numel() for p in params.values())


def test_discriminative_learning_rates_decay_per_block_from_the_head():
    model = source_model()
    result = apply_plan(model, TransferPlan(preset="discriminative", layer_decay=0.5), model_blocks(model))
    lrs = {g["name"]: g["lr"] for g in result.param_groups(0.1, 0.0)}
    assert lrs == pytest.approx({"stem": 0.0125, "stage1": 0.025, "stage2": 0.05, "head": 0.1})
    assert [r["lr_mult"] for r in result.rows] == pytest.approx([0.125, 0.25, 0.5, 1.0])


def test_param_groups_hold_trainable_parameters_once_and_skip_decay_on_biases_and_norms():
    model = source_model()
    result = apply_plan(model, TransferPlan(preset="freeze_first_n", freeze_first_n=1), model_blocks(model))
    groups = result.param_groups(0.01, 0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    for g in groups:
        for p in g["params"]:
            assert g["weight_decay"] == (0.05 if p.ndim >= 2 else 0.0)
        assert {"params", "lr", "lr_mult", "name", "weight_decay"} <= set(g)
    assert {g["name"] for g in groups} == {"stage1", "stage1.no_decay", "stage2", "stage2.no_decay",
                                           "head", "head.no_decay"}


def test_rules_override_the_preset_in_order_by_block_module_and_glob():
    model = source_model()
    plan = TransferPlan(preset="fine_tune", rules=[
        LayerRule("stem", freeze=True),  # block name
        LayerRule("stage1.*", freeze=True, lr_mult=0.5),  # glob on module names
        LayerRule("stage1.1", freeze=False),  # a later, narrower rule wins
        LayerRule("head", transfer=True),  # keep the source head
    ])
    source = snapshot(model)
    result = apply_plan(model, plan, model_blocks(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"stage1.1.weight", "stage1.1.bias", "stage2.0.weight",
                         "stage2.1.weight", "stage2.1.bias", "fc.weight", "fc.bias"}
    assert changed(source, snapshot(model)) == set()  # every layer transferred, the head too
    stage1 = next(r for r in result.rows if r["name"] == "stage1")
    assert stage1["freeze"] is True and stage1["lr_mult"] == 0.5
    assert stage1["overrides"] == [{"module": "stage1.1", "transfer": True, "freeze": False, "lr_mult": 0.5}]
    assert next(g for g in result.param_groups(1.0) if g["name"] == "stage1")["lr"] == 0.5


def test_transfer_copies_exactly_the_chosen_layers():
    model = source_model()
    source = snapshot(model)
    plan = TransferPlan(preset="fine_tune", rules=[LayerRule("stage1", transfer=False)])
    apply_plan(model, plan, model_blocks(model))
    reset = changed(source, snapshot(model))
    # stage1's conv and BN (weights and running statistics) and the new head; nothing else
    assert reset == {k for k in source if k.startswith(("stage1.", "fc."))}
    assert torch.equal(model.stage1[1].running_var, torch.ones(8))  # re-initialised, not copied


def test_reinitialisation_is_seeded_and_leaves_the_global_rng_alone():
    a, b, c = source_model(), source_model(), source_model()
    torch.manual_seed(123)
    apply_plan(a, TransferPlan(preset="scratch"), model_blocks(a), seed=7)
    after_a = torch.rand(3)
    torch.manual_seed(123)
    apply_plan(b, TransferPlan(preset="scratch"), model_blocks(b), seed=7)
    assert torch.equal(torch.rand(3), after_a)  # the caller's random stream is untouched
    apply_plan(c, TransferPlan(preset="scratch"), model_blocks(c), seed=8)
    assert changed(snapshot(a), snapshot(b)) == set()
    assert "conv.weight" in changed(snapshot(a), snapshot(c))


def test_the_baseline_differs_only_in_initialisation():
    cfg = RunConfig(name="t", plan=TransferPlan(preset="freeze_first_n", freeze_first_n=2))
    base = cfg.as_baseline("run-1")
    assert base.plan == TransferPlan(preset="scratch")
    assert (base.source, base.dataset, base.train) == (cfg.source, cfg.dataset, cfg.train)

    tuned, scratch = source_model(), source_model()
    # (at one rate: fine_tune's default trains transferred layers at a fraction of it)
    r_tuned = apply_plan(tuned, TransferPlan(preset="fine_tune", transferred_lr_mult=1.0), model_blocks(tuned))
    r_scratch = apply_plan(scratch, base.plan, model_blocks(scratch))
    # same parameters trained at the same learning rates; only the starting weights differ
    shape = [(g["name"], g["lr"], [p.shape for p in g["params"]]) for g in r_tuned.param_groups(0.1, 1e-4)]
    assert shape == [(g["name"], g["lr"], [p.shape for p in g["params"]]) for g in r_scratch.param_groups(0.1, 1e-4)]
    assert changed(snapshot(tuned), snapshot(scratch)) - {"fc.weight", "fc.bias"}


def test_gradual_unfreezing_releases_one_block_per_period_from_the_head_down():
    model = source_model()
    plan = TransferPlan(preset="gradual_unfreeze", unfreeze_every=2, unfreeze_lr_mult=0.1)
    result = apply_plan(model, plan, model_blocks(model))
    assert [r["unfreeze_epoch"] for r in result.rows] == [6, 4, 2, None]
    optimizer = torch.optim.SGD(result.param_groups(1.0), lr=1.0)
    unfreezing = GradualUnfreezing(result)
    assert result.callbacks()[0].table is result  # the engine adds it for this plan
    released = {epoch: unfreezing.release_due(epoch, optimizer, 1.0) for epoch in range(8)}
    assert released == {0: [], 1: [], 2: ["stage2"], 3: [], 4: ["stage1"], 5: [], 6: ["stem"], 7: []}
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("head", 1.0), ("stage2", 0.1), ("stage1", 0.1), ("stem", 0.1)]
    assert all(p.requires_grad for p in model.parameters())
    assert unfreezing.release_due(6, optimizer, 1.0) == []  # idempotent


def test_unfrozen_batchnorm_leaves_eval_mode_and_a_rule_pinned_block_stays_frozen():
    model = source_model()
    plan = TransferPlan(preset="gradual_unfreeze", rules=[LayerRule("stage1", freeze=True)])
    result = apply_plan(model, plan, model_blocks(model))
    result.train_mode(model)
    assert not model.stage2[1].training and not model.bn.training and model.training
    unfreezing = GradualUnfreezing(result)
    unfreezing.release_due(1, None, 1.0)
    result.train_mode(model)
    assert model.stage2[1].training
    assert unfreezing.release_due(2, None, 1.0) == ["stem"]  # stage1 is skipped: a rule froze it
    assert not any(p.requires_grad for p in model.stage1.parameters())
    result.train_mode(model)
    assert not model.stage1[1].training


def test_gradual_unfreezing_resumes_with_the_same_optimizer_groups():
    model = source_model()
    plan = TransferPlan(preset="gradual_unfreeze")
    result = apply_plan(model, plan, model_blocks(model))
    optimizer = torch.optim.AdamW(result.param_groups(0.01, 0.1), lr=0.01)
    GradualUnfreezing(result).release_due(1, optimizer, 0.01, weight_decay=0.1)
    x, y = batch()
    result.train_mode(model)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    saved_opt, saved_plan, saved_model = optimizer.state_dict(), result.state(), snapshot(model)
    assert saved_plan == {"unfrozen": ["stage2"]}

    again = source_model()
    resumed = apply_plan(again, plan, model_blocks(again))
    again.load_state_dict(saved_model)
    resumed.load_state(saved_plan)
    optimizer2 = torch.optim.AdamW(resumed.param_groups(0.01, 0.1), lr=0.01)
    optimizer2.load_state_dict(saved_opt)  # raises if the group structure differs
    assert [(g["name"], g["lr"], len(g["params"])) for g in optimizer2.param_groups] == \
        [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups]
    assert GradualUnfreezing(resumed).release_due(1, optimizer2, 0.01, weight_decay=0.1) == []
    with pytest.raises(KTError, match="unfrozen blocks"):
        apply_plan(source_model(), plan, model_blocks(again)).load_state({"unfrozen": ["stem"]})


def test_head_only():
    def plan_for(**kw):
        model = source_model()
        return apply_plan(model, TransferPlan(**kw), model_blocks(model))

    fe = plan_for(preset="feature_extraction")
    assert fe.head_only() and fe.head == "fc"
    assert not plan_for(preset="feature_extraction", bn_mode="train").head_only()
    assert not plan_for(preset="gradual_unfreeze").head_only()  # unfreezing comes later
    assert not plan_for(preset="fine_tune").head_only()
    assert not plan_for(preset="freeze_first_n", freeze_first_n=1).head_only()


def test_bn_statistics_warning_fires_only_for_data_unlike_the_source():
    model = source_model()
    result = apply_plan(model, TransferPlan(preset="feature_extraction"), model_blocks(model))
    # make the stem's stored statistics exactly those of "familiar" data
    x, _ = batch(64)
    with torch.no_grad():
        pre = model.conv(x)
        model.bn.running_mean.copy_(pre.mean((0, 2, 3)))
        model.bn.running_var.copy_(pre.var((0, 2, 3), unbiased=False))
    model.train()
    familiar = [w for w in bn_stat_warnings(result, model, x) if w.startswith("frozen BatchNorm bn:")]
    assert familiar == []
    assert model.training  # modes restored
    shifted = bn_stat_warnings(result, model, x * 4 + 3)
    assert any(w.startswith("frozen BatchNorm bn:") and "bn_mode" in w for w in shifted)


def test_cost_estimate_counts_conv_and_linear_flops_and_the_saving_of_a_frozen_prefix():
    model = source_model()
    fe = apply_plan(model, TransferPlan(preset="feature_extraction"), model_blocks(model))
    cost = estimate_cost(fe, model, (1, 16, 16))
    conv = 2 * 4 * 16 * 16 * 9
    stage1 = 2 * 8 * 8 * 8 * (4 * 9)
    stage2 = 2 * 8 * 4 * 4 * (8 * 9)
    fc = 2 * 3 * 8
    assert cost["forward_flops"] == conv + stage1 + stage2 + fc
    # fine-tuning: forward + weight gradients everywhere + input gradients after the first layer
    assert cost["train_flops_full"] == 3 * (conv + stage1 + stage2 + fc) - conv
    # feature extraction: the forward, plus the head's weight gradient
    assert cost["train_flops_plan"] == conv + stage1 + stage2 + 2 * fc
    assert 0.5 < cost["work_saved_fraction"] < 1
    assert cost["feature_cache"] is True and cost["work_saved_fraction_cached"] > cost["work_saved_fraction"]
    assert estimate_cost(fe, model, (1, 16, 16), augment="light")["feature_cache"] is False
    assert cost["trainable_parameters"] == 27 and cost["total_parameters"] == fe.total_parameters

    ft_model = source_model()
    ft = apply_plan(ft_model, TransferPlan(preset="fine_tune"), model_blocks(ft_model))
    ft_cost = estimate_cost(ft, ft_model, (1, 16, 16))
    assert ft_cost["work_saved_fraction"] == 0 and ft_cost["feature_cache"] is False
    with pytest.raises(KTError, match="input of size"):
        estimate_cost(ft, ft_model, (3, 16, 16))


def test_preview_changes_nothing_on_the_model():
    model = source_model()
    before = snapshot(model)
    result = preview_plan(model, TransferPlan(preset="scratch"), model_blocks(model))
    assert changed(before, snapshot(model)) == set()
    assert all(p.requires_grad for p in model.parameters())
    assert [r["transfer"] for r in result.rows] == [False] * 4


@pytest.mark.parametrize("plan, words", [
    (TransferPlan(preset="freeze_first_n", freeze_first_n=4), ["freeze_first_n", "at most 3"]),
    (TransferPlan(preset="feature_extraction", rules=[LayerRule("head", freeze=True)]), ["trains no parameters"]),
    (TransferPlan(rules=[LayerRule("stage3", freeze=True)]), ["stage3", "did you mean"]),
    (TransferPlan(preset="gentle"), ["plan.preset", "fine_tune"]),
])
def test_bad_plans_fail_with_a_message_and_a_fix(plan, words):
    model = source_model()
    before = snapshot(model)
    with pytest.raises(ConfigError) as info:
        apply_plan(model, plan, model_blocks(model))
    assert all(w in str(info.value) for w in words), str(info.value)
    assert info.value.hint
    assert changed(before, snapshot(model)) == set()  # a refused plan touches nothing


def test_blocks_naming_missing_modules_are_refused():
    from kt_core.models import Block

    with pytest.raises(ConfigError, match="stage9"):
        apply_plan(TinyNet(), TransferPlan(), [Block("stem", ["conv"]), Block("head", ["stage9"])])


def test_a_real_architecture_plans_by_its_own_blocks():
    from kt_core.models import build_model, get_spec

    model = build_model("cifar_resnet20", num_classes=4)
    result = apply_plan(model, TransferPlan(preset="freeze_first_n", freeze_first_n=2),
                        model_blocks(model, get_spec("cifar_resnet20")))
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    assert [r["name"] for r in result.rows] == ["stem", "layer1", "layer2", "layer3", "head"]
    assert sum(r["num_parameters"] for r in result.rows) == sum(p.numel() for p in model.parameters())


# --- through the engine -------------------------------------------------------------------------

def fit_data():
    from kt_core.data import PreparedData, TensorSplit

    x, y = batch(48, seed=3)
    vx, vy = batch(16, seed=4)
    return PreparedData(TensorSplit(x, y), TensorSplit(vx, vy), None, ["a", "b", "c"], (1, 16, 16))


@pytest.mark.parametrize("feature_cache", [True, False])
def test_engine_fit_keeps_frozen_layers_and_their_bn_statistics_bit_identical(feature_cache):
    from kt_core.config import TrainConfig
    from kt_core.engine import fit

    model = source_model()
    cfg = RunConfig(plan=TransferPlan(preset="freeze_first_n", freeze_first_n=2) if not feature_cache
                    else TransferPlan(preset="feature_extraction"),
                    train=TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", feature_cache=feature_cache))
    result = apply_plan(model, cfg.plan, model_blocks(model))
    start = snapshot(model)
    outcome = fit(model, fit_data(), cfg, result)
    after = snapshot(model)
    assert outcome.state == "completed" and outcome.feature_cache is feature_cache
    frozen = FROZEN[cfg.plan.preset]
    moved = changed(start, after)
    assert {k for k in moved if block_of(k) in frozen} == set()  # weights, running stats, counters
    assert {"fc.weight", "fc.bias"} <= moved
    if not feature_cache:
        assert {"stage2.0.weight", "stage2.1.running_mean"} <= moved


def test_engine_fit_unfreezes_gradually_into_new_param_groups():
    from kt_core.config import TrainConfig
    from kt_core.engine import fit

    model = source_model()
    cfg = RunConfig(plan=TransferPlan(preset="gradual_unfreeze", unfreeze_every=1, unfreeze_lr_mult=0.1),
                    train=TrainConfig(epochs=3, batch_size=16, lr=0.05, device="cpu", optimizer="sgd"))
    result = apply_plan(model, cfg.plan, model_blocks(model))
    start = snapshot(model)
    outcome = fit(model, fit_data(), cfg, result)
    assert outcome.state == "completed" and not outcome.feature_cache
    assert result.state() == {"unfrozen": ["stage2", "stage1"]}  # released at epochs 1 and 2
    moved = changed(start, snapshot(model))
    assert {"stage2.0.weight", "stage1.0.weight"} <= moved
    assert not {k for k in moved if block_of(k) == "stem"}  # its turn would come at epoch 3


def test_parameters_outside_every_block_are_planned_and_reported():
    from kt_core.models import Block

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))  # held by the root, named by no block
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2, 3)
            self.act = nn.LogSoftmax(1)

        def forward(self, x):
            return self.act(self.fc(self.conv(x).mean((2, 3)) * self.scale))

    model = Scaled()
    result = apply_plan(model, TransferPlan(preset="feature_extraction", rules=[LayerRule("scale", lr_mult=2.0)]),
                        [Block("stem", ["conv"]), Block("head", ["fc", "act"])])
    assert result.head == "fc"  # the classifier, not the activation after it
    assert [r["name"] for r in result.rows] == ["stem", "(unassigned)", "head"]
    unassigned = result.rows[1]
    assert unassigned["freeze"] is True and unassigned["lr_mult"] == 2.0 and unassigned["num_parameters"] == 1
    assert not model.scale.requires_grad
    assert any("scale" in w or "(root)" in w for w in result.warnings)
