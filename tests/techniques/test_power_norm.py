"""PowerNorm: forward with the running quadratic mean, the approximate backward (Algorithm 2) computed
directly, and its exactness when the running statistics equal the batch's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.norms import make_norm
from trainlab.techniques.normalization.convert import ChannelFirst
from trainlab.techniques.normalization.power_norm import (
    PowerFunction,
    PowerNorm,
    PowerNormTechnique,
    group_scaling,
)

EPS = 1e-5


def _pn(c: int = 6, **kw) -> PowerNorm:
    m = PowerNorm(c, **{"group_num": 0, **kw})
    with torch.no_grad():
        m.weight.copy_(torch.randn(c) + 1)
        m.bias.copy_(torch.randn(c))
    return m


def test_forward_divides_by_the_previous_running_quadratic_mean_and_updates_it():
    torch.manual_seed(0)
    m = _pn(alpha_fwd=0.8)
    phi0 = torch.rand(6) + 0.5
    with torch.no_grad():
        m.running_phi.copy_(phi0)
    x = torch.randn(4, 5, 6) * 3 + 1          # tokens [N, T, C]: statistics over all N*T tokens
    y = m(x)
    expected = x / torch.sqrt(phi0 + EPS) * m.weight + m.bias
    torch.testing.assert_close(y, expected)
    batch_qm = (x.reshape(-1, 6) ** 2).mean(0)  # no mean centring
    torch.testing.assert_close(m.running_phi, 0.8 * phi0 + 0.2 * batch_qm)


def test_warmup_uses_the_batch_quadratic_mean_and_averages_it():
    torch.manual_seed(1)
    m = _pn(warmup_iters=2)
    xs = [torch.randn(8, 6) * s for s in (1.0, 3.0)]
    for x in xs:
        y = m(x)
        qm = (x ** 2).mean(0)
        torch.testing.assert_close(y, x / torch.sqrt(qm + EPS) * m.weight + m.bias)
    torch.testing.assert_close(m.running_phi, ((xs[0] ** 2).mean(0) + (xs[1] ** 2).mean(0)) / 2)
    x3 = torch.randn(8, 6)
    phi = m.running_phi.clone()
    torch.testing.assert_close(m(x3), x3 / torch.sqrt(phi + EPS) * m.weight + m.bias)  # after warm-up


def test_backward_is_the_papers_approximate_formula():
    torch.manual_seed(2)
    alpha = 0.7
    m = _pn(alpha_bkw=alpha).double()
    phi0 = torch.rand(6, dtype=torch.double) + 0.5
    nu0 = torch.randn(6, dtype=torch.double)
    with torch.no_grad():
        m.running_phi.copy_(phi0)
        m.nu.copy_(nu0)
    x = torch.randn(10, 6, dtype=torch.double, requires_grad=True)
    grad_y = torch.randn(10, 6, dtype=torch.double)
    m(x).backward(grad_y)
    z = x.detach() / torch.sqrt(phi0 + EPS)
    g = grad_y * m.weight.detach()
    expected_dx = (g - nu0 * z) / torch.sqrt(phi0 + EPS)
    torch.testing.assert_close(x.grad, expected_dx)
    gamma_t, lambda_t = (z * z).mean(0), (g * z).mean(0)
    torch.testing.assert_close(m.nu, nu0 * (1 - (1 - alpha) * gamma_t) + (1 - alpha) * lambda_t)
    torch.testing.assert_close(m.weight.grad, (grad_y * z).sum(0))
    torch.testing.assert_close(m.bias.grad, grad_y.sum(0))


def test_gradcheck_of_the_parameter_gradients():
    # the gradients of gamma and beta are exact; only the input gradient is approximated
    torch.manual_seed(3)
    x = torch.randn(7, 4, dtype=torch.double)
    w = torch.randn(4, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)
    scale = torch.rand(4, dtype=torch.double) + 0.5
    nu = torch.zeros(4, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda w, b: PowerFunction.apply(x, w, b, scale, nu, EPS, 0.9), (w, b))


@pytest.mark.parametrize("group_num", [0, 2])
def test_backward_equals_the_exact_gradient_when_running_statistics_equal_the_batchs(group_num):
    # during warm-up the forward uses the batch quadratic mean; if nu_{t-1} also equals this batch's
    # Lambda_t = mean(g z), the approximate backward is the exact gradient of batch QM normalization
    torch.manual_seed(4)
    m = PowerNorm(6, warmup_iters=5, group_num=group_num).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(6) + 1)
    x = torch.randn(4, 3, 6, dtype=torch.double, requires_grad=True)
    grad_y = torch.randn(4, 3, 6, dtype=torch.double)

    def exact(inp: torch.Tensor) -> torch.Tensor:
        h = group_scaling(inp, group_num) if group_num else inp
        rows = h.reshape(-1, 6)
        out = rows / torch.sqrt((rows ** 2).mean(0) + EPS) * m.weight.detach() + m.bias.detach()
        return out.reshape(inp.shape)

    x_ref = x.detach().clone().requires_grad_(True)
    exact(x_ref).backward(grad_y)
    with torch.no_grad():  # Lambda_t for this batch
        h = (group_scaling(x, group_num) if group_num else x).reshape(-1, 6)
        z = h / torch.sqrt((h ** 2).mean(0) + EPS)
        m.nu.copy_((grad_y.reshape(-1, 6) * m.weight * z).mean(0))
    m(x).backward(grad_y)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_eval_uses_the_running_quadratic_mean_without_updating():
    torch.manual_seed(5)
    m = _pn()
    m(torch.randn(16, 6) * 2)
    m.eval()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(3, 6)
    torch.testing.assert_close(m(x), x / torch.sqrt(m.running_phi + EPS) * m.weight + m.bias)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_state_dict_round_trip_keeps_forward_and_backward_statistics():
    torch.manual_seed(6)
    a = _pn()
    for _ in range(3):
        x = torch.randn(8, 6, requires_grad=True)
        a(x).pow(2).sum().backward()
    b = PowerNorm(6, group_num=0)
    b.load_state_dict(a.state_dict())
    for name in ("running_phi", "nu", "iters"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert int(b.iters) == 3 and b.nu.abs().sum() > 0
    a.eval(), b.eval()
    x = torch.randn(2, 6)
    torch.testing.assert_close(a(x), b(x))


def test_group_scaling_divides_each_token_by_its_group_rms():
    x = torch.randn(2, 3, 8)
    y = group_scaling(x, 2)
    g = x.reshape(2, 3, 2, 4)
    torch.testing.assert_close(y, (g / torch.sqrt((g ** 2).mean(-1, keepdim=True) + EPS)).reshape(x.shape))


def test_registered_norm_channel_first_wrapper_technique_and_errors():
    assert isinstance(make_norm("power", 8, 0), PowerNorm)
    cf = make_norm("power", 8, 2)
    assert isinstance(cf, ChannelFirst) and cf(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    PowerNormTechnique().prepare(model, None)
    assert isinstance(model[1], PowerNorm)
    with pytest.raises(ConfigError):
        PowerNorm(6, group_num=4)
    with pytest.raises(ConfigError):
        PowerNorm(6)(torch.randn(2, 5))
    with pytest.raises(ConfigError):
        PowerNormTechnique(warmup="long")
