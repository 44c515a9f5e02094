"""Batch-Channel Normalization: large-batch and micro-batch (estimate) modes against direct formulas."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.norms import make_norm
from trainlab.techniques.normalization.batch_channel_norm import (
    WSBCN,
    BatchChannelNorm,
    prepare_ws_bcn,
)
from trainlab.techniques.normalization.weight_standardization import (
    is_weight_standardized,
)

EPS = 1e-5


def _group_norm(x: torch.Tensor, groups: int, gw: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    g = x.reshape(n, groups, -1)
    mean = g.mean(2, keepdim=True)
    var = ((g - mean) ** 2).mean(2, keepdim=True)
    return (((g - mean) / torch.sqrt(var + EPS)) * gw + gb).reshape(x.shape)


def _randomize(m: nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1.0)


def test_large_batch_mode_is_batchnorm_then_groupnorm_with_per_group_affine():
    torch.manual_seed(0)
    m = BatchChannelNorm(8, num_groups=4)
    _randomize(m)
    x = torch.randn(5, 8, 3, 3) * 2 + 1
    mean = x.mean((0, 2, 3))
    var = x.var((0, 2, 3), unbiased=False)
    v = [1, -1, 1, 1]
    x1 = (x - mean.view(v)) / torch.sqrt(var.view(v) + EPS) * m.bn_weight.view(v) + m.bn_bias.view(v)
    expected = _group_norm(x1, 4, m.gn_weight, m.gn_bias)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-4)
    # running statistics follow nn.BatchNorm (momentum 0.1, unbiased running variance)
    torch.testing.assert_close(m.running_mean, 0.1 * mean)
    torch.testing.assert_close(m.running_var, 0.9 + 0.1 * x.var((0, 2, 3), unbiased=True))
    assert int(m.num_batches_tracked) == 1


def test_micro_batch_mode_updates_estimates_as_the_official_code_then_normalizes_with_them():
    torch.manual_seed(1)
    r = 0.25
    m = BatchChannelNorm(6, num_groups=3, estimate=True, rate=r)
    _randomize(m)
    with torch.no_grad():
        m.running_mean.copy_(torch.randn(6))
        m.running_var.copy_(torch.rand(6) + 0.5)
    mu0, var0 = m.running_mean.clone(), m.running_var.clone()
    x = torch.randn(2, 6, 4) * 3 - 1
    y = m(x)
    batch_mean = x.mean((0, 2))
    around_old = ((x - mu0.view(1, -1, 1)) ** 2).mean((0, 2))
    mu1 = (1 - r) * mu0 + r * batch_mean
    var1 = (1 - r) * var0 + r * around_old
    torch.testing.assert_close(m.running_mean, mu1)
    torch.testing.assert_close(m.running_var, var1)
    x1 = (x - mu1.view(1, -1, 1)) / torch.sqrt(var1.view(1, -1, 1) + EPS) * m.bn_weight.view(1, -1, 1) + m.bn_bias.view(1, -1, 1)
    torch.testing.assert_close(y, _group_norm(x1, 3, m.gn_weight, m.gn_bias), atol=1e-5, rtol=1e-4)


def test_micro_batch_estimates_get_no_gradient_and_eval_uses_them_without_updating():
    torch.manual_seed(2)
    m = BatchChannelNorm(4, num_groups=2, estimate=True, rate=0.5)
    x = torch.randn(2, 4, 5, requires_grad=True)
    m(x).pow(2).sum().backward()
    assert not m.running_mean.requires_grad and x.grad is not None
    m.eval()
    before = (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
    x2 = torch.randn(3, 4, 5)
    y1, y2 = m(x2), m(x2)
    torch.testing.assert_close(y1, y2)
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])
    assert int(m.num_batches_tracked) == before[2]
    # eval in large-batch mode uses the running averages, like BatchNorm
    big = BatchChannelNorm(4, num_groups=2)
    big(torch.randn(8, 4, 3))
    big.eval()
    xe = torch.randn(2, 4, 3)
    v = [1, -1, 1]
    x1 = (xe - big.running_mean.view(v)) / torch.sqrt(big.running_var.view(v) + EPS)
    torch.testing.assert_close(big(xe), _group_norm(x1, 2, big.gn_weight, big.gn_bias), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("estimate", [False, True])
def test_gradcheck(estimate):
    torch.manual_seed(3)
    m = BatchChannelNorm(4, num_groups=2, estimate=estimate, rate=0.1).double()
    _randomize(m)
    x = torch.randn(3, 4, 3, dtype=torch.double, requires_grad=True)
    m.eval()  # fixed statistics (micro-batch mode also trains with fixed, gradient-free estimates)
    assert torch.autograd.gradcheck(m, (x,))
    if not estimate:  # large-batch training: the batch statistics are a function of x
        m.train()
        assert torch.autograd.gradcheck(m, (x,))


def test_state_dict_round_trip_restores_estimates_and_outputs():
    torch.manual_seed(4)
    a = BatchChannelNorm(8, estimate=True, rate=0.3)
    _randomize(a)
    for _ in range(3):
        a(torch.randn(2, 8, 4, 4))
    b = BatchChannelNorm(8, estimate=True, rate=0.3)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(a(x), b(x))
    assert int(b.num_batches_tracked) == 3


def test_registered_norms_and_ws_bcn_prepare_a_cnn():
    assert isinstance(make_norm("bcn", 64, 2), BatchChannelNorm)
    assert make_norm("bcn-micro", 64, 2).estimate
    tokens = make_norm("bcn", 64, 0)
    assert tokens(torch.randn(2, 3, 64)).shape == (2, 3, 64)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.GroupNorm(4, 8))
    report = prepare_ws_bcn(model, estimate=True, rate=0.05)
    assert [c.path for c in report.converted] == ["1", "4"]
    assert isinstance(model[1], BatchChannelNorm) and model[1].estimate and model[1].rate == 0.05
    assert is_weight_standardized(model[0]) and is_weight_standardized(model[3])
    model(torch.randn(2, 1, 9, 9)).sum().backward()
    with pytest.raises(ConfigError):
        WSBCN().prepare(nn.Sequential(nn.Conv2d(1, 2, 3)), None)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        BatchChannelNorm(6, num_groups=4)
    with pytest.raises(ConfigError):
        BatchChannelNorm(6, rate=0.0)
    with pytest.raises(ConfigError):
        BatchChannelNorm(6)(torch.randn(2, 5, 3))


def test_features_use_groups_of_16_channels_for_the_channel_part_and_keep_the_per_group_affine():
    torch.manual_seed(5)
    m = BatchChannelNorm(32)  # as in place of an MLP's BatchNorm1d(32)
    assert (m.num_groups, m.feature_groups) == (32, 2)
    _randomize(m)
    x = torch.randn(6, 32) * 2 + 1
    y = m(x)
    x1 = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + EPS) * m.bn_weight + m.bn_bias
    g = x1.reshape(6, 2, 16)
    normed = ((g - g.mean(2, keepdim=True)) / torch.sqrt(g.var(2, unbiased=False, keepdim=True) + EPS)).reshape(6, 32)
    expected = normed * m.gn_weight.view(1, 32) + m.gn_bias.view(1, 32)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    assert y.std(dim=0).min() > 0.01  # not the constant that 32 groups of one value would give
    # tokens (channel-last, dims=0): the groups and the affine are both per 16 channels
    tokens = make_norm("bcn", 32, 0)
    assert (tokens.inner.num_groups, tokens.inner.feature_groups) == (2, 2)
    # an explicit group count decides on features too, and a single-value group is refused
    with pytest.raises(ConfigError, match=r"32 groups normalizes 1 value per sample.*a constant"):
        BatchChannelNorm(32, num_groups=32)(x)
    with pytest.raises(ConfigError, match="feature_groups"):
        BatchChannelNorm(32, feature_groups=5)
    with pytest.raises(ConfigError, match=r"on features/tokens .* 2 values per sample"):
        make_norm("bcn", 2, 0)


def test_gradcheck_on_features():
    torch.manual_seed(6)
    m = BatchChannelNorm(6, num_groups=3, feature_groups=2).double()
    _randomize(m)
    x = torch.randn(5, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))  # training mode: batch statistics on [N, C]
