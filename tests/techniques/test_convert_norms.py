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
        ("1", "BatchNorm2d", "GroupNorm"), ("4", "GroupNorm", "ChannelGroupNorm"),
        ("8.1", "LayerNorm", "ChannelLast(GroupNorm)"), ("8.4", "BatchNorm1d", "ChannelGroupNorm")]
    assert isinstance(model[1], nn.GroupNorm) and model[1].num_channels == 16 and model[1].num_groups == 16
    assert model[8][4].feature_groups == 1  # BatchNorm1d(5) on [N, 5] features: one group of all 5
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


# --- every norm kind on features [N, C], channel-last tokens [N, L, C] and BatchNorm1d on [N, C, L] ---

EPS = 1e-5
KINDS = ["batch", "group", "layer", "instance", "none", "bcn", "bcn-micro", "evonorm-b0", "evonorm-s0", "power",
         "unified"]
C = 32


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def _mlp(layout: str) -> nn.Sequential:
    """Linear(6, 32) -> norm -> ReLU -> ... -> Linear(32, 3); the norm at index 1 sees:
    features: BatchNorm1d on [N, 32]; tokens-ln / tokens-bn: LayerNorm / ChannelLast(BatchNorm1d) on
    [N, L, 32]; transposed: BatchNorm1d on [N, 32, L] (tokens transposed for it, and back)."""
    norm = {"features": nn.BatchNorm1d(C), "tokens-ln": nn.LayerNorm(C), "tokens-bn": ChannelLast(nn.BatchNorm1d(C), C),
            "transposed": nn.Sequential(_Transpose(), nn.BatchNorm1d(C), _Transpose())}[layout]
    return nn.Sequential(nn.Linear(6, C), norm, nn.ReLU(), nn.Linear(C, 3))


def _standardize(u: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    mean = u.mean(dim=dims, keepdim=True)
    return (u - mean) / torch.sqrt(((u - mean) ** 2).mean(dim=dims, keepdim=True) + EPS)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, 1)


def _group_stats(u: torch.Tensor, groups: int) -> torch.Tensor:
    """u [S, C, P]: standardized over each sample's group of C/groups channels and its P positions."""
    s = u.shape[0]
    return _standardize(u.reshape(s, groups, -1), (2,)).reshape(u.shape)


def _reference(kind: str, layer: nn.Module, u: torch.Tensor, feature_layout: bool) -> torch.Tensor:
    """The normalization written out on u = [S, C, P]: S samples (tokens count as samples for
    channel-last layers), C channels, P positions (1 for features and tokens). Training mode, first step."""
    while hasattr(layer, "inner"):  # ChannelLast / ChannelFirst adapters
        layer = layer.inner
    stat_groups = 2 if feature_layout else 32  # features: groups of 16 channels; signals: 32 groups
    if kind == "none":
        return u
    if kind == "batch":
        return _standardize(u, (0, 2)) * _per_channel(layer.weight) + _per_channel(layer.bias)
    if kind in ("group", "layer"):
        groups = 1 if kind == "layer" else stat_groups
        return _group_stats(u, groups) * _per_channel(layer.weight) + _per_channel(layer.bias)
    if kind == "instance":
        return _standardize(u, (2,)) * _per_channel(layer.weight) + _per_channel(layer.bias)
    if kind in ("bcn", "bcn-micro"):
        if kind == "bcn":
            x1 = _standardize(u, (0, 2))
        else:  # estimates from 0 / 1, moved by rate 0.01 toward this batch, then used to normalize
            mu = 0.01 * u.mean(dim=(0, 2), keepdim=True)
            var = 0.99 + 0.01 * (u ** 2).mean(dim=(0, 2), keepdim=True)
            x1 = (u - mu) / torch.sqrt(var + EPS)
        x1 = x1 * _per_channel(layer.bn_weight) + _per_channel(layer.bn_bias)
        normed = _group_stats(x1, stat_groups)
        s = u.shape[0]
        return (normed.reshape(s, layer.num_groups, -1) * layer.gn_weight + layer.gn_bias).reshape(u.shape)
    if kind == "evonorm-s0":
        s = u.shape[0]
        g = u.reshape(s, stat_groups, -1)
        std = torch.sqrt(((g - g.mean(2, keepdim=True)) ** 2).mean(2, keepdim=True) + EPS).expand_as(g).reshape(u.shape)
        scale = torch.sigmoid(_per_channel(layer.v) * u) / std
        return u * scale * _per_channel(layer.weight) + _per_channel(layer.bias)
    if kind == "evonorm-b0":
        batch_std = torch.sqrt(((u - u.mean((0, 2), keepdim=True)) ** 2).mean((0, 2), keepdim=True) + EPS)
        inst_std = torch.sqrt(((u - u.mean(2, keepdim=True)) ** 2).mean(2, keepdim=True) + EPS)
        den = torch.maximum(batch_std, _per_channel(layer.v) * u + inst_std)
        return u / den * _per_channel(layer.weight) + _per_channel(layer.bias)
    if kind == "power":  # group scaling over each position's C channels, then the running quadratic mean (1)
        scaled = u / torch.sqrt((u ** 2).mean(dim=1, keepdim=True) + EPS)
        return scaled / (1 + EPS) ** 0.5 * _per_channel(layer.weight) + _per_channel(layer.bias)
    if kind == "unified":  # first step: the batch's quadratic mean per channel
        return u / torch.sqrt((u ** 2).mean(dim=(0, 2), keepdim=True) + EPS) * _per_channel(layer.weight) \
            + _per_channel(layer.bias)
    raise AssertionError(kind)


