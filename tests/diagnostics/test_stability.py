"""Dynamical-stability claims: well-formed, in the papers' settings; the task pieces against their
math; and the edge-of-stability mechanism itself on a toy whose Hessian is computed exactly."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from trainlab.claims.claim import Claim
from trainlab.claims.metrics import validate
from trainlab.diagnostics import stability
from trainlab.diagnostics.stability import CLAIMS, digits_parity, half_squared_error, scalar_mlp
from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task

#: the keys the sharpness probe logs, and the trainer's own per-epoch keys
PROBE_KEYS = {"sharpness", "hessian_trace", "stability_limit", "sharpness_ratio"}
RUN_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"}


def _keys(metric: str) -> set[str]:
    """The per-epoch keys a claim metric reads, e.g. at:a@b>=1 -> {a, b}."""
    body = metric.split(":", 1)[1] if ":" in metric else metric
    keys = set()
    for part in body.split("@"):
        keys.add(part.split(">")[0].split("<")[0].split("=")[0].strip())
    return keys


def _task_for(claim: Claim, arm_name: str):
    arm = claim.treatment if arm_name == "treatment" else claim.baseline
    return get_task(claim.task).with_overrides(claim.overrides).with_overrides(arm.overrides)


def test_claims_are_well_formed():
    assert CLAIMS and len({c.id for c in CLAIMS}) == len(CLAIMS)
    for c in CLAIMS:
        validate(c.metric)
        assert _keys(c.metric) <= PROBE_KEYS | RUN_KEYS, c.id
        if isinstance(c.reference, str):
            validate(c.reference)
            assert _keys(c.reference) <= PROBE_KEYS, c.id
        for p in c.preconditions:
            for term in p.metric_terms():
                validate(term)
                assert _keys(term) <= PROBE_KEYS | RUN_KEYS, (c.id, term)
        # every arm measures with the sharpness probe, and the trace only where the claim reads it
        for arm_name in c.arms:
            arm = c.treatment if arm_name == "treatment" else c.baseline
            assert [n for n, _ in arm.techniques] == ["sharpness"], c.id
            if "hessian_trace" in _keys(c.metric):
                assert dict(arm.techniques[0][1]).get("trace", True), c.id
        assert c.paper_setting is not None and c.notes and c.paper_quote, c.id


@pytest.mark.parametrize("claim", [c for c in CLAIMS if c.id.startswith("eos-")], ids=lambda c: c.id)
def test_edge_of_stability_claims_use_full_batch_gd(claim):
    task = _task_for(claim, "treatment")
    # Cohen et al.: the full training set every step, no momentum, no weight decay, constant step size
    assert task.batch_size == task.train_subset == 1000
    assert task.optimizer == "sgd" and task.momentum == 0.0 and task.weight_decay == 0.0
    assert task.schedule == "constant" and task.warmup_epochs == 0.0
    assert task.loss_fn is half_squared_error and task.model_kwargs["activation"] == "tanh"
    assert claim.one_arm and claim.reference == 1.0 and "sharpness_ratio" in claim.metric
    probe = dict(claim.treatment.techniques[0][1])
    if claim.metric.startswith("mean_last"):
        # the late phase: k probes, k * every steps at the end of the run, after the pilot's edge time
        k = int(claim.metric[len("mean_last"):].split(":")[0])
        assert k * probe["every"] <= task.epochs / 2


@pytest.mark.parametrize("claim", [c for c in CLAIMS if c.id.startswith("sgd-")], ids=lambda c: c.id)
def test_sgd_stability_claims_use_plain_sgd_on_a_square_loss(claim):
    for arm_name in claim.arms:
        task = _task_for(claim, arm_name)
        assert task.optimizer == "sgd" and task.momentum == 0.0 and task.weight_decay == 0.0
        assert task.schedule == "constant" and task.loss_fn is half_squared_error
        assert task.make_model is scalar_mlp  # the 2/eta trace bound is a scalar-output statement
    assert _task_for(claim, "treatment").batch_size == 1
    if claim.one_arm:
        assert claim.metric == "hessian_trace" and claim.reference == "stability_limit" and claim.direction == "lower"
    else:
        base, treat = _task_for(claim, "baseline"), _task_for(claim, "treatment")
        if base.batch_size > 1:  # the paper's contrast: GD (the whole training set) at the same learning rate
            assert base.batch_size == base.train_subset and base.lr == treat.lr
        else:  # the learning rate's effect: both online SGD, the treatment at the larger step size
            assert treat.lr > base.lr
        assert claim.direction == "lower" and claim.metric == "hessian_trace"
        assert {p.arm for p in claim.preconditions} == {"baseline", "treatment"}


def test_half_squared_error_matches_hand_computation():
    out = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, -1.0]])
    labels = torch.tensor([1, 2])
    # row 1: (1, 1, 0) -> 1 + 1 + 0 = 2; row 2: (0.5, 0, -2) -> 0.25 + 0 + 4 = 4.25; 0.5 * mean = 1.5625
    assert half_squared_error(out, labels).item() == pytest.approx(1.5625)
    targets = torch.tensor([[0.0, 2.0, 0.0], [0.5, 0.0, 0.0]])
    assert half_squared_error(out, targets).item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)
    with pytest.raises(ConfigError):
        half_squared_error(out, torch.zeros(2, 2))
    # its Hessian in the outputs is I / n: the Gauss-Newton form the trace bound is stated for
    h = hessian(lambda o: half_squared_error(o, labels))(out)
    assert torch.allclose(h.reshape(6, 6), torch.eye(6) / 2)


def test_digits_parity_and_scalar_mlp():
    data = digits_parity()
    assert data.num_classes is None and data.train_y.shape == (len(data.train_x), 1)
    assert set(data.train_y.unique().tolist()) == {-1.0, 1.0}
    from trainlab.tasks.datasets import digits

    labels = digits().train_y
    assert torch.equal(data.train_y[:, 0] > 0, labels % 2 == 1)
    model = scalar_mlp(data.input_shape, None, width=8, depth=1)
    assert model(data.train_x[:4]).shape == (4, 1)


def _toy_gd_sharpness(lr: float, steps: int, every: int) -> tuple[list[float], float, float]:
    """Full-batch GD on a 433-parameter tanh MLP (64 points, square loss); the exact top Hessian
    eigenvalue (torch.func.hessian + eigvalsh) every `every` steps, as a ratio to 2/lr."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    y = torch.sign(x[:, :1] * x[:, 1:2] + 0.3 * torch.randn(64, 1, generator=gen))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for k, s in zip(names, shapes):
            params[k] = theta[i:i + math.prod(s)].view(s)
            i += math.prod(s)
        return half_squared_error(functional_call(model, params, (x,)), y)

    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    first = loss(theta).item()
    ratios = []
    for step in range(steps):
        if step % every == 0:
            ratios.append(torch.linalg.eigvalsh(hessian(loss)(theta))[-1].item() * lr / 2)
        grad = torch.func.grad(loss)(theta)
        theta = theta - lr * grad
    return ratios, first, loss(theta).item()


