"""Fisher merging, plain averaging, task arithmetic, and the diagonal Fisher, against their math."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.merging import FisherMerge, diagonal_fisher, merge


def _linear(seed: int, d: int = 3, c: int = 4) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, c)


# --------------------------------------------------------------------------- merge

def test_fisher_merge_of_two_models_is_the_hand_computed_closed_form() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([4.0])}
    fa = {"w": torch.tensor([1.0, 3.0]), "b": torch.tensor([1.0])}
    fb = {"w": torch.tensor([3.0, 1.0]), "b": torch.tensor([3.0])}
    out = merge([a, b], "fisher", fishers=[fa, fb])
    # (1*1 + 3*3)/4, (3*2 + 1*6)/4, (1*0 + 3*4)/4
    assert torch.allclose(out["w"], torch.tensor([2.5, 3.0]))
    assert torch.allclose(out["b"], torch.tensor([3.0]))
    # weights lambda: (0.25*1*1 + 0.75*3*3) / (0.25*1 + 0.75*3) = 7 / 2.5
    out = merge([a, b], "fisher", fishers=[fa, fb], weights=[0.25, 0.75])
    assert torch.allclose(out["w"][0], torch.tensor(7.0 / 2.5))


def test_fisher_merge_with_equal_fishers_is_plain_averaging() -> None:
    models = [_linear(s) for s in range(3)]
    g = torch.Generator().manual_seed(0)
    shared = {k: torch.rand(v.shape, generator=g) + 0.1 for k, v in models[0].state_dict().items()}
    fisher = merge(models, "fisher", fishers=[shared] * 3)
    plain = merge(models, "average")
    for k in plain:
        expected = sum(m.state_dict()[k] for m in models) / 3
        assert torch.allclose(plain[k], expected, atol=1e-6)
        assert torch.allclose(fisher[k], expected, atol=1e-6)
    # a common scale of the Fishers does not matter either
    scaled = merge(models, "fisher", fishers=[{k: 7 * v for k, v in shared.items()}] * 3)
    assert all(torch.allclose(scaled[k], fisher[k], atol=1e-6) for k in plain)


def test_zero_fisher_on_a_parameter_takes_the_other_models_value() -> None:
    a, b = _linear(0), _linear(1)
    fa = {k: torch.ones_like(v) for k, v in a.state_dict().items()}
    fb = {k: torch.ones_like(v) for k, v in b.state_dict().items()}
    fa["weight"][1, 2] = 0.0
    out = merge([a, b], "fisher", fishers=[fa, fb])
    assert torch.allclose(out["weight"][1, 2], b.weight[1, 2].detach(), atol=1e-6)
    assert torch.allclose(out["weight"][0, 0], (a.weight[0, 0] + b.weight[0, 0]).detach() / 2)
    # both zero: the floor makes them equal, so the merge is their average
    fb["weight"][1, 2] = 0.0
    out = merge([a, b], "fisher", fishers=[fa, fb])
    assert torch.allclose(out["weight"][1, 2], (a.weight[1, 2] + b.weight[1, 2]).detach() / 2)


def test_official_options_normalize_and_favor_first() -> None:
    a = {"w": torch.tensor([1.0, 5.0])}
    b = {"w": torch.tensor([3.0, 7.0])}
    fa, fb = {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.0, 2.0])}
    # normalize: lambda_i / ||F_i|| with ||F_a|| = 5, ||F_b|| = 2 -> coefficients 0.1, 0.25
    out = merge([a, b], "fisher", fishers=[fa, fb], normalize_fishers=True, eps=0.0, favor_first=True)
    num = torch.tensor([0.1 * 3 * 1 + 0.25 * 0 * 3, 0.1 * 4 * 5 + 0.25 * 2 * 7])
    den = torch.tensor([0.1 * 3 + 0.25 * 0, 0.1 * 4 + 0.25 * 2])
    assert torch.allclose(out["w"], num / den)
    # favor_first floors only the first model's Fisher: a zero there and in model 2 -> model 1's value
    fa0 = {"w": torch.tensor([0.0, 1.0])}
    out = merge([a, b], "fisher", fishers=[fa0, fb], eps=1e-6, favor_first=True)
    assert torch.allclose(out["w"][0], torch.tensor(1.0))


def test_task_arithmetic_is_its_formula() -> None:
    base, a, b = _linear(0), _linear(1), _linear(2)
    out = merge([a, b], "task-arithmetic", base=base, scale=0.3)
    for k, v0 in base.state_dict().items():
        expected = v0 + 0.3 * ((a.state_dict()[k] - v0) + (b.state_dict()[k] - v0))
        assert torch.allclose(out[k], expected, atol=1e-6)
    # scale 1/N for N models is plain averaging
    half = merge([a, b], "task-arithmetic", base=base, scale=0.5)
    plain = merge([a, b], "average")
    assert all(torch.allclose(half[k], plain[k], atol=1e-6) for k in plain)


def test_unmerged_keys_and_integer_buffers_come_from_the_first_model() -> None:
    def net(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        m[1].num_batches_tracked.fill_(seed + 5)
        return m

    a, b = net(0), net(1)
    out = merge([a, b], "average", keys=["0.weight", "0.bias"])
    assert torch.allclose(out["0.weight"], (a[0].weight + b[0].weight).detach() / 2)
    assert torch.equal(out["2.weight"], a[2].weight.detach())  # a head left unmerged: the first model's
    assert int(out["1.num_batches_tracked"]) == 5
    full = merge([a, b], "average")
    assert int(full["1.num_batches_tracked"]) == 5  # integers are never averaged
    assert torch.allclose(full["1.running_mean"], (a[1].running_mean + b[1].running_mean) / 2)
    a.load_state_dict(full)  # the merge is a loadable state dict


def test_merge_errors() -> None:
    a, b = _linear(0), _linear(1)
    with pytest.raises(ConfigError, match="method"):
        merge([a, b], "median")
    with pytest.raises(ConfigError, match="different keys"):
        merge([a, nn.Linear(3, 4, bias=False)], "average")
    with pytest.raises(ConfigError, match="shape"):
        merge([a, nn.Linear(3, 5)], "average")
    with pytest.raises(ConfigError, match="one Fisher per model"):
        merge([a, b], "fisher")
    with pytest.raises(ConfigError, match="no entry"):
        merge([a, b], "fisher", fishers=[{"weight": torch.ones(4, 3)}] * 2)
    with pytest.raises(ConfigError, match="negative"):
        merge([a, b], "fisher", fishers=[{k: -torch.ones_like(v) for k, v in a.state_dict().items()}] * 2)
    with pytest.raises(ConfigError, match="base"):
        merge([a, b], "task-arithmetic")
    with pytest.raises(ConfigError, match="weights"):
        merge([a, b], "average", weights=[1.0])
    with pytest.raises(ConfigError, match="keys not in"):
        merge([a, b], "average", keys=["nope"])
    with pytest.raises(ConfigError, match="no models"):
        merge([], "average")


# --------------------------------------------------------------------------- diagonal Fisher

def _softmax_regression_fisher(model: nn.Linear, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Closed form: d log p_y / dW = (e_y - p) x^T, so E_{y~p}[(e_y - p)_c^2] = p_c (1 - p_c) and
    F_W[c, j] = E_x[p_c (1 - p_c) x_j^2], F_b[c] = E_x[p_c (1 - p_c)]."""
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    v = p * (1 - p)
    return {"weight": (v.T @ x.square()) / len(x), "bias": v.mean(0)}


