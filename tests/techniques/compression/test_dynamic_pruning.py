"""FTWT dynamic pruning: targets, masks, FLOPs accounting, predictor training, the techniques."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trainlab.errors import ConfigError
from trainlab.tasks.models import MLP, ResNet, SmallCNN
from trainlab.techniques.compression.dynamic_pruning import (
    FTWT, GatedBlock, UniformChannelPrune, apply_ftwt, channel_peaks, find_blocks, mass_targets,
    static_flops_ratio, threshold_for_flops, uniform_keep_counts,
)
from trainlab.techniques.pruning.accounting import count_flops


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        fn()
    return int(c.get_total_flops())


def _force(block: GatedBlock, keep: list[int]) -> None:
    """Make the block's predictor keep exactly `keep`, whatever the input."""
    with torch.no_grad():
        block.predictor.linear.weight.zero_()
        bias = torch.full((block.out_channels,), -5.0)
        bias[keep] = 5.0
        block.predictor.linear.bias.copy_(bias)


# ------------------------------------------------------------------------------- targets

def test_mass_targets_follow_the_definition_on_a_hand_made_map() -> None:
    # channel peaks |.| = 1, 4, 2, 3 (one negative peak, channels out of order): shares .1 .4 .2 .3
    out = torch.zeros(1, 4, 2, 2)
    out[0, 0, 0, 0], out[0, 1, 1, 1], out[0, 2, 0, 1], out[0, 3, 1, 0] = 1.0, -4.0, 2.0, 3.0
    out[0, 1, 0, 0] = 0.5   # below the peak: only the max counts
    assert channel_peaks(out).tolist() == [[1.0, 4.0, 2.0, 3.0]]
    # sorted shares .4 .3 .2 .1, running sums .4 .7 .9 1.0: keep while the sum is <= r (+1e-5)
    assert mass_targets(out, 0.7).tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert mass_targets(out, 0.69).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert mass_targets(out, 0.95).tolist() == [[0.0, 1.0, 1.0, 1.0]]
    assert mass_targets(out, 0.3).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert mass_targets(out, 1.0).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert mass_targets(out, -1.0).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    out[0, 0] = 0.0   # a dead channel is the only one dropped at r = 1
    assert mass_targets(out, 1.0).tolist() == [[0.0, 1.0, 1.0, 1.0]]


def test_mass_targets_per_input_and_on_features() -> None:
    feats = torch.tensor([[5.0, 3.0, 2.0], [1.0, 1.0, 8.0]])   # [B, C]: shares .5 .3 .2 / .1 .1 .8
    assert mass_targets(feats, 0.8).tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


# --------------------------------------------------------------------------- gating, FLOPs

def _cnn(channels=(4, 6)) -> tuple[SmallCNN, object]:
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 10, channels=channels)
    dense_copy = SmallCNN((1, 8, 8), 10, channels=channels)
    dense_copy.load_state_dict(model.state_dict())
    dp = apply_ftwt(model, torch.randn(2, 1, 8, 8), threshold=0.9, softmax=False)
    return model, dp, dense_copy


def test_masked_channels_are_exactly_zero_and_the_rest_unchanged() -> None:
    model, dp, dense = _cnn()
    model.eval(), dense.eval()
    b0, b1 = dp.blocks
    _force(b0, [0, 2])
    _force(b1, [1, 3, 4])
    dp.set_mode("predicted")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        out0 = b0(x)
        ref0 = dense.features[2](dense.features[1](dense.features[0](x)))
    assert (out0[:, [1, 3]] == 0).all()
    assert torch.equal(out0[:, [0, 2]], ref0[:, [0, 2]])
    with torch.no_grad():
        out1 = b1(model.features[1](out0))
    assert (out1[:, [0, 2, 5]] == 0).all() and (out1[:, [1, 3, 4]] != 0).any()


