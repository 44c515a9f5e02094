"""Weight Standardization: the parametrization against the paper's formula, gradients, removal."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from trainlab.errors import ConfigError
from trainlab.techniques.normalization.weight_standardization import (
    WeightStandardization,
    WeightStandardizationTechnique,
    apply_weight_standardization,
    is_weight_standardized,
    remove_weight_standardization,
)


def _paper_ws(w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # W_hat_ij = (W_ij - mu_i) / sqrt(mean_j (W_ij - mu_i)^2 + eps), row i = output channel
    flat = w.reshape(w.shape[0], -1)
    out = torch.empty_like(flat)
    for i in range(flat.shape[0]):
        row = flat[i]
        mu = row.sum() / row.numel()
        var = ((row - mu) ** 2).sum() / row.numel()
        out[i] = (row - mu) / torch.sqrt(var + eps)
    return out.reshape(w.shape)


def test_standardized_conv_weight_matches_the_paper_formula_and_the_conv_uses_it():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, bias=False)
    raw = conv.weight.detach().clone() * 3 + 0.5
    with torch.no_grad():
        conv.weight.copy_(raw)
    assert apply_weight_standardization(nn.Sequential(conv)) == ["0"]
    expected = _paper_ws(raw)
    torch.testing.assert_close(conv.weight, expected)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, expected))
    # each filter has zero mean and (biased) variance var / (var + eps) ~ 1
    flat = conv.weight.reshape(5, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


def test_gradient_flows_through_the_standardization():
    torch.manual_seed(1)
    w = torch.randn(4, 2, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(WeightStandardization(1e-5), (w,))


def test_output_is_invariant_to_scaling_and_shifting_a_filter():
    torch.manual_seed(2)
    conv = nn.Conv1d(2, 3, 3)
    with torch.no_grad():
        conv.weight.normal_()  # filter variance ~1, so eps (1e-5) is negligible against it
    apply_weight_standardization(conv, select=lambda n, m: True)
    x = torch.randn(4, 2, 9)
    before = conv(x)
    with torch.no_grad():  # scale and shift the raw parameter: the standardized weight is unchanged
        conv.parametrizations.weight.original.mul_(7.0).add_(-2.0)
    torch.testing.assert_close(conv(x), before, atol=1e-4, rtol=1e-4)


def test_default_selects_convs_only_linear_on_request_and_skips_already_standardized():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    assert apply_weight_standardization(model) == ["0"]
    assert not parametrize.is_parametrized(model[2])
    assert apply_weight_standardization(model, include_linear=True) == ["2"]
    assert apply_weight_standardization(model, include_linear=True) == []


def test_removal_keeps_the_function_or_restores_the_raw_weight():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3))
    raw = model[0].weight.detach().clone()
    apply_weight_standardization(model)
    x = torch.randn(1, 2, 5, 5)
    y = model(x)
    assert remove_weight_standardization(model, leave_standardized=True) == ["0"]
    assert type(model[0]) is nn.Conv2d and not is_weight_standardized(model[0])
    torch.testing.assert_close(model(x), y)
    other = nn.Sequential(nn.Conv2d(2, 4, 3))
    with torch.no_grad():
        other[0].weight.copy_(raw)
    apply_weight_standardization(other)
    remove_weight_standardization(other, leave_standardized=False)
    torch.testing.assert_close(other[0].weight, raw)


def test_state_dict_round_trip_of_a_standardized_model():
    torch.manual_seed(4)
    a, b = nn.Sequential(nn.Conv2d(2, 3, 3)), nn.Sequential(nn.Conv2d(2, 3, 3))
    apply_weight_standardization(a)
    apply_weight_standardization(b)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(a(x), b(x))


def test_technique_refuses_a_model_without_convolutions_and_bad_eps():
    with pytest.raises(ConfigError, match="no convolution"):
        WeightStandardizationTechnique().prepare(nn.Sequential(nn.Linear(2, 2)), None)
    with pytest.raises(ConfigError):
        WeightStandardizationTechnique(eps=0.0)