def test_exact_fisher_of_softmax_regression_is_its_closed_form() -> None:
    model = _linear(3, d=5, c=4)
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(1))
    exact = diagonal_fisher(model, x, kind="exact", batch_size=10)
    ref = _softmax_regression_fisher(model, x)
    assert set(exact) == {"weight", "bias"}
    for k in ref:
        assert torch.allclose(exact[k], ref[k], rtol=1e-5, atol=1e-7)


def test_sampled_fisher_converges_to_the_exact_expectation() -> None:
    model = _linear(4, d=5, c=3)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(2))
    ref = _softmax_regression_fisher(model, x)
    errors = []
    for samples in (2, 400):
        est = diagonal_fisher(model, x, kind="sampled", num_samples=samples,
                              generator=torch.Generator().manual_seed(0))
        errors.append(max(float(((est[k] - ref[k]).norm() / ref[k].norm())) for k in ref))
    assert errors[1] < 0.05  # Monte Carlo error ~ 1/sqrt(40 * 400)
    assert errors[1] < errors[0]


def test_empirical_fisher_is_the_mean_of_per_example_squared_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    emp = diagonal_fisher(model, x, y, kind="empirical", batch_size=4)
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            ref[n] += p.grad.square() / len(x)
    for n in ref:
        assert torch.allclose(emp[n], ref[n], rtol=1e-5, atol=1e-8)
    # the squared mean gradient is not what is computed (per-example squares, not batch squares)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert not torch.allclose(emp["0.weight"], model[0].weight.grad.square())


