"""Dynamical-stability laws of (stochastic) gradient descent, as claims on the `sharpness` probe.

Two papers, one mechanism: a minimum (or a trajectory) survives a step size only if the step does
not blow up the loss's curvature directions.

* Cohen, Kaur, Li, Kolter, Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the
  Edge of Stability", ICLR 2021, arXiv 2103.00065. Full-batch gradient descent with a constant step
  size eta: the sharpness (top eigenvalue of the training loss's Hessian) rises during training
  ("progressive sharpening") until it reaches 2/eta, then hovers just above 2/eta while the loss
  keeps falling, non-monotonically, over long time scales ("edge of stability").
* Wu, Su, "The Implicit Regularization of Dynamical Stability in Stochastic Gradient Descent",
  ICML 2023, arXiv 2305.17490. For the square loss, if a global minimum is linearly stable for SGD
  then the trace of its Hessian is at most 2/eta; for GD stability only bounds the largest
  eigenvalue by 2/eta. So SGD's stable minima are flatter (in trace) than GD's at equal eta.

Why the trace for SGD (square loss, scalar output, global minimum: H = (1/n) sum_i g_i g_i^T with
g_i the gradient of the model's output on example i). Linearised SGD with batch size 1 updates
theta <- (I - eta g_j g_j^T) theta for a random j. If the g_i are orthogonal with equal norms
||g_i||^2 = a, each step multiplies one coordinate by (1 - eta a): stable if and only if
eta a <= 2, and a = tr(H). With batches of B examples drawn with replacement the same example is
only stable while eta a [(1 - 1/n)/B + 1/n] <= 2 (mean square), i.e. the limit grows roughly like
2B/eta for B << n: the 2/eta form is the batch-size-1 statement, and larger batches loosen it. For
vector outputs (K classes) each example contributes a rank-K block J_i^T J_i whose trace can be up
to K times its top eigenvalue, so the 2/eta bound on tr(H) is a scalar-output statement; the claims
here use a scalar-output task for it. (This derivation is ours: only the paper's abstract could be
read here, not its theorems.)

Claims: eos-reaches-edge-lr{0.1,0.07} (max sharpness/(2/eta) >= 0.9), eos-hovers-lr* (late mean
<= 1.1), eos-stays-at-edge-lr* (late mean >= 0.9); sgd-trace-bound-lr{0.02,0.05,0.1}
(tr(H) <= 2/eta at the end of batch-size-1 SGD), sgd-flatter-than-gd (tr(H) lower for SGD than for
GD at equal eta), sgd-larger-lr-flatter (tr(H) lower at the larger eta).

This module holds the claims and the pieces of their tasks (the square loss and its test metrics,
the scalar-output data and model), used by the named tasks "digits-tanh-mse" and "digits-parity-mse":

    trainlab train digits-tanh-mse --probe sharpness:every=5
    trainlab check eos-reaches-edge-lr0.1 --workers 1
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.tasks.task import DataBundle


# --------------------------------------------------------------------------- task pieces

def half_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0.5 * ||outputs - targets||^2 summed over outputs, averaged over examples (the square loss
    of both papers). Integer class labels [N] are compared with their one-hot vectors, so with K
    outputs the Hessian at an interpolating minimum is (1/n) sum_i J_i^T J_i (J_i: the K x p Jacobian
    of example i's outputs)."""
    if outputs.dim() != 2:
        raise ConfigError(f"half_squared_error: outputs must have shape [N, K], got {list(outputs.shape)}")
    if targets.dtype == torch.long:
        if targets.dim() != 1:
            raise ConfigError(f"half_squared_error: class labels must have shape [N], got {list(targets.shape)}")
        targets = F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)
    elif targets.shape != outputs.shape:
        raise ConfigError(f"half_squared_error: targets {list(targets.shape)} do not match "
                          f"outputs {list(outputs.shape)}")
    return 0.5 * (outputs - targets).pow(2).sum(1).mean()