def _randomize(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("0.", "3.")):  # the norm's own parameters, away from their init
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() and "bias" not in name else 0.0))


LAYOUTS = {  # layout: (input shape, u from the hidden activations h, back from u to h's shape, feature layout?)
    "features": ((8, 6), lambda h: h.unsqueeze(-1), lambda u, h: u.squeeze(-1), True),
    "tokens-ln": ((4, 5, 6), lambda h: h.reshape(-1, C, 1), lambda u, h: u.reshape(h.shape), True),
    "tokens-bn": ((4, 5, 6), lambda h: h.reshape(-1, C, 1), lambda u, h: u.reshape(h.shape), True),
    "transposed": ((4, 5, 6), lambda h: h.transpose(1, 2), lambda u, h: u.transpose(1, 2), False),
}
REFUSED = {  # (kind, layout): what the ConfigError says, and whether it comes at conversion or first forward
    ("instance", "features"): ("forward", r"InstanceNorm1d\(32 channels\) at '1' \(BatchNorm1d\(32\)\): got \[N, C\] "
                                          r"features .* one value per channel"),
    ("evonorm-b0", "features"): ("forward", r"EvoNormB0\(32\) at '1' \(BatchNorm1d\(32\)\): got \[N, C\] features .*"
                                            r"instance variance needs a spatial axis"),
    ("instance", "tokens-ln"): ("convert", r"'1' \(LayerNorm\(32\)\) -> 'instance': .*needs a spatial axis"),
    ("instance", "tokens-bn"): ("convert", r"'1' \(ChannelLast\(BatchNorm1d\)\(32\)\) -> 'instance': .*spatial axis"),
    ("evonorm-b0", "tokens-ln"): ("convert", r"'1' \(LayerNorm\(32\)\) -> 'evonorm-b0': .*needs a spatial axis"),
    ("evonorm-b0", "tokens-bn"): ("convert", r"-> 'evonorm-b0': .*needs a spatial axis"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_normalizes_features_and_tokens_over_meaningful_groups_or_is_refused(kind, layout):
    torch.manual_seed(0)
    model = _mlp(layout)
    shape, to_u, from_u, feature_layout = LAYOUTS[layout]
    x = torch.randn(*shape)
    refusal = REFUSED.get((kind, layout))
    if refusal and refusal[0] == "convert":
        with pytest.raises(ConfigError, match=refusal[1]):
            convert_norms(model, kind)
        return
    report = convert_norms(model, kind)
    assert len(report.converted) == 1
    if refusal:
        with pytest.raises(ConfigError, match=refusal[1]):
            model(x)
        return
    _randomize(model)
    norm = model[1][1] if layout == "transposed" else model[1]
    h = model[0](x).detach()
    h_in = h.transpose(1, 2) if layout == "transposed" else h
    got = norm(h_in)
    expected = from_u(_reference(kind, norm, to_u(h), feature_layout), h)
    expected = expected.transpose(1, 2) if layout == "transposed" else expected
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    # the converted model's outputs differ between samples, in training and in evaluation
    for mode in (model.train, model.eval):
        mode()
        out = model(x).detach().reshape(-1, 3)
        assert torch.isfinite(out).all()
        assert out.std(dim=0).min() > 1e-3, f"{kind} on {layout}: constant outputs {out[:3]}"


def test_bcn_and_s0_on_features_use_groups_of_16_channels_and_refuse_single_value_groups():
    bcn_model = _mlp("features")
    convert_norms(bcn_model, "bcn")
    bcn = bcn_model[1]
    assert isinstance(bcn, BatchChannelNorm) and bcn.num_groups == 32 and bcn.feature_groups == 2
    s0_model = _mlp("features")
    convert_norms(s0_model, "evonorm-s0")
    assert isinstance(s0_model[1], EvoNormS0) and s0_model[1].feature_groups == 2
    # the settings still decide when given: 16 groups of 2 channels on [N, 32] features are refused
    model = _mlp("features")
    convert_norms(model, "bcn", num_groups=16)
    with pytest.raises(ConfigError, match=r"BatchChannelNorm\(16 groups, 32 channels\) at '1' \(BatchNorm1d\(32\)\): "
                                          r"on \[N, C\] features each of its 16 groups normalizes 2 values"):
        model(torch.randn(4, 6))
    model = _mlp("features")
    convert_norms(model, "evonorm-s0", num_groups=32)
    with pytest.raises(ConfigError, match=r"EvoNormS0\(32 groups, 32 channels\) at '1'.*1 value per sample.*constant"):
        model(torch.randn(4, 6))
    # a BatchNorm1d of 2 features cannot be group- or layer-normalized per sample
    for kind in ("group", "layer", "bcn", "evonorm-s0"):
        tiny = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        convert_norms(tiny, kind)
        with pytest.raises(ConfigError, match=r"at '1' \(BatchNorm1d\(2\)\).*2 values per sample"):
            tiny(torch.randn(4, 3))
    # on tokens the layout is known when converting, so the refusal comes then
    for kind in ("group", "bcn", "evonorm-s0"):
        with pytest.raises(ConfigError, match=rf"'1' \(LayerNorm\(2\)\) -> '{kind}': .*2 values per sample"):
            convert_norms(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), kind)
