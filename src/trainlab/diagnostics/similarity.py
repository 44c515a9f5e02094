"""Comparing the representations of two networks: linear CKA, relative representations, neuron
matching, and a probe that trains a second network from another seed beside the run's model.

Papers:
  * Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited",
    ICML 2019, arXiv:1905.00414. Linear CKA of features X [n, p] and Y [n, q] with columns centered:
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). Invariant to orthogonal transforms and isotropic
    scaling, not to arbitrary invertible linear maps. ``debiased=True`` replaces each HSIC by the
    unbiased estimator of Song et al. (2012), in the feature-space form of the authors' code.
  * Moschella, Maiorca, Fumero, Norelli, Locatello, Rodola, "Relative representations enable
    zero-shot latent space communication", ICLR 2023, arXiv:2209.15430. A sample's relative
    representation is the vector of cosine similarities of its embedding to the embeddings of a
    fixed set of anchor samples (drawn uniformly from the training set). It is invariant to angle-
    preserving maps of the latent space (rotations, reflections, isotropic scaling), so latent
    spaces of networks trained from different seeds, which differ by roughly such maps, give
    similar relative representations, and a head trained on one network's relative features works
    on another's without training ("zero-shot stitching").
  * Li, Yosinski, Clune, Lipson, Hopcroft, "Convergent Learning: Do different neural networks learn
    the same representations?", ICLR 2016, arXiv:1511.07543. Units of two networks are compared by
    the Pearson correlation of their activations over a dataset; a one-to-one assignment that
    maximizes the summed correlation ("bipartite matching"; the official code uses a maximum-weight
    matching) pairs each unit of one net with one of the other; "semi-matching" pairs each unit with
    its most correlated unit of the other net (several may share one). Claim: some features are
    learned reliably by networks trained from different seeds (high matched correlations).

Plain PyTorch::

    import torch
    from trainlab.diagnostics.similarity import linear_cka, match_units, relative_representation

    x, y = torch.randn(500, 64), torch.randn(500, 64)
    linear_cka(x, y)                              # ~0 for independent features, 1 for x vs x @ Q
    match_units(x, y).mean                        # mean correlation of one-to-one matched units
    relative_representation(x, x[:100])           # [500, 100] cosines to 100 anchors

The probe ``seed-similarity`` (see SeedSimilarity) trains a sibling network from another seed on
the run's batches and measures these quantities between the model and the sibling.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.diagnostics.features import classifier_layer, penultimate_features
from trainlab.diagnostics.probe import Probe, probe_data
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, TrainState

CKA_PAPER = Paper("Similarity of Neural Network Representations Revisited", "Kornblith, Norouzi, Lee, Hinton", 2019,
                  "1905.00414")
RELREPS_PAPER = Paper("Relative representations enable zero-shot latent space communication",
                      "Moschella, Maiorca, Fumero, Norelli, Locatello, Rodola", 2023, "2209.15430")
CONVERGENT_PAPER = Paper("Convergent Learning: Do different neural networks learn the same representations?",
                         "Li, Yosinski, Clune, Lipson, Hopcroft", 2016, "1511.07543")
MATCH_METHODS = ("bipartite", "semi")


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ConfigError(f"{name} must be a tensor [examples, features], got "
                          f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    return x.detach().flatten(1).double()


def _same_examples(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"the two representations must be of the same examples: {x.shape[0]} vs {y.shape[0]} rows")


# --------------------------------------------------------------------------- linear CKA

def _debiased_dot(xty: torch.Tensor, rows_x: torch.Tensor, rows_y: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased linear HSIC (times n(n-3)) from ||Y^T X||_F^2 of centered features, the squared row
    norms and their sums (Song et al. 2012, rewritten in feature space as in the CKA authors' code)."""
    return xty - n / (n - 2.0) * rows_x.dot(rows_y) + rows_x.sum() * rows_y.sum() / ((n - 1) * (n - 2))


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear CKA between representations x [n, p] and y [n, q] of the same n examples (extra
    dimensions are flattened). debiased: use the unbiased HSIC estimator (needs n >= 4)."""
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    _same_examples(x, y)
    n = x.shape[0]
    if n < (4 if debiased else 2):
        raise ConfigError(f"linear CKA needs at least {4 if debiased else 2} examples, got {n}")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    xy = (y.T @ x).square().sum()
    xx = (x.T @ x).square().sum()
    yy = (y.T @ y).square().sum()
    if debiased:
        rows_x, rows_y = x.square().sum(1), y.square().sum(1)
        xy = _debiased_dot(xy, rows_x, rows_y, n)
        xx = _debiased_dot(xx, rows_x, rows_x, n)
        yy = _debiased_dot(yy, rows_y, rows_y, n)
    denominator = (xx * yy).sqrt()
    if denominator <= 0:
        raise ConfigError("linear CKA is undefined when a representation is constant over the examples")
    return float(xy / denominator)


# --------------------------------------------------------------------------- relative representations

def relative_representation(x: torch.Tensor, anchors: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Cosine similarity of each row of x [n, d] to each anchor [a, d]: [n, a] (Moschella et al.).
    center: subtract the anchors' mean from both first (a later variant; the paper uses plain cosine)."""
    x, anchors = _as_matrix(x, "x"), _as_matrix(anchors, "anchors")
    if x.shape[1] != anchors.shape[1]:
        raise ConfigError(f"x and anchors must have the same feature size: {x.shape[1]} vs {anchors.shape[1]}")
    if center:
        mean = anchors.mean(0, keepdim=True)
        x, anchors = x - mean, anchors - mean
    return F.normalize(x, dim=1) @ F.normalize(anchors, dim=1).T


