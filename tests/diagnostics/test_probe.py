"""The Probe base class: measurements land in the run's epochs at the right epochs, the model's
mode is restored, gradients are cleared, measuring seconds are recorded; probe_data."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.diagnostics.probe import Probe, probe_data, probe_seconds_key
from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task
from trainlab.tasks.task import DataBundle
from trainlab.techniques import registry
from trainlab.training.technique import Paper, TrainState
from trainlab.training.trainer import run_training

NAME = "test-probe-weight-norm"


def weight_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.parameters())))


class WeightNormProbe(Probe):
    """Test probe: the parameters' L2 norm; it also leaves gradients behind and records the mode it saw."""

    name = NAME
    paper = Paper(title="a test probe", authors="none", year=2000)
    fidelity = "control"
    metric_keys = ("test_weight_norm", "test_probe_saw_training")

    def measure(self, model, state):
        out = model(probe_data(state, "train", limit=8)[0]).sum()
        out.backward()  # gradients a probe leaves must not reach the next training step
        return {"test_weight_norm": weight_norm(model), "test_probe_saw_training": float(model.training)}


class TrainModeProbe(WeightNormProbe):
    name = NAME + "-train-mode"
    model_mode = "train"


class FailingProbe(WeightNormProbe):
    name = NAME + "-failing"

    def measure(self, model, state):
        model.eval()
        raise RuntimeError("measurement failed")


@pytest.fixture
def probe():
    """Register the test probe for one test only, so the global registry is left as it was."""
    registry.register(WeightNormProbe)
    yield NAME
    registry._REGISTRY.pop(NAME, None)


def _data(n_train=10, n_test=6):
    g = torch.Generator().manual_seed(0)
    return DataBundle(torch.randn(n_train, 4, generator=g), torch.arange(n_train) % 3,
                      torch.randn(n_test, 4, generator=g), torch.arange(n_test) % 3, num_classes=3)


def _state(epoch=0, epochs=3, data=None):
    return TrainState(epoch=epoch, epochs=epochs, data=data if data is not None else _data())


def test_values_land_at_every_kth_epoch_and_the_last(probe):
    task = get_task("blobs-mlp").with_overrides({"epochs": 5})
    result = run_training(task, [(probe, {"every": 2})], keep_state=True)
    epochs = result.epochs
    assert len(epochs) == 5 and result.status == "finished"
    measured = [int(row["epoch"]) for row in epochs if "test_weight_norm" in row]
    assert measured == [2, 4, 5]
    timed = [int(row["epoch"]) for row in epochs if probe_seconds_key(NAME) in row]
    assert timed == measured and all(epochs[e - 1][probe_seconds_key(NAME)] > 0 for e in measured)
    # the last measurement is the norm of the final weights (measured after the last step)
    final = sum(v.double().pow(2).sum() for k, v in result.state.items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert epochs[-1]["test_weight_norm"] == pytest.approx(math.sqrt(float(final)), rel=1e-6)
    assert all(row["test_probe_saw_training"] == 0.0 for row in epochs if "test_probe_saw_training" in row)
    assert result.final["test_weight_norm"] == epochs[-1]["test_weight_norm"]


def test_a_probe_changes_nothing_in_training(probe):
    # the probe's backward leaves gradients; they are cleared, so training is bit-identical
    plain = run_training("blobs-mlp", [], keep_state=True)
    probed = run_training("blobs-mlp", [(probe, {"every": 1})], keep_state=True)
    for k, v in plain.state.items():
        assert torch.equal(v, probed.state[k]), k
    assert [r["train_loss"] for r in plain.epochs] == [r["train_loss"] for r in probed.epochs]


@pytest.mark.parametrize("cls, was_training, saw", [(WeightNormProbe, True, 0.0), (WeightNormProbe, False, 0.0),
                                                    (TrainModeProbe, False, 1.0), (TrainModeProbe, True, 1.0)])
def test_mode_is_restored_and_gradients_cleared(cls, was_training, saw):
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3))
    model.train(was_training)
    state = _state(epoch=2, epochs=3)
    cls(every=1).on_epoch_end(model, state)
    assert model.training is was_training
    assert all(p.grad is None for p in model.parameters())
    assert state.epoch_metrics["test_probe_saw_training"] == saw
    assert state.epoch_metrics["test_weight_norm"] == pytest.approx(weight_norm(model))
    assert state.epoch_metrics[probe_seconds_key(cls.name)] >= 0


def test_mode_restored_when_the_measurement_fails():
    model = nn.Linear(4, 3)
    model.train()
    state = _state(epoch=0, epochs=1)
    with pytest.raises(RuntimeError, match="measurement failed"):
        FailingProbe().on_epoch_end(model, state)
    assert model.training and "test_weight_norm" not in state.epoch_metrics


def test_not_due_means_nothing_measured():
    model = nn.Linear(4, 3)
    state = _state(epoch=0, epochs=5)
    WeightNormProbe(every=2).on_epoch_end(model, state)
    assert state.epoch_metrics == {}


@pytest.mark.parametrize("every, epochs, due", [(1, 3, [0, 1, 2]), (2, 5, [1, 3, 4]), (3, 7, [2, 5, 6]),
                                                (10, 4, [3])])
def test_due_epochs(every, epochs, due):
    p = WeightNormProbe(every=every)
    assert [e for e in range(epochs) if p.due(TrainState(epoch=e, epochs=epochs))] == due


@pytest.mark.parametrize("every", [0, -1, 1.5, "2", True, None])
def test_every_must_be_a_whole_number(every):
    with pytest.raises(ConfigError, match=f"probe '{NAME}': every must be a whole number >= 1"):
        WeightNormProbe(every=every)


def test_settings_and_keys():
    assert WeightNormProbe(every=3).settings() == {"every": 3}
    assert WeightNormProbe.family == "diagnostics" and WeightNormProbe.modifies == frozenset()
    assert probe_seconds_key("neural-collapse") == "probe_seconds_neural_collapse"


def test_probe_data_splits_and_limits():
    data = _data()
    state = _state(data=data)
    x, y = probe_data(state)
    assert torch.equal(x, data.train_x) and torch.equal(y, data.train_y)
    x, y = probe_data(state, "test", limit=4)
    assert torch.equal(x, data.test_x[:4]) and torch.equal(y, data.test_y[:4])
    x, _ = probe_data(state, "test", limit=100)
    assert len(x) == 6
    assert x.device == state.device


def test_probe_data_errors():
    with pytest.raises(ConfigError, match="split must be 'train' or 'test'"):
        probe_data(_state(), "val")
    with pytest.raises(ConfigError, match="needs the run's data"):
        probe_data(TrainState())
