"""convert_norms: model surgery on plain nn.Sequential models with BN/GN/LN, and its report."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.norms import ChannelLast
from trainlab.techniques.normalization.batch_channel_norm import BatchChannelNorm
from trainlab.techniques.normalization.convert import (
    ChannelFirst,
    ConvertNorms,
    convert_norms,
)
from trainlab.techniques.normalization.evonorm import EvoNormS0
from trainlab.techniques.normalization.power_norm import PowerNorm


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Sequential(nn.Linear(8, 12), nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 5), nn.BatchNorm1d(5)),
    )


def test_converts_every_bn_gn_ln_with_matching_channels_and_reports_paths():
    model = _model()
    report = convert_norms(model, "group")
    assert [(c.path, c.old_type, c.new_type) for c in report.changes] == [
        ("1", "BatchNorm2d", "GroupNorm"), ("4", "GroupNorm", "GroupNorm"),
        ("8.1", "LayerNorm", "ChannelLast(GroupNorm)"), ("8.4", "BatchNorm1d", "GroupNorm")]
    assert model[1].num_channels == 16 and model[1].num_groups == 16
    assert model[8][1].num_channels == 12
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 5)
    assert "1: BatchNorm2d -> GroupNorm" in str(report)


def test_named_layers_with_settings_kinds_filter_and_absorbed_activations():
    model = _model()
    report = convert_norms(model, "bcn", kinds=("batch",), estimate=True, rate=0.2)
    assert [c.path for c in report.converted] == ["1", "8.4"]
    assert isinstance(model[1], BatchChannelNorm) and model[1].rate == 0.2 and model[1].estimate
    assert isinstance(model[4], nn.GroupNorm) and isinstance(model[8][1], nn.LayerNorm)  # untouched kinds

    model = _model()
    report = convert_norms(model, "evonorm-s0", kinds=("batch", "group"), absorb_activation=True)
    assert isinstance(model[1], EvoNormS0) and isinstance(model[2], nn.Identity)
    assert isinstance(model[4], EvoNormS0) and isinstance(model[5], nn.Identity)
    assert [c.path for c in report.changes if "absorbed" in c.new_type] == ["2", "5"]
    model(torch.randn(2, 3, 6, 6)).sum().backward()


def test_channel_last_and_channel_first_layouts_are_adapted():
    model = _model()
    convert_norms(model, "power")
    assert isinstance(model[1], ChannelFirst) and isinstance(model[1].inner, PowerNorm)   # BN2d: [N, C, H, W]
    assert isinstance(model[8][1], PowerNorm)                                              # LN: [..., C]
    model(torch.randn(4, 3, 5, 5)).sum().backward()
    # trainlab's ChannelLast(BatchNorm1d) for tokens is replaced as a whole
    seq = nn.Sequential(nn.Linear(4, 6), ChannelLast(nn.BatchNorm1d(6), 6))
    report = convert_norms(seq, "layer")
    assert [(c.path, c.old_type, c.new_type) for c in report.changes] == [("1", "ChannelLast(BatchNorm1d)", "LayerNorm")]


def test_callable_factory_device_dtype_and_errors():
    model = _model().double()
    seen = []

    def factory(c: int, dims: int) -> nn.Module:
        seen.append((c, dims))
        return nn.Identity() if dims == 0 else nn.BatchNorm1d(c) if dims == 1 else nn.GroupNorm(1, c)

    convert_norms(model, factory)
    assert seen == [(16, 2), (8, 2), (12, 0), (5, 1)]
    assert model[1].weight.dtype == torch.float64
    with pytest.raises(ConfigError, match="unknown norm"):
        convert_norms(_model(), "nope")
    with pytest.raises(ConfigError, match="takes no settings"):
        convert_norms(_model(), "group", groups=4)
    with pytest.raises(ConfigError, match="itself a norm"):
        convert_norms(nn.BatchNorm2d(3), "group")
    skipped = convert_norms(nn.Sequential(nn.LayerNorm([4, 4])), "group")
    assert len(skipped) == 0 and "single channel axis" in skipped.skipped[0][1]


def test_state_dict_round_trip_after_conversion_and_the_technique():
    a, b = _model(), _model()
    convert_norms(a, "bcn-micro")
    convert_norms(b, "bcn-micro")
    a(torch.randn(2, 3, 6, 6))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(a(x), b(x))
    tech = ConvertNorms(to="evonorm-s0", kinds=["group"])
    tech.prepare(_model(), None)
    assert [c.path for c in tech.report.converted] == ["4"]
    with pytest.raises(ConfigError, match="no batch"):
        ConvertNorms(to="group", kinds=["batch"]).prepare(nn.Sequential(nn.Linear(2, 2)), None)
