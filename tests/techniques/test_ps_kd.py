"""PS-KD: the alpha schedule, the soft targets from stored predictions, checkpoints, and composing
with mixup."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError
from trainlab.tasks.models import build_model
from trainlab.tasks.synthetic import blobs
from trainlab.tasks.task import Task
from trainlab.techniques.regularization.mixup import Mixup
from trainlab.techniques.regularization.ps_kd import PSKD, PSKDTargets, alpha_schedule
from trainlab.training.technique import Batch, TrainState
from trainlab.training.trainer import run_training

TINY = Task("tiny-blobs", make_data=functools.partial(blobs, n_train=192, n_test=96, dim=8, classes=3),
            make_model=functools.partial(build_model, "mlp"), model_kwargs={"width": 16, "depth": 1},
            epochs=3, batch_size=32, lr=0.05)


def test_alpha_schedule_is_linear_up_to_alpha_T():
    T = 300
    assert alpha_schedule(0.8, 0, T) == pytest.approx(0.8 / T)
    assert alpha_schedule(0.8, 149, T) == pytest.approx(0.4)
    assert alpha_schedule(0.8, T - 1, T) == pytest.approx(0.8)
    steps = [alpha_schedule(0.8, e, 10) for e in range(10)]
    assert all(b - a == pytest.approx(0.08) for a, b in zip(steps, steps[1:]))


def test_targets_from_the_previous_predictions():
    store = PSKDTargets(num_examples=4, num_classes=3, alpha_T=0.8)
    y, idx = torch.tensor([0, 2]), torch.tensor([1, 3])
    # first epoch: no predictions yet, the "previous prediction" is the label: plain one-hot
    torch.testing.assert_close(store.targets(y, idx, 0, 4), F.one_hot(y, 3).float())
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    store.remember(probs, idx, probs=True)
    alpha = 0.8 * 2 / 4  # epoch 1 of 4
    expected = (1 - alpha) * F.one_hot(y, 3).float() + alpha * probs
    got = store.targets(y, idx, 1, 4)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(2))


def test_technique_replaces_targets_and_remembers_predictions():
    model = torch.nn.Linear(2, 3)
    state = TrainState(num_train=5, num_classes=3, epochs=2, model=model)
    tech = PSKD(alpha_T=0.8)
    tech.on_train_start(model, None, state)
    batch = Batch(inputs=torch.randn(2, 2), targets=torch.tensor([1, 2]), indices=torch.tensor([0, 3]))
    out_batch = tech.transform_batch(batch, state)
    torch.testing.assert_close(out_batch.targets, F.one_hot(batch.targets, 3).float())
    outputs = model(batch.inputs)
    base = F.cross_entropy(outputs, out_batch.targets)
    assert tech.loss(outputs, out_batch, state, base) is base
    torch.testing.assert_close(tech.store.predictions[[0, 3]], outputs.detach().softmax(1))
    state.epoch = 1
    soft = tech.transform_batch(batch, state).targets
    torch.testing.assert_close(soft, 0.2 * F.one_hot(batch.targets, 3).float() + 0.8 * outputs.detach().softmax(1))
    # round trip
    again = PSKD(alpha_T=0.8)
    again.load_state_dict(tech.state_dict())
    again.on_train_start(model, None, state)
    torch.testing.assert_close(again.store.predictions, tech.store.predictions)
    assert torch.equal(again.store.seen, tech.store.seen)


def test_with_mixup_the_soft_targets_are_mixed():
    state = TrainState(num_train=6, num_classes=3, epochs=2, epoch=1, generator=torch.Generator().manual_seed(0),
                       model=torch.nn.Linear(2, 3))
    tech = PSKD()
    tech.on_train_start(state.model, None, state)
    tech.store.remember(torch.softmax(torch.randn(6, 3), 1), torch.arange(6), probs=True)
    batch = Batch(inputs=torch.randn(4, 2), targets=torch.tensor([0, 1, 2, 0]), indices=torch.tensor([0, 1, 2, 3]))
    soft = tech.transform_batch(batch, state)
    mixed = Mixup().transform_batch(soft, state)
    mix = mixed.meta["mix"]
    lam = mix["lam"].view(-1, 1)
    torch.testing.assert_close(mixed.targets, lam * soft.targets + (1 - lam) * soft.targets[mix["perm"]])
    with pytest.raises(ConfigError, match="integer labels"):
        tech.transform_batch(mixed, state)


def test_runs_through_the_trainer_alone_and_with_mixup():
    for techs in ([("ps-kd", {})], [("ps-kd", {}), ("mixup", {})]):
        result = run_training(TINY, techs, seed=1)
        assert result.status == "finished"
        assert 0.0 <= result.final["test_acc"] <= 1.0


def test_resumed_run_equals_uninterrupted(tmp_path):
    full = run_training(TINY, [("ps-kd", {})], seed=3, keep_state=True)
    ck = tmp_path / "run.ckpt"
    run_training(TINY, [("ps-kd", {})], seed=3, checkpoint=ck, stop_after_epochs=2)
    resumed = run_training(TINY, [("ps-kd", {})], seed=3, checkpoint=ck, resume=True, keep_state=True)
    assert full.state.keys() == resumed.state.keys()
    assert all(torch.equal(full.state[k], resumed.state[k]) for k in full.state)


def test_three_epochs_match_a_transcription_of_the_authors_training_loop():
    # The authors' loop (lgcnsai/PS-KD-Pytorch, main.py `main`/`train`, loss/pskd_loss.py), transcribed:
    # alpha_t = max(0, alpha_T * (epoch + 1) / end_epoch); in epoch 0 the stored predictions of the
    # batch's samples are set to their one-hot labels; soft = (1 - alpha_t) one_hot + alpha_t stored;
    # loss = (-soft * log_softmax(out)).mean(0).sum(); after the step the batch's softmax outputs
    # (of the same forward pass) replace the stored predictions.
    torch.manual_seed(0)
    n, c, epochs, alpha_T = 12, 3, 3, 0.8
    x, y = torch.randn(n, 4), torch.randint(0, c, (n,))
    orders = [torch.randperm(n) for _ in range(epochs)]
    official_model = torch.nn.Linear(4, c)
    ours_model = torch.nn.Linear(4, c)
    ours_model.load_state_dict(official_model.state_dict())

    opt = torch.optim.SGD(official_model.parameters(), lr=0.5)
    all_predictions = torch.zeros(n, c)
    for epoch in range(epochs):
        alpha_t = max(0, alpha_T * ((epoch + 1) / epochs))
        for idx in orders[epoch].split(4):
            one_hot = torch.eye(c)[y[idx]]
            if epoch == 0:
                all_predictions[idx] = one_hot
            soft = (1 - alpha_t) * one_hot + alpha_t * all_predictions[idx]
            out = official_model(x[idx])
            loss = (-soft * F.log_softmax(out, dim=1)).mean(0).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            all_predictions[idx] = F.softmax(out, dim=1).detach()

    opt = torch.optim.SGD(ours_model.parameters(), lr=0.5)
    state = TrainState(num_train=n, num_classes=c, epochs=epochs, model=ours_model)
    tech = PSKD(alpha_T=alpha_T)
    tech.on_train_start(ours_model, opt, state)
    for epoch in range(epochs):
        state.epoch = epoch
        for idx in orders[epoch].split(4):
            batch = tech.transform_batch(Batch(inputs=x[idx], targets=y[idx], indices=idx), state)
            out = ours_model(batch.inputs)
            loss = tech.loss(out, batch, state, F.cross_entropy(out, batch.targets))  # the Trainer's base loss
            opt.zero_grad()
            loss.backward()
            opt.step()

    for a, b in zip(ours_model.parameters(), official_model.parameters()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(tech.store.predictions, all_predictions)
