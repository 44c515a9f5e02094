"""Nested dropout: masks are prefixes, k follows the stated distribution, the layer sits in front of
the last Linear, and eval keeps a fixed prefix."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.models import build_model
from trainlab.tasks.synthetic import blobs
from trainlab.tasks.task import Task
from trainlab.techniques.regularization.nested_dropout import (NestedDropout, NestedDropoutTechnique,
                                                               insert_before_last_linear, prefix_distribution,
                                                               prefix_mask)
from trainlab.training.trainer import run_training


def test_masks_are_prefixes():
    g = torch.Generator().manual_seed(0)
    layer = NestedDropout(12, sigma=4.0, per_sample=True, generator=g)
    h = torch.randn(200, 12).abs() + 0.1  # nonzero everywhere
    out = layer(h)
    kept = out != 0
    k = kept.sum(1)
    assert torch.equal(k, layer.last_k.flatten())
    for row, n in zip(kept, k):
        assert row[:n].all() and not row[n:].any()
    torch.testing.assert_close(out[kept], h[kept])  # kept features are not rescaled
    assert (k >= 1).all()


def test_one_prefix_per_batch_by_default():
    layer = NestedDropout(8, sigma=3.0, generator=torch.Generator().manual_seed(1))
    out = layer(torch.ones(5, 8))
    assert (out == out[0]).all()


def test_prefix_lengths_follow_the_distribution():
    probs = prefix_distribution(10, "gaussian", sigma=3.0)
    k = torch.arange(1, 11, dtype=torch.float64)
    expected = torch.exp(-(k / 3.0) ** 2)
    torch.testing.assert_close(probs, (expected / expected.sum()).float())
    geo = prefix_distribution(5, "geometric", rho=0.5)
    torch.testing.assert_close(geo, torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.03125]) / 0.96875)
    layer = NestedDropout(10, sigma=3.0, per_sample=True, generator=torch.Generator().manual_seed(2))
    layer(torch.ones(20000, 10))
    freq = torch.bincount(layer.last_k, minlength=11)[1:].float() / 20000
    assert (freq - probs).abs().max() < 0.015
    torch.testing.assert_close(prefix_mask(torch.tensor([2, 0]), 3), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def test_eval_keeps_the_auto_prefix_or_everything():
    layer = NestedDropout(64, sigma=10.0)
    cdf = prefix_distribution(64, sigma=10.0).cumsum(0)
    assert cdf[layer.eval_k - 1] >= 0.99 and cdf[layer.eval_k - 2] < 0.99
    layer.eval()
    out = layer(torch.ones(3, 64))
    assert out[:, :layer.eval_k].eq(1).all() and out[:, layer.eval_k:].eq(0).all()
    full = NestedDropout(64, eval_k=None).eval()
    assert torch.equal(full(torch.ones(3, 64)), torch.ones(3, 64))
    with pytest.raises(ConfigError):
        NestedDropout(8, eval_k=9)


def test_inserted_before_the_last_linear_and_trains():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    insert_before_last_linear(model, NestedDropout(6, eval_k=None))
    assert isinstance(model[2], nn.Sequential) and isinstance(model[2][0], NestedDropout)
    assert model[2][1].in_features == 6
    task = Task("tiny-blobs", make_data=functools.partial(blobs, n_train=192, n_test=96, dim=8, classes=3),
                make_model=functools.partial(build_model, "mlp"), model_kwargs={"width": 16, "depth": 1},
                epochs=2, batch_size=32, lr=0.05, label_noise=0.3)
    result = run_training(task, [("nested-dropout", {"sigma": 4.0})], seed=0, keep_state=True)
    assert result.status == "finished"
    assert any(k.startswith("head.1.") for k in result.state)
    assert result.epochs[-1]["nested_eval_k"] == NestedDropout(16, sigma=4.0).eval_k
    with pytest.raises(ConfigError):
        NestedDropoutTechnique(distribution="uniform")
