"""Probes: diagnostics measured during a trainlab run.

A probe is a Technique of the "diagnostics" family that changes nothing in training: at the end of
every `every`-th epoch (and always after the last one) it measures the model, before that epoch's
evaluation, and puts its values into the epoch's metrics. So they are stored with the run, plotted
in the report, and usable as a claim's metric or precondition like test_acc. The seconds it spent
are recorded as `probe_seconds_<name>` (hyphens as underscores), its cost beside the epoch's `train_seconds`.

    trainlab train digits-mlp --probe sharpness:every=2
    run_training("digits-mlp", [("sharpness", {"every": 2})])

A subclass sets `name`, `paper`, `fidelity`, `metric_keys` (the keys `measure` returns) and
implements `measure(model, state) -> dict[str, float]`. The model is put in eval mode for the
measurement unless the probe sets `model_mode = "train"` (or a setting overrides it), and is
restored to the mode the trainer had it in; gradients the probe leaves are cleared.
"""
from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.training.technique import Technique, TrainState


class Probe(Technique):
    family: ClassVar[str] = "diagnostics"
    modifies: ClassVar[frozenset[str]] = frozenset()
    order: ClassVar[int] = 90
    #: the epoch-metric keys `measure` returns (for plots and for `trainlab list`)
    metric_keys: ClassVar[tuple[str, ...]] = ()
    #: "eval" or "train": the mode the model is measured in (BatchNorm statistics, dropout)
    model_mode: ClassVar[str] = "eval"

    def __init__(self, every: int = 1, **settings: Any) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"probe '{self.name}': every must be a whole number >= 1, got {every!r}")
        super().__init__(every=every, **settings)
        self.every = every

    def due(self, state: TrainState) -> bool:
        """Measure at the end of every `every`-th epoch and after the last one."""
        return (state.epoch + 1) % self.every == 0 or state.epoch + 1 == state.epochs

    def measure(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        raise NotImplementedError

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if not self.due(state):
            return
        was_training = model.training
        model.train(self.model_mode == "train")
        start = time.perf_counter()
        try:
            values = self.measure(model, state)
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)
        for key, value in values.items():
            state.epoch_metrics[key] = float(value)
        state.epoch_metrics[probe_seconds_key(self.name)] = time.perf_counter() - start


def probe_data(state: TrainState, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's (inputs, targets) of `split` ("train" or "test"), the first `limit` examples
    (all when None), on the run's device. Training targets are the labels trained on (noisy ones
    under label noise)."""
    if state.data is None:
        raise ConfigError("this probe needs the run's data (state.data); run it inside the trainlab Trainer")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    x = state.data.train_x if split == "train" else state.data.test_x
    y = state.data.train_y if split == "train" else state.data.test_y
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x.to(state.device), y.to(state.device)


def probe_seconds_key(name: str) -> str:
    """The epoch-metric key of a probe's measuring time, e.g. "probe_seconds_neural_collapse"."""
    return "probe_seconds_" + name.replace("-", "_")