def square_loss_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Test metrics of a square-loss task: "loss" (half_squared_error) and "acc": the argmax class
    for class labels, the sign for +-1 scalar targets (outputs are not logits, so no calibration)."""
    from trainlab.training.metrics import batched_outputs

    loss, correct = 0.0, 0
    for out, target in batched_outputs(model, x, y):
        loss += float(half_squared_error(out, target)) * len(out)
        if target.dtype == torch.long:
            correct += int((out.argmax(1) == target).sum())
        else:
            correct += int((torch.sign(out) == torch.sign(target)).all(1).sum())
    return {"loss": loss / max(len(x), 1), "acc": correct / max(len(x), 1)}


def digits_parity(test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn digits (standardized 8x8 images, the split of trainlab's "digits") with a
    scalar regression target: +1 for odd digits, -1 for even ones, shape [N, 1]. Not classification
    (num_classes=None): tasks on it give a loss_fn (e.g. half_squared_error)."""
    from trainlab.tasks.datasets import digits

    base = digits(test_fraction=test_fraction, seed=seed)

    def target(labels: torch.Tensor) -> torch.Tensor:
        return ((labels % 2) * 2 - 1).to(torch.float32).unsqueeze(1)

    return DataBundle(base.train_x, target(base.train_y), base.test_x, target(base.test_y), num_classes=None,
                      name="digits-parity", info=dict(base.info))


def scalar_mlp(input_shape: Sequence[int], num_classes: int | None, **kwargs: Any) -> nn.Module:
    """trainlab's MLP with one output (for scalar regression; num_classes is ignored)."""
    from trainlab.tasks.models import build_model

    return build_model("mlp", input_shape, 1, **kwargs)


# --------------------------------------------------------------------------- claims

_EOS_PAPER = PaperSetting(
    train_size=5000, text="CIFAR-10 5k-image subset; fully-connected tanh/ReLU/ELU nets (width 200), CNNs, VGG, "
                          "Transformer; MSE and cross-entropy; full-batch GD run until the loss is small")
_WU_PAPER = PaperSetting(
    text="two-layer ReLU networks and diagonal linear networks on synthetic regression data, square loss; "
         "online SGD (batch size 1) vs GD at equal learning rate")

# Cohen et al.'s GD: the full training set each step, no momentum, no weight decay, constant step size.
_GD = {"batch_size": 1000, "train_subset": 1000, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
       "warmup_epochs": 0.0}
# Wu & Su's online SGD: batch size 1, plain SGD, constant step size.
_SGD1 = {"batch_size": 1, "train_subset": 1000, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
         "warmup_epochs": 0.0}

#: the sharpness probe on the whole (1000-example) training set; Lanczos for the top eigenvalue (30
#: iterations at most: about 0.4 s a measurement here, so every 10 steps keeps a run near a minute)
_EOS_PROBE = ("sharpness", {"every": 10, "trace": False, "max_iter": 30})
_TRACE_PROBE = ("sharpness", {"every": 5, "trace": True, "trace_samples": 60})

#: (eta, epochs, late-phase probe count): each run is long enough for sharpening to reach 2/eta
#: (pilot on seed 0: after ~210 steps at eta=0.1, ~570 at eta=0.07) and to then spend at least
#: 300 steps at the edge; the late phase is the last 300 steps (30 probes, one every 10 steps).
_EOS_SETTINGS = ((0.1, 600, 30), (0.07, 900, 30))

_EOS_QUOTE = ("the sharpness (the maximum eigenvalue of the training loss Hessian) ... rises until it reaches "
              "2/eta, and then hovers right at, or just above, 2/eta")
_EOS_OURS = ("Ours: scikit-learn digits, 1000 training images, tanh MLP (2 hidden layers of 128), half squared "
             "error on one-hot targets (Cohen et al.'s MSE), full-batch GD (batch 1000, momentum 0, no weight "
             "decay, constant lr), so one epoch is one GD step; sharpness by Lanczos on the full training loss "
             "every 10 steps, sharpness_ratio = sharpness / (2/lr). ")