def test_flops_equal_the_hand_count() -> None:
    model, dp, dense = _cnn()
    x1 = torch.randn(1, 1, 8, 8)
    assert dp.dense_total == count_flops(dense, x1)
    # each block's dense cost is what FlopCounterMode counts for its layer
    assert dp.blocks[0].dense_flops() == _flops(lambda: dense.features[0](x1)) == 2 * 9 * 1 * 4 * 64
    h = torch.randn(1, 4, 4, 4)
    assert dp.blocks[1].dense_flops() == _flops(lambda: dense.features[4](h)) == 2 * 9 * 4 * 6 * 16
    _force(dp.blocks[0], [0, 2])
    _force(dp.blocks[1], [1, 3, 4])
    dp.set_mode("predicted")
    model.eval()
    with torch.no_grad():
        model(torch.randn(5, 1, 8, 8))
    head = 2 * 6 * 10
    hand = 2 * 9 * 1 * 2 * 64 + 2 * 9 * 2 * 3 * 16 + head + (2 * 1 * 4 + 2 * 4 * 6)   # convs + head + predictors
    assert dp.flops().tolist() == [float(hand)] * 5
    assert dp.flops_ratio()[0].item() == pytest.approx(hand / dp.dense_total)
    # static masks: no predictor cost
    for b, keep in zip(dp.blocks, ([0, 1, 2], [0, 1])):
        b.static_mask.zero_()
        b.static_mask[keep] = 1.0
    dp.set_mode("static")
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8))
    hand_static = 2 * 9 * 1 * 3 * 64 + 2 * 9 * 3 * 2 * 16 + head
    assert dp.flops().tolist() == [float(hand_static)] * 2
    assert static_flops_ratio(dp) == pytest.approx(hand_static / dp.dense_total)


def test_uniform_keep_counts_meet_the_budget_and_threshold_search_is_monotone() -> None:
    model, dp, _ = _cnn((8, 16))
    keep = uniform_keep_counts(dp, 0.5)
    for b, k in zip(dp.blocks, keep):
        b.static_mask.zero_()
        b.static_mask[:k] = 1.0
    assert static_flops_ratio(dp) <= 0.5
    bigger = [min(b.out_channels, k + 1) for b, k in zip(dp.blocks, keep)]
    for b, k in zip(dp.blocks, bigger):
        b.static_mask.zero_()
        b.static_mask[:k] = 1.0
    assert static_flops_ratio(dp) > 0.5    # one more channel per layer breaks the budget
    x = torch.randn(64, 1, 8, 8)
    t = threshold_for_flops(dp, x, 0.4)
    assert all(b.mode == "dense" for b in dp.blocks) and dp.blocks[0].threshold == 0.9   # restored
    over = sum(b.predictor_flops() for b in dp.blocks) / dp.dense_total

    def oracle(th: float) -> float:
        dp.set_threshold(th)
        dp.set_mode("target")
        return dp.measure(x)["flops_ratio"] + over

    assert oracle(t) <= 0.4 < oracle(min(1.0, t + 0.02))


def test_skip_forward_matches_masking_at_batch_one() -> None:
    model, dp, _ = _cnn((8, 16))
    torch.manual_seed(1)
    for b in dp.blocks:
        nn.init.normal_(b.predictor.linear.weight, std=2.0)
        b.post[0].running_mean.normal_()
        b.post[0].running_var.uniform_(0.5, 2.0)
    dp.set_mode("predicted")
    model.eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        masked, flops_masked = model(x), dp.flops()
        for b in dp.blocks:
            b.skip = True
        skipped, flops_skipped = model(x), dp.flops()
    assert torch.allclose(masked, skipped, atol=1e-5)
    assert torch.equal(flops_masked, flops_skipped)
    assert 0 < dp.active_fraction() < 1
    # no active channel in a block, and so no active input in the next one
    for keep0, keep1 in (([], [0, 5]), ([1], [])):
        _force(dp.blocks[0], keep0)
        _force(dp.blocks[1], keep1)
        with torch.no_grad():
            for b in dp.blocks:
                b.skip = False
            masked = model(x)
            for b in dp.blocks:
                b.skip = True
            assert torch.allclose(masked, model(x), atol=1e-6)


# ----------------------------------------------------------------------- predictor training

