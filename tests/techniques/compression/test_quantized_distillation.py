"""Tests of quantized distillation and differentiable quantization against their math and the
formulas of the official code (antspy/quantized_distillation, quantization/quant_functions.py and
cnn_models/help_fun.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.compression.artifact import dense_bytes
from trainlab.techniques.compression.quantized_distillation import (
    DifferentiableQuantizationTechnique, PointQuantizer, QuantizedDistillationTechnique, UniformQuantizer,
    allocate_points, bucket_view, distillation_loss, load_quantized_student, nonuniform_codes, nonuniform_quantize,
    quantile_points, quantize_parameters, quantized_parameters, save_quantized_student, uniform_codes,
    uniform_quantize)
from trainlab.training.trainer import run_training


def _official_uniform(x: torch.Tensor, bits: int, bucket_size: int | None) -> torch.Tensor:
    """uniformQuantization(type_of_scaling='linear', stochastic_rounding=False) step by step, in
    numpy: bucket (filling with the last value), scale rows to [0, 1], round to s levels, invert."""
    flat = x.detach().double().numpy().reshape(-1)
    n = flat.size
    if bucket_size is not None and n > bucket_size:
        rest = n % bucket_size
        if rest:
            flat = np.concatenate([flat, np.full(bucket_size - rest, flat[-1])])
        rows = flat.reshape(-1, bucket_size)
    else:
        rows = flat.reshape(1, -1)
    lo, hi = rows.min(1, keepdims=True), rows.max(1, keepdims=True)
    alpha = hi - lo
    alpha[alpha < 1e-10] = 1
    s = 2 ** bits - 1
    q = np.round((rows - lo) / alpha * s) / s
    return torch.from_numpy((q * alpha + lo).reshape(-1)[:n].reshape(tuple(x.shape)))


@pytest.mark.parametrize("shape,bucket", [((7, 33), 64), ((5, 4, 3, 3), 256), ((10,), 256), ((300,), None),
                                          ((256,), 256), ((513,), 256)])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_uniform_quantizer_matches_the_official_formula(shape, bucket, bits) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape) * 0.3 + 0.05
    out = uniform_quantize(x, bits, bucket)
    assert torch.allclose(out.double(), _official_uniform(x, bits, bucket), atol=1e-6)
    # the values lie on each bucket's grid of 2^bits levels, and min and max are kept exactly
    buckets, n = bucket_view(x, bucket)
    q_b, _ = bucket_view(out, bucket)
    lo, hi = buckets.min(1, keepdim=True).values, buckets.max(1, keepdim=True).values
    alpha = torch.where(hi - lo < 1e-10, torch.ones_like(hi), hi - lo)   # a constant bucket is kept as it is
    k = (q_b - lo) / alpha * (2 ** bits - 1)
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert int(k.round().min()) >= 0 and int(k.round().max()) <= 2 ** bits - 1
    assert torch.allclose(q_b.min(1).values, lo.view(-1)) and torch.allclose(q_b.max(1).values, hi.view(-1))
    codes, alpha, beta = uniform_codes(x, bits, bucket)
    assert codes.shape == x.shape and int(codes.min()) >= 0 and int(codes.max()) < 2 ** bits


def test_constant_bucket_is_kept_and_padding_copies_the_last_value() -> None:
    x = torch.cat([torch.full((4,), 0.7), torch.tensor([0.0, 1.0, 0.2])])
    out = uniform_quantize(x, 2, bucket_size=4)
    assert torch.equal(out[:4], x[:4])                          # alpha = 1 where max = min: unchanged
    buckets, n = bucket_view(x, 4)
    assert n == 7 and buckets.shape == (2, 4) and buckets[1, 3] == x[-1]
    # last bucket [0, 1, 0.2, 0.2] on levels {0, 1/3, 2/3, 1}: 0.2 -> 1/3
    assert torch.allclose(out[4:], torch.tensor([0.0, 1.0, 1 / 3]))


def test_straight_through_gradient_reaches_every_full_precision_value() -> None:
    torch.manual_seed(1)
    x = torch.randn(70, requires_grad=True)
    up = torch.randn(70)
    uniform_quantize(x, 2, bucket_size=16).backward(up)
    assert torch.equal(x.grad, up)                              # identity, bucket minima and maxima included
    x.grad = None
    uniform_quantize(x, 2, bucket_size=16, stochastic=True).backward(up)
    assert torch.equal(x.grad, up)


def test_optimizer_applies_the_gradient_at_the_quantized_weights_to_the_float_weights() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    qnet = quantize_parameters(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)),
                               lambda: UniformQuantizer(2, bucket_size=8))
    with torch.no_grad():
        for (_, m, attr, _), p in zip(quantized_parameters(qnet), net.parameters()):
            m.parametrizations[attr].original.copy_(p)
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    # reference: the gradient of the loss at the quantized weights, as leaf tensors
    qweights = {n: uniform_quantize(p.detach(), 2, 8).requires_grad_(True) for n, p in net.named_parameters()}
    F.cross_entropy(torch.func.functional_call(net, qweights, (x,)), y).backward()
    opt = torch.optim.SGD(qnet.parameters(), lr=0.5)
    F.cross_entropy(qnet(x), y).backward()
    opt.step()
    originals = [m.parametrizations[a].original for _, m, a, _ in quantized_parameters(qnet)]
    for (name, p), new in zip(net.named_parameters(), originals):
        assert torch.allclose(new, p - 0.5 * qweights[name].grad, atol=1e-6), name


def test_stochastic_rounding_picks_a_neighbour_level_and_is_unbiased() -> None:
    torch.manual_seed(3)
    x = torch.tensor([0.0, 1.0, 0.1, 0.5, 0.62, 0.9])          # one bucket: alpha = 1, beta = 0, levels k/3
    draws = torch.stack([uniform_quantize(x, 2, None, stochastic=True) for _ in range(20000)])
    k = draws * 3
    assert torch.allclose(k, k.round(), atol=1e-5)
    assert torch.all((k.round() == torch.floor(x * 3)) | (k.round() == torch.floor(x * 3) + 1))
    assert torch.allclose(draws.mean(0), x, atol=0.01)          # E[Q(v)] = v
    assert torch.equal(draws[:, 0], torch.zeros(20000)) and torch.equal(draws[:, 1], torch.ones(20000))


def test_distillation_loss_equals_the_formula_by_hand() -> None:
    s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([1, 2])
    T, w = 2.0, 0.7

    def softmax(row):
        e = [math.exp(v / T) for v in row]
        return [v / sum(e) for v in e]

    kl_sum = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        p, q = softmax(srow), softmax(trow)
        kl_sum += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))
    ce = sum(-math.log(math.exp(r[c]) / sum(math.exp(v) for v in r)) for r, c in zip(s.tolist(), y.tolist())) / 2
    hard = F.cross_entropy(s, y)
    assert hard.item() == pytest.approx(ce, rel=1e-6)
    # the official code: 0.7 T^2 KLDivLoss (PyTorch 0.3: mean over all batch x class elements) + 0.3 CE
    expected = w * T * T * kl_sum / 6 + (1 - w) * ce
    assert distillation_loss(s, t, hard).item() == pytest.approx(expected, rel=1e-6)
    with pytest.warns(UserWarning):                             # torch warns that "mean" is not "batchmean"
        kl_mean = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="mean")
    ref = w * T * T * kl_mean + (1 - w) * hard
    assert distillation_loss(s, t, hard).item() == pytest.approx(ref.item(), rel=1e-6)
    batchmean = w * T * T * kl_sum / 2 + (1 - w) * ce           # Hinton et al.: per-example mean
    assert distillation_loss(s, t, hard, reduction="batchmean").item() == pytest.approx(batchmean, rel=1e-6)
    # the teacher gets no gradient, the student the usual soft-target gradient
    s_req, t_req = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    distillation_loss(s_req, t_req, torch.tensor(0.0), weight=1.0, reduction="batchmean").backward()
    p, q = F.softmax(s / T, 1), F.softmax(t / T, 1)
    assert t_req.grad is None
    assert torch.allclose(s_req.grad, T * (p - q) / 2, atol=1e-6)  # T^2 * (p - q) / T / batch


def test_nonuniform_values_lie_on_the_points_and_ties_go_up() -> None:
    x = torch.tensor([0.0, 2.0, 0.3, 0.4, 1.1, 1.9, 1.4])      # one bucket: beta = 0, alpha = 2
    points = torch.tensor([0.0, 0.4, 1.0])                       # scaled space; x / 2 = [0, 1, .15, .2, .55, .95, .7]
    out = nonuniform_quantize(x, points, bucket_size=None)
    # .2 is halfway between 0 and .4 (goes up), .7 halfway between .4 and 1 (goes up)
    assert torch.allclose(out, torch.tensor([0.0, 2.0, 0.0, 0.8, 0.8, 2.0, 2.0]))
    idx, alpha, beta = nonuniform_codes(x, points, None)
    assert idx.tolist() == [0, 2, 0, 1, 1, 2, 2] and alpha.tolist() == [2.0] and beta.tolist() == [0.0]


def test_point_gradient_equals_the_formula_by_hand() -> None:
    # two buckets of 3: scales alpha = 2 (bucket 0) and 0.5 (bucket 1)
    x = torch.tensor([0.0, 2.0, 0.9, 1.0, 1.5, 1.1], requires_grad=True)
    points = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    up = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0])
    out = nonuniform_quantize(x, points, bucket_size=3)
    # scaled: bucket 0 [0, 1, .45] -> idx [0, 2, 1]; bucket 1 (beta 1, alpha .5) [0, 1, .2] -> idx [0, 2, 0]
    assert torch.allclose(out, torch.tensor([0.0, 2.0, 1.0, 1.0, 1.5, 1.0]))
    out.backward(up)
    # dQ/dp_j = alpha of the value's bucket where the value is rounded to p_j
    expected = torch.tensor([1.0 * 2 + 0.5 * 0.5 + (-1.0) * 0.5, 3.0 * 2, -2.0 * 2 + 4.0 * 0.5])
    assert torch.allclose(points.grad, expected)
    assert torch.equal(x.grad, up)                              # straight-through to the weights


def test_quantile_initialization_and_bit_allocation_follow_the_code() -> None:
    torch.manual_seed(4)
    x = torch.randn(500)
    pts = quantile_points(x, 5, bucket_size=128)
    buckets, n = bucket_view(x, 128)
    lo, hi = buckets.min(1, keepdim=True).values, buckets.max(1, keepdim=True).values
    scaled = ((buckets - lo) / (hi - lo)).reshape(-1)[:n].double().numpy()
    assert np.allclose(pts.numpy(), np.percentile(scaled, np.linspace(0, 100, 5)), atol=1e-6)
    assert allocate_points([1.0, 3.0], [4, 4]) == [3, 5]        # half kept, the rest 1:3
    assert allocate_points([1.0, 1.0, 2.0], [2, 2, 2]) == [2, 2, 2]  # rounding excess taken from the largest
    assert allocate_points([0.0, 0.0, 1.0], [4, 4, 4]) == [2, 2, 8]
    assert sum(allocate_points([0.3, 0.1, 0.7, 0.2], [16] * 4)) == 64


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 36, 128), nn.ReLU(), nn.Linear(128, 3))


@pytest.mark.parametrize("kind", ["uniform", "points"])
def test_artifact_round_trip_gives_the_quantized_models_outputs(tmp_path, kind: str) -> None:
    torch.manual_seed(5)
    if kind == "uniform":
        qnet = quantize_parameters(_net(), lambda: UniformQuantizer(3, bucket_size=64))
    else:
        qnet = quantize_parameters(_net(), lambda: PointQuantizer(4, bucket_size=64))
        for i, (_, m, a, q) in enumerate(quantized_parameters(qnet)):
            q.set_points(quantile_points(m.parametrizations[a].original, 2 + i % 5, 64))
    qnet.train()
    qnet(torch.randn(16, 1, 6, 6))                              # BatchNorm running statistics
    qnet.eval()
    x = torch.randn(8, 1, 6, 6)
    path = tmp_path / "student.pt"
    size = save_quantized_student(qnet, str(path))
    plain = load_quantized_student(str(path), _net(seed=9))
    assert torch.allclose(plain.eval()(x), qnet(x), atol=1e-6)
    assert size == path.stat().st_size and size < dense_bytes(_net()) / 2
    if kind == "points":                                        # each value is one of its tensor's points
        for (name, m, a, q), p in zip(quantized_parameters(qnet), plain.parameters()):
            _, alpha, beta = nonuniform_codes(m.parametrizations[a].original, q.points.detach(), 64)
            buckets, n = bucket_view(p.detach(), 64)
            scaled = ((buckets - beta.view(-1, 1)) / alpha.view(-1, 1)).reshape(-1)[:n]
            assert torch.min((scaled.view(-1, 1) - q.points.detach().view(1, -1)).abs(), 1).values.max() < 1e-5


_BLOBS = {"teacher_model_kwargs": {"width": 64, "depth": 2}}


def test_quantized_distillation_trains_a_quantized_student_from_a_teacher() -> None:
    r = run_training("blobs-mlp", [("quantized-distillation", {"bits": 2, "bucket_size": 32, **_BLOBS})],
                     seed=0, keep_state=True)
    assert r.status == "finished" and r.final["teacher_test_acc"] > 0.5 and r.final["model_bytes"] > 0
    # the evaluated weights lie on the grid of their buckets: re-quantizing them changes nothing
    qd = QuantizedDistillationTechnique(bits=2, bucket_size=32, **_BLOBS)
    from trainlab.tasks.registry import get_task
    task = get_task("blobs-mlp")
    model = qd.prepare(task.make_model((16,), 4, **task.model_kwargs), task)
    model.load_state_dict(r.state)
    for _, m, a, q in quantized_parameters(model):
        w = uniform_quantize(m.parametrizations[a].original.detach(), 2, 32)
        assert torch.allclose(uniform_quantize(w, 2, 32), w, atol=1e-6)
    alone = run_training("blobs-mlp", [("quantized-distillation", {"bits": 2, "bucket_size": 32, "distill": False})],
                         seed=0)
    assert "teacher_test_acc" not in alone.final


def test_differentiable_quantization_learns_points_with_frozen_weights() -> None:
    settings = {"bits": 2, "bucket_size": 32, "start": 0.5, "points_lr": 0.05, **_BLOBS}
    tech = DifferentiableQuantizationTechnique(**settings)
    r = run_training("blobs-mlp", [tech], seed=0)
    assert r.status == "finished" and r.final["quant_active"] == 1.0
    entries = quantized_parameters(tech.model)
    counts = [q.points.numel() for _, _, _, q in entries]
    assert sum(counts) == 4 * len(entries) and all(c >= 2 for c in counts)   # allocation keeps the total
    for (_, m, a, q), (_, fm, fa, _) in zip(entries, quantized_parameters(tech.float_student)):
        # the weights stayed at the float student's
        assert torch.equal(m.parametrizations[a].original, fm.parametrizations[fa].original)
        pts = q.points.detach()
        assert torch.equal(pts, torch.sort(pts)[0])
    init = [quantile_points(m.parametrizations[a].original, q.points.numel(), 32) for _, m, a, q in entries]
    assert any(not torch.allclose(i, q.points.detach()) for i, (_, _, _, q) in zip(init, entries))
    control = DifferentiableQuantizationTechnique(**{**settings, "learned": False})
    run_training("blobs-mlp", [control], seed=0)
    for _, _, _, q in quantized_parameters(control.model):
        assert torch.equal(q.points.detach(), torch.linspace(0, 1, 4))


def test_settings_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        QuantizedDistillationTechnique(bits=0)
    with pytest.raises(ConfigError):
        QuantizedDistillationTechnique(bucket_size=0)
    with pytest.raises(ConfigError):
        QuantizedDistillationTechnique(kl_reduction="sum")
    with pytest.raises(ConfigError):
        QuantizedDistillationTechnique(teacher_model_kwargs=[32])
    with pytest.raises(ConfigError):
        DifferentiableQuantizationTechnique(start=1.0)
    with pytest.raises(ConfigError):
        nonuniform_quantize(torch.randn(3), torch.zeros(2, 2))
