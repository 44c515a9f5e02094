"""Neural collapse of the penultimate features, and where mixup moves mixed examples' activations.

Paper: Vardan Papyan, X.Y. Han, David L. Donoho, "Prevalence of neural collapse during the terminal
phase of deep learning training", PNAS 2020, arXiv:2008.08186. In the terminal phase of training
(TPT: training on after the training error reaches zero) the penultimate features h of class c
collapse to their class mean mu_c (NC1), the centered class means mu_c - mu_G form a simplex
equiangular tight frame: equal norms, pairwise cosines -1/(C-1) (NC2), the classifier rows become
proportional to them (NC3), and the network's decision becomes the nearest-class-mean rule (NC4).
The measures follow the paper's Figures 2-7, with mu_G the mean of all N features:

    Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T,  Sigma_B = 1/C sum_c (mu_c - mu_G)(mu_c - mu_G)^T
    NC1 = Tr(Sigma_W Sigma_B^+) / C                                     (0 at exact collapse)
    NC2 equinorm    = std_c ||mu_c - mu_G|| / mean_c ||mu_c - mu_G||   (coefficient of variation)
    NC2 equiangular = std_{c != c'} cos(mu_c - mu_G, mu_c' - mu_G)
    NC2 max-angle   = mean_{c != c'} |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C-1)|
    NC3             = || W / ||W||_F - M / ||M||_F ||_F^2,  M = [mu_c - mu_G]_c  [C, d]
    NC4             = agreement of argmax of the network's logits with argmin_c ||h - mu_c||

(the paper plots the NC4 mismatch, 1 - agreement). The standard deviations are the unbiased ones.
One more NC2 measure, the distance to the simplex ETF of the Gram matrix of the centered means, is
the one of Zhu et al., "A Geometric Analysis of Neural Collapse with Unconstrained Features",
NeurIPS 2021, arXiv:2105.02375: || M M^T / ||M M^T||_F - (I - 11^T/C) / sqrt(C-1) ||_F (0 for a
simplex ETF of any scale; it also grows with unequal norms).

Sigma_B has rank <= C-1, so its pseudo-inverse drops singular directions below `rtol` times the
largest. NC1 is computed in the C-dimensional class space: Tr(Sigma_W Sigma_B^+) =
C / N ||H_c M^+||_F^2 with H_c the features centered by their class means (no d x d matrices).

Mixup: Quinn LeBlanc Fisher, Haoming Meng, Vardan Papyan, "Pushing Boundaries: Mixup's Influence on
Neural Collapse", ICLR 2024, arXiv:2402.06171. Under mixup the last-layer activations of mixed
training examples do not form ERM's simplex ETF: mixes of two examples of the same class align
with the classifier, mixes of different classes a, b "delineate channels along the decision
boundary" between a and b. `mix_boundary_gap` measures how close the activations of
different-class mixes lie to that boundary: the distance of h(lam x_i + (1 - lam) x_j) to the
hyperplane {z_a = z_b} is |z_a - z_b| / ||w_a - w_b||, and it is divided by the half distance between
the two clean examples' activations across that hyperplane, (d(x_i) + d(x_j)) / 2 (both averaged
over pairs before the division), so the classifier's scale cancels. A map that is linear in lam
gives |2 lam - 1| (0.444 averaged over lam = 0.1, ..., 0.9); activations in a channel along the
boundary give values near 0.

Plain PyTorch::

    import torch
    from trainlab.diagnostics.collapse import neural_collapse, nc1
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(60, 4), torch.arange(60) % 3
    print(neural_collapse(model, x, y, num_classes=3))   # {"nc1": ..., "nc2_equinorm": ..., ...}
    print(nc1(torch.randn(60, 16), y, 3))                 # on any features [N, d]
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.diagnostics.features import classifier_layer, penultimate_features
from trainlab.diagnostics.probe import Probe, probe_data
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, TrainState

PAPER = Paper("Prevalence of neural collapse during the terminal phase of deep learning training",
              "Papyan, Han, Donoho", 2020, "2008.08186")
PERTURBATION_PAPER = Paper("Perturbation Analysis of Neural Collapse", "Tirer, Huang, Niles-Weed", 2023, "2210.16658")
MIXUP_PAPER = Paper("Pushing Boundaries: Mixup's Influence on Neural Collapse", "Fisher, Meng, Papyan", 2024,
                    "2402.06171")

#: singular values of the centered class means below RTOL x the largest count as zero (the pseudo-inverse)
RTOL = 1e-6


# ---- class statistics ----------------------------------------------------------------------------
def _check(features: torch.Tensor, labels: torch.Tensor, num_classes: int, min_per_class: int = 2) -> torch.Tensor:
    """Validate shapes and class counts; return the per-class counts."""
    if features.dim() != 2:
        raise ConfigError(f"features must be [N, d], got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ConfigError(f"labels must be [N] integer class indices for {features.shape[0]} features, "
                          f"got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ConfigError("labels must be integer class indices (not probabilities)")
    if num_classes < 2:
        raise ConfigError(f"neural collapse needs at least 2 classes, got num_classes={num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(labels.long(), minlength=num_classes)
    short = [c for c in range(num_classes) if int(counts[c]) < min_per_class]
    if short:
        shown = ", ".join(f"{c} ({int(counts[c])})" for c in short[:8])
        raise ConfigError(f"every class needs at least {min_per_class} samples for the within-class statistics; "
                          f"classes with fewer: {shown}{' ...' if len(short) > 8 else ''}")
    return counts


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class means [C, d], global mean [d]) of `features` [N, d] in float64; the global mean is the
    mean of all N features (as in the paper; it equals the mean of the class means for balanced classes)."""
    counts = _check(features, labels, num_classes, min_per_class=1)
    h = features.detach().double()
    sums = torch.zeros(num_classes, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, labels.long(), h)
    return sums / counts.unsqueeze(1).to(h), h.mean(0)


