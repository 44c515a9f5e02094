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
from trainlab.techniques.regularization.nested_dropout import (HeldOutSlice, HoldOutSliceTechnique, NestedDropout,
                                                               NestedDropoutTechnique, best_prefix, holdout_indices,
                                                               insert_before_last_linear, prefix_accuracies,
                                                               prefix_distribution, prefix_mask)
from trainlab.training.technique import Batch, Technique
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


# --------------------------------------------------------------------------- K chosen on clean held-out data

def test_prefix_accuracies_equal_the_masked_classifier():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    h, y = torch.randn(50, 6), torch.randint(0, 4, (50,))
    acc = prefix_accuracies(h, linear, y)
    for k in range(1, 7):   # the classifier on h * mask_k, one prefix at a time
        ref = (linear(h * prefix_mask(torch.tensor([k]), 6)).argmax(1) == y).float().mean()
        assert acc[k - 1].item() == pytest.approx(ref.item())
    # hand case: two features, weights pick class 0 from feature 1 and class 1 from feature 2
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        lin.bias.zero_()
    feats = torch.tensor([[1.0, 1.0], [2.0, 0.5]])
    # k=1: logits [1, 0] and [2, 0] -> class 0, 0; k=2: [1, 3] -> 1, [2, 1.5] -> 0
    assert prefix_accuracies(feats, lin, torch.tensor([1, 0])).tolist() == [0.5, 1.0]
    assert prefix_accuracies(feats, lin, torch.tensor([0, 0])).tolist() == [1.0, 0.5]


def test_best_prefix_prefers_the_shorter_on_ties():
    assert best_prefix(torch.tensor([0.2, 0.7, 0.7, 0.5])) == 2
    assert best_prefix(torch.tensor([0.9, 0.7])) == 1
    assert best_prefix(torch.tensor([0.1, 0.2, 0.3])) == 3


def test_holdout_indices_are_stratified_and_seed_fixed():
    y = torch.arange(5).repeat_interleave(40)
    idx = holdout_indices(y, 0.1, seed=3)
    assert torch.bincount(y[idx], minlength=5).tolist() == [4] * 5
    assert torch.equal(idx, holdout_indices(y, 0.1, seed=3)) and not torch.equal(idx, holdout_indices(y, 0.1, seed=4))
    assert torch.equal(idx, idx.sort().values)


def test_held_out_rows_are_replaced_by_the_batch_s_own_rows_in_order():
    slice_ = HeldOutSlice(0.5)
    slice_.mask = torch.tensor([False, True, False, True, True, False])
    batch = Batch(inputs=torch.arange(6.0).view(6, 1), targets=torch.arange(6), indices=torch.arange(6))
    out = slice_.filter(batch)
    # held-out positions 1, 3, 4 take the kept rows 0, 2, 5 in order
    assert out.indices.tolist() == [0, 0, 2, 2, 5, 5]
    assert out.inputs.flatten().tolist() == [0.0, 0.0, 2.0, 2.0, 5.0, 5.0] and out.labels.tolist() == out.indices.tolist()
    # a second filter with the same slice changes nothing (nested dropout + holdout-slice = one filter)
    again = slice_.filter(out)
    assert torch.equal(again.indices, out.indices) and torch.equal(again.inputs, out.inputs)
    with pytest.raises(ConfigError):
        HeldOutSlice(0.0)


class _SeenIndices(Technique):
    """Records the training indices each step really trains on (after the other batch transforms)."""

    name = "seen-indices-spy"
    order = 99

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def transform_batch(self, batch, state):
        self.seen.update(batch.indices.tolist())
        return batch


def _noisy_blobs_task() -> Task:
    return Task("tiny-noisy-blobs", make_data=functools.partial(blobs, n_train=320, n_test=96, dim=8, classes=4),
                make_model=functools.partial(build_model, "mlp"), model_kwargs={"width": 16, "depth": 1},
                epochs=3, batch_size=32, lr=0.05, label_noise=0.4, noise_kind="symmetric-all")


def test_holdout_k_is_the_best_prefix_on_clean_held_out_data():
    from trainlab.tasks.loading import load_task_data

    task = _noisy_blobs_task()
    spy, ctrl_spy = _SeenIndices(), _SeenIndices()
    nested = NestedDropoutTechnique(sigma=4.0, eval_k="holdout", holdout=0.2)
    result = run_training(task, [nested, spy], seed=1, keep_state=True)
    control = run_training(task, [HoldOutSliceTechnique(fraction=0.2), ctrl_spy], seed=1)
    data = load_task_data(task, seed=1)
    held = holdout_indices(data.clean_train_y, 0.2, seed=1)
    assert torch.equal(nested.holdout.y, data.clean_train_y[held])        # clean labels, not the noisy ones
    # neither arm ever trains on a held-out example, and both train on the same examples
    assert not spy.seen & set(held.tolist()) and spy.seen == ctrl_spy.seen
    assert len(spy.seen) == 320 - len(held)
    # the chosen K is the best prefix of the final model on the held-out slice, recomputed here
    # through the layer's own eval path (first k features kept) on a rebuilt copy of the model
    fresh = NestedDropoutTechnique(sigma=4.0, eval_k=None)
    model = fresh.prepare(task.make_model(data.input_shape, data.num_classes, **task.model_kwargs), task)
    model.load_state_dict(result.state)
    model.eval()
    accs = []
    for k in range(1, fresh.layer.num_features + 1):
        fresh.layer.eval_k = k
        accs.append((model(data.train_x[held]).argmax(1) == data.clean_train_y[held]).float().mean())
    acc = torch.stack(accs)
    assert result.epochs[-1]["nested_eval_k"] == best_prefix(acc) == nested.layer.eval_k
    assert result.epochs[-1]["nested_holdout_acc"] == pytest.approx(acc.max().item())
    assert result.epochs[-1]["nested_holdout_acc_all_k"] == pytest.approx(acc[-1].item())
    with pytest.raises(ConfigError, match="holdout"):
        NestedDropoutTechnique(eval_k="holdout", holdout=1.5)
