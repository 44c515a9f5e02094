"""Optimization trajectory distillation: each piece against its math, the task's taxonomy split,
and the technique in the Trainer."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from trainlab.errors import ConfigError
from trainlab.techniques.domain.trajectory_distillation import (
    CLAIMS, GradientBank, MovingAverage, TrajectoryDistillation, amplify_in_subspace, class_rows, digits_taxonomy,
    energy_rank, gradient_moments, per_sample_head_grads, statistics_matching_loss)


def _reference_grads(head: torch.nn.Linear, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss(p, hi, yi):
        return F.cross_entropy(functional_call(head, p, (hi[None],)), yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, h, y)
    return torch.cat([g["weight"].flatten(1), g["bias"]], 1)


def test_per_sample_head_grads_equal_autograd_per_example() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 4).double()
    h = torch.randn(9, 6, dtype=torch.double)
    y = torch.randint(0, 4, (9,))
    ours = per_sample_head_grads(h, head(h), y)
    assert torch.allclose(ours, _reference_grads(head, h, y), atol=1e-12)
    # without the bias: the weight part only; class_rows gives W's gradient row per class
    w = per_sample_head_grads(h, head(h), y, bias=False)
    assert w.shape == (9, 24)
    rows = class_rows(ours, 4, 6)
    delta = head(h).softmax(1) - F.one_hot(y, 4)
    assert torch.allclose(rows[:, 2], delta[:, 2:3] * h, atol=1e-12)


def test_per_sample_terms_of_the_mean_loss_sum_to_the_batch_gradient() -> None:
    # the official (BackPACK) convention the technique scales to: row_i / N, summing to d(mean loss)
    torch.manual_seed(5)
    head = torch.nn.Linear(4, 3).double()
    h = torch.randn(7, 4, dtype=torch.double)
    y = torch.randint(0, 3, (7,))
    terms = per_sample_head_grads(h, head(h), y) / len(y)
    F.cross_entropy(head(h), y).backward()
    full = torch.cat([head.weight.grad.flatten(), head.bias.grad])
    assert torch.allclose(terms.sum(0), full, atol=1e-12)


def test_per_sample_head_grads_are_differentiable_in_the_features() -> None:
    torch.manual_seed(1)
    head = torch.nn.Linear(3, 2).double()
    h = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    y = torch.randint(0, 2, (4,))
    assert torch.autograd.gradcheck(lambda t: per_sample_head_grads(t, head(t), y).pow(2).sum(), (h,))


def test_gradient_moments_are_mean_and_biased_variance() -> None:
    g = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])
    m, v = gradient_moments(g)
    assert torch.allclose(m, torch.tensor([3.0, 3.0]))
    assert torch.allclose(v, torch.tensor([8 / 3, 14 / 3]))
    with pytest.raises(ConfigError):
        gradient_moments(torch.zeros(0, 2))


def test_moving_average_starts_from_zero_and_detaches_history() -> None:
    ema = MovingAverage(0.9)
    x1 = torch.tensor([10.0], requires_grad=True)
    out1 = ema.update(x1)
    assert torch.allclose(out1, torch.tensor([1.0]))       # 0.9 * 0 + 0.1 * 10
    x2 = torch.tensor([20.0], requires_grad=True)
    out2 = ema.update(x2)
    assert torch.allclose(out2, torch.tensor([0.9 * 1.0 + 0.1 * 20.0]))
    out2.sum().backward()
    assert x1.grad is None and torch.allclose(x2.grad, torch.tensor([0.1]))


def test_energy_rank_follows_the_official_rule() -> None:
    s = torch.tensor([3.0, 1.0, 0.0])          # energy shares 0.9, 0.1, 0
    assert energy_rank(s, 0.98) == 2           # #{0.9 < 0.98} + 1
    assert energy_rank(s, 0.85) == 1
    assert energy_rank(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.98) == 4
    assert energy_rank(torch.zeros(3)) == 1


def test_gradient_bank_refreshes_on_schedule_and_spans_the_history() -> None:
    torch.manual_seed(2)
    u = torch.randn(5)
    bank = GradientBank(dim=5, columns=3, refresh=3)
    for k in range(3):
        bank.update((k + 1.0) * u)
        assert bank.basis is None              # the refresh test sees the count before it is counted
    bank.update(4.0 * u)                       # count 3: refresh, on a bank of rank one
    assert bank.basis is not None and bank.basis.shape == (5, 1)
    P = bank.projector()
    assert torch.allclose(P @ P, P, atol=1e-6)                       # a projector
    assert torch.allclose(P @ u, u, atol=1e-5)                       # u lies in the subspace
    w = torch.randn(5)
    w_perp = w - (w @ u) / (u @ u) * u
    assert torch.allclose(bank.project(w_perp), torch.zeros(5), atol=1e-5)
    with pytest.raises(ConfigError):
        bank.update(torch.zeros(4))


def test_amplify_in_subspace_scales_only_the_subspace_component() -> None:
    basis = torch.tensor([[1.0], [0.0], [0.0]])
    g = torch.tensor([[2.0, 3.0, 5.0]])                             # any shape; flattened inside
    out = amplify_in_subspace(g, basis, 0.1)
    assert torch.allclose(out, torch.tensor([[2.2, 3.0, 5.0]]))
    assert torch.equal(amplify_in_subspace(g, None, 0.1), g)


def test_statistics_matching_loss_is_two_mses() -> None:
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])
    c, d = torch.tensor([0.0]), torch.tensor([3.0])
    assert torch.isclose(statistics_matching_loss(a, b, c, d), torch.tensor(2.0 + 9.0))


def test_digits_taxonomy_splits_the_taxonomy_and_the_labels() -> None:
    data = digits_taxonomy(shots=5, val_shots=2)
    doms = data.info["domains"]
    assert set(doms["source"]["train_y"].tolist()) == {0, 1, 2, 3, 4}
    assert torch.bincount(doms["target_few"]["train_y"], minlength=10).tolist() == [5] * 10
    assert data.info["new_classes"] == [5, 6, 7, 8, 9]
    assert set(doms["target_new"]["test_y"].tolist()) == {5, 6, 7, 8, 9}
    assert set(doms["target_shared"]["test_y"].tolist()) <= {0, 1, 2, 3, 4}
    assert len(doms["target_new"]["test_y"]) + len(doms["target_shared"]["test_y"]) == len(data.test_y)
    # training rows: source then few-shot; the unlabelled pool holds none of the few-shot images
    assert len(data.train_y) == len(doms["source"]["train_y"]) + 50
    few = doms["target_few"]["train_x"].flatten(1)
    pool = data.info["target_train_x"].flatten(1)
    assert torch.cdist(few, pool).min() > 0
    with pytest.raises(ConfigError):
        digits_taxonomy(source_classes=range(10))


def _short_task(epochs: int = 1):
    from trainlab.tasks.registry import get_task

    # 8x8 images (the digits' own size) keep the runs short
    return dataclasses.replace(get_task("digits-taxonomy"), epochs=epochs, data_kwargs={"size": 8})


def test_with_every_term_off_the_run_equals_the_baseline_bitwise() -> None:
    from trainlab.training.trainer import run_training

    task = _short_task(1)
    base = run_training(task, (), seed=3, keep_state=True)
    off = run_training(task, (("trajectory-distillation", {"few_weight": 0.0, "mix_weight": 0.0, "cross_domain": False,
                                                            "cross_class": False, "historical": False}),),
                       seed=3, keep_state=True)
    for k, v in base.state.items():
        assert torch.equal(v, off.state[k]), k


def test_the_full_method_runs_logs_its_terms_and_changes_training() -> None:
    from trainlab.training.trainer import run_training

    task = _short_task(2)
    base = run_training(task, (), seed=4)
    r = run_training(task, (("trajectory-distillation", {"stats_bank": 4, "stats_refresh": 4, "history": 4}),), seed=4)
    last = r.epochs[-1]
    assert last["td_cross_domain"] > 0 and last["td_cross_class"] > 0
    assert last["td_history_rank"] >= 1 and last["td_stats_rank"] >= 1
    assert "td_cross_domain" not in r.epochs[0]        # the warm-up epoch has no distillation terms
    assert r.final["test_loss"] != base.final["test_loss"]


def test_historical_self_distillation_edits_the_gradient_as_stated() -> None:
    from trainlab.training.technique import TrainState

    tech = TrajectoryDistillation(history=2, history_refresh=2, warmup_epochs=0)
    p = torch.nn.Parameter(torch.zeros(2, 2))
    tech._layers = [("w", p)]
    tech._banks = {"hist:w": GradientBank(4, 2, 2)}
    state = TrainState(epoch=0)
    direction = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    for scale in (1.0, 2.0):             # fills the bank; no basis yet, gradients untouched
        p.grad = scale * direction.clone()
        tech.after_backward(torch.nn.Module(), state)
        assert torch.equal(p.grad, scale * direction)
    # the official order: the current gradient enters the bank (over the oldest column), then the
    # refresh; bank columns (3, 0.01, 0, 0) and (2, 0, 0, 0): the second direction holds ~1e-6 of the
    # energy, so r = 1 with U ~ e_0, and g + 0.1 U U^T g ~ (3.3, 0.01, 0, 0)
    p.grad = torch.tensor([[3.0, 0.01], [0.0, 0.0]])
    tech.after_backward(torch.nn.Module(), state)
    assert tech._banks["hist:w"].basis.shape == (4, 1)
    assert torch.allclose(p.grad, torch.tensor([[3.3, 0.01], [0.0, 0.0]]), atol=1e-3)


def test_refuses_tasks_without_a_few_shot_target_domain() -> None:
    from trainlab.training.trainer import run_training

    with pytest.raises(ConfigError, match="few_shot_domain"):
        run_training("blobs-mlp", ("trajectory-distillation",), seed=0)
    with pytest.raises(ConfigError):
        TrajectoryDistillation(grad_weight=-1.0)
    with pytest.raises(ConfigError):
        TrajectoryDistillation(stats_bank=0)


def test_claims_compare_the_papers_arms() -> None:
    ids = {c.id for c in CLAIMS}
    assert {"trajectory-distillation-digits-taxonomy", "trajectory-distillation-new-classes",
            "trajectory-distillation-vs-pseudo-label-control"} <= ids
    for c in CLAIMS:
        assert c.task == "digits-taxonomy" and c.preconditions and c.paper_setting is not None
        assert c.treatment.techniques[0][0] == "trajectory-distillation"
