"""Gradient coherence (Chatterjee & Zielinski 2020, arXiv:2008.01217) against its definition."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.diagnostics.coherence import (
    GradientCoherenceProbe, coherence_from_gradients, gradient_coherence, per_example_gradients)
from trainlab.errors import ConfigError


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - target).pow(2).sum() / len(out)


def _loop_gradients(model: nn.Module, x, y, loss_fn) -> dict[str, torch.Tensor]:
    """Reference: one backward pass per example."""
    rows: dict[str, list[torch.Tensor]] = {n: [] for n, p in model.named_parameters() if p.requires_grad}
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                rows[n].append(p.grad.detach().clone())
    return {n: torch.stack(v) for n, v in rows.items()}


def _net(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def _data(m: int = 10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(m, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (m,), generator=g)


@pytest.mark.parametrize("bn", [False, True])
def test_per_example_gradients_equal_a_loop_of_single_backward_passes(bn: bool) -> None:
    model, (x, y) = _net(bn), _data(10)
    if bn:  # running statistics that are not the defaults, so eval mode is really exercised
        model.train()
        model(x * 3 + 1)
    model.eval()
    model[0].bias.requires_grad_(False)  # frozen parameters are left out
    got = per_example_gradients(model, x, y, chunk_size=3)  # chunks of 3, 3, 3, 1
    want = _loop_gradients(model, x, y, F.cross_entropy)
    assert set(got) == set(want) and "0.bias" not in got
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-12)


def test_streamed_coherence_equals_the_definition_on_explicit_gradients() -> None:
    model, (x, y) = _net(), _data(13)
    grads = _loop_gradients(model, x, y, F.cross_entropy)
    G = torch.cat([v.reshape(13, -1) for v in grads.values()], dim=1)
    c = gradient_coherence(model, x, y, chunk_size=4, by_class=True)
    mean = G.mean(0)
    alpha = float(mean @ mean / (G * G).sum(1).mean())
    U = G / G.norm(dim=1, keepdim=True)
    cos = U @ U.T
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (13 * 12))
    assert c.alpha == pytest.approx(alpha, rel=1e-10)
    assert c.m_coherence == pytest.approx(13 * alpha, rel=1e-10) and c.alpha_perp == pytest.approx(1 / 13)
    assert c.mean_cosine == pytest.approx(mean_cos, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(c.norms, G.norm(dim=1))
    assert c.mean_gradient_norm == pytest.approx(float(mean.norm()), rel=1e-10)
    # within-class coherence: the same measure on each class's rows
    for k, ck in c.per_class.items():
        ref = coherence_from_gradients(G[y == k])
        assert ck.m == int((y == k).sum()) and ck.alpha == pytest.approx(ref.alpha, rel=1e-10)
    assert sum(ck.m for ck in c.per_class.values()) == 13


def _linear_regression(w: torch.Tensor) -> nn.Module:
    """f(x) = w . x (no bias): with loss 0.5 (f(x) - t)^2 the gradient of example i is (w.x_i - t_i) x_i."""
    model = nn.Linear(len(w), 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
    return model


def test_identical_examples_give_the_maximal_coherence() -> None:
    model = _linear_regression(torch.tensor([0.3, -0.2, 0.5, 1.0], dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64).repeat(7, 1)
    t = torch.full((7, 1), 2.0, dtype=torch.float64)
    c = gradient_coherence(model, x, t, loss_fn=_mse, chunk_size=2)
    assert c.alpha == pytest.approx(1.0) and c.m_coherence == pytest.approx(7.0)
    assert c.mean_cosine == pytest.approx(1.0)


def test_orthogonal_gradients_give_alpha_perp() -> None:
    # inputs on distinct coordinate axes: gradients (w.x_i - t_i) x_i are pairwise orthogonal, with
    # different lengths (residuals 1.5, -2, 0.5, 3, -1) and signs
    m = 5
    w = torch.zeros(m, dtype=torch.float64)
    x = torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0], dtype=torch.float64))
    t = -torch.tensor([1.5, -2.0, 0.5, 3.0, -1.0], dtype=torch.float64)[:, None]
    model = _linear_regression(w)
    c = gradient_coherence(model, x, t, loss_fn=_mse)
    grads = per_example_gradients(model, x, t, loss_fn=_mse)["weight"][:, 0]
    torch.testing.assert_close(grads, torch.diag(-t[:, 0] * x.diagonal()))  # the closed form
    assert c.alpha == pytest.approx(1 / m) and c.alpha == pytest.approx(c.alpha_perp)
    assert c.m_coherence == pytest.approx(1.0)
    assert c.mean_cosine == pytest.approx(0.0, abs=1e-15)


def test_opposite_gradients_give_zero_coherence() -> None:
    model = _linear_regression(torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)  # residuals -1 and +1: g_1 = -g_2
    c = gradient_coherence(model, x, t, loss_fn=_mse)
    assert c.alpha == pytest.approx(0.0, abs=1e-15) and c.mean_cosine == pytest.approx(-1.0)


def test_scaling_the_loss_leaves_coherence_unchanged() -> None:
    model, (x, y) = _net(), _data(12)
    base = gradient_coherence(model, x, y)
    scaled = gradient_coherence(model, x, y, loss_fn=lambda o, t: 37.0 * F.cross_entropy(o, t))
    assert scaled.alpha == pytest.approx(base.alpha, rel=1e-10)
    assert scaled.mean_cosine == pytest.approx(base.mean_cosine, rel=1e-9)
    torch.testing.assert_close(scaled.norms, 37.0 * base.norms)


def test_refusals() -> None:
    model, (x, y) = _net(bn=True), _data(4)
    model.train()
    with pytest.raises(ConfigError, match="eval mode"):
        gradient_coherence(model, x, y)
    model.eval()
    with pytest.raises(ConfigError, match="targets"):
        gradient_coherence(model, x, y[:3])
    with pytest.raises(ConfigError, match="chunk_size"):
        gradient_coherence(model, x, y, chunk_size=0)
    zero = _linear_regression(torch.zeros(2, dtype=torch.float64))
    c = gradient_coherence(zero, torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64),
                           loss_fn=_mse)
    assert math.isnan(c.alpha) and math.isnan(c.mean_cosine)  # no gradient: coherence undefined
    for bad in ({"samples": 1}, {"until": -1}, {"at_start": 1}, {"every": 0}):
        with pytest.raises(ConfigError):
            GradientCoherenceProbe(**bad)


def test_probe_records_start_and_early_epochs_in_a_run() -> None:
    from trainlab.training.trainer import run_training

    r = run_training("digits-mlp", [("gradient-coherence", {"samples": 64, "until": 2})], seed=0)
    rows = r.epochs
    assert [("gradient_coherence" in row) for row in rows] == [True, True] + [False] * (len(rows) - 2)
    assert "gradient_coherence_init" in rows[0] and not any("gradient_coherence_init" in row for row in rows[1:])
    for row in rows[:2]:
        assert 0 <= row["gradient_alpha"] <= 1
        assert row["gradient_coherence"] == pytest.approx(64 * row["gradient_alpha"])
    # the start value is the coherence of the freshly initialized model on the same 64 examples
    from trainlab.training.trainer import setup_run

    run = setup_run("digits-mlp", [], seed=0)
    x, y = run.data.train_x[:64], run.data.train_y[:64]
    ref = gradient_coherence(run.model.eval(), x, y, run.state.loss_fn)
    assert rows[0]["gradient_coherence_init"] == pytest.approx(ref.m_coherence, rel=1e-5)