def mean_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over examples of the cosine between row i of x and row i of y (same shape)."""
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape != y.shape:
        raise ConfigError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return float(F.cosine_similarity(x, y, dim=1).mean())


# --------------------------------------------------------------------------- neuron matching

def unit_correlations(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlations [p, q] between the p units of x [n, p] and the q units of y [n, q] over the
    n examples. A unit that is constant over the examples (e.g. a dead ReLU) correlates 0 with all."""
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    _same_examples(x, y)

    def standardized(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(0, keepdim=True)
        norm = z.norm(dim=0, keepdim=True)
        scale = norm.max().clamp_min(1e-300)
        return torch.where(norm > 1e-12 * scale, z / norm.clamp_min(1e-300), torch.zeros_like(z))

    return standardized(x).T @ standardized(y)


@dataclass(frozen=True)
class UnitMatching:
    """units_x[k] of the first network is matched with units_y[k] of the second, at correlations[k]."""

    units_x: torch.Tensor
    units_y: torch.Tensor
    correlations: torch.Tensor

    @property
    def mean(self) -> float:
        return float(self.correlations.mean())


def match_units(x: torch.Tensor, y: torch.Tensor, method: str = "bipartite") -> UnitMatching:
    """Match the units (columns) of x [n, p] with those of y [n, q] by activation correlation.

    bipartite: one-to-one assignment maximizing the summed correlation (scipy's
    linear_sum_assignment; min(p, q) pairs). semi: each unit of x with its most correlated unit of y."""
    if method not in MATCH_METHODS:
        raise ConfigError(f"match method must be one of {MATCH_METHODS}, got {method!r}")
    corr = unit_correlations(x, y)
    if method == "semi":
        values, cols = corr.max(dim=1)
        return UnitMatching(torch.arange(corr.shape[0]), cols, values)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(corr.numpy(), maximize=True)
    rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
    return UnitMatching(rows, cols, corr[rows, cols])


# --------------------------------------------------------------------------- a linear head (for stitching)

@dataclass(frozen=True)
class LinearHead:
    """A linear classifier on features: argmax((features - mean) @ weight + bias)."""

    mean: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return (_as_matrix(features, "features") - self.mean) @ self.weight + self.bias

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.logits(features).argmax(1) == labels.cpu()).double().mean())


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ridge: float = 1e-3) -> LinearHead:
    """Ridge regression of one-hot labels on centered features (a least-squares linear classifier);
    the penalty is `ridge` times the mean feature variance, so the fit does not depend on the
    features' overall scale."""
    z = _as_matrix(features, "features")
    labels = labels.detach().cpu().long()
    if labels.dim() != 1 or len(labels) != len(z):
        raise ConfigError("labels must be class indices, one per row of features")
    mean = z.mean(0, keepdim=True)
    z = z - mean
    targets = F.one_hot(labels, num_classes).double()
    bias = targets.mean(0)
    gram = z.T @ z
    penalty = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    weight = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype), z.T @ (targets - bias))
    return LinearHead(mean, weight, bias)


# --------------------------------------------------------------------------- the probe

