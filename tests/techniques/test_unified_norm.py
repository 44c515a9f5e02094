"""Unified Normalization: forward statistics, smoothed backward, outlier filtration, folding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.norms import make_norm
from trainlab.techniques.normalization.unified_norm import (
    UnifiedNorm,
    UnifiedNormTechnique,
    fold_unified_norm,
    fold_unified_norms,
)

EPS = 1e-5


def _un(c: int = 5, **kw) -> UnifiedNorm:
    m = UnifiedNorm(c, **kw)
    with torch.no_grad():
        m.weight.copy_(torch.randn(c) + 1)
        m.bias.copy_(torch.randn(c))
    return m


def test_first_steps_normalize_by_the_batch_quadratic_mean_and_track_running_var():
    torch.manual_seed(0)
    m = _un(window_size=4, warmup_iters=0, momentum=0.8)
    x = torch.randn(3, 7, 5) * 2 + 1       # tokens: statistics over all 21 tokens, no centring
    y = m(x)
    x2 = (x.reshape(-1, 5) ** 2).mean(0)
    torch.testing.assert_close(y, x / torch.sqrt(x2 + EPS) * m.weight + m.bias)
    torch.testing.assert_close(m.running_var, 0.8 + 0.2 * x2)
    torch.testing.assert_close(m.buffer_x2[1], x2)  # slot t % window, t = 1


def test_after_warmup_forward_uses_the_geometric_mean_of_the_window():
    torch.manual_seed(1)
    m = _un(window_size=3, warmup_iters=2, compensation_start=0)
    xs = [torch.randn(6, 5) * s for s in (0.5, 1.0, 2.0, 4.0)]
    for x in xs[:3]:
        m(x)
    y = m(xs[3])  # t = 4 > window: geometric mean of the x2 of steps 2, 3, 4
    x2s = torch.stack([(x ** 2).mean(0) for x in xs[1:]])
    gm = torch.exp(torch.log(x2s).mean(0))
    torch.testing.assert_close(y, xs[3] / torch.sqrt(gm + EPS) * m.weight + m.bias)


def test_backward_is_the_smoothed_compensated_formula():
    torch.manual_seed(2)
    mom = 0.6
    m = _un(window_size=2, warmup_iters=0, compensation_start=0, momentum=mom).double()
    for _ in range(2):
        x = torch.randn(6, 5, dtype=torch.double, requires_grad=True)
        m(x).backward(torch.randn(6, 5, dtype=torch.double))
    rv0, ema0, gz_prev = m.running_var.clone(), m.ema_gz.clone(), m.buffer_gz[0].clone()
    x2_prev = m.buffer_x2[0].clone()
    m.weight.grad = None
    x = torch.randn(6, 5, dtype=torch.double, requires_grad=True) * 3
    x.retain_grad()
    grad_y = torch.randn(6, 5, dtype=torch.double)
    m(x).backward(grad_y)
    xd = x.detach()
    var = torch.exp(torch.log(torch.stack([x2_prev, (xd ** 2).mean(0)])).mean(0))
    r = (torch.sqrt(var + EPS) / torch.sqrt(rv0 + EPS)).clamp(0.2, 5.0)
    z = xd / torch.sqrt(var + EPS)
    g = grad_y * m.weight.detach() * r
    gz = (g * z).mean(0)
    ema = mom * ema0 + (1 - mom) * (gz_prev + gz) / 2
    torch.testing.assert_close(x.grad, (g - ema * z) / torch.sqrt(var + EPS))
    torch.testing.assert_close(m.ema_gz, ema)
    torch.testing.assert_close(m.weight.grad, (grad_y * r * z).sum(0))
    torch.testing.assert_close(m.running_var, mom * rv0 + (1 - mom) * var)


def test_window_one_is_exact_batch_quadratic_mean_normalization_gradcheck():
    torch.manual_seed(3)
    m = _un(4, window_size=1, warmup_iters=0).double()
    x = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    w = m.weight.detach()
    b = m.bias.detach()
    assert torch.autograd.gradcheck(m, (x,))
    y_ref = x / torch.sqrt((x ** 2).mean(0) + EPS) * w + b
    torch.testing.assert_close(m(x), y_ref)


def test_outlier_filtration_skips_a_spike_and_counts_it():
    torch.manual_seed(4)
    # filtration starts after warm-up (4 steps), once the window holds real statistics
    m = _un(window_size=3, warmup_iters=4, outlier_filtration=True)
    for _ in range(5):
        m(torch.randn(64, 5))                 # steady statistics
    assert int(m.skip_counter) == 0
    rv = m.running_var.clone()
    spike = torch.randn(64, 5) * 30
    y = m(spike)                               # t = 6, slot 0
    assert int(m.skip_counter) == 1
    torch.testing.assert_close(m.buffer_x2[6 % 3], rv)   # the spike's slot holds running_var instead
    x2 = (spike ** 2).mean(0)                            # and the forward used the batch itself
    torch.testing.assert_close(y, spike / torch.sqrt(x2 + EPS) * m.weight + m.bias)


def test_eval_is_a_per_channel_affine_map_and_does_not_update():
    torch.manual_seed(5)
    m = _un(window_size=2, warmup_iters=0)
    for _ in range(3):
        m(torch.randn(8, 5) * 2)
    m.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(4, 5)
    torch.testing.assert_close(m(x), x / torch.sqrt(m.running_var + EPS) * m.weight + m.bias)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def _trained_un(c: int) -> UnifiedNorm:
    m = _un(c, window_size=2, warmup_iters=0)
    for _ in range(5):
        m(torch.randn(16, c) * 3)
    return m.eval()


def test_folding_into_the_preceding_or_following_linear_equals_the_unfolded_model():
    torch.manual_seed(6)
    lin_in, lin_out = nn.Linear(7, 5), nn.Linear(5, 3)
    un = _trained_un(5)
    x = torch.randn(4, 6, 7)
    before = fold_unified_norm(un, lin_in, "preceding")
    torch.testing.assert_close(before(x), un(lin_in(x)), atol=1e-5, rtol=1e-5)
    h = torch.randn(4, 6, 5)
    after = fold_unified_norm(un, lin_out, "following")
    torch.testing.assert_close(after(h), lin_out(un(h)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError):
        fold_unified_norm(un, lin_out, "preceding")


def test_fold_unified_norms_in_a_sequential_model():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 5), _trained_un(5), nn.GELU(), nn.Linear(5, 2)).eval()
    x = torch.randn(3, 6)
    expected = model(x)
    assert fold_unified_norms(model) == ["1"]
    assert isinstance(model[1], nn.Identity)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip():
    torch.manual_seed(8)
    a = _un(window_size=3, warmup_iters=1, compensation_start=1)
    for _ in range(5):
        x = torch.randn(8, 5, requires_grad=True)
        a(x).pow(2).sum().backward()
    b = UnifiedNorm(5, window_size=3, warmup_iters=1, compensation_start=1)
    b.load_state_dict(a.state_dict())
    for name, buf in a.named_buffers():
        assert torch.equal(buf, getattr(b, name)), name
    x = torch.randn(8, 5)
    torch.testing.assert_close(a(x), b(x))  # same training step from the same state


def test_registered_norm_technique_and_errors():
    assert isinstance(make_norm("unified", 8, 0), UnifiedNorm)
    assert make_norm("unified", 8, 2)(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    UnifiedNormTechnique(window_size=2).prepare(model, None)
    assert isinstance(model[1], UnifiedNorm) and model[1].fp_window == 2
    with pytest.raises(ConfigError):
        UnifiedNorm(4, window_size=0)
    with pytest.raises(ConfigError):
        UnifiedNorm(4)(torch.randn(2, 3))
    with pytest.raises(ConfigError):
        UnifiedNormTechnique(warmup=-1)


class _OfficialUN:
    """The authors' UN1d / UN2dFunction (hikvision-research/Unified-Normalization, the layer's
    unified_normalization.py), transcribed for tokens [M, C] without a padding mask: iteration count
    incremented before the forward; recorded variance of sqrt(buffer_x2) taken before the buffer update;
    forward slot and backward slot iters % window; var = x2 up to iters <= window, before warm-up or
    on a skip, else the window's geometric mean; r = 1 up to max(1000, warmup) or on a skip, else
    clamp(sqrt(var + eps) / sqrt(running_var + eps), 1/5, 5); the backward's gz over g = gamma * r * dy,
    its window mean feeding ema_gz, centre mean_gz on a skip and ema_gz otherwise. `comp_start` is the
    official constant 1000, a parameter here so that a short test reaches the compensation branch."""

    def __init__(self, c, window, warmup, filtration, comp_start, weight, bias, eps=EPS, momentum=0.9):
        self.w, self.b, self.window, self.warmup, self.filtration = weight, bias, window, warmup, filtration
        self.comp_start, self.eps, self.m = comp_start, eps, momentum
        self.running_var, self.ema_gz = torch.ones(c, dtype=torch.double), torch.zeros(c, dtype=torch.double)
        self.buffer_x2 = torch.zeros(window, c, dtype=torch.double)
        self.buffer_gz = torch.zeros(window, c, dtype=torch.double)
        self.iters, self.skips = 0, 0

    def step(self, x, dy):
        """One training step: returns (y, dL/dx, dL/dgamma, dL/dbeta)."""
        self.iters += 1
        it, eps, m = self.iters, self.eps, self.m
        skip = self.window <= 1
        x2 = (x * x).mean(0)
        recorded = torch.var(torch.sqrt(self.buffer_x2))
        self.buffer_x2[it % self.window] = x2
        if it >= self.warmup and self.filtration:
            am = self.buffer_x2.mean(0)
            gm = torch.exp(torch.log(self.buffer_x2).mean(0))
            if ((am - gm) > recorded * self.window).sum() > 0:
                self.buffer_x2[it % self.window] = self.running_var
                skip = True
                self.skips += 1
        var = x2 if (it <= self.window or it < self.warmup or skip) else torch.exp(torch.log(self.buffer_x2).mean(0))
        r = (var + eps).sqrt() / (self.running_var + eps).sqrt()
        r = torch.ones_like(r) if (it <= max(self.comp_start, self.warmup) or skip) else r.clamp(1 / 5, 5)
        z = x / (var + eps).sqrt()
        self.running_var = m * self.running_var + (1 - m) * var
        y = self.w * z + self.b
        g = dy * self.w * r
        gz = (g * z).mean(0)
        self.buffer_gz[it % self.window] = self.ema_gz if skip else gz
        mean_gz = gz if (it <= self.window or it < self.warmup or skip) else self.buffer_gz.mean(0)
        self.ema_gz = self.ema_gz * m + (1 - m) * mean_gz
        grad_x = (g - (mean_gz if skip else self.ema_gz) * z) / torch.sqrt(var + eps)
        return y, grad_x, (dy * r * z).sum(0), dy.sum(0)


@pytest.mark.parametrize("filtration", [False, True])
def test_steps_match_a_transcription_of_the_authors_code(filtration):
    torch.manual_seed(7)
    c, window, warmup, comp = 4, 3, 5, 8
    m = _un(c, window_size=window, warmup_iters=warmup, outlier_filtration=filtration,
            compensation_start=comp).double()
    ref = _OfficialUN(c, window, warmup, filtration, comp, m.weight.detach().clone(), m.bias.detach().clone())
    for step in range(14):
        scale = 40.0 if step == 10 else 1.0 + 0.2 * step     # a spike at iteration 11
        x = (torch.randn(2, 9, c, dtype=torch.double) * scale + 0.3).requires_grad_(True)
        dy = torch.randn(2, 9, c, dtype=torch.double)
        m.weight.grad = m.bias.grad = None
        y = m(x)
        y.backward(dy)
        y_ref, gx_ref, gw_ref, gb_ref = ref.step(x.detach().reshape(-1, c), dy.reshape(-1, c))
        torch.testing.assert_close(y.detach().reshape(-1, c), y_ref)
        torch.testing.assert_close(x.grad.reshape(-1, c), gx_ref)
        torch.testing.assert_close(m.weight.grad, gw_ref)
        torch.testing.assert_close(m.bias.grad, gb_ref)
        torch.testing.assert_close(m.running_var, ref.running_var)
        torch.testing.assert_close(m.ema_gz, ref.ema_gz)
    assert int(m.skip_counter) == ref.skips
    assert ref.skips >= (1 if filtration else 0)
