"""diffGrad against the update of the authors' fixed code (shivram1987/diffGrad, diffGrad_v2.py),
written out as a formula, on all three paths; and the friction probe the claims' control uses."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.optimizers.diffgrad import DiffGrad, DiffGradTechnique
from trainlab.tasks.registry import get_task
from trainlab.training.technique import TrainState


def _official_v2(p: torch.Tensor, grads: list[torch.Tensor], lr: float, betas: tuple[float, float], eps: float,
                 wd: float) -> torch.Tensor:
    """diffGrad_v2.py's step, per its source: g = grad + wd * p (in place, so the stored previous
    gradient includes the decay); Adam's moments of g; dfc = 1 / (1 + exp(-|prev - g|)), prev = 0
    at the first step; p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * (m * dfc) / (sqrt(v) + eps)."""
    b1, b2 = betas
    p = p.double().clone()
    m, v, prev = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
    for t, grad in enumerate(grads, start=1):
        g = grad.double() + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        dfc = 1.0 / (1.0 + torch.exp(-(prev - g).abs()))
        prev = g.clone()
        p = p - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * (m * dfc) / (v.sqrt() + eps)
    return p


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True), dict(fused=True)])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_diffgrad_matches_the_official_v2_update(path: dict, wd: float, monkeypatch) -> None:
    monkeypatch.setenv("TRAINLAB_OPTIM_COMPILE", "0")
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(7, 5, generator=gen)
    # gradients of mixed scale, so |prev - g| spans the sigmoid's range and the friction is not ~0.5
    grads = [torch.randn(7, 5, generator=gen) * s for s in (0.01, 2.0, 0.5, 3.0, 0.001, 1.0)]
    p = nn.Parameter(p0.clone())
    opt = DiffGrad([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, **path)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _official_v2(p0, grads, 0.01, (0.9, 0.99), 1e-8, wd)
    torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def _probe_run(grads: list[list[float]]) -> tuple[DiffGradTechnique, TrainState, nn.Parameter]:
    tech = DiffGradTechnique(lr=0.1, probe_every=1)
    p = nn.Parameter(torch.tensor([0.5, 0.5]))
    task = get_task("blobs-mlp").with_overrides({"optimizer": "adam", "weight_decay": 0.0})
    opt = tech.make_optimizer([p], task)
    state = TrainState()
    for step, g in enumerate(grads):
        state.step = step
        p.grad = torch.tensor(g)
        tech.after_backward(None, state)
        opt.step()
        tech.after_step(None, opt, state)
    tech.on_epoch_end(None, state)
    return tech, state, p


def test_friction_probe_hand_case() -> None:
    # step 1: prev = 0, xi = sigmoid(|g|) = [sigmoid(1), sigmoid(2)]; after the step u = m / (sqrt(v) + eps)
    # = (1 - b1) g / (sqrt(1 - b2) |g|) has the same size in both coordinates, so the L1-weighted ratio is
    # the plain mean. Step 2, same gradient: xi = sigmoid(0) = 0.5 everywhere.
    _, state, _ = _probe_run([[1.0, -2.0], [1.0, -2.0]])
    s1, s2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))
    assert state.epoch_metrics["diffgrad_friction"] == pytest.approx(((s1 + s2) / 2 + 0.5) / 2, rel=1e-6)
    assert state.epoch_metrics["diffgrad_step_ratio"] == pytest.approx(((s1 + s2) / 2 + 0.5) / 2, rel=1e-5)


def test_friction_probe_weights_by_step_size() -> None:
    # step 2 with g2 = [1, 0]: xi = [sigmoid(0), sigmoid(2)] = [0.5, 0.881]; u after step 2:
    # m = (1-b1)(b1 g1 + g2), v = (1-b2)(b2 g1^2 + g2^2); coordinate 2 has a much smaller |u|.
    b1, b2 = 0.9, 0.999
    _, state, _ = _probe_run([[1.0, -2.0], [1.0, 0.0]])
    g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([1.0, 0.0])
    m = (1 - b1) * (b1 * g1 + g2)
    v = (1 - b2) * (b2 * g1 ** 2 + g2 ** 2)
    u = (m / (v.sqrt() + 1e-8)).abs()
    s1, s2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))
    xi2 = torch.tensor([0.5, s2])
    ratio2 = float((xi2 * u).sum() / u.sum())
    assert state.epoch_metrics["diffgrad_step_ratio"] == pytest.approx(((s1 + s2) / 2 + ratio2) / 2, rel=1e-5)
    assert state.epoch_metrics["diffgrad_friction"] == pytest.approx(((s1 + s2) / 2 + (0.5 + s2) / 2) / 2, rel=1e-6)


def test_probe_does_not_change_the_update() -> None:
    grads = [[1.0, -2.0], [0.3, 0.1], [-1.0, 2.0]]
    _, _, probed = _probe_run(grads)
    p = nn.Parameter(torch.tensor([0.5, 0.5]))
    opt = DiffGrad([p], lr=0.1)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    assert torch.equal(probed.detach(), p.detach())


def test_probe_off_logs_nothing_and_bad_setting_is_a_config_error() -> None:
    tech = DiffGradTechnique()
    state = TrainState()
    tech.on_epoch_end(None, state)
    assert "diffgrad_friction" not in state.epoch_metrics
    with pytest.raises(ConfigError):
        DiffGradTechnique(probe_every=-1)