#: the keys the probe measures (each also as "<key>_init", the same measure at initialization)
PAIR_KEYS = ("seed_cka", "seed_matched_corr", "seed_semi_matched_corr", "seed_rel_cosine", "seed_abs_cosine",
             "seed_rel_cka", "seed_stitch_rel_acc", "seed_stitch_abs_acc", "seed_head_rel_acc", "seed_head_abs_acc")


def compare_networks(model: nn.Module, sibling: nn.Module, num_classes: int, test_x: torch.Tensor,
                     test_y: torch.Tensor, train_x: torch.Tensor, train_y: torch.Tensor,
                     anchor_x: torch.Tensor, center: bool = False, debiased: bool = False) -> dict[str, float]:
    """All pair measures between two networks' penultimate features (the classifier layer's input):
    on the test examples: linear CKA, mean correlation of bipartite- and semi-matched units, mean
    cosine of the two nets' relative (to the anchor inputs) and absolute features, CKA of the
    relative features; stitching: a linear head fitted on the model's (relative / absolute) features
    of the training examples, its accuracy on the sibling's test features (stitch) and on the
    model's own (head). center: centered relative representations; debiased: debiased CKA. Both
    networks are read in their current mode."""
    a_test = penultimate_features(model, test_x, num_classes).cpu()
    b_test = penultimate_features(sibling, test_x, num_classes).cpu()
    a_train = penultimate_features(model, train_x, num_classes).cpu()
    a_anchor = penultimate_features(model, anchor_x, num_classes).cpu()
    b_anchor = penultimate_features(sibling, anchor_x, num_classes).cpu()
    rel_a_test = relative_representation(a_test, a_anchor, center)
    rel_b_test = relative_representation(b_test, b_anchor, center)
    rel_a_train = relative_representation(a_train, a_anchor, center)
    test_y, train_y = test_y.cpu(), train_y.cpu()
    head_abs = fit_linear_head(a_train, train_y, num_classes)
    head_rel = fit_linear_head(rel_a_train, train_y, num_classes)
    return {
        "seed_cka": linear_cka(a_test, b_test, debiased),
        "seed_matched_corr": match_units(a_test, b_test).mean,
        "seed_semi_matched_corr": match_units(a_test, b_test, "semi").mean,
        "seed_rel_cosine": mean_cosine(rel_a_test, rel_b_test),
        "seed_abs_cosine": mean_cosine(a_test, b_test) if a_test.shape == b_test.shape else float("nan"),
        "seed_rel_cka": linear_cka(rel_a_test, rel_b_test, debiased),
        "seed_stitch_rel_acc": head_rel.accuracy(rel_b_test, test_y),
        "seed_stitch_abs_acc": head_abs.accuracy(b_test, test_y) if a_test.shape == b_test.shape else float("nan"),
        "seed_head_rel_acc": head_rel.accuracy(rel_a_test, test_y),
        "seed_head_abs_acc": head_abs.accuracy(a_test, test_y),
    }


