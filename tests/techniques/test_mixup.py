"""Mixup: the mixed targets are a distribution, the loss equals the paper's two-term mixture, and
the technique records what later hooks need."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError
from trainlab.techniques.regularization.mixup import (Mixup, as_probabilities, mixup_batch, mixup_criterion,
                                                      sample_lam, unmixed_probabilities)
from trainlab.training.technique import Batch, TrainState


def test_mixed_targets_sum_to_one_and_match_the_inputs_mixture():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 5), torch.randint(0, 4, (16,))
    x_mix, (y_a, y_b, lam), soft = mixup_batch(x, y, alpha=1.0, generator=g, num_classes=4)
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(16))
    # the partner of row i is the row whose label is y_b[i]: find the permutation from the inputs
    perm = [int(torch.argmin(((x_mix[i] - lam * x[i]) / (1 - lam) - x).pow(2).sum(1))) for i in range(16)]
    torch.testing.assert_close(y_b, y[perm])
    expected = lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y[perm], 4).float()
    torch.testing.assert_close(soft, expected)


def test_soft_target_loss_equals_the_hand_computed_mixture():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3)
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    _, (y_a, y_b, lam), soft = mixup_batch(x, y, alpha=0.4, generator=g, num_classes=3)
    by_hand = sum(
        -(lam * torch.log_softmax(logits[i], 0)[y_a[i]] + (1 - lam) * torch.log_softmax(logits[i], 0)[y_b[i]])
        for i in range(8)) / 8
    torch.testing.assert_close(F.cross_entropy(logits, soft), by_hand)
    torch.testing.assert_close(mixup_criterion(F.cross_entropy, logits, y_a, y_b, lam), by_hand)


def test_lam_is_reproducible_and_beta_distributed():
    draws = [sample_lam(0.2, torch.Generator().manual_seed(s)) for s in range(4000)]
    assert draws[:5] == [sample_lam(0.2, torch.Generator().manual_seed(s)) for s in range(5)]
    t = torch.tensor(draws)
    assert abs(float(t.mean()) - 0.5) < 0.03
    # Var of Beta(a, a) is 1 / (4 (2a + 1))
    assert abs(float(t.var()) - 1 / (4 * 1.4)) < 0.02
    assert sample_lam(0.0) == 1.0


def test_already_soft_targets_are_mixed_as_distributions():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(6, 4), dim=1)
    _, (y_a, y_b, lam), soft = mixup_batch(torch.randn(6, 3), probs, alpha=1.0, generator=g)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    torch.testing.assert_close(soft, lam * y_a + (1 - lam) * y_b)
    torch.testing.assert_close(as_probabilities(probs), probs)


def _state(num_classes=4, seed=0, model=None):
    return TrainState(num_classes=num_classes, generator=torch.Generator().manual_seed(seed), model=model)


def test_technique_mixes_the_batch_and_records_the_pairs():
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    batch = Batch(inputs=x, targets=y, indices=torch.arange(10))
    out = Mixup(alpha=1.0).transform_batch(batch, _state())
    mix = out.meta["mix"]
    lam, perm = mix["lam"], mix["perm"]
    torch.testing.assert_close(out.inputs, lam.view(-1, 1) * x + (1 - lam.view(-1, 1)) * x[perm])
    torch.testing.assert_close(out.targets.sum(1), torch.ones(10))
    assert torch.equal(out.labels, y) and torch.equal(mix["labels_b"], y[perm])
    assert torch.equal(mix["clean_inputs"], x)
    with pytest.raises(ConfigError, match="already mixed"):
        Mixup().transform_batch(out, _state())
    with pytest.raises(ConfigError):
        Mixup(alpha=-1)


def test_unmixed_probabilities_use_the_clean_inputs_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model.train()
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    state = _state(model=model)
    batch = Mixup().transform_batch(Batch(inputs=x, targets=y, indices=torch.arange(10)), state)
    outputs = model(batch.inputs)
    running = model[1].running_mean.clone()
    probs = unmixed_probabilities(state, batch, outputs)
    assert model.training  # mode restored
    torch.testing.assert_close(model[1].running_mean, running)  # statistics untouched
    model.eval()
    torch.testing.assert_close(probs, model(x).softmax(1))
    # without mixing, the step's own outputs are used
    plain = Batch(inputs=x, targets=y, indices=torch.arange(10))
    torch.testing.assert_close(unmixed_probabilities(state, plain, outputs), outputs.softmax(1))
