"""Weight Compander: every weight is a compressing-expanding function of a latent parameter.

Paper: Rinor Cakaj, Jens Mehnert, Bin Yang, "Weight Compander: A Simple Weight Reparameterization for
Regularization", 2023, arXiv:2306.16993.

Claim (abstract): a weight reparameterization function "applied to each weight ... implicitly
reduces overfitting by restricting the magnitude of the weights while forcing them away from zero
at the same time", and "using weight compander in addition to standard regularization methods
improves the performance of neural networks". The abstract also says the method is extended to
learn the function's hyperparameters.
Paper scale: not readable here. The abstract names no dataset, model or training length; that the
paper measures image classification in addition to standard regularization (weight decay and the
like) is an inference from the abstract, not a reading of its experiments. Where this falls short:
small CPU tasks, few epochs, and above all the function itself (next paragraph).

Fidelity: STAND-IN. The function is NOT the paper's, and every claim below tests this stand-in,
not the paper's method. The paper's equation could not be read: the stored copies of the paper
(a markdown mirror of the full text, the arXiv listing, OpenReview, Hugging Face, paper-summary
sites) can be searched only through their opening section, which ends inside the abstract; no
public code or issue thread quotes the function. So the exact
compander function, its hyperparameters and their defaults, whether the paper learns them by
default, and which layers it reparameterizes are all unknown here. This module implements a
stand-in, the power-law compander

    w = f(v) = sign(v) * ((|v| + beta) ** alpha - beta ** alpha),   0 < alpha < 1, beta > 0,

chosen only because it has the two properties the abstract names: it grows sublinearly
(|w| ~ |v|^alpha: large weights are compressed, their magnitude restricted) and it is steep at zero
(f'(0) = alpha * beta ** (alpha - 1) > 1 for small beta: near-zero latent values are expanded away
from zero, and their gradients amplified). f is odd, strictly increasing and invertible, with
v = sign(w) * ((|w| + beta ** alpha) ** (1 / alpha) - beta). Every result of this module's claims
is a result for this stand-in, not a test of the paper's method.

Choices made here (none taken from the paper): alpha = 0.5, beta = 0.01; the weight (not the bias)
of every Linear and Conv1d/2d/3d layer is reparameterized, nothing else (norm layers, embeddings
untouched); the hyperparameters are fixed by default, and ``learnable=True`` makes alpha and beta
trainable per layer (kept in range by a sigmoid and a softplus).

A caution when reading results: for small latent values f'(v) > 1, so the compander also scales
gradients up and acts partly as a larger learning rate. Compare against a baseline whose learning
rate is tuned too (the claim ``weight-compander-tuned-lr-mnist1d`` does this).

Built on torch.nn.utils.parametrize: the optimizer and weight decay act on the latent v
(``module.parametrizations.weight.original``), and ``right_inverse`` sets v so that the initial
effective weights equal the model's own initialization. ``remove_compander(model)`` bakes the
companded weights in (``remove_parametrizations(leave_parametrized=True)``) for export, with
unchanged outputs.

Plain PyTorch::

    import torch
    from trainlab.techniques.regularization.weight_compander import apply_compander, remove_compander

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    apply_compander(model, alpha=0.5, beta=0.01)      # any optimizer now trains the latent weights
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    model(torch.randn(4, 8)).sum().backward(); opt.step()
    remove_compander(model)                           # plain weights again, same outputs
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique

PAPER = Paper("Weight Compander: A Simple Weight Reparameterization for Regularization",
              "Cakaj, Mehnert, Yang", 2023, "2306.16993")
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def compand(v: torch.Tensor, alpha: torch.Tensor | float, beta: torch.Tensor | float) -> torch.Tensor:
    """f(v) = sign(v) * ((|v| + beta)^alpha - beta^alpha)."""
    beta_t = torch.as_tensor(beta, dtype=v.dtype, device=v.device)
    return torch.sign(v) * ((v.abs() + beta_t) ** alpha - beta_t ** alpha)


def expand(w: torch.Tensor, alpha: torch.Tensor | float, beta: torch.Tensor | float) -> torch.Tensor:
    """The inverse of `compand`: v = sign(w) * ((|w| + beta^alpha)^(1/alpha) - beta)."""
    beta_t = torch.as_tensor(beta, dtype=w.dtype, device=w.device)
    return torch.sign(w) * ((w.abs() + beta_t ** alpha) ** (1.0 / alpha) - beta_t)


class Compander(nn.Module):
    """A parametrization w = compand(v); alpha, beta fixed or learnable."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.01, learnable: bool = False) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0 or beta <= 0:
            raise ConfigError(f"weight compander needs 0 < alpha < 1 and beta > 0, got alpha={alpha}, beta={beta}")
        self.learnable = learnable
        if learnable:  # unconstrained parameters mapped into (0, 1) and (0, inf)
            self.alpha_raw = nn.Parameter(torch.logit(torch.tensor(float(alpha))))
            self.beta_raw = nn.Parameter(torch.tensor(math.log(math.expm1(beta))))
        else:
            self.register_buffer("alpha_value", torch.tensor(float(alpha)))
            self.register_buffer("beta_value", torch.tensor(float(beta)))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_raw) if self.learnable else self.alpha_value

    @property
    def beta(self) -> torch.Tensor:
        return F.softplus(self.beta_raw) if self.learnable else self.beta_value

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return compand(v, self.alpha.to(v.dtype), self.beta.to(v.dtype))

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return expand(w, self.alpha.to(w.dtype), self.beta.to(w.dtype))


