"""Annealed gradient noise: the variance schedule (statistically), determinism, the optimizer hook,
and the Trainer technique."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task
from trainlab.techniques.gradients.gradient_noise import (
    AnnealedGradientNoise,
    GradientNoise,
    add_gradient_noise_,
    noise_variance,
)
from trainlab.training.technique import TrainState
from trainlab.training.trainer import run_training


def test_variance_formula() -> None:
    assert noise_variance(0, 0.3) == pytest.approx(0.3)
    assert noise_variance(99, 1.0, 0.55) == pytest.approx(100 ** -0.55)


@pytest.mark.parametrize("step", [0, 10, 1000])
def test_added_noise_has_the_scheduled_variance(step: int) -> None:
    # 200k zero gradients: the sample variance of the noise is within 1% (about 4.5 standard errors)
    eta, gamma = 0.3, 0.55
    p = nn.Parameter(torch.zeros(200_000))
    p.grad = torch.zeros_like(p)
    noise = AnnealedGradientNoise(eta, gamma, torch.Generator().manual_seed(0))
    noise.step = step
    std = noise.add_([p])
    expected = eta / (1 + step) ** gamma
    assert std == pytest.approx(math.sqrt(expected))
    sample = p.grad.double()
    assert abs(sample.mean().item()) < 5 * math.sqrt(expected / sample.numel())
    assert sample.var().item() == pytest.approx(expected, rel=0.01)
    assert noise.step == step + 1


def test_noise_is_added_to_existing_gradients_only_and_is_reproducible() -> None:
    a, b, c = (nn.Parameter(torch.zeros(5)) for _ in range(3))
    a.grad, b.grad = torch.ones(5), torch.ones(5)
    add_gradient_noise_([a, b, c], 0.1, torch.Generator().manual_seed(3))
    assert c.grad is None
    a2, b2 = nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(5))
    a2.grad, b2.grad = torch.ones(5), torch.ones(5)
    add_gradient_noise_([a2, b2], 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a.grad, a2.grad) and torch.equal(b.grad, b2.grad)
    assert not torch.equal(a.grad, b.grad)


def test_attach_adds_noise_in_every_step_and_state_round_trips() -> None:
    p = nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    noise = AnnealedGradientNoise(0.01, 0.55, torch.Generator().manual_seed(0))
    handle = noise.attach(opt)
    p.grad = torch.zeros(4)
    opt.step()
    assert noise.step == 1 and not torch.equal(p.detach(), torch.zeros(4))
    saved = noise.state_dict()
    p.grad = torch.zeros(4)
    before = p.detach().clone()
    opt.step()
    second_draw = before - p.detach()          # lr 1 and a zero gradient: the step is the noise
    other = AnnealedGradientNoise(0.5, 1.0)    # settings and generator come from the state
    other.load_state_dict(saved)
    q = nn.Parameter(torch.zeros(4))
    q.grad = torch.zeros(4)
    other.add_([q])
    torch.testing.assert_close(q.grad, second_draw)
    assert other.step == 2
    handle.remove()
    p.grad = torch.zeros(4)
    before = p.detach().clone()
    opt.step()
    assert torch.equal(p.detach(), before)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        GradientNoise(eta=-1.0)
    with pytest.raises(ConfigError):
        AnnealedGradientNoise(gamma=float("nan"))


def test_technique_uses_the_trainer_step_and_generator() -> None:
    model = nn.Linear(3, 2)
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    state = TrainState(step=24, generator=torch.Generator().manual_seed(0))
    GradientNoise(eta=1.0, gamma=0.5).after_backward(model, state)
    flat = torch.cat([q.grad.flatten() for q in model.parameters()])
    expected = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(0)) * (1.0 / 25 ** 0.5) ** 0.5
    torch.testing.assert_close(flat, expected)


def test_trainer_run_is_deterministic_and_differs_from_baseline() -> None:
    task = get_task("blobs-mlp").with_overrides({"epochs": 1})
    a = run_training(task, [("gradient-noise", {"eta": 0.01})], seed=1, keep_state=True)
    b = run_training(task, [("gradient-noise", {"eta": 0.01})], seed=1, keep_state=True)
    base = run_training(task, [], seed=1, keep_state=True)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k])
    assert any(not torch.equal(a.state[k], base.state[k]) for k in a.state)


def test_deep_mlp_claims_use_the_papers_mnist_setting() -> None:
    """Section 4.1: 20 hidden ReLU layers of 50 units, weights N(0, 0.1^2) ("Simple Init"), plain SGD
    without momentum at a fixed lr of 0.1, no weight decay, no clipping, eta 0.01 and gamma 0.55."""
    from trainlab.claims.runner import arm_task
    from trainlab.techniques.gradients.gradient_noise import CLAIMS
    from trainlab.training.optim import build_optimizer

    for claim in CLAIMS:
        assert dict(claim.treatment.techniques) == {"gradient-noise": {"eta": 0.01}}
        assert GradientNoise(**claim.treatment.techniques[0][1]).gamma == 0.55
        for side in (claim.baseline, claim.treatment):
            task = arm_task(claim, side)
            assert (task.optimizer, task.lr, task.momentum, task.weight_decay) == ("sgd", 0.1, 0.0, 0.0)
            assert task.schedule == "constant" and task.grad_clip is None
            torch.manual_seed(0)
            model = task.make_model((1, 8, 8), 10, **dict(task.model_kwargs))
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            assert [m.out_features for m in linears] == [50] * 20 + [10]
            assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 20
            hidden = torch.cat([m.weight.flatten() for m in linears[1:-1]])
            assert hidden.std().item() == pytest.approx(0.1, rel=0.02) and abs(hidden.mean().item()) < 0.002
            assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
            opt = build_optimizer(task, model.parameters())
            assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.0
        assert [p.describe() for p in claim.preconditions] == [
            "treatment max best:test_acc >= chance + 0.1", "baseline min best:test_acc <= chance + 0.1"]


def test_noise_random_walk_on_the_weights_matches_the_schedule() -> None:
    # With zero gradients, SGD at lr moves each weight by lr * N(0, sigma_t^2) per step: after T steps its
    # std is lr * sqrt(sum_t eta / (1 + t)^gamma) (the estimate the claims' notes use).
    lr, eta, steps = 0.1, 0.01, 400
    p = nn.Parameter(torch.zeros(50_000))
    opt = torch.optim.SGD([p], lr=lr)
    noise = AnnealedGradientNoise(eta, 0.55, torch.Generator().manual_seed(1))
    noise.attach(opt)
    for _ in range(steps):
        p.grad = torch.zeros_like(p)
        opt.step()
    expected = lr * math.sqrt(sum(noise_variance(t, eta) for t in range(steps)))
    assert p.detach().std().item() == pytest.approx(expected, rel=0.02)
