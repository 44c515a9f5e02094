"""The Trainer: determinism, resume, divergence, hooks, technique conflicts."""
from __future__ import annotations

import pytest
import torch

from trainlab.errors import CheckpointError, ConfigError
from trainlab.tasks.registry import get_task
from trainlab.training.technique import Technique, check_compatible
from trainlab.training.trainer import run_training

TASK = get_task("blobs-mlp")


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bitwise_equal_weights():
    r1 = run_training(TASK, seed=3, keep_state=True)
    r2 = run_training(TASK, seed=3, keep_state=True)
    assert r1.status == r2.status == "finished"
    assert _equal_states(r1.state, r2.state)
    r3 = run_training(TASK, seed=4, keep_state=True)
    assert not _equal_states(r1.state, r3.state)


def test_learns_the_task_and_reports_metrics():
    r = run_training(TASK, seed=0)
    assert len(r.epochs) == TASK.epochs
    assert [row["epoch"] for row in r.epochs] == list(range(1, TASK.epochs + 1))
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "test_ece", "lr"):
        assert key in r.final
    assert r.final["test_acc"] > 0.8  # 4 well-separated blobs: chance is 0.25
    assert r.epochs[-1]["train_loss"] < r.epochs[0]["train_loss"]
    assert 0 <= r.final["test_ece"] <= 1
    assert r.time_per_step > 0 and r.params > 0 and r.optimizer_state_bytes > 0  # SGD momentum buffers


def test_resume_equals_uninterrupted(tmp_path):
    ck = tmp_path / "run.ckpt"
    full = run_training(TASK, seed=1, keep_state=True)
    part = run_training(TASK, seed=1, checkpoint=ck, stop_after_epochs=2)
    assert len(part.epochs) == 2 and ck.exists()
    resumed = run_training(TASK, seed=1, checkpoint=ck, resume=True, keep_state=True)
    assert _equal_states(full.state, resumed.state)
    assert [r["test_acc"] for r in resumed.epochs] == [r["test_acc"] for r in full.epochs]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    ck = tmp_path / "run.ckpt"
    run_training(TASK, seed=1, checkpoint=ck, stop_after_epochs=1)
    with pytest.raises(CheckpointError, match="another run"):
        run_training(TASK, seed=2, checkpoint=ck, resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    ck = tmp_path / "bad.ckpt"
    ck.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        run_training(TASK, seed=0, checkpoint=ck, resume=True)


def test_non_finite_loss_ends_as_diverged():
    r = run_training(TASK.with_overrides({"lr": 1e8}), seed=0)
    assert r.status == "diverged"
    assert r.diverged_step is not None and r.diverged_step >= 0
    assert r.final["test_loss"] != r.final["test_loss"]  # NaN


class _RecordHooks(Technique):
    name = "record-hooks"
    modifies = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.indices: list[torch.Tensor] = []

    def on_train_start(self, model, optimizer, state):
        self.calls.append("start")

    def transform_batch(self, batch, state):
        self.calls.append("batch")
        self.indices.append(batch.indices.clone())
        return batch

    def loss(self, outputs, batch, state, base_loss):
        self.calls.append("loss")
        return base_loss

    def after_backward(self, model, state):
        self.calls.append("backward")
        assert all(p.grad is not None for p in model.parameters())

    def after_step(self, model, optimizer, state):
        self.calls.append("step")

    def on_epoch_end(self, model, state):
        self.calls.append("epoch")
        state.epoch_metrics["custom_metric"] = 42.0


def test_hooks_are_called_in_order_and_metrics_recorded():
    t = _RecordHooks()
    r = run_training(TASK.with_overrides({"epochs": 1}), [t], seed=0)
    steps = len(t.indices)
    assert t.calls[0] == "start"
    assert t.calls[1:1 + 4 * steps] == ["batch", "loss", "backward", "step"] * steps
    assert t.calls[-1] == "epoch"
    assert r.final["custom_metric"] == 42.0
    seen = torch.cat(t.indices)
    assert len(set(seen.tolist())) == len(seen)  # every sample at most once per epoch


def test_data_order_depends_only_on_seed():
    a, b = _RecordHooks(), _RecordHooks()
    run_training(TASK.with_overrides({"epochs": 1}), [a], seed=5)
    run_training(TASK.with_overrides({"epochs": 1, "lr": 0.2}), [b], seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))


class _OptA(Technique):
    name = "opt-a"
    modifies = frozenset({"optimizer"})


class _OptB(Technique):
    name = "opt-b"
    modifies = frozenset({"optimizer"})


def test_two_optimizer_techniques_are_refused_naming_both():
    with pytest.raises(ConfigError, match="'opt-a' and 'opt-b'.*optimizer"):
        check_compatible([_OptA(), _OptB()])


def test_unknown_technique_and_task_are_config_errors():
    with pytest.raises(ConfigError, match="unknown technique 'nope'"):
        run_training(TASK, ["nope"])
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        run_training("nope")