def test_full_batch_gd_sharpness_rises_to_and_hovers_at_two_over_lr():
    """The edge-of-stability mechanism on a toy computed exactly: the sharpness starts well below
    2/lr, progressive sharpening carries it to 2/lr, and for the rest of training it stays at 2/lr
    (it cannot stay above: GD would then diverge along the top eigenvector) while the loss falls."""
    torch.set_num_threads(1)
    ratios, first, last = _toy_gd_sharpness(lr=0.5, steps=600, every=10)
    assert ratios[0] < 0.9
    assert max(ratios) >= 1.0
    late = ratios[-len(ratios) // 3:]  # the last 200 steps
    assert 0.95 <= sum(late) / len(late) <= 1.05
    assert last < first / 20
    # a step size small enough never reaches the edge on this budget: the edge is set by lr, not the model
    small, _, _ = _toy_gd_sharpness(lr=0.02, steps=60, every=20)
    assert max(small) < 0.5


def test_module_names_its_papers():
    doc = stability.__doc__ or ""
    assert "2103.00065" in doc and "2305.17490" in doc


def test_square_loss_evaluate_reads_classes_and_signs():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    out = stability.square_loss_evaluate(model, x, torch.tensor([0, 0, 0]))
    # outputs = x; one-hot class 0: errors (0,0), (-1,2), (2,1) -> 0.5 * mean(0, 5, 5)
    assert out == {"loss": pytest.approx(0.5 * 10 / 3), "acc": pytest.approx(2 / 3)}
    scalar = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        scalar.weight.copy_(torch.tensor([[1.0, -1.0]]))
    res = stability.square_loss_evaluate(scalar, x, torch.tensor([[1.0], [1.0], [1.0]]))
    # outputs 1, -2, 2 against +1: errors 0, 3, 1 -> 0.5 * mean(0, 9, 1); signs agree on 2 of 3
    assert res == {"loss": pytest.approx(0.5 * 10 / 3), "acc": pytest.approx(2 / 3)}
