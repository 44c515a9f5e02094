"""Decoupled Mixup: the loss on a hand-computed case, its limits, and its refusal to run unmixed."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError
from trainlab.techniques.regularization.decoupled_mixup import (DecoupledMixup, decoupled_log_softmax,
                                                                decoupled_mixup_loss, decoupled_regularizer)
from trainlab.training.technique import Batch, TrainState


def test_hand_computed_case():
    z = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    a, b, lam, eta = torch.tensor([0]), torch.tensor([1]), 0.7, 0.1
    e = [math.exp(v) for v in z[0].tolist()]
    total = sum(e)
    mce = -(lam * math.log(e[0] / total) + (1 - lam) * math.log(e[1] / total))
    rest = e[2] + e[3]
    dr = -math.log(e[0] / (e[0] + rest)) - math.log(e[1] / (e[1] + rest))
    got = decoupled_mixup_loss(z, a, b, lam, eta=eta)
    assert float(got) == pytest.approx(mce + eta * dr, rel=1e-6)
    # lam-weighted variant (openmixup's CIFAR-100 base config): w_a = lam, w_b = 1 - lam
    dr_w = -lam * math.log(e[0] / (e[0] + rest)) - (1 - lam) * math.log(e[1] / (e[1] + rest))
    assert float(decoupled_mixup_loss(z, a, b, lam, eta=eta, lam_power=1.0)) == pytest.approx(mce + eta * dr_w, rel=1e-6)
    # only the class with the smaller share (b, 0.3) / the larger share (a, 0.7)
    minority = -math.log(e[1] / (e[1] + rest))
    majority = -math.log(e[0] / (e[0] + rest))
    assert float(decoupled_mixup_loss(z, a, b, lam, eta=eta, mode="minority")) == pytest.approx(mce + eta * minority, rel=1e-6)
    assert float(decoupled_mixup_loss(z, a, b, lam, eta=eta, mode="majority")) == pytest.approx(mce + eta * majority, rel=1e-6)


def test_limits_eta_zero_and_same_class_pairs():
    torch.manual_seed(0)
    z = torch.randn(6, 5, requires_grad=True)
    a, b = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 1, 0, 4, 2, 0])
    lam = torch.rand(6)
    soft = lam.view(-1, 1) * F.one_hot(a, 5) + (1 - lam.view(-1, 1)) * F.one_hot(b, 5)
    torch.testing.assert_close(decoupled_mixup_loss(z, a, b, lam, eta=0.0, reduction="mean"),
                               F.cross_entropy(z, soft.float()))
    # a pair of the same class gets no decoupled term (and no -inf anywhere)
    same = decoupled_mixup_loss(z[[1]], a[[1]], b[[1]], lam[[1]], eta=1.0)
    torch.testing.assert_close(same, F.cross_entropy(z[[1]], a[[1]]))
    loss = decoupled_mixup_loss(z, a, b, lam, eta=1.0)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_decoupled_softmax_leaves_one_class_out():
    z = torch.tensor([[1.0, 3.0, 0.0]])
    got = decoupled_log_softmax(z, torch.tensor([0]), torch.tensor([1]))
    assert float(got) == pytest.approx(1.0 - math.log(math.exp(1.0) + math.exp(0.0)))


def test_technique_needs_a_mixing_policy():
    dm = DecoupledMixup(eta=0.1)
    state = TrainState(num_classes=3)
    y = torch.tensor([0, 1])
    batch = Batch(inputs=torch.randn(2, 4), targets=y, indices=torch.arange(2))
    with pytest.raises(ConfigError, match="mixing technique"):
        dm.loss(torch.randn(2, 3), batch, state, torch.tensor(0.0))
    meta = {"mix": {"labels_a": y, "labels_b": torch.tensor([2, 0]), "lam": torch.tensor([0.6, 0.6]),
                    "perm": torch.tensor([1, 0]), "clean_inputs": batch.inputs}}
    out = torch.randn(2, 3)
    got = dm.loss(out, batch.replace(meta=meta), state, torch.tensor(0.0))
    torch.testing.assert_close(got, decoupled_mixup_loss(out, y, torch.tensor([2, 0]), 0.6, eta=0.1))
    with pytest.raises(ConfigError):
        DecoupledMixup(mode="less")


def test_official_batch_reduction():
    """openmixup's soft_mix_cross_entropy: the mean loss over the samples that mix two classes plus the
    mean cross-entropy over the others (same-class pairs, or a share <= 1e-3); no decoupled term when
    the two shares are equal."""
    torch.manual_seed(1)
    z = torch.randn(5, 4)
    a, b = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([1, 1, 3, 0, 1])  # samples 1 and 4: same class
    lam, eta = 0.7, 0.3
    logp = F.log_softmax(z, dim=1)
    mce = -(lam * logp[torch.arange(5), a] + (1 - lam) * logp[torch.arange(5), b])
    dr = decoupled_regularizer(z, a, b, torch.full((5,), lam))
    two = torch.tensor([True, False, True, True, False])
    expected = (mce + eta * dr)[two].mean() + (-logp[torch.arange(5), a])[~two].mean()
    torch.testing.assert_close(decoupled_mixup_loss(z, a, b, lam, eta=eta), expected)
    assert float(dr[1]) == 0.0 and float(dr[4]) == 0.0 and float(dr[0]) > 0.0
    # equal shares: the decoupled term is dropped (for every sample, as lam is one per batch)
    half = decoupled_mixup_loss(z, a, b, 0.5, eta=eta)
    mce_half = -(0.5 * logp[torch.arange(5), a] + 0.5 * logp[torch.arange(5), b])
    torch.testing.assert_close(half, mce_half[two].mean() + mce_half[~two].mean())
    # a share below the 1e-3 eps counts as unmixed: no decoupled term, one mean over all samples
    torch.testing.assert_close(decoupled_mixup_loss(z, a, b, 1.0 - 1e-4, eta=eta),
                               -(logp[torch.arange(5), a] * (1 - 1e-4) + logp[torch.arange(5), b] * 1e-4).mean(),
                               rtol=1e-5, atol=1e-6)
    # all samples of one kind: a single mean
    torch.testing.assert_close(decoupled_mixup_loss(z[two], a[two], b[two], lam, eta=eta),
                               (mce + eta * dr)[two].mean())
    with pytest.raises(ConfigError):
        decoupled_mixup_loss(z, a, b, lam, reduction="sum")
    with pytest.raises(ConfigError):
        DecoupledMixup(reduction="sum")