def test_the_mask_loss_is_bce_and_trains_only_the_predictors() -> None:
    model, dp, _ = _cnn()
    dp.set_mode("predicted")
    model.train()
    model(torch.randn(8, 1, 8, 8))
    loss = dp.mask_loss(weight=2.0)
    by_hand = torch.stack([
        F.binary_cross_entropy_with_logits(b.last_logits, b.last_target, reduction="none").mean(0).sum()
        for b in dp.blocks]).mean() * 2.0
    assert torch.allclose(loss, by_hand)
    loss.backward()
    for b in dp.blocks:
        assert b.predictor.linear.weight.grad is not None and b.predictor.linear.weight.grad.abs().sum() > 0
        assert b.layer.weight.grad is None      # decoupled: the mask loss does not reach the backbone


def test_learned_eval_masks_depend_on_the_input() -> None:
    # toy: two channels, one of them dominant per input; the identity 1x1 conv passes them on, so the
    # target at r = 0.95 is "the dominant channel" (its share is 0.91-0.92), which the predictor
    # must read from the input
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    conv.weight.requires_grad_(False)
    model = nn.Module()
    model.features = nn.Sequential(conv, nn.Identity(), nn.ReLU())
    model.forward = lambda x: model.features(x)
    dp = apply_ftwt(model, torch.rand(2, 2, 3, 3), threshold=0.95, softmax=False)
    dp.set_mode("predicted")

    def sample(n: int) -> torch.Tensor:
        x = torch.full((n, 2, 3, 3), 0.1)
        hot = torch.randint(0, 2, (n,))
        x[torch.arange(n), hot] = 1.0 + 0.1 * torch.rand(n, 3, 3)
        return x

    opt = torch.optim.Adam(dp.predictors(), lr=0.05)
    for _ in range(200):
        model(sample(32))
        opt.zero_grad()
        dp.mask_loss().backward()
        opt.step()
    x = sample(64)
    with torch.no_grad():
        model(x)
    block = dp.blocks[0]
    masks = block.last_mask
    assert torch.equal(masks, block.last_target)               # the predictor learned the targets
    assert {tuple(m.tolist()) for m in masks} == {(1.0, 0.0), (0.0, 1.0)}   # and they differ by input
    assert torch.equal(masks.argmax(1), x.flatten(2).amax(2).argmax(1))


# --------------------------------------------------------------------------- scope, settings

def test_models_without_conv_blocks_are_refused() -> None:
    with pytest.raises(ConfigError, match="features"):
        apply_ftwt(ResNet((3, 8, 8), 10, depth=8, width=4), torch.randn(2, 3, 8, 8))
    reason = FTWT.check_applicable(None, None, ResNet((3, 8, 8), 10, depth=8, width=4))
    assert reason and "SmallCNN" in reason
    assert FTWT.check_applicable(None, None, SmallCNN((1, 8, 8), 10)) is None
    assert len(find_blocks(MLP((1, 8, 8), 10, width=16, depth=2))) == 2
    with pytest.raises(ConfigError, match="layers"):
        apply_ftwt(SmallCNN((1, 8, 8), 10), torch.randn(2, 1, 8, 8), layers=[5])


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        FTWT(threshold=0.9, target_flops=0.5)
    with pytest.raises(ConfigError, match="threshold"):
        FTWT(threshold=1.5, target_flops=None)
    with pytest.raises(ConfigError, match="freeze_at"):
        FTWT(start=0.8, freeze_at=0.5)
    with pytest.raises(ConfigError, match="flops_ratio"):
        UniformChannelPrune(flops_ratio=0.0)


def test_the_techniques_in_a_short_run() -> None:
    from trainlab.tasks.registry import get_task
    from trainlab.training.trainer import run_training

    task = get_task("digits-cnn").with_overrides({"epochs": 2, "train_subset": 256})
    ftwt = FTWT(target_flops=0.5, softmax=False)
    r = run_training(task, [ftwt], seed=0)
    assert all(b.mode == "predicted" for b in ftwt.dp.blocks)
    assert 0 < r.final["flops_ratio"] and 0 < r.final["mass_threshold"] <= 1
    assert r.epochs[0].get("flops_ratio") is not None   # switched after epoch 1 of 2
    static = UniformChannelPrune(flops_ratio=0.5)
    r = run_training(task, [static], seed=0)
    assert r.final["flops_ratio"] <= 0.5
    assert [int(b.static_mask.sum()) for b in static.dp.blocks] == uniform_keep_counts(static.dp, 0.5)