def test_exact_fisher_uses_eval_mode_batchnorm_and_restores_the_mode() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    model.train()
    model(torch.randn(64, 3) * 2 + 1)  # running statistics away from 0 / 1
    x = torch.randn(6, 3)
    exact = diagonal_fisher(model, x, kind="exact")
    assert model.training
    model.eval()
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i:i + 1]), 1)[0]
        for c in range(3):
            grads = torch.autograd.grad(logp[c], list(model.parameters()), retain_graph=True)
            for (n, _), g in zip(model.named_parameters(), grads):
                ref[n] += logp[c].exp().detach() * g.square() / len(x)
    for n in ref:
        assert torch.allclose(exact[n], ref[n], rtol=1e-4, atol=1e-8)


def test_fisher_of_selected_parameters_and_errors() -> None:
    model = _linear(5)
    x = torch.randn(8, 3)
    only = diagonal_fisher(model, x, kind="exact", names=["weight"])
    assert set(only) == {"weight"}
    assert torch.allclose(only["weight"], diagonal_fisher(model, x, kind="exact")["weight"])
    with pytest.raises(ConfigError, match="kind"):
        diagonal_fisher(model, x, kind="true")
    with pytest.raises(ConfigError, match="labels"):
        diagonal_fisher(model, x, kind="empirical")
    with pytest.raises(ConfigError, match="num_samples"):
        diagonal_fisher(model, x, kind="sampled", num_samples=0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        diagonal_fisher(model, x, names=["nope"])


# --------------------------------------------------------------------------- the technique

def test_technique_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="method"):
        FisherMerge(method="ties")
    with pytest.raises(ConfigError, match="setting"):
        FisherMerge(setting="domains")
    with pytest.raises(ConfigError, match="num_models"):
        FisherMerge(num_models=1)
    with pytest.raises(ConfigError, match="scale"):
        FisherMerge(scale="best")


def test_arms_share_the_fine_tuned_copies() -> None:
    from trainlab.tasks.registry import get_task
    from trainlab.training.trainer import run_training

    task = get_task("digits-mlp").with_overrides({"epochs": 1, "model_kwargs": {"width": 32, "depth": 1}})
    small = dict(setting="tasks", finetune_epochs=1, fisher_examples=64)
    runs = {m: run_training(task, [FisherMerge(method=m, **small)], seed=0).final
            for m in ("average", "fisher", "task-arithmetic")}
    for key in ("finetuned_acc_task0", "finetuned_acc_task1", "average_acc", "spread"):
        assert runs["average"][key] == runs["fisher"][key] == runs["task-arithmetic"][key]
    assert runs["task-arithmetic"]["scale"] in [round(0.05 * i, 2) for i in range(1, 21)]
    # the average arm's merged model is the plain average, which every arm logs as average_acc
    assert runs["average"]["merged_acc"] == pytest.approx(runs["average"]["average_acc"])
    assert runs["fisher"]["merged_acc"] == pytest.approx(
        (runs["fisher"]["merged_acc_task0"] + runs["fisher"]["merged_acc_task1"]) / 2)
    assert runs["fisher"]["spread"] > 0


def test_a_model_without_a_linear_classifier_is_refused_before_training() -> None:
    from trainlab.tasks.registry import get_task

    task = get_task("digits-mlp")
    data = task.make_data()
    conv_head = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    assert "nn.Linear with 10 outputs" in FisherMerge.check_applicable(task, data, conv_head)
    assert FisherMerge.check_applicable(task, data, nn.Sequential(nn.Flatten(), nn.Linear(64, 10))) is None


def test_the_run_is_evaluated_as_the_merged_model() -> None:
    from trainlab.tasks.registry import get_task
    from trainlab.training.trainer import run_training

    task = get_task("digits-mlp").with_overrides({"epochs": 1, "model_kwargs": {"width": 32, "depth": 1}})
    final = run_training(task, [FisherMerge(method="fisher", setting="checkpoints", finetune_epochs=1,
                                            fisher_examples=64)], seed=1).final
    # one task: the Trainer's test_acc of the run's model after the last epoch is the merge's accuracy
    assert final["test_acc"] == pytest.approx(final["merged_acc"])
    assert 0.0 <= final["ensemble_acc"] <= 1.0
