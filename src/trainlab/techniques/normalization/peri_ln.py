"""Diagnostics for normalization placement in transformers: residual-stream variance and loss spikes.

Papers: Jimmy Lei Ba, Jamie Ryan Kiros, Geoffrey E. Hinton, "Layer Normalization", 2016,
arXiv:1607.06450; Jeonghoon Kim, Byeongchan Lee, Cheonbok Park, Yeontaek Oh, Beomjun Kim, Taehwan
Yoo, Seongjin Shin, Dongyoon Han, Jinwoo Shin, Kang Min Yoo, "Peri-LN: Revisiting Layer
Normalization in the Transformer Architecture" (ICML 2025 title: "Peri-LN: Revisiting Normalization
Layer in the Transformer Architecture"), 2025, arXiv:2502.02732.

Claim (Peri-LN): normalizing both the input and the output of every sublayer
(x + Norm_out(F(Norm_in(x)))) keeps the residual stream's hidden-state variance from growing
across layers and over training the way it does with Pre-LN (x + F(Norm(x))), where large
activations accumulate; this gives "more balanced variance growth", fewer gradient/loss spikes and
fewer diverged runs, especially at high learning rates.
Paper scale: decoder-only language models of 400M, 1.5B and 3.2B parameters pretrained on 30B
tokens, learning-rate sweeps, several seeds; Pre-LN runs diverge at learning rates where Peri-LN
trains.
Where this falls short: here the models are 2-layer transformer classifiers trained for minutes,
so "variance growth across layers" spans two blocks and spikes are counted over a few hundred
steps; the mechanism can show, the scale effects cannot.
The paper's definition of Peri-LN also normalizes the embedding output before the first block
(an "initial embedding normalization", y_0 = Norm(x), marked optional and listed beside the final
normalization before the head), so the claims' Peri-LN arm turns on ``embed_norm``; the Pre-LN arm
has none, as the paper's Pre-LN. No official code for the paper was found; the placement follows
the paper's equations.

The placement itself is the model's setting (``TinyTransformer(norm_placement="pre"|"post"|"peri",
embed_norm=...)``, task override ``model_kwargs={"norm_placement": ..., "embed_norm": ...}``). This module is the probe used in BOTH arms;
it changes nothing in training:

* ``hidden_var_growth``: on a fixed batch (the first training batch of the run, at most
  ``eval_samples`` sequences), evaluated in eval mode at each epoch end,
  Var(h_L) / Var(h_1), where h_l is the residual stream after block l (from the model's
  ``hidden_states(x)``, whose entry 0 is the embedding) and Var is the variance of all entries of
  the [N, T, D] tensor. Also logged: ``hidden_var_last`` = Var(h_L).
* ``loss_spikes`` (per epoch) and ``loss_spikes_total`` (cumulative): a step's training loss is a
  spike when it exceeds ``spike_factor`` x the median of the previous ``window`` step losses AND
  exceeds that median by at least ``min_jump`` (so tiny losses near zero do not count); only steps
  with at least ``min_history`` previous losses can spike. A non-finite loss counts as a spike.

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.peri_ln import LossSpikeCounter, residual_variances, variance_growth
    from trainlab.tasks.models import TinyTransformer

    model = TinyTransformer((8,), 4, vocab_size=10, dim=32, depth=3, norm_placement="peri")
    x = torch.randint(0, 10, (16, 8))
    v = residual_variances(model, x)      # [Var(embedding), Var(h_1), Var(h_2), Var(h_3)]
    growth = variance_growth(v)           # Var(h_3) / Var(h_1)
    spikes = LossSpikeCounter(factor=2.0, window=50)
    for loss in [1.0, 0.9, 0.8, 5.0]:
        spikes.update(loss)               # True for 5.0 once enough history has been seen
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper("Peri-LN: Revisiting Layer Normalization in the Transformer Architecture",
              "Kim, Lee, Park, Oh, Kim, Yoo, Shin, Han, Shin, Yoo", 2025, "2502.02732")
LAYER_NORM_PAPER = Paper("Layer Normalization", "Ba, Kiros, Hinton", 2016, "1607.06450")


@torch.no_grad()
def residual_variances(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Variance of all entries of each residual-stream state from `model.hidden_states(x)`."""
    hidden = getattr(model, "hidden_states", None)
    if hidden is None:
        raise ConfigError(f"{type(model).__name__} has no hidden_states(x) method to probe")
    return [float(h.float().var(unbiased=False)) for h in hidden(x)]


