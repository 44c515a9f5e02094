"""Region Normalization (RN-B): per-region statistics against a direct computation; the input-mask hook."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.normalization.region_norm import (
    MaskedRegionNorm,
    RegionNorm,
    RegionNormB,
    apply_region_norm,
)

EPS = 1e-5


def _reference(x: torch.Tensor, hole: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # for each channel and region: gather the region's values over all samples and positions
    y = torch.zeros_like(x)
    for c in range(x.shape[1]):
        for k, sel in enumerate((hole[:, 0] > 0.5, hole[:, 0] < 0.5)):
            vals = x[:, c][sel]
            if vals.numel() == 0:
                continue
            mu = vals.mean()
            var = ((vals - mu) ** 2).mean()
            out = y[:, c]
            out[sel] = (vals - mu) / torch.sqrt(var + EPS) * w[k, c] + b[k, c]
    return y


def test_each_region_is_normalized_with_its_own_statistics():
    torch.manual_seed(0)
    rn = RegionNormB(3)
    with torch.no_grad():
        rn.weight.copy_(torch.randn(2, 3))
        rn.bias.copy_(torch.randn(2, 3))
    x = torch.randn(2, 3, 6, 6) * 2 + 1
    hole = (torch.rand(2, 1, 6, 6) > 0.6).float()
    x = x + 5 * hole  # holes have very different statistics from the valid pixels
    torch.testing.assert_close(rn(x, hole), _reference(x, hole, rn.weight, rn.bias), atol=1e-5, rtol=1e-4)
    # with unit affine, each region of each channel has mean 0 and variance ~1
    plain = RegionNormB(3)(x, hole)
    sel = hole[:, 0] > 0.5
    for c in range(3):
        torch.testing.assert_close(plain[:, c][sel].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(plain[:, c][~sel].var(unbiased=False), torch.tensor(1.0), atol=1e-3, rtol=0)


def test_mask_is_resized_with_nearest_neighbour_and_may_lack_the_channel_axis():
    torch.manual_seed(1)
    rn = RegionNormB(2)
    x = torch.randn(2, 2, 4, 4)
    big = (torch.rand(2, 8, 8) > 0.5).float()
    small = torch.nn.functional.interpolate(big.unsqueeze(1), size=(4, 4), mode="nearest")
    torch.testing.assert_close(rn(x, big), _reference(x, small, rn.weight, rn.bias), atol=1e-5, rtol=1e-4)


def test_an_empty_region_and_train_eval_sameness():
    torch.manual_seed(2)
    rn = RegionNormB(2)
    x = torch.randn(3, 2, 4, 4)
    none = torch.zeros(3, 1, 4, 4)
    expected = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + EPS)
    torch.testing.assert_close(rn(x, none), expected, atol=1e-5, rtol=1e-4)  # no holes: plain batch statistics
    rn.eval()
    torch.testing.assert_close(rn(x, none), expected, atol=1e-5, rtol=1e-4)  # no running statistics


def test_gradcheck_and_state_dict_round_trip():
    torch.manual_seed(3)
    rn = RegionNormB(2).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.double, requires_grad=True)
    hole = (torch.rand(2, 1, 3, 3) > 0.5).double()
    assert torch.autograd.gradcheck(lambda inp: rn(inp, hole), (x,))
    with torch.no_grad():
        rn.weight.mul_(3)
    other = RegionNormB(2).double()
    other.load_state_dict(rn.state_dict())
    torch.testing.assert_close(other(x, hole), rn(x, hole))


def test_model_conversion_takes_the_mask_from_constant_filled_input_pixels():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    assert apply_region_norm(model, hole_value=0.0) == ["1"]
    assert isinstance(model[1], MaskedRegionNorm)
    x = torch.randn(2, 1, 5, 5)
    x[:, :, 1:3, 1:4] = 0.0
    y = model(x)
    hole = (x == 0).float()
    h = model[0](x)
    torch.testing.assert_close(y, torch.relu(_reference(h, hole, model[1].rn.weight, model[1].rn.bias)),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError):
        RegionNorm().prepare(nn.Sequential(nn.Linear(2, 2)), None)
    with pytest.raises(ConfigError):
        RegionNormB(2)(torch.randn(2, 2, 3, 3), torch.zeros(2, 2, 3, 3))
