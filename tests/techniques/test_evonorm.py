"""EvoNorm-B0 and EvoNorm-S0 against the paper's formulas; running variance; conversion."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.norms import make_norm
from trainlab.techniques.normalization.evonorm import EvoNorm, EvoNormB0, EvoNormS0

EPS = 1e-5


def _params(m: nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))


def _b0_reference(x: torch.Tensor, batch_var: torch.Tensor, v, w, b) -> torch.Tensor:
    # y = x / max(sqrt(s2_bwh + eps), v1 x + sqrt(s2_wh + eps)) * gamma + beta, written element by element
    n, c = x.shape[:2]
    y = torch.empty_like(x)
    for i in range(n):
        for j in range(c):
            plane = x[i, j]
            inst_var = ((plane - plane.mean()) ** 2).mean()
            den = torch.maximum(torch.sqrt(batch_var[j] + EPS), v[j] * plane + torch.sqrt(inst_var + EPS))
            y[i, j] = plane / den * w[j] + b[j]
    return y


def test_b0_training_output_and_running_variance_match_the_formula():
    torch.manual_seed(0)
    m = EvoNormB0(3, momentum=0.2)
    _params(m)
    x = torch.randn(4, 3, 5, 5) * 2 + 0.5
    y = m(x)
    batch_var = ((x - x.mean((0, 2, 3), keepdim=True)) ** 2).mean((0, 2, 3))
    torch.testing.assert_close(y, _b0_reference(x, batch_var, m.v, m.weight, m.bias), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.running_var, 0.8 * torch.ones(3) + 0.2 * batch_var)


def test_b0_eval_uses_the_running_variance():
    torch.manual_seed(1)
    m = EvoNormB0(3)
    _params(m)
    with torch.no_grad():
        m.running_var.copy_(torch.tensor([0.5, 2.0, 4.0]))
    m.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(m(x), _b0_reference(x, m.running_var, m.v, m.weight, m.bias), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.running_var, torch.tensor([0.5, 2.0, 4.0]))


def test_s0_matches_the_formula_and_is_the_same_in_train_and_eval():
    torch.manual_seed(2)
    m = EvoNormS0(8, num_groups=4)
    _params(m)
    x = torch.randn(3, 8, 2, 3) * 3
    n = x.shape[0]
    g = x.reshape(n, 4, -1)
    group_var = ((g - g.mean(2, keepdim=True)) ** 2).mean(2, keepdim=True)
    std = torch.sqrt(group_var + EPS).expand_as(g).reshape(x.shape)
    v = [1, -1, 1, 1]
    expected = x * torch.sigmoid(m.v.view(v) * x) / std * m.weight.view(v) + m.bias.view(v)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-4)
    m.eval()
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-4)
    assert len(list(m.buffers())) == 0  # batch-independent: no running statistics


@pytest.mark.parametrize("cls,shape", [(EvoNormS0, (3, 4, 5)), (EvoNormB0, (3, 4, 2, 3))])
def test_gradcheck(cls, shape):
    torch.manual_seed(3)
    m = cls(4).double()
    _params(m)
    m.eval()  # B0: fixed running variance, so the function does not change between calls
    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_state_dict_round_trip():
    torch.manual_seed(4)
    a, b = EvoNormB0(6), EvoNormB0(6)
    _params(a)
    a(torch.randn(4, 6, 3, 3))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(b.running_var, a.running_var)


def test_registered_norms_shapes_and_errors():
    assert isinstance(make_norm("evonorm-s0", 64, 2), EvoNormS0) and make_norm("evonorm-s0", 64, 2).num_groups == 32
    tokens = make_norm("evonorm-s0", 64, 0)      # features: groups of >= 16 channels
    assert tokens.inner.num_groups == 4 and make_norm("evonorm-s0", 16, 0).inner.num_groups == 1
    assert tokens(torch.randn(2, 5, 64)).shape == (2, 5, 64)
    with pytest.raises(ConfigError, match="spatial"):
        make_norm("evonorm-b0", 16, 0)
    with pytest.raises(ConfigError):
        EvoNormB0(4)(torch.randn(2, 4))
    with pytest.raises(ConfigError):
        EvoNorm(variant="s1")


def test_technique_replaces_bn_relu_pairs_by_one_layer():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.ReLU())
    EvoNorm(variant="s0").prepare(model, None)
    assert [type(m).__name__ for m in model] == ["Conv2d", "EvoNormS0", "Identity", "Conv2d", "EvoNormS0", "Identity"]
    model(torch.randn(2, 1, 7, 7)).sum().backward()


def _official_evonorm(x, layer, v, gamma, beta, moving_variance, training, decay=0.9, num_groups=32):
    # The authors' EvoNorm (tensorflow/tpu, models/official/resnet/resnet_model.py: evonorm, _batch_std,
    # _instance_std, _group_std), transcribed to torch for channels_first input: tf.nn.moments gives the
    # biased variance; EPSILON = 1e-5; the moving variance starts at 1 and is updated by
    # assign_sub((moving - var) * (1 - decay)), decay MOVING_AVERAGE_DECAY = 0.9; the group count counts
    # down from 32 to the first divisor of C. Returns (output, new moving variance).
    shape = (1, -1, 1, 1)
    if layer == "s0":
        c = x.shape[1]
        while num_groups > 1 and c % num_groups:
            num_groups -= 1
        g = x.reshape(x.shape[0], num_groups, c // num_groups, *x.shape[2:])
        std = torch.sqrt(g.var(dim=(2, 3, 4), unbiased=False, keepdim=True) + EPS).expand_as(g).reshape(x.shape)
        out = x * torch.sigmoid(v.view(shape) * x) / std
    else:
        if training:
            variance = x.var(dim=(0, 2, 3), unbiased=False)
            moving_variance = moving_variance - (moving_variance - variance) * (1 - decay)
        else:
            variance = moving_variance
        left = torch.sqrt(variance + EPS).view(shape)
        right = v.view(shape) * x + torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + EPS)
        out = x / torch.maximum(left, right)
    return out * gamma.view(shape) + beta.view(shape), moving_variance


def test_b0_and_s0_match_the_authors_tensorflow_code():
    torch.manual_seed(5)
    # S0 with 48 channels: 32 does not divide 48, so the authors' code counts down to 24 groups
    s0 = EvoNormS0(48)
    _params(s0)
    x = torch.randn(3, 48, 4, 5) * 2 + 0.3
    expected, _ = _official_evonorm(x, "s0", s0.v, s0.weight, s0.bias, None, True)
    assert s0.num_groups == 24
    torch.testing.assert_close(s0(x), expected, atol=1e-5, rtol=1e-4)
    # B0: two training steps (moving variance from its initial 1), then evaluation with the moving variance
    b0 = EvoNormB0(6)
    _params(b0)
    moving = torch.ones(6)
    for step in range(2):
        x = torch.randn(4, 6, 3, 5) * (1 + step) - 0.5
        expected, moving = _official_evonorm(x, "b0", b0.v, b0.weight, b0.bias, moving, True)
        torch.testing.assert_close(b0(x), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b0.running_var, moving)
    b0.eval()
    x = torch.randn(2, 6, 3, 3)
    expected, _ = _official_evonorm(x, "b0", b0.v, b0.weight, b0.bias, moving, False)
    torch.testing.assert_close(b0(x), expected, atol=1e-5, rtol=1e-4)


def test_s0_on_features_divides_by_the_std_of_16_channel_groups_not_of_single_values():
    torch.manual_seed(6)
    m = EvoNormS0(32)  # as in place of an MLP's BatchNorm1d(32)
    assert (m.num_groups, m.feature_groups) == (32, 2)
    _params(m)
    x = torch.randn(5, 32) * 2
    g = x.reshape(5, 2, 16)
    std = torch.sqrt(g.var(2, unbiased=False, keepdim=True) + EPS).expand_as(g).reshape(5, 32)
    expected = x * torch.sigmoid(m.v * x) / std * m.weight + m.bias
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-4)
    assert m(x).abs().max() < 50  # a one-value group would divide by sqrt(eps): outputs ~300x the input
    with pytest.raises(ConfigError, match=r"EvoNormS0\(32 groups, 32 channels\).*1 value per sample"):
        EvoNormS0(32, num_groups=32)(x)
    xd = torch.randn(4, 32, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(m.double(), (xd,))
