"""Tests of LSQ quantization, PTQ and the quantized artifact against their math."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.compression.quantization import (
    LSQQuantizer, QuantWrapper, calibrate, export_quantized, fake_quantize, int8_dynamic, load_quantized, lsq_init,
    ptq, qrange, quantize_codes, quantize_model, quantized_layers, save_quantized, set_quantization, weight_bytes)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 16, 24), nn.ReLU(), nn.Linear(24, 5))


def _lsq_reference(x: torch.Tensor, s: torch.Tensor, lo: int, hi: int, g: float) -> torch.Tensor:
    """The paper's Appendix formulation with the grad-scale and round-pass tricks."""
    s_scaled = (s - s * g).detach() + s * g
    v = torch.clamp(x / s_scaled, lo, hi)
    return ((v.round() - v).detach() + v) * s_scaled


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_values_lie_on_the_grid(bits: int, signed: bool) -> None:
    lo, hi = qrange(bits, signed)
    assert (lo, hi) == ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1))
    step = torch.tensor(0.37)
    x = torch.cat([torch.randn(4000) * 3, torch.linspace(lo - 3, hi + 3, 1000) * step])
    out = fake_quantize(x, step, lo, hi)
    k = out / step
    assert torch.allclose(k, k.round(), atol=1e-5)
    assert int(k.round().min()) >= lo and int(k.round().max()) <= hi
    # every grid point is hit by a wide enough input, and nothing else
    assert set(k.round().long().tolist()) == set(range(lo, hi + 1))
    assert torch.equal(quantize_codes(x, step, lo, hi).float() * step, out)


def test_ste_gradients_pass_inside_and_vanish_outside() -> None:
    lo, hi = qrange(3, True)                         # [-4, 3]
    step = torch.tensor(0.5, requires_grad=True)
    x = torch.tensor([-3.0, -2.2, -1.9, -0.3, 0.26, 1.4, 1.6, 2.7], requires_grad=True)
    out = fake_quantize(x, step, lo, hi, grad_scale=1.0)
    upstream = torch.arange(1.0, 9.0)
    out.backward(upstream)
    v = x.detach() / 0.5                             # [-6, -4.4, -3.8, -0.6, 0.52, 2.8, 3.2, 5.4]
    inside = (v > lo) & (v < hi)
    assert torch.equal(x.grad, upstream * inside)
    # step gradient by hand: inside round(v) - v, below lo -> lo, above hi -> hi
    per = [lo, lo, round(-3.8) + 3.8, round(-0.6) + 0.6, round(0.52) - 0.52, round(2.8) - 2.8, hi, hi]
    expected = sum(u * p for u, p in zip(upstream.tolist(), per))
    assert step.grad.item() == pytest.approx(expected, rel=1e-6)


def test_step_gradient_matches_the_grad_scale_formulation() -> None:
    torch.manual_seed(1)
    x = torch.randn(16, 10) * 2
    s = (torch.rand(16, 1) + 0.2)
    lo, hi = qrange(4, True)
    g = 1.0 / math.sqrt(10 * hi)
    v = x / s  # keep away from the grid's half points and the boundaries, where both forms are undefined
    x = torch.where(((v - v.floor() - 0.5).abs() < 1e-3) | ((v - lo).abs() < 1e-3) | ((v - hi).abs() < 1e-3),
                    x + 1e-2, x)
    xa, sa = x.clone().requires_grad_(), s.clone().requires_grad_()
    xb, sb = x.clone().requires_grad_(), s.clone().requires_grad_()
    up = torch.randn(16, 10)
    (fake_quantize(xa, sa, lo, hi, g) * up).sum().backward()
    (_lsq_reference(xb, sb, lo, hi, g) * up).sum().backward()
    assert torch.allclose(sa.grad, sb.grad, atol=1e-5)
    inside = ((x / s) > lo) & ((x / s) < hi)
    assert torch.allclose(xa.grad, up * inside)


def test_lsq_gradient_scale_and_init() -> None:
    q = LSQQuantizer(4, signed=True, channels=3, channel_dim=0)
    w = torch.randn(3, 2, 5)
    q(w)  # lazy init
    expected = 2 * w.abs().mean(dim=(1, 2)) / math.sqrt(7)
    assert torch.allclose(q.step.detach(), expected)
    assert q.values_per_step(w) == 10
    # the step gradient carries g = 1/sqrt(N * Q_P)
    q.step.grad = None
    out = q(w)
    out.sum().backward()
    s = q.step.detach().view(3, 1, 1)
    v = w / s
    lo, hi = -8, 7
    raw = torch.where((v > lo) & (v < hi), torch.clamp(v.round(), lo, hi) - v, torch.clamp(v.round(), lo, hi))
    assert torch.allclose(q.step.grad, raw.sum(dim=(1, 2)) / math.sqrt(10 * 7), atol=1e-6)
    assert torch.allclose(lsq_init(w, 7), 2 * w.abs().mean() / math.sqrt(7))