def centered_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """M = [mu_c - mu_G]_c, [C, d] (float64)."""
    means, global_mean = class_means(features, labels, num_classes)
    return means - global_mean


def within_class_covariance(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, [d, d] (float64)."""
    means, _ = class_means(features, labels, num_classes)
    centered = features.detach().double() - means[labels.long()]
    return centered.T @ centered / features.shape[0]


def between_class_covariance(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sigma_B = 1/C sum_c (mu_c - mu_G)(mu_c - mu_G)^T, [d, d] (float64)."""
    m = centered_means(features, labels, num_classes)
    return m.T @ m / num_classes


# ---- NC1 - NC4 -----------------------------------------------------------------------------------
def nc1(features: torch.Tensor, labels: torch.Tensor, num_classes: int, rtol: float = RTOL) -> float:
    """NC1 = Tr(Sigma_W Sigma_B^+) / C: within-class variability relative to the between-class one
    (0 when every feature equals its class mean). Every class needs at least 2 samples."""
    _check(features, labels, num_classes, min_per_class=2)
    means, global_mean = class_means(features, labels, num_classes)
    m = means - global_mean
    if not torch.any(m != 0):
        raise ConfigError("the class means coincide (Sigma_B = 0): NC1 is undefined")
    within = features.detach().double() - means[labels.long()]
    # Sigma_B^+ = C (M^+)(M^+)^T, so Tr(Sigma_W Sigma_B^+) / C = ||H_c M^+||_F^2 / N
    projected = within @ torch.linalg.pinv(m, rtol=rtol)
    return float(projected.pow(2).sum() / features.shape[0])


def _cosines(m: torch.Tensor) -> torch.Tensor:
    """Pairwise cosines of the rows of m, off the diagonal, as a flat vector."""
    norms = m.norm(dim=1)
    if torch.any(norms == 0):
        raise ConfigError("a centered class mean is zero: its angles are undefined")
    unit = m / norms.unsqueeze(1)
    cos = unit @ unit.T
    off = ~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    return cos[off]


def nc2_equinorm(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Coefficient of variation std_c / mean_c of the norms ||mu_c - mu_G|| (0: equal norms)."""
    norms = centered_means(features, labels, num_classes).norm(dim=1)
    return float(norms.std() / norms.mean())


def nc2_equiangular(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Standard deviation of the pairwise cosines of the centered class means (0: equal angles)."""
    return float(_cosines(centered_means(features, labels, num_classes)).std())


def nc2_maxangle(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over pairs of |cos + 1/(C-1)|: the distance of the angles from the simplex's (0: maximal angles)."""
    cos = _cosines(centered_means(features, labels, num_classes))
    return float((cos + 1.0 / (num_classes - 1)).abs().mean())


def etf_gram_distance(means: torch.Tensor) -> float:
    """|| G / ||G||_F - (I - 11^T/C) / sqrt(C-1) ||_F for G = M M^T of centered means M [C, d]
    (0 exactly for a simplex ETF of any scale and rotation)."""
    m = means.detach().double()
    num_classes = m.shape[0]
    gram = m @ m.T
    scale = gram.norm()
    if scale == 0:
        raise ConfigError("the centered class means are all zero: the Gram matrix has no direction")
    etf = torch.eye(num_classes, dtype=m.dtype, device=m.device) - 1.0 / num_classes
    return float((gram / scale - etf / math.sqrt(num_classes - 1)).norm())


def nc2_etf_distance(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """etf_gram_distance of the centered class means of `features`."""
    return etf_gram_distance(centered_means(features, labels, num_classes))


def nc3(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight: torch.Tensor) -> float:
    """Self-duality || W / ||W||_F - M / ||M||_F ||_F^2 of the classifier weight W [C, d] and the centered
    class means M [C, d] (0: the classifier rows are the centered means up to one scale; at most 4)."""
    m = centered_means(features, labels, num_classes)
    w = weight.detach().double().to(m.device)
    if w.shape != m.shape:
        raise ConfigError(f"classifier weight must be [C, d] = {tuple(m.shape)}, got {tuple(w.shape)}")
    if w.norm() == 0 or m.norm() == 0:
        raise ConfigError("NC3 is undefined for a zero classifier or coinciding class means")
    return float((w / w.norm() - m / m.norm()).pow(2).sum())


def nearest_class_mean(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """argmin_c ||h - mu_c|| for each feature row: [N] class indices."""
    return torch.cdist(features.detach().double(), means.double().to(features.device)).argmin(dim=1)


def nc4(features: torch.Tensor, labels: torch.Tensor, num_classes: int, predictions: torch.Tensor) -> float:
    """Fraction of samples on which `predictions` [N] (the network's class, or logits [N, C]) equal
    the nearest-class-mean classifier's (1: the network decides by the nearest class mean)."""
    means, _ = class_means(features, labels, num_classes)
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=1)
    if predictions.shape != labels.shape:
        raise ConfigError(f"predictions must be [N] classes or [N, C] logits, got {tuple(predictions.shape)}")
    return float((nearest_class_mean(features, means) == predictions.to(features.device)).double().mean())


def collapse_measures(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      weight: torch.Tensor | None = None, predictions: torch.Tensor | None = None,
                      rtol: float = RTOL) -> dict[str, float]:
    """All measures of `features` [N, d] with labels [N]: nc1, nc2_equinorm, nc2_equiangular,
    nc2_maxangle, nc2_etf_distance, and nc3 (when the classifier `weight` [C, d] is given), nc4 (when
    the network's `predictions` are given)."""
    out = {
        "nc1": nc1(features, labels, num_classes, rtol),
        "nc2_equinorm": nc2_equinorm(features, labels, num_classes),
        "nc2_equiangular": nc2_equiangular(features, labels, num_classes),
        "nc2_maxangle": nc2_maxangle(features, labels, num_classes),
        "nc2_etf_distance": nc2_etf_distance(features, labels, num_classes),
    }
    if weight is not None:
        out["nc3"] = nc3(features, labels, num_classes, weight)
    if predictions is not None:
        out["nc4"] = nc4(features, labels, num_classes, predictions)
    return out


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The model's outputs for `x`, in batches, without gradients, in the model's current mode."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def neural_collapse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                    classifier: nn.Linear | None = None, batch_size: int = 1024, rtol: float = RTOL) -> dict[str, float]:
    """NC1-NC4 of `model` on inputs `x` with integer labels `y`: the penultimate features are the input
    of `classifier` (default: the model's last nn.Linear with `num_classes` outputs), NC3 uses its
    weight, NC4 the model's predictions. Also returns "nc_accuracy", the model's accuracy on (x, y).
    The model is used in its current mode (call model.eval() first for BatchNorm/dropout models)."""
    layer = classifier if classifier is not None else classifier_layer(model, num_classes)
    if not isinstance(layer, nn.Linear):
        raise ConfigError("classifier must be an nn.Linear (its weight is the classifier W of NC3)")
    if classifier is None:
        features = penultimate_features(model, x, num_classes, batch_size)
    else:
        from trainlab.diagnostics.features import layer_inputs_outputs

        features = layer_inputs_outputs(model, layer, x, batch_size, want="input")
    predictions = model_logits(model, x, batch_size).argmax(dim=1)
    y = y.to(features.device)
    out = collapse_measures(features, y, num_classes, layer.weight, predictions, rtol)
    out["nc_accuracy"] = float((predictions.to(y.device) == y).double().mean())
    return out


# ---- mixup: where different-class mixes lie relative to the decision boundary ---------------------
DEFAULT_LAMS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def different_class_pairs(labels: torch.Tensor, num_pairs: int, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_pairs` index pairs (i, j) with labels[i] != labels[j], drawn uniformly with replacement."""
    n = labels.shape[0]
    if n < 2 or int(labels.unique().numel()) < 2:
        raise ConfigError("different-class pairs need samples of at least 2 classes")
    firsts, seconds, have = [], [], 0
    while have < num_pairs:
        i = torch.randint(0, n, (2 * num_pairs,), generator=generator)
        j = torch.randint(0, n, (2 * num_pairs,), generator=generator)
        keep = labels.cpu()[i] != labels.cpu()[j]
        firsts.append(i[keep])
        seconds.append(j[keep])
        have += int(keep.sum())
    return torch.cat(firsts)[:num_pairs], torch.cat(seconds)[:num_pairs]


def boundary_gap_ratio(logits_mixed: torch.Tensor, logits_i: torch.Tensor, logits_j: torch.Tensor,
                       labels_i: torch.Tensor, labels_j: torch.Tensor) -> float:
    """mean |z_a - z_b| over the mixes, divided by mean (|z_a - z_b|(x_i) + |z_a - z_b|(x_j)) / 2 over the
    clean pairs, with a = labels_i, b = labels_j. logits_mixed: [L, P, C] (L mixing weights, P pairs);
    logits_i, logits_j: [P, C]. 0: the mixes lie on the a/b decision boundary."""
    a, b = labels_i.long(), labels_j.long()
    idx = torch.arange(a.shape[0], device=logits_i.device)

    def gap(z: torch.Tensor) -> torch.Tensor:
        return (z[..., idx, a] - z[..., idx, b]).double()

    clean = 0.5 * (gap(logits_i).abs() + gap(logits_j).abs()).mean()
    if clean == 0:
        raise ConfigError("the clean examples lie on the decision boundary: the ratio is undefined")
    return float(gap(logits_mixed).abs().mean() / clean)


def mix_boundary_gap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_pairs: int = 512,
                     lams: tuple[float, ...] = DEFAULT_LAMS, generator: torch.Generator | None = None,
                     batch_size: int = 1024) -> float:
    """How close the activations of different-class mixes lam x_i + (1 - lam) x_j lie to the decision
    boundary between their classes, relative to the clean examples (see the module docstring):
    0 on the boundary (mixup's channels), 0.444 for a map linear in lam on the default lams."""
    if not lams or any(not 0.0 < lam < 1.0 for lam in lams):
        raise ConfigError(f"lams must be mixing weights strictly between 0 and 1, got {lams}")
    if num_pairs < 1:
        raise ConfigError(f"num_pairs must be >= 1, got {num_pairs}")
    i, j = different_class_pairs(y, num_pairs, generator)
    i, j = i.to(x.device), j.to(x.device)
    xi, xj = x[i], x[j]
    mixed = torch.cat([lam * xi + (1.0 - lam) * xj for lam in lams])
    z_mixed = model_logits(model, mixed, batch_size).reshape(len(lams), num_pairs, -1)
    return boundary_gap_ratio(z_mixed, model_logits(model, xi, batch_size), model_logits(model, xj, batch_size),
                              y[i], y[j])


# ---- probes --------------------------------------------------------------------------------------
def _check_split_samples(name: str, split: str, samples: int | None) -> None:
    if split not in ("train", "test"):
        raise ConfigError(f"probe '{name}': split must be 'train' or 'test', got {split!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 2):
        raise ConfigError(f"probe '{name}': samples must be None (all) or a whole number >= 2, got {samples!r}")


@register
class NeuralCollapse(Probe):
    """NC1-NC4 of the penultimate features on the training set (Papyan, Han, Donoho 2020)."""

    name = "neural-collapse"
    paper = PAPER
    fidelity = "faithful"
    summary = "neural collapse NC1-NC4 of the penultimate features (within-class variability, ETF, self-duality, NCC)"
    metric_keys: ClassVar[tuple[str, ...]] = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle",
                                              "nc2_etf_distance", "nc3", "nc4", "nc_accuracy")

    def __init__(self, every: int = 1, samples: int | None = None, split: str = "train") -> None:
        _check_split_samples(self.name, split, samples)
        super().__init__(every=every, samples=samples, split=split)
        self.samples, self.split = samples, split

    def measure(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        x, y = probe_data(state, self.split, self.samples)
        if y.dim() != 1 or y.is_floating_point():
            raise ConfigError("probe 'neural-collapse' needs integer class labels")
        return neural_collapse(model, x, y, state.num_classes)


@register
class MixupBoundary(Probe):
    """The mix_boundary_gap of different-class training mixes (Fisher, Meng, Papyan 2024)."""

    name = "mixup-boundary"
    paper = MIXUP_PAPER
    fidelity = "variant"
    deviations = (
        "the paper shows the configuration in plots of the activations projected on the classifier; this probe "
        "reduces it to one number, the distance of different-class mixes to their decision boundary relative to "
        "the clean examples' (mix_boundary_gap), on a fixed grid of mixing weights lam = 0.1, ..., 0.9",
    )
    summary = "distance of different-class mixup activations to their decision boundary, relative to clean examples"
    metric_keys: ClassVar[tuple[str, ...]] = ("mix_boundary_gap",)

    def __init__(self, every: int = 1, pairs: int = 512, split: str = "train", seed: int = 0) -> None:
        _check_split_samples(self.name, split, None)
        if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
            raise ConfigError(f"probe 'mixup-boundary': pairs must be a whole number >= 1, got {pairs!r}")
        super().__init__(every=every, pairs=pairs, split=split, seed=seed)
        self.pairs, self.split, self.seed = pairs, split, int(seed)

    def measure(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        x, y = probe_data(state, self.split)
        if y.dim() != 1 or y.is_floating_point():
            raise ConfigError("probe 'mixup-boundary' needs integer class labels")
        # the same pairs at every epoch and in both arms of a comparison (paired by the probe's seed)
        generator = torch.Generator().manual_seed(self.seed + 1000 * state.seed)
        return {"mix_boundary_gap": mix_boundary_gap(model, x, y, self.pairs, generator=generator)}


CLAIMS: list[Claim] = []