def variance_growth(variances: Sequence[float]) -> float:
    """Var(last block's output) / Var(first block's output); `variances[0]` is the embedding."""
    if len(variances) < 2:
        raise ConfigError("variance_growth needs the embedding and at least one block's output")
    first, last = variances[1], variances[-1]
    return last / first if first > 0 else math.inf


class LossSpikeCounter:
    """Counts steps whose loss exceeds `factor` x the running median of the previous `window`
    losses (and that median + `min_jump`), once `min_history` losses have been seen."""

    def __init__(self, factor: float = 2.0, window: int = 50, min_history: int = 10, min_jump: float = 0.1) -> None:
        if factor <= 1 or window < 1 or min_history < 1 or min_history > window or min_jump < 0:
            raise ConfigError("loss spikes: need factor > 1, window >= min_history >= 1, min_jump >= 0")
        self.factor, self.window, self.min_history, self.min_jump = factor, window, min_history, min_jump
        self.history: deque[float] = deque(maxlen=window)
        self.total = 0

    def update(self, loss: float) -> bool:
        loss = float(loss)
        spike = not math.isfinite(loss)
        if not spike and len(self.history) >= self.min_history:
            median = statistics.median(self.history)
            spike = loss > self.factor * median and loss > median + self.min_jump
        if math.isfinite(loss):
            self.history.append(loss)
        self.total += int(spike)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "total": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = deque((float(v) for v in state["history"]), maxlen=self.window)
        self.total = int(state["total"])