def test_per_channel_scales_quantize_each_row_on_its_own_grid() -> None:
    layer = nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(1, 8) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1))
    wrap = QuantWrapper(layer, 4, None)
    wq = wrap.quantized_weight().detach()
    steps = wrap.weight_quant.step.detach()
    assert steps.shape == (4,)
    assert torch.allclose(steps, 2 * layer.weight.abs().mean(1) / math.sqrt(7))
    k = wq / steps.view(4, 1)
    assert torch.allclose(k, k.round(), atol=1e-4)
    # a row ten times larger gets a ten times larger step and the same codes
    assert steps[1] / steps[0] == pytest.approx(10.0, rel=1e-5)
    assert torch.equal(k[1].round(), k[0].round())


def test_auto_sign_is_unsigned_after_relu() -> None:
    q = LSQQuantizer(4, signed="auto")
    q(torch.relu(torch.randn(8, 3)))
    assert not q.signed and q.range == (0, 15)
    q2 = LSQQuantizer(4, signed="auto")
    q2(torch.randn(8, 3))
    assert q2.signed and q2.range == (-8, 7)


def test_quantize_model_first_last_bits_and_all_params_trained() -> None:
    net = _net()
    q = quantize_model(net, 2, 3, first_last_bits=8)
    layers = quantized_layers(q)
    assert [w.weight_quant.bits for _, w in layers] == [8, 2, 8]
    assert [w.act_quant.bits for _, w in layers] == [8, 3, 8]
    assert not quantized_layers(net)  # not in place by default
    q(torch.randn(4, 1, 8, 8)).sum().backward()
    for name, p in q.named_parameters():
        assert p.grad is not None, name
    same = quantize_model(net, 2, None, first_last_bits=None)
    assert [w.weight_quant.bits for _, w in quantized_layers(same)] == [2, 2, 2]
    assert all(w.act_quant is None for _, w in quantized_layers(same))
    with pytest.raises(ConfigError):
        quantize_model(net, 1, 4)
    with pytest.raises(ConfigError):
        quantize_model(q, 4, 4)


def test_disabled_quantizers_are_the_float_model() -> None:
    net = _net().eval()
    q = quantize_model(net, 4, 4, enabled=False).eval()
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(q(x), net(x))
    set_quantization(q, True)
    assert not torch.equal(q(x), net(x))


def test_ptq_error_decreases_with_bits() -> None:
    net = _net().eval()
    x = torch.randn(64, 1, 8, 8)
    ref = net(x)
    errors = []
    for bits in (2, 3, 4, 6, 8):
        qm = ptq(net, x, bits, first_last_bits=None).eval()
        errors.append(float((qm(x) - ref).pow(2).mean().detach()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_mse_calibration_is_the_grid_optimum_per_channel() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 4)
    with torch.no_grad():  # heavy-tailed rows, where clipping pays
        layer.weight.copy_(torch.distributions.StudentT(2.0).sample((4, 64)))
    net = nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 2))
    errs, steps = {}, {}
    for method in ("mse", "minmax"):
        q = quantize_model(net, 3, None, first_last_bits=None)
        calibrate(q, torch.randn(8, 64), method)
        w = quantized_layers(q)[0][1]
        errs[method] = (w.quantized_weight().detach() - layer.weight.detach()).pow(2).sum(1)
        steps[method] = w.weight_quant.step.detach()
    lo, hi = qrange(3, True)
    amax = layer.weight.detach().abs().amax(1)
    assert torch.allclose(steps["minmax"], amax / hi)
    assert (errs["mse"] < errs["minmax"]).all()
    for c in range(4):  # brute force over the same 100 clipping ratios
        row = layer.weight.detach()[c]
        best = min(float((fake_quantize(row, a * amax[c] / hi, lo, hi) - row).pow(2).sum())
                   for a in torch.linspace(0.01, 1.0, 100).tolist())
        assert float(errs["mse"][c]) == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("per_channel", [True, False])