def compander_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, LAYERS)]


def apply_compander(model: nn.Module, alpha: float = 0.5, beta: float = 0.01, learnable: bool = False) -> nn.Module:
    """Reparameterize the weight of every Linear/Conv layer of `model` in place; returns the model."""
    layers = compander_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layers to reparameterize")
    for m in layers:
        if parametrize.is_parametrized(m, "weight"):
            raise ConfigError(f"{type(m).__name__}.weight is already parametrized; weight compander would stack on it")
        parametrize.register_parametrization(m, "weight", Compander(alpha, beta, learnable))
    return model


def remove_compander(model: nn.Module) -> nn.Module:
    """Bake the companded weights into plain parameters (for export); outputs are unchanged."""
    for m in compander_layers(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


@register
class WeightCompander(Technique):
    """Reparameterize every Linear/Conv weight as w = sign(v)((|v|+beta)^alpha - beta^alpha) (a stand-in:
    the paper's own function could not be read, see the module docstring)."""

    name = "weight-compander"
    family = "regularization"
    paper = PAPER
    fidelity = "stand-in"
    deviations = (
        "The compander function is a stand-in, w = sign(v) * ((|v| + beta)^alpha - beta^alpha): the paper's "
        "equation could not be read (only its abstract is readable here); this function only shares the two "
        "properties the abstract names (large weights compressed, small ones pushed away from zero).",
        "Hyperparameters alpha = 0.5, beta = 0.01 are this module's choice; the paper's values and defaults are "
        "unknown.",
        "Which layers are reparameterized (here the weight of every Linear and Conv1d/2d/3d, not biases, norms or "
        "embeddings) is this module's choice.",
        "Fixed hyperparameters by default; learnable=True trains alpha and beta per layer through a sigmoid and a "
        "softplus, this module's parameterization of the abstract's 'learn the hyperparameters'.",
    )
    modifies = frozenset({"model"})
    summary = "reparameterize each weight with a compressing-expanding (compander) function"

    def __init__(self, alpha: float = 0.5, beta: float = 0.01, learnable: bool = False) -> None:
        Compander(alpha, beta, learnable)  # validate early, with the same message
        super().__init__(alpha=alpha, beta=beta, learnable=learnable)
        self.alpha, self.beta, self.learnable = float(alpha), float(beta), bool(learnable)

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        return apply_compander(model, self.alpha, self.beta, self.learnable)


_QUOTE = ("We show experimentally that using weight compander in addition to standard regularization methods "
          "improves the performance of neural networks")
_SCALE = ("not readable here (abstract only): neural networks trained with standard regularization methods, "
          "datasets and models not stated in the readable text")
_SETTING = PaperSetting(text="not readable here: the abstract, the only readable part, names no dataset, model size "
                             "or training length; it reports that weight compander added to standard regularization "
                             "methods improves performance")
_NUMBER = "(not available: only the paper's abstract could be read)"
#: what every claim here tests: this module's stand-in function, not the paper's (see WeightCompander.deviations)
_STAND_IN = ("Tests this project's STAND-IN compander w = sign(v)((|v|+beta)^alpha - beta^alpha) (fidelity: "
             "stand-in), NOT the paper's function, which could not be read; see WeightCompander.deviations. ")
#: the regime a regularizer acts in, per the abstract ("implicitly reduces overfitting"): the baseline fits its
#: training set and generalizes worse. Where the baseline has not fit its training set, a gain can come from
#: faster fitting alone (the compander scales small weights' gradients up), which is not what the paper claims.
_OVERFITS = (
    Precondition("train_acc", ">=", 0.95,
                 why="the baseline fits its training set (final train accuracy at least 95%), so a gain is "
                     "regularization rather than faster fitting"),
    Precondition("train_acc - test_acc", ">=", 0.02,
                 why="the baseline overfits (final train accuracy at least 2 points above test accuracy), "
                     "the regime in which a regularizer can help"),
)
_WC = arm("weight-compander", label="weight compander (stand-in function)")
_SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}