@register
class SeedSimilarity(Probe):
    """Trains a sibling network from another seed beside the run's model and compares the two.

    The sibling is the task's `make_model` built under seed + `seed_offset` (the run's techniques'
    `prepare` is not applied to it; seed_offset=0 gives a copy of the model, a sanity check), with its own optimizer and schedule built like the task's
    default ones (trainlab.training.optim; when a technique replaced the run's optimizer, its class
    and default hyper-parameters are mirrored). It takes one step on every batch the model trains
    on, in `after_step` (the batch after other techniques' transforms, the run's base loss, the
    task's gradient clipping), with its own random-number stream, so the run itself (its model, its
    data order, its random draws) is exactly that of a run without the probe.

    At every measurement (and once at the start of training, on both networks at initialization:
    the "untrained networks" control, keys ending in "_init") it reads both networks' penultimate
    features and records the measures of `compare_networks` on the first `examples` test examples,
    with `anchors` anchor examples drawn uniformly (seeded) from the training set and the stitching
    heads fitted on the first `train_examples` training examples, plus the sibling's test accuracy.
    center: relative representations with the anchors' mean subtracted (not the paper's);
    debiased: CKA with the unbiased HSIC estimator.

    Cost: a second network is trained, so training takes about twice the compute and memory of
    the run without the probe; each measurement runs both networks over the selected examples.
    """

    name: ClassVar[str] = "seed-similarity"
    paper: ClassVar[Paper] = CONVERGENT_PAPER
    fidelity: ClassVar[str] = "variant"
    deviations: ClassVar[tuple[str, ...]] = (
        "one pair of networks per run (model and a sibling from seed + offset), not the papers' four nets or all pairs",
        "units are compared at the penultimate layer only (the papers compare every layer)",
        "neuron matching uses scipy's linear_sum_assignment (an exact maximum-weight assignment, as the official "
        "code's max-weight matching); mutual-information matching is not implemented",
        "zero-shot stitching uses a ridge least-squares linear head fitted on the model's training features, not a "
        "trained relative decoder; anchors are training examples drawn uniformly, as in the paper",
        "CKA is computed by its closed form (as the authors' code), exact for the given examples",
    )
    version: ClassVar[int] = 1
    metric_keys: ClassVar[tuple[str, ...]] = (
        PAIR_KEYS + tuple(k + "_init" for k in PAIR_KEYS) + ("sibling_test_acc",))

    def __init__(self, every: int = 1, seed_offset: int = 1000, examples: int = 1000, anchors: int = 300,
                 train_examples: int = 2000, center: bool = False, debiased: bool = False, **settings: Any) -> None:
        for key, value in (("examples", examples), ("anchors", anchors), ("train_examples", train_examples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"probe 'seed-similarity': {key} must be a whole number >= 2, got {value!r}")
        if isinstance(seed_offset, bool) or not isinstance(seed_offset, int):
            raise ConfigError(f"probe 'seed-similarity': seed_offset must be a whole number, got {seed_offset!r}")
        super().__init__(every=every, seed_offset=seed_offset, examples=examples, anchors=anchors,
                         train_examples=train_examples, center=bool(center), debiased=bool(debiased), **settings)
        self.seed_offset, self.examples, self.anchors = seed_offset, examples, anchors
        self.train_examples, self.center, self.debiased = train_examples, bool(center), bool(debiased)
        self.sibling: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.anchor_index: torch.Tensor | None = None
        self.init_values: dict[str, float] = {}
        self._rng: torch.Tensor | None = None       # the sibling's own CPU random state
        self._cuda_rng: torch.Tensor | None = None  # and CUDA one, on a GPU
        self._pending: Mapping[str, Any] | None = None

    @classmethod
    def check_applicable(cls, task: Any, data: Any, model: nn.Module | None) -> str | None:
        if not data.is_classification:
            return f"needs class labels (for the stitching accuracy); '{task.name}' has none"
        if model is not None:
            try:
                classifier_layer(model, data.num_classes)
            except ConfigError:
                return (f"needs a classifier nn.Linear with {data.num_classes} outputs (its input are the features "
                        f"compared); the model of '{task.name}' ({type(model).__name__}) has none")
        return None

    # ---- the sibling's own random stream (dropout, ...): the run's stream is left untouched
    @contextlib.contextmanager
    def _sibling_rng(self, device: torch.device) -> Iterator[None]:
        cuda = device.type == "cuda"
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(device) if cuda else None
        torch.set_rng_state(self._rng)
        if cuda:
            if self._cuda_rng is None:  # the sibling's own CUDA stream, seeded from its CPU stream
                torch.cuda.manual_seed(int(torch.randint(0, 2**62, (1,))))
            else:
                torch.cuda.set_rng_state(self._cuda_rng, device)
        try:
            yield
        finally:
            self._rng = torch.get_rng_state()
            torch.set_rng_state(outer)
            if cuda:
                self._cuda_rng = torch.cuda.get_rng_state(device)
                torch.cuda.set_rng_state(outer_cuda, device)

    def _build(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        from trainlab.training.optim import build_optimizer, build_scheduler
        from trainlab.training.validate import call_user

        task, data = state.task, state.data
        reason = self.check_applicable(task, data, model)
        if reason:
            raise ConfigError(f"probe 'seed-similarity' {reason}")
        outer = torch.get_rng_state()
        try:
            torch.manual_seed(state.seed + self.seed_offset)
            sibling = call_user(task.make_model, "make_model", task.name, data.input_shape, data.num_classes,
                                **dict(task.model_kwargs))
            self._rng = torch.get_rng_state()
        finally:
            torch.set_rng_state(outer)
        if not isinstance(sibling, nn.Module):
            raise ConfigError(f"probe 'seed-similarity': task '{task.name}' make_model did not return an nn.Module")
        classifier_layer(sibling, data.num_classes)  # the same check on the sibling
        self.sibling = sibling.to(state.device)
        params = [p for p in self.sibling.parameters() if p.requires_grad]
        default = build_optimizer(task, params)
        if optimizer is not None and type(optimizer) is not type(default):
            default = type(optimizer)(params, **optimizer.defaults)  # mirror a technique's optimizer
        self.optimizer = default
        self.scheduler = build_scheduler(task, self.optimizer, max(1, state.total_steps), max(1, state.steps_per_epoch))
        n_train = len(data.train_y)
        gen = torch.Generator().manual_seed(state.seed * 7_919 + 17)
        self.anchor_index = torch.randperm(n_train, generator=gen)[:min(self.anchors, n_train)].sort().values

    def _compare(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        test_x, test_y = probe_data(state, "test", self.examples)
        train_x, train_y = probe_data(state, "train", self.train_examples)
        anchor_x = state.data.train_x[self.anchor_index].to(state.device)
        return compare_networks(model, self.sibling, state.num_classes, test_x, test_y, train_x, train_y, anchor_x,
                                self.center, self.debiased)

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self._build(model, optimizer, state)
        if self._pending is not None:  # resuming from a checkpoint
            self.sibling.load_state_dict(self._pending["sibling"])
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self.scheduler.load_state_dict(self._pending["scheduler"])
            self._rng = self._pending["rng"].clone()
            self._cuda_rng = self._pending.get("cuda_rng")
            self.init_values = dict(self._pending["init"])
            self._pending = None
            return
        was_training = model.training
        model.eval()
        self.sibling.eval()
        try:
            values = self._compare(model, state)
        finally:
            model.train(was_training)
            self.sibling.train()
        self.init_values = {k + "_init": v for k, v in values.items()}

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        if self.sibling is None or state.batch is None:
            return
        batch = state.batch
        self.sibling.train()
        with self._sibling_rng(state.device), torch.enable_grad():
            loss = state.loss_fn(self.sibling(batch.inputs), batch.targets)
            if not torch.isfinite(loss.detach()):
                return  # as the trainer does for the model: no update on a non-finite loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if state.task.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.sibling.parameters(), state.task.grad_clip)
            self.optimizer.step()
            self.scheduler.step()

    def measure(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        if self.sibling is None:
            raise ConfigError("probe 'seed-similarity' measures inside a trainlab run (its sibling is built at the "
                              "start of training)")
        self.sibling.eval()
        try:
            values = self._compare(model, state)
            test_x, test_y = probe_data(state, "test", self.examples)
            with torch.no_grad():
                logits = torch.cat([self.sibling(test_x[i:i + 1024]) for i in range(0, len(test_x), 1024)])
            values["sibling_test_acc"] = float((logits.argmax(1) == test_y).float().mean())
        finally:
            self.sibling.train()
            self.sibling.zero_grad(set_to_none=True)
        return {**values, **self.init_values}

    def state_dict(self) -> dict[str, Any]:
        if self.sibling is None:
            return {}
        return {"sibling": self.sibling.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self._rng.clone(), "init": dict(self.init_values),
                "cuda_rng": None if self._cuda_rng is None else self._cuda_rng.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = dict(state) if state else None


# --------------------------------------------------------------------------- claims

_TRAINED = (
    Precondition("test_acc", ">=", 0.9, arm="treatment", over="min",
                 why="the model is trained to good accuracy (the papers compare well-trained networks)"),
    Precondition("sibling_test_acc", ">=", 0.9, arm="treatment", over="min",
                 why="the sibling network is trained to good accuracy too"),
)
_PROBE = arm(("seed-similarity", {"every": 10}), label="model + sibling (seed + 1000)")
_SETTING_CL = PaperSetting(train_size=1_281_167, epochs=None, params=60_000_000,
                           text="ImageNet ILSVRC 2012, four AlexNet-style nets (Caffe reference model) from different "
                                "seeds, units conv1-fc7 compared over the 50k validation images")
_SETTING_RR = PaperSetting(train_size=60_000, text="MNIST / F-MNIST / CIFAR-10 / CIFAR-100 (and text, graphs): "
                                                   "encoders from different seeds, relative decoder on ~hundreds to "
                                                   "thousands of anchors; zero-shot stitching across seeds")
_OURS = ("Ours: scikit-learn digits (1,437 training images), a 2-layer MLP (128 units, 10 epochs of SGD), model and "
         "sibling trained on the same batches from different initializations; measured on the 360 test images at "
         "the penultimate layer (128 ReLU units). ")

_RR_QUOTE = ("neural architectures can leverage these relative representations to guarantee, in practice, invariance "
             "to latent isometries and rescalings, effectively enabling latent space communication: from zero-shot "
             "model stitching to latent space comparison between diverse settings")

CLAIMS = [
    Claim(
        id="convergent-learning-matched-units", technique="seed-similarity", task="digits-mlp",
        metric="seed_matched_corr", reference="seed_matched_corr_init", direction="higher", min_effect=0.1,
        treatment=_PROBE, seeds=5, preconditions=_TRAINED, paper_setting=_SETTING_CL,
        paper_quote="some features are learned reliably in multiple networks, yet other features are not "
                    "consistently learned",
        paper_number="one-to-one matched units of two nets correlate highly in some layers (conv1 most), less in "
                     "the middle layers; the paper has no untrained-network control",
        paper_scale="ImageNet, AlexNet x4",
        notes=_OURS + "Metric: the mean correlation of one-to-one (bipartite) matched penultimate units of the two "
                      "trained networks, minus the same measure for the two networks at initialization (same inputs, "
                      "same unit count: the matching's own upward bias on random units is in both). The 0.1 smallest "
                      "effect is our choice; the paper states no margin against untrained networks. Measured (5 "
                      "seeds): 0.65-0.68 trained vs 0.37-0.39 at initialization (semi-matching 0.70-0.77 vs "
                      "0.41-0.43; linear CKA 0.97 vs 0.65-0.68).",
    ),
    Claim(
        id="relative-representations-agree-across-seeds", technique="seed-similarity", task="digits-mlp",
        metric="seed_rel_cosine", reference="seed_abs_cosine", direction="higher", min_effect=0.1,
        treatment=_PROBE, seeds=5, preconditions=_TRAINED, paper_setting=_SETTING_RR,
        paper_quote=_RR_QUOTE,
        paper_number="relative representations of corresponding samples agree across latent spaces (seeds, "
                     "architectures, word-embedding methods) where absolute ones do not (Sec. 5.1); no single "
                     "number transfers to this setting",
        paper_scale="MNIST-like to CIFAR-100 and text encoders",
        notes=_OURS + "Metric: mean over test images of the cosine between the model's and the sibling's relative "
                      "representations (cosines to the same 300 anchor training images), minus the mean cosine of "
                      "their absolute penultimate features. Post-ReLU features are non-negative, so absolute cosines "
                      "are positive even between unrelated networks; the reference is the paper's comparison, the "
                      "_init keys record both at initialization. The 0.1 smallest effect is our choice. Measured (5 "
                      "seeds): the relative cosine is 0.995-0.997 trained but already 0.994-0.996 for the two "
                      "networks at initialization, because cosines between non-negative features are all positive "
                      "and every relative vector shares a large common part; so this comparison holds for untrained "
                      "networks too and does not show an effect of training. The centered measure, linear CKA of the "
                      "relative representations (seed_rel_cka), separates them: 0.95-0.98 trained vs 0.42-0.51 at "
                      "initialization.",
    ),
    Claim(
        id="relative-representations-zero-shot-stitching", technique="seed-similarity", task="digits-mlp",
        metric="seed_stitch_rel_acc", reference="seed_stitch_abs_acc", direction="higher", min_effect=0.2,
        treatment=_PROBE, seeds=5, preconditions=_TRAINED, paper_setting=_SETTING_RR,
        paper_quote=_RR_QUOTE,
        paper_number="zero-shot stitching across seeds on image classification: decoders on absolute features fall "
                     "far below the non-stitched accuracy, decoders on relative features stay close to it (Sec. 5.2)",
        paper_scale="MNIST, F-MNIST, CIFAR-10/100",
        notes=_OURS + "Metric: test accuracy of a ridge linear head fitted on the model's relative training "
                      "features applied to the sibling's relative test features, minus the same with absolute "
                      "features. The 0.2 smallest effect (20 points) is our choice. Measured (5 seeds): relative "
                      "stitching 34-68% vs 1-21% absolute, while the model's own heads reach 96-98%: relative "
                      "stitching is far better than absolute but, with this linear head and plain cosine, far from "
                      "the non-stitched accuracy the paper reports; at initialization relative stitching already "
                      "reaches 36-63% (absolute 5-12%).",
    ),
]