@register
class PeriLNProbe(Technique):
    """Logs residual-stream variance growth and loss spikes; modifies nothing (use in both arms)."""

    name = "peri-ln-probe"
    family = "normalization"
    paper = PAPER
    # The claims test the Peri-LN placement (TinyTransformer norm_placement="peri", embed_norm=True),
    # which this probe measures: it follows the paper's equations; no official code was found.
    fidelity = "faithful"
    fidelity_evidence = ("tests/techniques/test_peri_ln.py::test_peri_arm_matches_the_paper_equations: the Peri-LN "
                         "arm's block computes x + Norm_out(F(Norm_in(x))) and its embedding output is normalized")
    modifies = frozenset()
    order = 99  # see the loss after every other technique's loss hook
    summary = "diagnostic: hidden-state variance growth across blocks and loss-spike counts"

    def __init__(self, eval_samples: int = 256, spike_factor: float = 2.0, window: int = 50,
                 min_history: int = 10, min_jump: float = 0.1) -> None:
        super().__init__(eval_samples=eval_samples, spike_factor=spike_factor, window=window,
                         min_history=min_history, min_jump=min_jump)
        if not isinstance(eval_samples, int) or eval_samples < 1:
            raise ConfigError(f"peri-ln-probe: eval_samples must be a positive integer, got {eval_samples!r}")
        self.eval_samples = eval_samples
        self.spikes = LossSpikeCounter(spike_factor, window, min_history, min_jump)
        self.fixed_inputs: torch.Tensor | None = None
        self._epoch_spikes = 0

    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        if self.fixed_inputs is None:  # the run's first batch: the same for both arms of a claim
            self.fixed_inputs = batch.inputs[: self.eval_samples].detach().clone()
        return batch

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        self._epoch_spikes += int(self.spikes.update(float(base_loss.detach())))
        return base_loss

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        state.epoch_metrics["loss_spikes"] = float(self._epoch_spikes)
        state.epoch_metrics["loss_spikes_total"] = float(self.spikes.total)
        self._epoch_spikes = 0
        if self.fixed_inputs is None or not hasattr(model, "hidden_states"):
            return
        was_training = model.training
        model.eval()
        try:
            variances = residual_variances(model, self.fixed_inputs.to(state.device))
        finally:
            model.train(was_training)
        if len(variances) >= 2:
            state.epoch_metrics["hidden_var_growth"] = variance_growth(variances)
            state.epoch_metrics["hidden_var_last"] = variances[-1]

    def state_dict(self) -> dict[str, Any]:
        return {"spikes": self.spikes.state_dict(), "fixed_inputs": self.fixed_inputs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.spikes.load_state_dict(state["spikes"])
            self.fixed_inputs = state["fixed_inputs"]


_PROBE = ("peri-ln-probe", {})
_QUOTE = ("\"Peri-LN consistently achieves more balanced variance growth, steadier gradient flow, and convergence "
          "stability\" (abstract)")
_PRE = arm(_PROBE, label="Pre-LN", model_kwargs={"norm_placement": "pre"})
#: Peri-LN with the paper's initial embedding normalization (y_0 = Norm(embedding))
_PERI = arm(_PROBE, label="Peri-LN (+ embedding norm)", model_kwargs={"norm_placement": "peri", "embed_norm": True})
_SCALE = "decoder-only LMs, 400M-3.2B parameters, 30B tokens"
_SETTING = PaperSetting(train_size=None, epochs=None, params=400_000_000,
                        text="decoder-only LMs of 400M, 1.5B and 3.2B parameters, 30B tokens of DCLM-baseline, "
                             "learning-rate sweeps, 5 seeds; here a 4-block, 64-wide classifier on a synthetic "
                             "sequence task for 8 epochs")
#: a learning rate 30x the task's (AdamW 1e-3), 4 blocks, 8 epochs; both arms run the probe
_HIGH_LR = {"lr": 3e-2, "epochs": 8, "model_kwargs": {"depth": 4}}

CLAIMS = [
    Claim(
        id="peri-ln-hidden-variance", technique="peri-ln-probe", task="seq-transformer",
        metric="hidden_var_last", direction="lower", treatment=_PERI, baseline=_PRE, overrides=_HIGH_LR,
        paper_quote=_QUOTE,
        paper_number="hidden-state variance grows by orders of magnitude across layers and training with "
                     "Pre-LN and stays small with Peri-LN",
        paper_scale=_SCALE, paper_setting=_SETTING, seeds=5, suites=("full",),
        notes="Variance of the residual stream after the last block, on a fixed batch, at the end of training.",
    ),
    Claim(
        id="peri-ln-variance-growth", technique="peri-ln-probe", task="seq-transformer",
        metric="hidden_var_growth", direction="lower", treatment=_PERI, baseline=_PRE, overrides=_HIGH_LR,
        paper_quote=_QUOTE,
        paper_number="Pre-LN's hidden-state variance keeps growing with depth; Peri-LN's grows slowly",
        paper_scale=_SCALE, paper_setting=_SETTING, seeds=5, suites=("full",),
        notes="Growth across depth: Var(after last block) / Var(after first block). Same runs as "
              "peri-ln-hidden-variance.",
    ),
    Claim(
        id="peri-ln-loss-spikes", technique="peri-ln-probe", task="seq-transformer",
        metric="loss_spikes_total", direction="lower", treatment=_PERI, baseline=_PRE, overrides=_HIGH_LR,
        paper_quote=_QUOTE,
        paper_number="Pre-LN runs spike or diverge at learning rates where Peri-LN trains stably",
        paper_scale=_SCALE, paper_setting=_SETTING, seeds=5, suites=("full",),
        notes="A spike: loss > 2x the median of the previous 50 steps and > that median + 0.1. Same runs as "
              "peri-ln-hidden-variance.",
    ),
    Claim(
        id="peri-ln-very-high-lr", technique="peri-ln-probe", task="seq-transformer",
        metric="test_acc", direction="higher", treatment=_PERI, baseline=_PRE,
        overrides={**_HIGH_LR, "lr": 1e-1},
        paper_quote=_QUOTE,
        paper_number="Pre-LN runs spike or diverge at learning rates where Peri-LN trains stably",
        paper_scale=_SCALE, paper_setting=_SETTING, seeds=5, suites=("full",),
        notes="At a learning rate 100x the task's, does Peri-LN still train where Pre-LN fails?",
    ),
]
