"""Weight compander: the forward is the formula, the inverse keeps the initialization, removal for
export keeps outputs, and it trains under any optimizer."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from trainlab.errors import ConfigError
from trainlab.tasks.models import build_model
from trainlab.tasks.synthetic import blobs
from trainlab.tasks.task import Task
from trainlab.techniques.regularization.weight_compander import (Compander, apply_compander, compand, expand,
                                                                 remove_compander)
from trainlab.training.trainer import run_training


def test_hand_computed_values():
    # alpha = 1/2, beta = 0.01 (beta^alpha = 0.1): f(0.99) = sqrt(1.00) - 0.1 = 0.9,
    # f(-0.24) = -(sqrt(0.25) - 0.1) = -0.4, f(0) = 0; and the inverse maps them back.
    v = torch.tensor([0.99, -0.24, 0.0], dtype=torch.float64)
    w = torch.tensor([0.9, -0.4, 0.0], dtype=torch.float64)
    torch.testing.assert_close(compand(v, 0.5, 0.01), w)
    torch.testing.assert_close(expand(w, 0.5, 0.01), v)
    # slope at zero: alpha * beta^(alpha - 1) = 0.5 / 0.1 = 5
    x = torch.zeros(1, dtype=torch.float64).add_(1e-9).requires_grad_()
    compand(x, 0.5, 0.01).sum().backward()
    assert x.grad.item() == pytest.approx(5.0, rel=1e-6)


def test_forward_equals_the_formula():
    v = torch.tensor([-2.0, -0.1, 0.0, 0.003, 0.5, 3.0], dtype=torch.float64)
    a, b = 0.5, 0.01
    expected = torch.tensor([(-1 if x < 0 else (0 if x == 0 else 1)) * ((abs(x) + b) ** a - b ** a) for x in v.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(compand(v, a, b), expected)
    torch.testing.assert_close(Compander(a, b).double()(v), expected)
    torch.testing.assert_close(expand(compand(v, a, b), a, b), v)
    # compresses large weights, expands small ones
    assert abs(compand(torch.tensor(3.0), a, b)) < 3.0 and abs(compand(torch.tensor(0.003), a, b)) > 0.003


def test_gradient_matches_finite_differences():
    v = torch.randn(7, dtype=torch.float64).add_(0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: compand(t, 0.5, 0.05), (v,))


def test_initial_effective_weights_are_the_original_init_and_removal_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 2, 5, 5)
    y0 = model(x)
    apply_compander(model, alpha=0.5, beta=0.01)
    assert parametrize.is_parametrized(model[0], "weight") and parametrize.is_parametrized(model[3], "weight")
    torch.testing.assert_close(model[0].weight, before["0.weight"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model(x), y0, rtol=1e-4, atol=1e-5)
    # train a little so latent and effective weights differ from the init, then export
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    y1 = model(x)
    remove_compander(model)
    assert not parametrize.is_parametrized(model[0])
    torch.testing.assert_close(model(x), y1)
    assert set(model.state_dict()) == set(before)
    with pytest.raises(ConfigError):
        Compander(alpha=1.5)


def test_learnable_hyperparameters_get_gradients():
    layer = nn.Linear(3, 2)
    apply_compander(layer, learnable=True)
    comp = layer.parametrizations.weight[0]
    assert comp.alpha.item() == pytest.approx(0.5) and comp.beta.item() == pytest.approx(0.01, rel=1e-4)
    layer(torch.randn(4, 3)).sum().backward()
    assert comp.alpha_raw.grad is not None and comp.beta_raw.grad is not None
    with pytest.raises(ConfigError, match="already parametrized"):
        apply_compander(layer)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_trains_with_any_optimizer(optimizer):
    task = Task("tiny-blobs", make_data=functools.partial(blobs, n_train=192, n_test=96, dim=8, classes=3),
                make_model=functools.partial(build_model, "mlp"), model_kwargs={"width": 16, "depth": 1},
                epochs=3, batch_size=32, lr=0.05 if optimizer == "sgd" else 1e-2, optimizer=optimizer)
    result = run_training(task, [("weight-compander", {})], seed=0, keep_state=True)
    assert result.status == "finished" and result.final["test_acc"] > 0.45  # 3 classes: chance is 1/3
    assert result.epochs[-1]["train_loss"] < result.epochs[0]["train_loss"]
    assert any("parametrizations.weight.original" in k for k in result.state)


def test_claims_regime_check_reads_what_a_run_records():
    # every claim's preconditions (the baseline fits its training set and overfits: final train_acc, and
    # train_acc - test_acc) are computable on a run of its baseline; the claims say they test the stand-in
    from trainlab.claims.metrics import metric_value
    from trainlab.techniques.regularization.weight_compander import CLAIMS, WeightCompander

    task = Task("tiny-blobs", make_data=functools.partial(blobs, n_train=192, n_test=96, dim=8, classes=3),
                make_model=functools.partial(build_model, "mlp"), model_kwargs={"width": 16, "depth": 1},
                epochs=2, batch_size=32, lr=0.05, optimizer="sgd")
    run = run_training(task, [], seed=0).to_dict()
    for claim in CLAIMS:
        fits, gap = claim.preconditions
        assert metric_value(fits.metric, run, task.epochs)[0] == run["final"]["train_acc"]
        train, test = (metric_value(term, run, task.epochs)[0] for term in gap.metric_terms())
        assert (train, test) == (run["final"]["train_acc"], run["final"]["test_acc"])
        assert "STAND-IN" in claim.notes and claim.paper_setting is not None
    assert WeightCompander.fidelity == "stand-in" and WeightCompander.deviations
