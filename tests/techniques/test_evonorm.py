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
    tokens = make_norm("evonorm-s0", 16, 0)      # features: groups of >= 2 channels
    assert tokens.inner.num_groups == 8
    assert tokens(torch.randn(2, 5, 16)).shape == (2, 5, 16)
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
