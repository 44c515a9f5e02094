import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks import norms
from trainlab.tasks.norms import feature_group_count, group_count, make_norm, norm_names, register_norm

BUILTINS = ["batch", "group", "layer", "instance", "none"]


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made in a test vanish afterwards."""
    monkeypatch.setattr(norms, "_NORMS", dict(norms._NORMS))


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("shape,dims", [((6, 16), 0), ((6, 5, 16), 0), ((6, 16, 9), 1), ((6, 16, 5, 5), 2)])
def test_builtin_keeps_shape(name, shape, dims):
    if name == "instance" and dims == 0:
        with pytest.raises(ConfigError, match="spatial axis"):
            make_norm(name, 16, dims)
        return
    m = make_norm(name, 16, dims)
    x = torch.randn(*shape)
    for mode in (m.train, m.eval):
        mode()
        y = m(x)
        assert y.shape == x.shape
    assert _has_params(m) == (name != "none")


def _standardize(x: torch.Tensor, dims: tuple[int, ...], eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def test_batch_on_tokens_normalizes_each_channel_over_samples_and_tokens():
    x = torch.randn(4, 7, 6) * 3 + 2
    m = make_norm("batch", 6, 0).train()
    torch.testing.assert_close(m(x), _standardize(x, (0, 1)))
    # running statistics follow PyTorch's rule: momentum 0.1, unbiased variance
    bn = m.inner
    torch.testing.assert_close(bn.running_mean, 0.1 * x.reshape(-1, 6).mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * x.reshape(-1, 6).var(0, unbiased=True))


def test_batch_on_maps_is_plain_batchnorm():
    assert isinstance(make_norm("batch", 8, 1), nn.BatchNorm1d)
    assert isinstance(make_norm("batch", 8, 2), nn.BatchNorm2d)
    x = torch.randn(5, 8, 3, 4)
    torch.testing.assert_close(make_norm("batch", 8, 2).train()(x), _standardize(x, (0, 2, 3)))


def test_layer_on_tokens_normalizes_each_token_over_channels():
    x = torch.randn(3, 5, 10) * 4 - 1
    torch.testing.assert_close(make_norm("layer", 10, 0)(x), _standardize(x, (2,)))


@pytest.mark.parametrize("dims,shape", [(1, (3, 6, 11)), (2, (3, 6, 4, 5))])
def test_layer_on_maps_normalizes_each_sample_over_all_its_units(dims, shape):
    x = torch.randn(*shape) * 2 + 3
    m = make_norm("layer", 6, dims)
    assert isinstance(m, nn.GroupNorm) and m.num_groups == 1
    torch.testing.assert_close(m(x), _standardize(x, tuple(range(1, len(shape)))), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels,groups", [(64, 32), (128, 32), (48, 24), (96, 32), (100, 25), (30, 30),
                                             (16, 16), (7, 7), (1, 1), (34, 17)])
def test_group_count_is_largest_divisor_at_most_32(channels, groups):
    assert group_count(channels) == groups
    m = make_norm("group", channels, 2)
    assert isinstance(m, nn.GroupNorm) and m.num_groups == groups


def test_group_on_images_matches_hand_computation():
    x = torch.randn(2, 64, 3, 3)
    y = make_norm("group", 64, 2)(x)  # 32 groups of 2 channels
    expected = _standardize(x.reshape(2, 32, 2 * 9), (2,)).reshape_as(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


def test_group_on_tokens_normalizes_each_token_by_groups_of_16_channels():
    x = torch.randn(2, 3, 64) * 5
    y = make_norm("group", 64, 0)(x)  # no spatial axis: 4 groups of 16 channels per token
    expected = _standardize(x.reshape(2, 3, 4, 16), (3,)).reshape_as(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    assert y.std(dim=(0, 1)).min() > 0.1  # not constant across tokens


@pytest.mark.parametrize("channels,groups", [(32, 2), (64, 4), (128, 8), (512, 32), (1024, 32), (48, 3),
                                             (100, 5), (31, 1), (16, 1), (5, 1)])
def test_feature_group_count_keeps_at_least_16_channels_per_group(channels, groups):
    assert feature_group_count(channels) == groups
    assert channels // groups >= min(channels, 16)


def test_group_norm_layer_on_features_uses_feature_groups_and_on_maps_the_spatial_count():
    torch.manual_seed(0)
    m = norms.for_features_or_signals(make_norm("group", 32, 1))  # in place of a BatchNorm1d(32): [N, C] or [N, C, L]
    assert isinstance(m, norms.ChannelGroupNorm) and m.num_groups == 32 and m.feature_groups == 2
    with torch.no_grad():
        m.weight.copy_(torch.randn(32))
        m.bias.copy_(torch.randn(32))
    feats = torch.randn(6, 32) * 3 + 1
    expected = _standardize(feats.reshape(6, 2, 16), (2,)).reshape(6, 32) * m.weight + m.bias
    torch.testing.assert_close(m(feats), expected, atol=1e-5, rtol=1e-4)
    signal = torch.randn(6, 32, 5)  # one channel per group, over its 5 positions
    expected = _standardize(signal, (2,)) * m.weight.view(1, -1, 1) + m.bias.view(1, -1, 1)
    torch.testing.assert_close(m(signal), expected, atol=1e-5, rtol=1e-4)


def test_group_of_fewer_than_three_values_is_refused_naming_the_layer():
    m = norms.ChannelGroupNorm(16, 32, feature_groups=16)
    with pytest.raises(ConfigError, match=r"GroupNorm\(16 groups, 32 channels\).*2 values per sample.*\+-1"):
        m(torch.randn(4, 32))
    bad = norms.ChannelGroupNorm(32, 32, feature_groups=32)
    bad.converted_from = "'net.1' (BatchNorm1d(32))"
    with pytest.raises(ConfigError, match=r"at 'net.1' \(BatchNorm1d\(32\)\).*1 value per sample.*a constant"):
        bad(torch.randn(4, 32))
    with pytest.raises(ConfigError, match="use 'batch'"):
        norms.for_features_or_signals(make_norm("layer", 2, 1))(torch.randn(4, 2))  # LayerNorm over 2 features: +-1
    with pytest.raises(ConfigError, match=r"norm 'group' for 2 channels: on features/tokens .* 2 values per sample"):
        make_norm("group", 2, 0)
    with pytest.raises(ConfigError, match="feature_groups"):
        norms.ChannelGroupNorm(4, 32, feature_groups=5)


def test_instance_on_features_is_refused_not_read_as_one_unbatched_signal():
    m = norms.for_features_or_signals(make_norm("instance", 8, 1))  # in place of a BatchNorm1d(8) that sees [N, C]
    with pytest.raises(ConfigError, match=r"InstanceNorm1d\(8 channels\).*\[N, C\] features.*one value per channel"):
        m(torch.randn(8, 8))
    assert m(torch.randn(2, 8, 5)).shape == (2, 8, 5)


def test_instance_normalizes_each_channel_of_each_sample_in_train_and_eval():
    x = torch.randn(3, 4, 5, 6) * 2 + 1
    m = make_norm("instance", 4, 2)
    expected = _standardize(x, (2, 3))
    torch.testing.assert_close(m.train()(x), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.eval()(x), expected, atol=1e-5, rtol=1e-4)


def test_none_is_identity_and_none_name_means_none():
    assert isinstance(make_norm("none", 3, 2), nn.Identity)
    assert isinstance(make_norm(None, 3, 0), nn.Identity)


def test_unknown_norm_lists_known_names():
    with pytest.raises(ConfigError) as err:
        make_norm("batchnorm", 8, 2)
    for name in BUILTINS:
        assert name in str(err.value)


@pytest.mark.parametrize("channels,dims", [(0, 2), (-3, 1), (4.0, 1), (8, 3), (8, -1)])
def test_bad_channels_or_dims_are_config_errors(channels, dims):
    with pytest.raises(ConfigError):
        make_norm("batch", channels, dims)


def test_register_norm_adds_a_factory(private_registry):
    seen = []

    def scaled(num_channels: int, dims: int) -> nn.Module:
        seen.append((num_channels, dims))
        return nn.Identity()

    register_norm("test-scaled", scaled)
    assert "test-scaled" in norm_names()
    assert isinstance(make_norm("test-scaled", 12, 1), nn.Identity)
    assert seen == [(12, 1)]
    register_norm("test-scaled", scaled)  # same function again (a re-import): accepted


def test_register_norm_refuses_a_different_factory_unless_overwrite(private_registry):
    register_norm("test-x", lambda c, d: nn.Identity())
    with pytest.raises(ConfigError, match="already registered"):
        register_norm("test-x", lambda c, d: nn.BatchNorm1d(c))
    register_norm("test-x", lambda c, d: nn.BatchNorm1d(c), overwrite=True)
    assert isinstance(make_norm("test-x", 3, 0), nn.BatchNorm1d)
    with pytest.raises(ConfigError):
        register_norm("", lambda c, d: nn.Identity())
    with pytest.raises(ConfigError):
        register_norm("test-y", "not callable")  # type: ignore[arg-type]


def test_channel_last_batchnorm_has_the_statistics_of_plain_batchnorm_on_features():
    x = torch.randn(16, 5)
    wrapped, plain = make_norm("batch", 5, 0).train(), nn.BatchNorm1d(5).train()
    torch.testing.assert_close(wrapped(x), plain(x))
    torch.testing.assert_close(wrapped.inner.running_var, plain.running_var)
    assert F.mse_loss(wrapped.eval()(x), plain.eval()(x)) == 0