CLAIMS = [
    Claim(
        id="weight-compander-with-wd-mnist1d", technique="weight-compander", task="mnist1d-mlp",
        metric="test_acc", direction="higher", treatment=_WC, baseline=arm(), seeds=5,
        suites=("full",), overrides={**_SGD, "weight_decay": 5e-4}, paper_quote=_QUOTE,
        paper_number=_NUMBER, paper_setting=_SETTING, preconditions=_OVERFITS,
        paper_scale=_SCALE,
        notes=_STAND_IN + "MNIST-1D MLP, SGD with weight decay 5e-4 in both arms (applied to the latent weights in the "
              "treatment). The compander also rescales gradients (dw/dv = f'(v) > 1 for small v), so part of any "
              "gain may be a larger effective learning rate: the baseline's lr is not re-tuned.",
    ),
    Claim(
        id="weight-compander-no-wd-mnist1d", technique="weight-compander", task="mnist1d-mlp",
        metric="test_acc", direction="higher", treatment=_WC, baseline=arm(), seeds=5,
        suites=("full",), overrides={**_SGD, "weight_decay": 0.0}, paper_quote=_QUOTE,
        paper_number=_NUMBER, paper_setting=_SETTING, preconditions=_OVERFITS,
        paper_scale=_SCALE,
        notes=_STAND_IN + "MNIST-1D MLP, SGD without weight decay in either arm: the compander as the only weight "
              "regularizer; same learning-rate caveat as above.",
    ),
    Claim(
        id="weight-compander-with-wd-digits-cnn", technique="weight-compander", task="digits-cnn",
        metric="test_acc", direction="higher", treatment=_WC, baseline=arm(), seeds=5,
        suites=("full",), paper_quote=_QUOTE,
        paper_number=_NUMBER, paper_setting=_SETTING, preconditions=_OVERFITS,
        paper_scale=_SCALE,
        notes=_STAND_IN + "Digits CNN with the task's SGD weight decay 5e-4 in both arms; near the accuracy ceiling "
              "(about 99%), so little room for an effect.",
    ),
    Claim(
        id="weight-compander-no-wd-digits-cnn", technique="weight-compander", task="digits-cnn",
        metric="test_acc", direction="higher", treatment=_WC, baseline=arm(), seeds=5,
        suites=("full",), overrides={"weight_decay": 0.0}, paper_quote=_QUOTE,
        paper_number=_NUMBER, paper_setting=_SETTING, preconditions=_OVERFITS,
        paper_scale=_SCALE,
        notes=_STAND_IN + "Digits CNN without weight decay in either arm; near the accuracy ceiling.",
    ),
    Claim(
        id="weight-compander-tuned-lr-mnist1d", technique="weight-compander", task="mnist1d-mlp",
        metric="test_acc", direction="higher",
        treatment=arm("weight-compander", lr=0.05, label="weight compander (stand-in function), lr 0.05"),
        baseline=arm(lr=0.5, label="baseline, lr 0.5"), seeds=5, suites=("full",),
        overrides={**_SGD, "weight_decay": 5e-4}, paper_quote=_QUOTE,
        paper_number=_NUMBER, paper_setting=_SETTING, preconditions=_OVERFITS,
        paper_scale=_SCALE,
        notes=_STAND_IN + "Each arm at the best of lr in {0.05, 0.2, 0.5} from a 2-seed probe (seeds 0-1, test "
              "accuracy): the baseline at 0.5 (0.73), the compander at 0.05 (0.66; 0.2 gave 0.49, 0.5 diverged). "
              "Controls for the compander's gradient rescaling acting as a larger learning rate; the lr choice used "
              "test data.",
    ),
]