def test_artifact_round_trip_is_exact(tmp_path, per_channel: bool) -> None:
    net = _net()
    x = torch.randn(16, 1, 8, 8)
    q = quantize_model(net, 3, 4, per_channel=per_channel)
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    for _ in range(3):  # moves weights and steps off their initial values
        opt.zero_grad()
        q(x).pow(2).mean().backward()
        opt.step()
    q.eval()
    size = save_quantized(q, tmp_path / "q.pt")
    back = load_quantized(tmp_path / "q.pt", quantize_model(_net(seed=5), 3, 4, per_channel=per_channel)).eval()
    assert torch.equal(back(x), q(x))
    tensors, meta = export_quantized(q)
    # packed codes take ceil(numel * bits / 8) bytes
    for name, entry in meta["layers"].items():
        assert tensors[f"{name}.codes"].numel() == math.ceil(math.prod(entry["shape"]) * entry["bits"] / 8)
    assert size > 0
    with pytest.raises(ConfigError):
        load_quantized(tmp_path / "q.pt", quantize_model(_net(), 4, 4, per_channel=per_channel))


def test_weight_bytes_counts_packed_codes_and_steps() -> None:
    net = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    q = quantize_model(net, 4, 4, first_last_bits=8)
    expected = (60 + 6 * 4 + 4) + (math.ceil(36 * 4 / 8) + 6 * 4 + 4) + (18 + 3 * 4 + 4) + 4 * (6 + 6 + 3)
    assert weight_bytes(q) == expected


def test_int8_dynamic_uses_the_models_integer_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    q = ptq(net, torch.randn(64, 16), 8, first_last_bits=8).eval()
    fast = int8_dynamic(q)
    for (name, w), module in zip(quantized_layers(q), [fast[0], fast[2]]):
        qweight = module.inner.weight()
        assert torch.equal(qweight.int_repr().long(), w.weight_quant.codes(w.layer.weight))
        assert torch.allclose(qweight.q_per_channel_scales().float(), w.weight_quant.step.detach())
    x = torch.randn(8, 16)
    assert (fast(x) - q(x)).abs().max() < 0.1 * q(x).abs().max()


def test_per_layer_weight_step_uses_all_weights_for_n() -> None:
    layer = nn.Conv1d(3, 4, 5)
    wrap = QuantWrapper(layer, 4, 4, per_channel=False)
    wrap(torch.randn(2, 3, 9))
    wq = wrap.weight_quant
    assert wq.step.shape == () and wq.values_per_step(layer.weight) == 60
    assert torch.allclose(wq.step.detach(), 2 * layer.weight.detach().abs().mean() / math.sqrt(7))
    assert wrap.act_quant.values_per_step(torch.randn(2, 3, 9)) == 27  # one example's inputs


def _tiny_task(epochs: int):
    import dataclasses

    from trainlab.tasks.registry import get_task

    base = get_task("digits-mlp")
    return dataclasses.replace(base, epochs=epochs, model_kwargs={**base.model_kwargs, "width": 16})


def test_qat_technique_switches_on_at_start_and_logs_size() -> None:
    from trainlab.training.trainer import run_training

    res = run_training(_tiny_task(2), [("qat", {"weight_bits": 4, "act_bits": 4, "start": 0.5})], seed=0)
    assert [row["quant_active"] for row in res.epochs] == [0.0, 1.0]
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    assert res.final["model_bytes"] == weight_bytes(quantize_model(net, 4, 4))


def test_ptq_technique_evaluates_the_quantized_model_after_the_float_one() -> None:
    from trainlab.training.trainer import run_training

    task = _tiny_task(2)
    plain = run_training(task, [], seed=1)
    res = run_training(task, [("ptq", {"bits": 2, "first_last_bits": 2})], seed=1, keep_state=True)
    # the float model PTQ starts from is the plain run's model (the quantizers are off until the end)
    assert res.final["float_test_acc"] == plain.final["test_acc"]
    assert "float_test_acc" not in res.epochs[0]
    assert res.final["test_acc"] != plain.final["test_acc"]  # 2-bit everywhere changes the predictions
    assert any(k.endswith("weight_quant.step") for k in res.state)


def test_bf16_weights_technique_rounds_and_counts_two_bytes() -> None:
    from trainlab.training.trainer import run_training

    res = run_training(_tiny_task(1), ["bf16-weights"], seed=0, keep_state=True)
    weights = [v for k, v in res.state.items() if k.endswith("weight")]
    assert all(torch.equal(w, w.to(torch.bfloat16).float()) for w in weights)
    assert res.final["model_bytes"] == 2 * res.params


def test_settings_errors_are_config_errors() -> None:
    from trainlab.techniques.compression.quantization import PTQTechnique, QATTechnique

    with pytest.raises(ConfigError):
        QATTechnique(weight_bits=9)
    with pytest.raises(ConfigError):
        QATTechnique(start=1.0)
    with pytest.raises(ConfigError):
        PTQTechnique(method="kl")
    with pytest.raises(ConfigError):
        PTQTechnique(calib_size=0)