def _eos_regime(eta: float) -> tuple[Precondition, ...]:
    return (
        Precondition("at:sharpness_ratio@epoch>=1", "<", 0.9, arm="treatment", over="max",
                     why=f"the sharpness starts below 2/eta (lr={eta:g}): progressive sharpening, not a start "
                         "past the edge (catapult)"),
        Precondition("train_acc", ">=", 0.95, arm="treatment", over="min",
                     why="GD trains the network (the loss keeps falling at the edge)"),
    )


def _eos_claims() -> list[Claim]:
    claims: list[Claim] = []
    for eta, epochs, late in _EOS_SETTINGS:
        treatment = arm(_EOS_PROBE, label=f"full-batch GD lr={eta:g}", lr=eta, epochs=epochs)
        common = dict(technique="sharpness", task="digits-tanh-mse", treatment=treatment, overrides=dict(_GD),
                      seeds=5, preconditions=_eos_regime(eta), paper_setting=_EOS_PAPER,
                      paper_scale="CIFAR-10 5k subset, MLPs/CNNs/VGG/Transformers")
        claims += [
            Claim(id=f"eos-reaches-edge-lr{eta:g}", metric="max:sharpness_ratio", reference=1.0, direction="higher",
                  margin=0.1, paper_quote=_EOS_QUOTE,
                  paper_number="sharpness reaches 2/eta for every step size shown (Fig. 1, 2)",
                  notes=_EOS_OURS + f"lr={eta:g}, {epochs} steps. Claim: progressive sharpening reaches the edge, "
                        "i.e. the largest measured sharpness_ratio is at least 0.9 (the 0.1 margin is our "
                        "allowance for the every-10-steps sampling and Lanczos tolerance; the paper's figures show "
                        "it reaching 1).", **common),
            Claim(id=f"eos-hovers-lr{eta:g}", metric=f"mean_last{late}:sharpness_ratio", reference=1.0,
                  direction="lower", margin=0.1, paper_quote=_EOS_QUOTE,
                  paper_number="after reaching 2/eta the sharpness hovers at or just above 2/eta, "
                               "not growing further (Fig. 1, 2)",
                  notes=_EOS_OURS + f"lr={eta:g}, {epochs} steps. Claim: over the last {late * 10} steps the mean "
                        "sharpness_ratio stays below 1.1 (does not keep rising past the edge as it would if GD "
                        "did not regulate it); the 1.1 bound is our reading of 'just above' in the paper's "
                        "figures.", **common),
            Claim(id=f"eos-stays-at-edge-lr{eta:g}", metric=f"mean_last{late}:sharpness_ratio", reference=1.0,
                  direction="higher", margin=0.1, paper_quote=_EOS_QUOTE,
                  paper_number="the sharpness stays near 2/eta for the rest of training (Fig. 1, 2)",
                  notes=_EOS_OURS + f"lr={eta:g}, {epochs} steps. Claim: over the last {late * 10} steps the mean "
                        "sharpness_ratio stays above 0.9 (GD does not drift back to flat regions). With MSE the "
                        "paper sees this through training; with cross-entropy it reports a late decline as the "
                        "loss vanishes, one reason these claims use the square loss.", **common),
        ]
    return claims


_WU_QUOTE = ("if a global minimum is linearly stable for SGD, then the trace of Hessian must be less than or "
             "equal to 2/eta ... for gradient descent (GD), the stability imposes a similar constraint but only on "
             "the largest eigenvalue of Hessian")
