"""SSO: the surrogate's value and gradient at the start point, surrogate steps reduce it, m=1 is SGD,
and gradient evaluations are counted."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.loading import load_task_data
from trainlab.tasks.registry import get_task
from trainlab.techniques.optimizers.sso import SSO, sso_step, surrogate, surrogate_steps, without_weight_decay
from trainlab.training.technique import Batch, TrainState
from trainlab.training.trainer import run_training


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    return model, x, y


def test_surrogate_is_zero_with_the_loss_gradient_at_the_start_point() -> None:
    model, x, y = _problem()
    z = model(x).detach().requires_grad_(True)
    (gz,) = torch.autograd.grad(nn.functional.cross_entropy(z, y), z)
    s = surrogate(model(x), z.detach(), gz, eta=0.7)
    assert s.item() == pytest.approx(0.0, abs=1e-7)
    grads_s = torch.autograd.grad(s, list(model.parameters()))
    grads_l = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    for a, b in zip(grads_s, grads_l):
        torch.testing.assert_close(a, b)


def test_surrogate_steps_reduce_the_surrogate() -> None:
    model, x, y = _problem()
    z = model(x).detach().requires_grad_(True)
    (gz,) = torch.autograd.grad(nn.functional.cross_entropy(z, y), z)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    values = surrogate_steps(model, opt, x, z.detach(), gz, steps=20, eta=1.0)
    final = surrogate(model(x), z.detach(), gz, 1.0).item()
    assert values[0] == pytest.approx(0.0, abs=1e-7)
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:] + [final]))
    assert final < values[1] < 0


def test_sso_step_with_m1_is_an_sgd_step() -> None:
    model, x, y = _problem()
    twin = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    twin.load_state_dict(model.state_dict())
    sso_step(model, nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.1), x, y, m=1)
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    nn.functional.cross_entropy(twin(x), y).backward()
    opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_more_surrogate_steps_lower_the_loss_on_the_batch() -> None:
    losses = {}
    for m in (1, 10):
        model, x, y = _problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            sso_step(model, nn.functional.cross_entropy, opt, x, y, m=m, eta=1.0)
        losses[m] = nn.functional.cross_entropy(model(x), y).item()
    assert losses[10] < losses[1]


def test_counts_gradient_evaluations_and_backprops_and_m1_equals_sgd() -> None:
    task = get_task("blobs-mlp").with_overrides({"epochs": 2})
    sgd_task = task.with_overrides({"momentum": 0.0})
    one = run_training(task, [("sso", {"m": 1})], seed=0, keep_state=True)
    sgd = run_training(sgd_task, [], seed=0, keep_state=True)
    assert all(torch.equal(one.state[k], sgd.state[k]) for k in one.state)
    three = run_training(task, [("sso", {"m": 3})], seed=0)
    steps_per_epoch = len(load_task_data(task, 0).train_y) // task.batch_size
    for run, m in ((one, 1), (three, 3)):
        assert [row["sso_grad_evals"] for row in run.epochs] == [steps_per_epoch, 2 * steps_per_epoch]
        assert run.epochs[-1]["sso_backprops"] == m * 2 * steps_per_epoch
    assert three.epochs[-1]["sso_grad_evals"] == one.epochs[-1]["sso_grad_evals"]


def test_bad_settings() -> None:
    with pytest.raises(ConfigError):
        SSO(m=0)
    with pytest.raises(ConfigError):
        SSO(eta=-1.0)


def _one_weight() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return model, torch.tensor([[1.0]]), torch.tensor([[3.0]])


def _half_squared_error(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z - y).pow(2).mean()


# Hand case: f(w) = w * x with x = 1, w0 = 1, y = 3, loss (z - y)^2 / 2, so z0 = 1 and g = dL/dz = -2.
# Surrogate (B = 1, eta = 1): s(w) = g (w - z0) + (w - z0)^2 / 2, ds/dw = -2 + (w - 1).
# SGD lr 0.1, weight decay 0.5, m = 2:
#   step 1 (the gradient step, with decay): w1 = 1 - 0.1 * (-2 + 0.5 * 1) = 1.15
#   step 2 (surrogate only, no decay):      w2 = 1.15 - 0.1 * (-2 + 0.15) = 1.335
# (decay in step 2 too would give 1.15 - 0.1 * (-1.85 + 0.5 * 1.15) = 1.2775)
def test_weight_decay_is_applied_once_per_gradient_evaluation_hand_case() -> None:
    model, x, y = _one_weight()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    sso_step(model, _half_squared_error, opt, x, y, m=2, eta=1.0)
    assert model.weight.item() == pytest.approx(1.335, abs=1e-6)
    assert opt.param_groups[0]["weight_decay"] == 0.5          # restored after the surrogate steps


def test_trainer_hooks_apply_weight_decay_once_per_batch_hand_case() -> None:
    model, x, y = _one_weight()
    task = get_task("blobs-mlp").with_overrides({"weight_decay": 0.5})
    sso = SSO(m=2, eta=1.0, lr=0.1)
    opt = sso.make_optimizer(model.parameters(), task)
    batch = Batch(inputs=x, targets=y, indices=torch.tensor([0]))
    state = TrainState(batch=batch)
    outputs = model(x)
    loss = sso.loss(outputs, batch, state, _half_squared_error(outputs, y))
    opt.zero_grad()
    loss.backward()
    opt.step()                                                  # the Trainer's step: w1 = 1.15
    assert model.weight.item() == pytest.approx(1.15, abs=1e-6)
    state.outputs = outputs
    sso.after_step(model, opt, state)                           # one surrogate step without decay
    assert model.weight.item() == pytest.approx(1.335, abs=1e-6)
    assert opt.param_groups[0]["weight_decay"] == 0.5


def test_without_weight_decay_restores_on_error() -> None:
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], weight_decay=0.1)
    with pytest.raises(RuntimeError):
        with without_weight_decay(opt):
            assert opt.param_groups[0]["weight_decay"] == 0.0
            raise RuntimeError("boom")
    assert opt.param_groups[0]["weight_decay"] == 0.1
