"""ELR: the target update and the regularizer on hand-computed cases, checkpoint round trip, and the
compositions it allows (with mixup) and refuses (with PS-KD)."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError
from trainlab.tasks.models import build_model
from trainlab.tasks.synthetic import blobs
from trainlab.tasks.task import Task
from trainlab.techniques.regularization.elr import ELR, ELRLoss, elr_regularizer, update_targets
from trainlab.training.technique import Batch, TrainState, check_compatible
from trainlab.training.trainer import build_techniques, run_training

TINY = Task("tiny-blobs", make_data=functools.partial(blobs, n_train=192, n_test=96, dim=8, classes=3),
            make_model=functools.partial(build_model, "mlp"), model_kwargs={"width": 16, "depth": 1},
            epochs=2, batch_size=32, lr=0.05)


def test_target_update_hand_computed():
    t = torch.zeros(4, 3)
    t[2] = torch.tensor([0.2, 0.5, 0.3])
    p = torch.tensor([[0.6, 0.3, 0.1], [1.0, 0.0, 0.0]])
    update_targets(t, torch.tensor([2, 0]), p, beta=0.7)
    torch.testing.assert_close(t[2], 0.7 * torch.tensor([0.2, 0.5, 0.3]) + 0.3 * torch.tensor([0.6, 0.3, 0.1]))
    # the clamp to [1e-4, 1 - 1e-4] and renormalization, as in the official code
    clamped = torch.tensor([1 - 1e-4, 1e-4, 1e-4])
    torch.testing.assert_close(t[0], 0.3 * clamped / clamped.sum())
    assert torch.equal(t[[1, 3]], torch.zeros(2, 3))


def test_regularizer_value_and_loss():
    z = torch.tensor([[1.0, 0.0, -1.0]])
    target = torch.tensor([[0.5, 0.25, 0.25]])
    e = [math.exp(v) for v in (1.0, 0.0, -1.0)]
    p = [v / sum(e) for v in e]
    assert float(elr_regularizer(z, target)) == pytest.approx(math.log(1 - (0.5 * p[0] + 0.25 * p[1] + 0.25 * p[2])))
    elr = ELRLoss(num_examples=5, num_classes=3, beta=0.7, lam=3.0)
    y = torch.tensor([0])
    loss = elr(z, y, torch.tensor([4]))
    t = 0.3 * torch.tensor(p)  # first update from zero targets
    expected = F.cross_entropy(z, y) + 3.0 * math.log(1 - float((t * torch.tensor(p)).sum()))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_technique_with_mixed_batch_mixes_the_targets():
    elr = ELR(beta=0.5, lam=1.0)
    model = torch.nn.Linear(2, 3)
    state = TrainState(num_train=6, num_classes=3, model=model)
    elr.on_train_start(model, None, state)
    elr.targets[:] = torch.eye(3).repeat(2, 1)  # sample i has target e_{i mod 3}
    x = torch.randn(2, 2)
    idx, perm, lam = torch.tensor([0, 4]), torch.tensor([1, 0]), torch.tensor([0.75, 0.75])
    meta = {"mix": {"labels_a": torch.tensor([0, 1]), "labels_b": torch.tensor([1, 0]), "lam": lam, "perm": perm,
                    "clean_inputs": x}}
    mixed_x = 0.75 * x + 0.25 * x[perm]
    batch = Batch(inputs=mixed_x, targets=torch.rand(2, 3).softmax(1), indices=idx, labels=torch.tensor([0, 1]),
                  meta=meta)
    out = model(mixed_x)
    got = elr.loss(out, batch, state, torch.tensor(0.0))
    clean = model(x).detach().softmax(1).clamp(1e-4, 1 - 1e-4)
    t = 0.5 * torch.eye(3)[[0, 1]] + 0.5 * clean / clean.sum(1, keepdim=True)  # updated from the clean samples
    q = 0.75 * t + 0.25 * t[perm]
    torch.testing.assert_close(got, elr_regularizer(out, q))


def test_state_dict_round_trip_and_resume_shape_check():
    elr = ELR()
    state = TrainState(num_train=10, num_classes=3)
    elr.on_train_start(None, None, state)
    update_targets(elr.targets, torch.tensor([1, 2]), torch.rand(2, 3), 0.7)
    saved = elr.state_dict()
    other = ELR()
    other.load_state_dict(saved)
    other.on_train_start(None, None, state)
    torch.testing.assert_close(other.targets, elr.targets)
    fresh = ELR()  # a new run starts from zeros
    fresh.on_train_start(None, None, state)
    assert torch.equal(fresh.targets, torch.zeros(10, 3))
    bad = ELR()
    bad.load_state_dict(saved)
    with pytest.raises(Exception, match="shape"):
        bad.on_train_start(None, None, TrainState(num_train=11, num_classes=3))


def test_elr_with_mixup_trains_and_elr_with_ps_kd_is_refused():
    result = run_training(TINY, [("mixup", {"alpha": 1.0}), ("elr", {"lam": 3.0})], seed=0)
    assert result.status == "finished"
    assert math.isfinite(result.final["train_loss"])
    with pytest.raises(ConfigError, match="'elr' and 'ps-kd' cannot be combined.*loss objective"):
        build_techniques([("elr", {}), ("ps-kd", {})])
    # compatible composition keeps mixing before the objective
    order = [t.name for t in check_compatible(build_techniques([("elr", {}), ("mixup", {})]))]
    assert order == ["mixup", "elr"]


def test_bad_settings():
    with pytest.raises(ConfigError):
        ELR(beta=1.0)
    with pytest.raises(ConfigError):
        ELR(lam=-1)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_run_equals_uninterrupted(tmp_path):
    techs = [("mixup", {}), ("elr", {})]
    task = TINY.with_overrides({"epochs": 3})
    full = run_training(task, techs, seed=2, keep_state=True)
    ck = tmp_path / "run.ckpt"
    run_training(task, techs, seed=2, checkpoint=ck, stop_after_epochs=1)
    resumed = run_training(task, techs, seed=2, checkpoint=ck, resume=True, keep_state=True)
    assert _same_state(full.state, resumed.state)