_WU_OURS = ("Ours: scikit-learn digits, 1000 training images, scalar target +1 odd / -1 even, ReLU MLP "
            "(2 hidden layers of 128, one output), half squared error, plain SGD (momentum 0, no weight decay, "
            "constant lr); hessian_trace by Hutch++ (60 matrix-vector products) on the full training loss at the "
            "end of training, stability_limit = 2/lr. The paper's full text could not be read here (only its "
            "abstract); the batch-size-1 form of the bound follows from its linear-stability argument (see the "
            "module docstring: larger batches loosen it, about 2B/eta for B << n), so the law is checked with "
            "batch size 1. ")
#: (eta, epochs): online SGD to near-interpolation (pilot, seed 0: train loss 0.002 after 9 epochs at
#: eta=0.05, 0.01 after 8 at eta=0.1; epochs fixed before the claims ran); eta=0.2 diverges at once
#: (the initial trace, ~12, exceeds 2/eta=10).
_WU_SETTINGS = ((0.02, 12), (0.05, 10), (0.1, 10))
_WU_CONVERGED = Precondition("train_loss", "<=", 0.02, arm="treatment", over="max",
                             why="the run ends at (near) a global minimum: the law concerns minima SGD converges to")


def _wu_claims() -> list[Claim]:
    claims = [
        Claim(id=f"sgd-trace-bound-lr{eta:g}", technique="sharpness", task="digits-parity-mse",
              metric="hessian_trace", reference="stability_limit", direction="lower",
              treatment=arm(_TRACE_PROBE, label=f"SGD batch 1 lr={eta:g}", lr=eta, epochs=epochs),
              overrides=dict(_SGD1), seeds=5, preconditions=(_WU_CONVERGED,), paper_setting=_WU_PAPER,
              paper_quote=_WU_QUOTE, paper_number="tr(H) <= 2/eta at SGD's linearly stable global minima",
              paper_scale="synthetic regression, two-layer ReLU nets",
              notes=_WU_OURS + f"lr={eta:g} (2/lr={2 / eta:g}), {epochs} epochs ({epochs * 1000} steps). Claim: "
                    "final hessian_trace - 2/lr below 0 in the CI.")
        for eta, epochs in _WU_SETTINGS
    ]
    # "As the LR increases, the regularization effect becomes more pronounced": the same SGD arms as the
    # eta=0.02 and eta=0.05 law claims (so their stored runs are shared), compared with each other.
    low, high = (_WU_SETTINGS[0], _WU_SETTINGS[1])
    claims.append(Claim(
        id="sgd-larger-lr-flatter", technique="sharpness", task="digits-parity-mse", metric="hessian_trace",
        direction="lower",
        baseline=arm(_TRACE_PROBE, label=f"SGD batch 1 lr={low[0]:g}", lr=low[0], epochs=low[1]),
        treatment=arm(_TRACE_PROBE, label=f"SGD batch 1 lr={high[0]:g}", lr=high[0], epochs=high[1]),
        overrides=dict(_SGD1), seeds=5, paper_setting=_WU_PAPER, paper_quote=_WU_QUOTE,
        paper_number="the stability bound 2/eta tightens as eta grows; larger-lr SGD finds flatter minima",
        paper_scale="synthetic regression, two-layer ReLU nets",
        preconditions=(
            Precondition("train_loss", "<=", 0.02, arm="baseline", over="max", why=_WU_CONVERGED.why),
            Precondition("train_loss", "<=", 0.02, arm="treatment", over="max", why=_WU_CONVERGED.why),
        ),
        notes=_WU_OURS + f"Two arms: SGD batch 1 at lr={high[0]:g} vs lr={low[0]:g}, each run as in its law claim. "
              "Claim: the final Hessian trace is lower at the larger learning rate. This pair was added after "
              "the law claims had run, as the pair of their runs that meets the convergence precondition "
              "(at lr=0.1 one seed's last-epoch running loss is 0.034)."))
    # The paper's contrast: at the same eta, SGD's minima are flatter in trace than GD's. Both arms run
    # to (near) interpolation, each with the budget it needs (equal steps would need 10,000 GD epochs;
    # equal epochs would give GD 10 steps), because the law concerns the minimum reached, not the budget.
    claims.append(Claim(
        id="sgd-flatter-than-gd", technique="sharpness", task="digits-parity-mse", metric="hessian_trace",
        direction="lower",
        # the final measurement is what the claim reads; GD's probe runs every 250 steps to keep its cost low
        baseline=arm(("sharpness", {**_TRACE_PROBE[1], "every": 250}), label="GD (batch 1000) lr=0.05, 1000 epochs",
                     batch_size=1000, epochs=1000),
        treatment=arm(_TRACE_PROBE, label="SGD batch 1 lr=0.05, 10 epochs", batch_size=1, epochs=10),
        overrides={**_SGD1, "lr": 0.05}, seeds=5, paper_setting=_WU_PAPER, paper_quote=_WU_QUOTE,
        paper_number="SGD's stable minima have tr(H) <= 2/eta, GD's only lambda_max <= 2/eta",
        paper_scale="synthetic regression, two-layer ReLU nets",
        preconditions=(
            Precondition("train_loss", "<=", 0.05, arm="treatment", over="max", why="SGD reaches (near) a minimum"),
            Precondition("train_loss", "<=", 0.05, arm="baseline", over="max", why="GD reaches (near) a minimum"),
        ),
        notes=_WU_OURS + "Two arms at equal lr=0.05, each trained to near interpolation (not equal epochs or "
              "steps: the stability argument concerns the minimum each reaches). Smaller batch = 1, larger = the "
              "full 1000-example set. Claim: the final Hessian trace is lower with batch size 1."))
    return claims


