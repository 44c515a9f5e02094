"""Gradient coherence: how well the per-example gradients of a sample agree.

Papers:
  S. Chatterjee (2020). Coherent Gradients: An Approach to Understanding Generalization in Gradient
  Descent-based Optimization. ICLR 2020, arXiv:2002.10657.
  S. Chatterjee, P. Zielinski (2020). Making Coherence Out of Nothing At All: Measuring the Evolution
  of Gradient Alignment. arXiv:2008.01217.

The measure (Chatterjee & Zielinski, the "m-coherence"). With g_z the gradient of example z's loss
and z, z' drawn independently from the sample's empirical distribution (so z = z' is allowed),

    alpha = E[g_z . g_z'] / E[g_z . g_z] = ||E g||^2 / E ||g||^2           (in [0, 1])

alpha is 1 when every example has the same gradient, and 1/m when the m gradients are pairwise
orthogonal (alpha_perp = 1/m, the orthogonal limit). The normalized coherence, the paper's
m-coherence alpha / alpha_perp = m * alpha, lies in [0, m]: it reads "a small step along one example's
gradient helps this many of the m examples, on average" (1: each example helps only itself). It is
the inverse of the gradient diversity sum ||g_i||^2 / ||sum g_i||^2 of Yin et al. (2018). Its value
depends on m (identical gradients give m), so compare it only at the same sample size.

The claim (Coherent Gradients, and measured in the m-coherence paper on ImageNet): per-example
gradients are far more coherent for real labels than for random labels on the same inputs during
the early epochs (with ResNet-50 on ImageNet the real labels' m-coherence peaks at tens within the
first epochs, while random labels stay below about 5, as the authors summarize it in their follow-up,
arXiv:2203.10036); this difference is the theory's explanation
of why real data generalizes and random data is only memorized.

The variant implemented: alpha and m-coherence of the measured sample itself (its empirical
distribution, self-pairs included, as in the paper), over all trainable parameters, measured on the
labels trained on. The mean pairwise cosine of the gradients (self-pairs excluded), one of the
pairwise measures the paper contrasts m-coherence with, is reported beside it (in O(m), from unit
gradients). Within-class
coherence (`by_class=True`) is offered as an option; the papers' measure and the claims use the whole
sample. No official code was found; this follows the papers' definitions.

Claims (digits-mlp, 100 epochs so that the random labels are memorized, m = 512, 5 seeds): real
labels are more coherent than random labels at initialization, over the first 3 epochs, and at the
peak over training; and the random labels' m-coherence rises above 1 while they are memorized.

Per-example gradients come from torch.func (functional_call + grad + vmap over the examples, in
chunks that bound memory): the loss of each example is `loss_fn(outputs[None], target[None])`,
the loss of a batch of one. Only the running sums the measure needs are kept (sum of gradients, sum
of squared norms, sum of unit gradients, per-example norms), so the memory is that of one chunk of
per-example gradients. BatchNorm layers in training mode would normalize each example by its own
statistics (and update running statistics inside vmap), so they are refused: measure in eval mode
(`model.eval()`), as the probe does. Dropout in training mode draws a different mask per example.

    from trainlab.diagnostics.coherence import gradient_coherence
    c = gradient_coherence(model.eval(), x[:512], y[:512])
    c.m_coherence, c.alpha, c.mean_cosine, c.norms
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.diagnostics.probe import Probe, probe_data
from trainlab.errors import ConfigError
from trainlab.training.per_example import per_example_grad_fn
from trainlab.training.technique import Paper, TrainState
from trainlab.techniques.registry import register

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PAPER = Paper(
    title="Making Coherence Out of Nothing At All: Measuring the Evolution of Gradient Alignment",
    authors="Satrajit Chatterjee, Piotr Zielinski", year=2020, arxiv="2008.01217",
)


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError("gradient coherence: the model has no trainable parameters")
    return params


def _check_batch_norm(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
            raise ConfigError(
                f"gradient coherence: BatchNorm layer '{name or type(mod).__name__}' is in training mode, where an "
                f"example's gradient depends on the rest of its batch; measure in eval mode (model.eval())")


def _chunks(m: int, chunk_size: int):
    for start in range(0, m, chunk_size):
        yield slice(start, min(m, start + chunk_size))


def _setup(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None, chunk_size: int):
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ConfigError(f"gradient coherence: chunk_size must be a whole number >= 1, got {chunk_size!r}")
    if len(x) != len(y):
        raise ConfigError(f"gradient coherence: {len(x)} inputs but {len(y)} targets")
    if len(x) < 1:
        raise ConfigError("gradient coherence: needs at least one example")
    _check_batch_norm(model)
    params = _trainable(model)
    names = list(params)
    g = per_example_grad_fn(model, names, loss_fn or F.cross_entropy)
    return names, tuple(params[n] for n in names), g


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None,
                          chunk_size: int = 256) -> dict[str, torch.Tensor]:
    """The gradient of each example's loss with respect to each trainable parameter: {name: [m, *shape]}.

    loss_fn(outputs, targets) -> scalar (default cross-entropy) is applied to a batch of one example.
    Computed with torch.func in chunks of `chunk_size` examples (the result holds all m of them)."""
    names, trainable, g = _setup(model, x, y, loss_fn, chunk_size)
    parts: list[tuple[torch.Tensor, ...]] = []
    for s in _chunks(len(x), chunk_size):
        parts.append(tuple(t.detach() for t in g(trainable, x[s], y[s])))
    return {n: torch.cat([p[i] for p in parts]) for i, n in enumerate(names)}


@dataclass
class Coherence:
    """Gradient coherence of a sample of m examples (see the module docstring).

    alpha: ||mean g||^2 / mean ||g||^2, in [0, 1]. alpha_perp: 1/m, alpha for orthogonal gradients.
    m_coherence: alpha / alpha_perp = m * alpha, in [0, m] (the paper's m-coherence).
    mean_cosine: mean over pairs i != j of cos(g_i, g_j) (NaN for m = 1 or a zero gradient).
    mean_gradient_norm: ||mean g||. mean_sq_norm: mean ||g||^2. norms: ||g_i|| per example [m].
    per_class: {class: Coherence of that class's examples} (within-class coherence) when asked for.
    """

    alpha: float
    alpha_perp: float
    m_coherence: float
    mean_cosine: float
    mean_gradient_norm: float
    mean_sq_norm: float
    norms: torch.Tensor
    m: int
    per_class: dict[int, "Coherence"] = field(default_factory=dict)


def _from_sums(m: int, sum_g: torch.Tensor, sum_sq: float, sum_unit: torch.Tensor, norms: torch.Tensor) -> Coherence:
    mean_g_sq = float(sum_g.pow(2).sum()) / m**2
    mean_sq = sum_sq / m
    alpha = mean_g_sq / mean_sq if mean_sq > 0 else math.nan
    # sum_{i != j} u_i . u_j = ||sum u||^2 - m for unit vectors u_i: the mean pairwise cosine in O(m)
    has_zero = bool((norms == 0).any())
    cos = (float(sum_unit.pow(2).sum()) - m) / (m * (m - 1)) if m > 1 and not has_zero else math.nan
    return Coherence(alpha=alpha, alpha_perp=1.0 / m, m_coherence=m * alpha, mean_cosine=cos,
                     mean_gradient_norm=math.sqrt(mean_g_sq), mean_sq_norm=mean_sq, norms=norms, m=m)


@torch.no_grad()
def _accumulate(flat: torch.Tensor, acc: dict[str, Any]) -> None:
    n = flat.norm(dim=1)
    acc["sum_g"] += flat.sum(0)
    acc["sum_sq"] += float(n.pow(2).sum())
    acc["sum_unit"] += (flat / n.clamp_min(torch.finfo(flat.dtype).tiny).unsqueeze(1)).sum(0)
    acc["norms"].append(n)


def gradient_coherence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None,
                       chunk_size: int = 256, by_class: bool = False) -> Coherence:
    """Coherence of the per-example gradients of (x, y) over the model's trainable parameters.

    loss_fn(outputs, targets) -> scalar, applied per example (default cross-entropy). by_class: also
    the within-class coherence of each class's examples (y must hold class indices); its m_coherence
    is relative to that class's own count. The model is used in its current mode (BatchNorm in
    training mode is refused). Memory: one chunk of per-example gradients plus a few parameter-sized
    sums (per class when by_class)."""
    names, trainable, g = _setup(model, x, y, loss_fn, chunk_size)
    size = sum(t.numel() for t in trainable)
    ref = trainable[0]
    if by_class and (y.dtype.is_floating_point or y.dim() != 1):
        raise ConfigError("gradient coherence: by_class needs integer class labels of shape [m]")

    def fresh() -> dict[str, Any]:
        return {"sum_g": torch.zeros(size, dtype=ref.dtype, device=ref.device), "sum_sq": 0.0,
                "sum_unit": torch.zeros(size, dtype=ref.dtype, device=ref.device), "norms": [], "m": 0}

    total = fresh()
    classes: dict[int, dict[str, Any]] = {}
    for s in _chunks(len(x), chunk_size):
        grads = g(trainable, x[s], y[s])
        flat = torch.cat([t.detach().reshape(t.shape[0], -1) for t in grads], dim=1)
        _accumulate(flat, total)
        if by_class:
            ys = y[s]
            for c in ys.unique().tolist():
                _accumulate(flat[ys == c], classes.setdefault(int(c), fresh()))
    result = _from_sums(len(x), total["sum_g"], total["sum_sq"], total["sum_unit"], torch.cat(total["norms"]))
    for c, acc in sorted(classes.items()):
        norms = torch.cat(acc["norms"])
        result.per_class[c] = _from_sums(len(norms), acc["sum_g"], acc["sum_sq"], acc["sum_unit"], norms)
    return result


def coherence_from_gradients(grads: torch.Tensor) -> Coherence:
    """The same measure from given per-example gradients [m, ...] (each row flattened): for gradients
    obtained elsewhere, and as the reference the streamed computation is tested against."""
    if grads.dim() < 2 or len(grads) < 1:
        raise ConfigError("coherence_from_gradients: needs gradients of shape [m, ...] with m >= 1")
    flat = grads.detach().reshape(len(grads), -1)
    acc = {"sum_g": torch.zeros(flat.shape[1], dtype=flat.dtype), "sum_sq": 0.0,
           "sum_unit": torch.zeros(flat.shape[1], dtype=flat.dtype), "norms": []}
    _accumulate(flat.cpu(), acc)
    return _from_sums(len(flat), acc["sum_g"], acc["sum_sq"], acc["sum_unit"], acc["norms"][0])


# ------------------------------------------------------------------------------------- the probe

@register
class GradientCoherenceProbe(Probe):
    """Records the m-coherence of the per-example gradients of `samples` training examples (the first
    ones, with the labels trained on), at the end of every `every`-th epoch, and with at_start=True
    once before the first step (stored in epoch 1's row under the *_init keys). until=k > 0 measures
    in the first k epochs only (not after the last epoch either), for the early-training regime the
    papers compare; "max:gradient_coherence" then reads the early peak."""

    name = "gradient-coherence"
    paper = PAPER
    fidelity = "faithful"
    summary = "m-coherence (alpha / alpha_perp) of per-example gradients, alpha, mean pairwise cosine"
    metric_keys: ClassVar[tuple[str, ...]] = (
        "gradient_coherence", "gradient_alpha", "gradient_mean_cosine", "gradient_mean_norm",
        "gradient_coherence_init", "gradient_alpha_init", "gradient_mean_cosine_init",
    )

    def __init__(self, every: int = 1, samples: int = 512, at_start: bool = True, until: int = 0,
                 chunk_size: int = 256) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ConfigError(f"probe 'gradient-coherence': samples must be a whole number >= 2, got {samples!r}")
        if not isinstance(at_start, bool):
            raise ConfigError(f"probe 'gradient-coherence': at_start must be true or false, got {at_start!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"probe 'gradient-coherence': chunk_size must be a whole number >= 1, got {chunk_size!r}")
        if isinstance(until, bool) or not isinstance(until, int) or until < 0:
            raise ConfigError(f"probe 'gradient-coherence': until must be a whole number >= 0 (0: every epoch), "
                              f"got {until!r}")
        super().__init__(every=every, samples=samples, at_start=at_start, until=until, chunk_size=chunk_size)
        self.samples, self.at_start, self.until, self.chunk_size = samples, at_start, until, chunk_size
        self._init: dict[str, float] = {}

    def _values(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        x, y = probe_data(state, "train", self.samples)
        c = gradient_coherence(model, x, y, state.loss_fn, chunk_size=self.chunk_size)
        return {"gradient_coherence": c.m_coherence, "gradient_alpha": c.alpha,
                "gradient_mean_cosine": c.mean_cosine, "gradient_mean_norm": c.mean_gradient_norm}

    def due(self, state: TrainState) -> bool:
        if self.until and state.epoch + 1 > self.until:
            return False
        return super().due(state)

    def measure(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        return self._values(model, state)

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self._init = {}
        if not self.at_start or state.step != 0:  # a resumed run is past its start
            return
        was_training = model.training
        model.train(self.model_mode == "train")
        try:
            values = self._values(model, state)
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)
        self._init = {f"{k}_init": v for k, v in values.items() if k != "gradient_mean_norm"}

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self._init:  # on_train_start has no row of its own: the start values go into the first epoch's
            state.epoch_metrics.update(self._init)
            self._init = {}
        super().on_epoch_end(model, state)


# ------------------------------------------------------------------------------------- the claims
# The papers' regime: an over-parameterized network that fits real labels AND memorizes random ones
# (ImageNet ResNet-50 reaches high training accuracy on both). digits-mlp memorizes uniformly random
# labels of its 1,437 training images within 100 epochs (at its own 10 it reaches ~20%), so the claims
# run 100 epochs; both label sets are fitted by the end (preconditions).

_EPOCHS = 100
_EARLY = 3  # the first 3 of 100 epochs (66 of 2,200 SGD steps): where the papers' real-label peak lies
_EARLY_PROBE = ("gradient-coherence", {"samples": 512, "until": _EARLY})
_WHOLE_PROBE = ("gradient-coherence", {"samples": 512})
_RANDOM_LABELS = {"label_noise": 1.0, "noise_kind": "symmetric-all"}
_QUOTE = ("m-coherence reaches moderately high values during training (though still much smaller than real "
          "labels)")
_NUMBER = ("ResNet-50 on ImageNet, m = 50K training examples: real labels peak at an m-coherence of about 40 within "
           "the first epochs; random labels stay below about 5 (the authors' summary in arXiv:2203.10036)")
_SCALE = "ImageNet (1.28M images), ResNet-50 and other vision networks, m-coherence of a 50K-example sample"
_SETTING = PaperSetting(train_size=1_281_167, params=25_600_000,
                        text="ImageNet, ResNet-50 (also Inception / EfficientNet), 0% and 100% label noise, "
                             "m-coherence over a fixed 50K-example sample during training")
_REAL_FITS = Precondition(metric="train_acc", op=">=", threshold=0.95, arm="treatment", over="min",
                          why="the network fits the real labels")
_RANDOM_FITS = Precondition(metric="train_acc", op=">=", threshold=0.95, arm="baseline", over="min",
                            why="the network memorizes the random labels (the papers' over-parameterized regime)")
_NOTES = ("Same inputs and seeds in both arms; the random-label arm redraws every training label uniformly from "
          "the 10 classes (label_noise=1.0, noise_kind='symmetric-all'), and coherence is measured on the labels "
          "trained on. m-coherence over the same first 512 training examples (of 1,437), per-example gradients "
          f"of all parameters in eval mode. Ours: digits (8x8), a 2-layer MLP of 26K parameters, {_EPOCHS} epochs "
          "of SGD (digits-mlp runs 10; 100 lets the random labels be memorized); the paper's m is 50K, and "
          "m-coherence grows with m for coherent gradients, so only the ordering, not the size, compares with the "
          "paper's numbers. min_effect 1: each example helps at least one more example of the sample. ")


def _two_arm(id: str, probe: tuple, metric: str, notes: str, suites: tuple[str, ...]) -> Claim:
    return Claim(
        id=id, technique="gradient-coherence", task="digits-mlp", metric=metric, direction="higher",
        treatment=arm(probe, label="real labels"),
        baseline=arm(probe, label="random labels (every training label redrawn uniformly)", **_RANDOM_LABELS),
        overrides={"epochs": _EPOCHS}, min_effect=1.0, seeds=5, suites=suites, paper_quote=_QUOTE,
        paper_number=_NUMBER, paper_scale=_SCALE, paper_setting=_SETTING, preconditions=(_REAL_FITS, _RANDOM_FITS),
        allow_collapse=("baseline",), notes=_NOTES + notes + " The random-label arm is at chance on the test set "
                                                            "by construction (allowed).")


CLAIMS: list[Claim] = [
    _two_arm("gradient-coherence-real-vs-random-digits", _EARLY_PROBE, "max:gradient_coherence",
             f"Metric: the peak m-coherence over the ends of the first {_EARLY} epochs (the papers compare the "
             "early-training peak; later the real-label coherence falls back as examples are fitted).",
             ("full",)),
    _two_arm("gradient-coherence-real-vs-random-init-digits", _EARLY_PROBE, "max:gradient_coherence_init",
             "Metric: the m-coherence at initialization, before the first step (the probe's at_start value, stored "
             "in epoch 1's row). The papers' ResNet-50 curves start near 1 for both label sets and separate during "
             "the first epochs, so this is our MLP's starting point, not a number the paper reports; the same runs "
             "as gradient-coherence-real-vs-random-digits.", ("full",)),
    _two_arm("gradient-coherence-peak-real-vs-random-digits", _WHOLE_PROBE, "max:gradient_coherence",
             f"Metric: the peak m-coherence over all {_EPOCHS} epoch ends, the abstract's comparison: random labels "
             "gain coherence while they are memorized, yet stay below the real labels' peak.", ("full",)),
    Claim(
        id="gradient-coherence-random-labels-rises-digits", technique="gradient-coherence", task="digits-mlp",
        metric="max:gradient_coherence", direction="higher", reference=1.0, min_effect=1.0,
        treatment=arm(_WHOLE_PROBE, label="random labels (every training label redrawn uniformly)", **_RANDOM_LABELS),
        overrides={"epochs": _EPOCHS}, seeds=5, suites=("full",),
        paper_quote=("Naively, one might expect that when training with completely random labels, each example is "
                     "fitted independently, and so m-coherence should be close to 1. However, this is not the case"),
        paper_number="random labels: m-coherence well above 1 during training (ImageNet, m = 50K)",
        paper_scale=_SCALE, paper_setting=_SETTING,
        preconditions=(Precondition(metric="train_acc", op=">=", threshold=0.95, arm="treatment", over="min",
                                    why="the network memorizes the random labels"),),
        allow_collapse=("treatment",),
        notes=_NOTES + "One arm: the peak m-coherence of the random-label runs over all epoch ends against 1, the "
                       "value of mutually orthogonal gradients (each example helps only itself); min_effect 1: the "
                       "peak reaches at least 2. The same runs as the random-label arm of "
                       "gradient-coherence-peak-real-vs-random-digits. The random-label arm is at chance on the test "
                       "set by construction (allowed).",
    ),
]
