"""Noise-adaptive layerwise rates: the noise estimator on gradients with known noise, the rate rule,
and that adaptive=False is exactly Muon + AdamW with one rate."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.claims.metrics import metric_value
from trainlab.tasks.registry import get_task
from trainlab.techniques.optimizers.noise_adaptive import (
    CLAIMS,
    NoiseAdaptiveMuon,
    NoiseEstimator,
    dual_norm,
    layer_scales_from_noise,
    split_params,
)
from trainlab.training.trainer import run_training


def _noisy_gradients(steps: int, sigma: float, shape=(8, 6), seed: int = 0, drift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g)
    for t in range(steps):
        yield mean * (1 + drift * t) + sigma * torch.randn(shape, generator=g)


def test_frobenius_estimate_matches_the_known_noise_variance() -> None:
    # G_t = M + sigma Z_t: E||G_t - G_{t-1}||_F^2 / 2 = sigma^2 * m * n
    est = NoiseEstimator(beta=0.99, kind="fro")
    for grad in _noisy_gradients(3000, sigma=0.5):
        value = est.update(grad)
    assert value == pytest.approx(0.25 * 48, rel=0.1)


def test_nuclear_estimate_matches_a_monte_carlo_reference() -> None:
    g = torch.Generator().manual_seed(1)
    reference = sum(float(dual_norm(0.5 * (torch.randn(8, 6, generator=g) - torch.randn(8, 6, generator=g)))) ** 2 / 2
                    for _ in range(2000)) / 2000
    est = NoiseEstimator(beta=0.99, kind="nuclear")
    for grad in _noisy_gradients(3000, sigma=0.5, seed=2):
        value = est.update(grad)
    assert value == pytest.approx(reference, rel=0.1)


def test_estimate_scales_with_the_noise_and_ignores_a_constant_mean() -> None:
    values = {}
    for sigma in (0.1, 0.4):
        est = NoiseEstimator(beta=0.98, kind="fro")
        for grad in _noisy_gradients(2000, sigma=sigma, seed=3):
            values[sigma] = est.update(grad)
    assert values[0.4] / values[0.1] == pytest.approx(16, rel=0.15)


def test_rates_favour_quiet_layers_with_geometric_mean_one() -> None:
    scales = layer_scales_from_noise([1.0, 16.0], ratio_clip=8.0)
    assert scales == pytest.approx([2.0, 0.5])
    assert layer_scales_from_noise([1.0, 1e6], ratio_clip=8.0)[0] == 8.0  # clipped
    assert layer_scales_from_noise([None, 4.0], ratio_clip=8.0) == [1.0, 1.0]


def test_optimizer_gives_noisier_layers_smaller_rates() -> None:
    quiet, loud = nn.Parameter(torch.zeros(8, 6)), nn.Parameter(torch.zeros(8, 6))
    opt = NoiseAdaptiveMuon([quiet, loud], lr=1e-3, dual_norm="fro", noise_beta=0.95)
    assert opt.param_groups[0]["use_muon"]
    for gq, gl in zip(_noisy_gradients(400, 0.1, seed=4), _noisy_gradients(400, 0.4, seed=5)):
        quiet.grad, loud.grad = gq, gl
        opt.step()
    s_quiet, s_loud = opt.layer_scales()
    assert s_quiet / s_loud == pytest.approx(4.0, rel=0.25)
    assert s_quiet * s_loud == pytest.approx(1.0, rel=1e-6)
    muon = opt._engines[0]
    assert muon.param_groups[0]["lr"] / muon.param_groups[1]["lr"] == pytest.approx(s_quiet / s_loud)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is not in this torch")
def test_non_adaptive_is_torch_muon_plus_adamw() -> None:
    torch.manual_seed(0)
    w1, w2, b = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(3, 6)), nn.Parameter(torch.randn(3))
    clones = [nn.Parameter(t.detach().clone()) for t in (w1, w2, b)]
    ours = NoiseAdaptiveMuon([{"params": [w1, w2], "use_muon": True}, {"params": [b], "use_muon": False}],
                             lr=2e-3, weight_decay=0.1, adaptive=False)
    muon = torch.optim.Muon(clones[:2], lr=2e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(clones[2:], lr=2e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in (w1, w2, b)]
        for p, q, gr in zip((w1, w2, b), clones, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step()
        muon.step()
        adamw.step()
    for p, q in zip((w1, w2, b), clones):
        assert torch.equal(p, q)


def test_split_puts_embeddings_and_head_on_adamw() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3))
    groups = split_params(model, model.parameters())
    muon = groups[0]["params"]
    assert groups[0]["use_muon"] and len(muon) == 1 and muon[0] is model[1].weight


def test_technique_runs_in_the_trainer_and_logs_rates() -> None:
    task = get_task("blobs-mlp").with_overrides({"epochs": 2, "lr": 1e-3})
    run = run_training(task, ["noise-adaptive-lr"], seed=0)
    base = run_training(task, [("noise-adaptive-lr", {"adaptive": False})], seed=0)
    assert run.status == base.status == "finished"
    row = run.epochs[-1]
    assert row["nalr_scale_min"] <= 1.0 <= row["nalr_scale_max"]
    assert base.epochs[-1]["nalr_scale_min"] == base.epochs[-1]["nalr_scale_max"] == 1.0
    assert math.isfinite(row["train_loss"])
    # the claims' regime check (layer rates differ) reads these logged keys: computable on a run, and
    # zero for the one-rate arm, where every layer's rate is the same
    pre = CLAIMS[0].preconditions[0]
    high, low = pre.metric_terms()
    spread = metric_value(high, run.to_dict(), 2)[0] - metric_value(low, run.to_dict(), 2)[0]
    assert math.isfinite(spread) and spread > 0
    assert metric_value(high, base.to_dict(), 2)[0] - metric_value(low, base.to_dict(), 2)[0] == 0.0