#: what the stored runs measured (5 seeds each), stated beside each claim
_MEASURED = {
    "eos-reaches-edge-lr0.1": "Measured: first probe (step 10) ratio 0.68-0.83; largest ratio 1.18-1.21 (a short "
                              "overshoot past the edge, then back).",
    "eos-hovers-lr0.1": "Measured: mean ratio over the last 300 steps 1.04-1.06; train accuracy 0.975-0.984.",
    "eos-stays-at-edge-lr0.1": "Measured: mean ratio over the last 300 steps 1.04-1.06.",
    "eos-reaches-edge-lr0.07": "Measured: first probe ratio 0.49-0.59; largest ratio 1.10-1.12.",
    "eos-hovers-lr0.07": "Measured: mean ratio over the last 300 steps 1.02-1.04; train accuracy 0.981-0.987.",
    "eos-stays-at-edge-lr0.07": "Measured: mean ratio over the last 300 steps 1.02-1.04.",
    "sgd-trace-bound-lr0.02": "Measured: final trace 38-43 vs 2/lr = 100; last-epoch train loss 0.003-0.004.",
    "sgd-trace-bound-lr0.05": "Measured: final trace 21-23 vs 2/lr = 40; last-epoch train loss 0.001-0.002.",
    "sgd-trace-bound-lr0.1": "Measured: final trace 9.3-11.6 vs 2/lr = 20, but one seed's last-epoch train loss "
                             "(the running mean over the epoch's noisy SGD steps) is 0.034, above the 0.02 "
                             "precondition, so the outcome is out of regime. At lr=0.2 SGD diverges at once, as the "
                             "bound predicts for an initial trace of ~12 > 2/lr = 10 (not a claim).",
    "sgd-flatter-than-gd": "Measured: final trace 21-23 (SGD) vs 108-119 (GD, whose trace is far above 2/lr = 40 "
                           "while its top eigenvalue, 38.8-39.4, sits just below 2/lr); GD's last-epoch train loss "
                           "0.016-0.018; SGD's top eigenvalue 5.2-5.9.",
    "sgd-larger-lr-flatter": "Measured: final trace 21-23 at lr=0.05 vs 38-43 at lr=0.02.",
}

CLAIMS: list[Claim] = [dataclasses.replace(c, notes=c.notes + " " + _MEASURED[c.id]) if c.id in _MEASURED else c
                       for c in _eos_claims() + _wu_claims()]
