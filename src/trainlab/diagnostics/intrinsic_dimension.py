"""Intrinsic dimension of an objective landscape: train in a random d-dimensional subspace.

Paper: Chunyuan Li, Heerad Farkhoor, Rosanne Liu, Jason Yosinski, "Measuring the Intrinsic Dimension
of Objective Landscapes", ICLR 2018, arXiv:1804.08838 (official code: uber-research/intrinsic-dimension).

Claim: a network's D parameters are reparametrized as theta = theta_0 + P theta_d, with theta_0 the
usual random initialization, P a fixed random D x d projection and only theta_d (d values, starting
at zero) trained. The smallest d at which the subspace-trained network reaches 90% of the full
network's performance, d_int90, is far smaller than D (MNIST, 784-200-200-10 FC net, D = 199,210:
d_int90 ~ 750; LeNet, D = 44,426: 290; Table 1) and varies little across a family of networks of
very different sizes (20 FC nets of widths 50-400 and depths 1-5 on MNIST, Fig. 4): once a network
is large enough, extra parameters add dimensions to the solution set instead of making the problem
harder. "Performance" is validation accuracy, measured on the MNIST test images (the official
train.py evaluates its `val_h5`, the test set): here `test_acc`.

What is implemented, read from the official code:

* dense projection (``train.py``, step 3.5): entries i.i.d. N(0, 1), then each of the d basis
  vectors (a column of P, spanning all D parameters of all layers together) is divided by its norm,
  so the columns have unit length.
* Fastfood projection (``keras_ext/rproj_layers_util.py``, ``tf_fastfood_transform``): with
  L = 2^ceil(log2 D), theta_d is zero-padded to L and mapped to
  ``(H G Pi H B x)[:D] / (sqrt(L * sum(G^2)) * sqrt(D / L))``: B a random +-1 diagonal, H the
  unnormalized Walsh-Hadamard matrix (entries +-1), Pi a random permutation (``out[i] = in[Pi[i]]``),
  G an N(0, 1) diagonal. Every column of the full L-row matrix has unit norm exactly (H B e_j has
  entries +-1, G scales their squares to sum(G^2), H multiplies the squared norm by L); the slice to
  D rows keeps about D/L of it, which sqrt(D/L) restores. Only B, Pi, G and the divisor are held
  (O(L) numbers, regenerated from the seed), never a D x d matrix. It needs d <= D, as there.
* theta_0 is the model's own initialization (taken as it is when wrapped), theta_d starts at zero,
  so at the start the subspace model computes exactly what the original model computes.

The official code's sparse projection (Li, Hastie & Church's very sparse random projections) is not
offered. How d_int90 is read off the tried dimensions: the first tried d whose mean metric reaches
the target; between it and the tried d below it the crossing is found by linear interpolation of
the mean metric (this project's reading of how the paper reads a crossing off its d-grid).

Plain PyTorch::

    import torch
    from trainlab.diagnostics.intrinsic_dimension import SubspaceModel

    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    sub = SubspaceModel(net, d=200, projection="dense", seed=0)   # only sub.theta_d is trainable
    opt = torch.optim.Adam(sub.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(sub(torch.randn(32, 64)), torch.randint(0, 10, (32,)))
    loss.backward(); opt.step()

In trainlab: ``run_training("digits-mlp", [("intrinsic-subspace", {"fraction": 0.02})])``, and
``intrinsic_dimension("digits-mlp", dims=[25, 50, 100, 200, 400])`` for the d_int90 sweep.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper("Measuring the Intrinsic Dimension of Objective Landscapes", "Li, Farkhoor, Liu, Yosinski", 2018,
              "1804.08838")
PROJECTIONS = ("dense", "fastfood")


# --------------------------------------------------------------------------------------------- projections

def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard transform along the last dimension (a power of two): x @ H with
    H the Sylvester-ordered Hadamard matrix (entries +-1, H @ H = n I). O(n log n), differentiable."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ConfigError(f"the Walsh-Hadamard transform needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    y = x
    h = 1
    while h < n:
        # pairs (a, b) that are h apart inside blocks of 2h become (a + b, a - b)
        y = y.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(x.shape)


def dense_projection(num_params: int, d: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """P [D, d]: i.i.d. N(0, 1) entries, each column divided by its norm (unit-length basis vectors)."""
    p = torch.randn(num_params, d, generator=generator, dtype=torch.float64)
    return (p / p.norm(dim=0, keepdim=True)).to(dtype)


@dataclass
class Fastfood:
    """The Fastfood map R^d -> R^D of the official code: (H G Pi H B pad(x))[:D] / (divisor sqrt(D/L)).

    B: +-1 signs [L]; perm: Pi as gather indices [L]; gauss: G [L]; L = 2^ceil(log2 D)."""

    num_params: int
    d: int
    signs: torch.Tensor
    perm: torch.Tensor
    gauss: torch.Tensor

    @classmethod
    def draw(cls, num_params: int, d: int, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> "Fastfood":
        if not 1 <= d <= num_params:
            raise ConfigError(f"fastfood projection needs 1 <= d <= D (the number of parameters), got d={d}, "
                              f"D={num_params}; use projection='dense' for d > D")
        size = 1 << (num_params - 1).bit_length()  # L = 2^ceil(log2 D), exact in integers
        signs = torch.randint(0, 2, (size,), generator=generator).to(dtype) * 2 - 1
        perm = torch.randperm(size, generator=generator)
        gauss = torch.randn(size, generator=generator, dtype=torch.float64).to(dtype)
        return cls(num_params, d, signs, perm, gauss)

    @property
    def size(self) -> int:
        return int(self.signs.numel())

    def scale(self) -> torch.Tensor:
        """The divisor sqrt(L * sum(G^2)) times sqrt(D / L)."""
        size = self.size
        return torch.sqrt(size * (self.gauss.double() ** 2).sum()) * math.sqrt(self.num_params / size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d] -> [..., D]."""
        pad = x.new_zeros(*x.shape[:-1], self.size - self.d)
        y = fwht(torch.cat((x, pad), dim=-1) * self.signs)
        y = fwht(y[..., self.perm] * self.gauss)
        return y[..., :self.num_params] / self.scale().to(x.dtype)


# --------------------------------------------------------------------------------------------- the model

def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class SubspaceModel(nn.Module):
    """`model` with its parameters reparametrized as theta_0 + P theta_d; theta_d [d] is the only
    trainable parameter (zero at the start, so the outputs then equal the original model's).

    The original parameters become buffers holding theta_0 (same names, in the state_dict); the
    model's own buffers (BatchNorm statistics) stay as they are and are updated as usual. The
    projection is regenerated from `seed` (not stored in the state_dict): a dense [D, d] matrix with
    unit-norm columns, or Fastfood's B, Pi, G (O(D) numbers). The wrapped model is changed in place.
    """

    def __init__(self, model: nn.Module, d: int, projection: str = "dense", seed: int = 0) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ConfigError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ConfigError(f"subspace dimension d must be a whole number >= 1, got {d!r}")
        named = list(model.named_parameters())  # shared parameters appear once
        if not named:
            raise ConfigError(f"{type(model).__name__} has no parameters to train in a subspace")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)
        self.d, self.projection, self.seed = d, projection, int(seed)
        dtype = named[0][1].dtype
        _parameters_to_buffers(model)
        self.module = model
        gen = torch.Generator().manual_seed(self.seed)
        if projection == "dense":
            self.register_buffer("matrix", dense_projection(self.num_params, d, gen, dtype), persistent=False)
        else:
            ff = Fastfood.draw(self.num_params, d, gen, dtype)
            self.register_buffer("ff_signs", ff.signs, persistent=False)
            self.register_buffer("ff_perm", ff.perm, persistent=False)
            self.register_buffer("ff_gauss", ff.gauss, persistent=False)
        self.theta_d = nn.Parameter(torch.zeros(d, dtype=dtype, device=next(iter(model.buffers())).device))

    def project(self, theta_d: torch.Tensor) -> torch.Tensor:
        """P theta_d, the offset [D] from theta_0 (theta_d may carry leading batch dimensions)."""
        if self.projection == "dense":
            return theta_d @ self.matrix.T
        ff = Fastfood(self.num_params, self.d, self.ff_signs, self.ff_perm, self.ff_gauss)
        return ff(theta_d)

    def projection_matrix(self) -> torch.Tensor:
        """P [D, d] as an explicit matrix (for checks on small models; Fastfood builds it column by column)."""
        if self.projection == "dense":
            return self.matrix
        eye = torch.eye(self.d, dtype=self.theta_d.dtype, device=self.theta_d.device)
        return self.project(eye).T

    def theta_0(self) -> torch.Tensor:
        """The initial parameters, flattened in the order of `names`."""
        return torch.cat([self.module.get_buffer(n).reshape(-1) for n in self.names])

    def full_parameters(self, theta_d: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{name: theta_0 + (P theta_d) reshaped}, the parameters the model runs with."""
        offset = self.project(self.theta_d if theta_d is None else theta_d)
        out = {}
        for name, shape, piece in zip(self.names, self.shapes, offset.split(self.numels)):
            out[name] = self.module.get_buffer(name) + piece.view(shape)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, self.full_parameters(), args, kwargs)

    def extra_repr(self) -> str:
        return f"d={self.d}, D={self.num_params}, projection={self.projection!r}, seed={self.seed}"


def _parameters_to_buffers(model: nn.Module) -> None:
    """Turn every parameter into a buffer of the same name holding its current value (theta_0);
    a parameter shared by several modules becomes one tensor registered in each of them."""
    frozen: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for attr, p in list(module._parameters.items()):
            if p is None:
                continue
            t = frozen.setdefault(id(p), p.detach().clone())
            del module._parameters[attr]
            module.register_buffer(attr, t)


# --------------------------------------------------------------------------------------------- technique

@register
class IntrinsicSubspace(Technique):
    """Train the model in a random d-dimensional subspace of its parameter space (Li et al., 2018).

    Settings: d (subspace dimension) or fraction (d = round(fraction x number of parameters));
    projection "dense" or "fastfood"; seed of the projection (None: drawn from the run's seeded
    random stream, so each seed of a claim gets its own subspace, as the paper's repeated runs do).
    """

    name = "intrinsic-subspace"
    # not "diagnostics": that family is for probes, which change nothing in training, while this one
    # replaces what is trained (D values by d); the measurement itself is intrinsic_dimension() below.
    # The paper names the compression (store theta_0's seed, P's seed and d numbers) as its by-product.
    family = "compression"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = (
        "tests/diagnostics/test_intrinsic_dimension.py: test_fastfood_equals_the_official_formula_as_a_matrix "
        "builds (H G Pi H B)[:D] / (sqrt(L sum G^2) sqrt(D/L)) as explicit matrices, the formula of "
        "tf_fastfood_transform in keras_ext/rproj_layers_util.py; test_dense_columns_have_unit_norm checks the "
        "column normalization of intrinsic_dim/train.py (step 3.5); theta_d starts at zero as ThetaPrime does")
    summary = "theta = theta_0 + P theta_d, only theta_d (d values) trained; d_int90 via intrinsic_dimension()"
    modifies = frozenset({"model"})

    def __init__(self, d: int | None = None, fraction: float | None = None, projection: str = "dense",
                 seed: int | None = None) -> None:
        if (d is None) == (fraction is None):
            raise ConfigError("intrinsic-subspace: give either d or fraction (of the parameter count), not both")
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ConfigError(f"intrinsic-subspace: d must be a whole number >= 1, got {d!r}")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 < fraction):
            raise ConfigError(f"intrinsic-subspace: fraction must be a number > 0, got {fraction!r}")
        if projection not in PROJECTIONS:
            raise ConfigError(f"intrinsic-subspace: projection must be one of {PROJECTIONS}, got {projection!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"intrinsic-subspace: seed must be a whole number or None, got {seed!r}")
        super().__init__(**{k: v for k, v in (("d", d), ("fraction", fraction), ("projection", projection),
                                              ("seed", seed)) if v is not None})
        self.d, self.fraction, self.projection, self.seed = d, fraction, projection, seed
        self.subspace: SubspaceModel | None = None

    def dimension(self, num_params: int) -> int:
        """The subspace dimension for a model of `num_params` parameters."""
        return self.d if self.d is not None else max(1, round(self.fraction * num_params))

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        d = self.dimension(_count_parameters(model))
        # the run's generator is not there yet; the global one was just seeded with the run's seed
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.subspace = SubspaceModel(model, d, self.projection, seed)
        return self.subspace

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self.subspace is not None:
            state.epoch_metrics["subspace_dim"] = float(self.subspace.d)
            state.epoch_metrics["native_dim"] = float(self.subspace.num_params)


# --------------------------------------------------------------------------------------------- d_int90

def crossing_dimension(dims: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The d at which `values` (metric per tried d, higher is better) first reaches `target`:
    the first tried d (in increasing order) with value >= target, moved down by linear interpolation
    towards the tried d below it. None when no tried d reaches the target; the smallest tried d when
    it already does (nothing below it to interpolate with)."""
    pairs = sorted(zip(dims, values))
    for i, (d, v) in enumerate(pairs):
        if v >= target:
            if i == 0:
                return float(d)
            d0, v0 = pairs[i - 1]
            return float(d0 + (target - v0) * (d - d0) / (v - v0))
    return None


@dataclass
class IntrinsicDimensionResult:
    """What `intrinsic_dimension` measured. values[d] holds the metric per seed; mean_values[d] its mean."""

    metric: str
    threshold: float
    full_values: list[float]
    values: dict[int, list[float]]
    num_params: int
    projection: str
    d_int: float | None = None
    seeds: list[int] = field(default_factory=list)

    @property
    def full_value(self) -> float:
        return sum(self.full_values) / len(self.full_values)

    @property
    def target(self) -> float:
        return self.threshold * self.full_value

    @property
    def mean_values(self) -> dict[int, float]:
        return {d: sum(v) / len(v) for d, v in sorted(self.values.items())}

    @property
    def below_range(self) -> bool:
        """True when the smallest tried d already reaches the target (d_int is then an upper bound)."""
        means = self.mean_values
        return bool(means) and means[min(means)] >= self.target

    def summary(self) -> str:
        tried = ", ".join(f"d={d}: {v:.4f}" for d, v in self.mean_values.items())
        pct = f"{self.threshold:.0%}"
        if self.d_int is None:
            found = f"no tried d reaches {pct}"
        else:
            found = f"d_int{round(self.threshold * 100)} = {self.d_int:.1f}" + (" (<=, the smallest d tried)"
                                                                                 if self.below_range else "")
        return (f"{found}; D = {self.num_params}; full model {self.metric} {self.full_value:.4f}, "
                f"target {self.target:.4f}; {tried}")


def default_subspace_overrides(task: Any) -> dict[str, Any]:
    """Training settings of the subspace runs unless given: Adam at lr 1e-2 without weight decay,
    three times the task's epochs (subspace training moves only d directions; weight decay on theta_d
    would pull towards theta_0, a different regularizer from the full model's)."""
    return {"optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0, "epochs": 3 * int(task.epochs)}


def intrinsic_dimension(task: Any, dims: Sequence[int], threshold: float = 0.9, seeds: Sequence[int] = (0,),
                        metric: str = "test_acc", projection: str = "dense",
                        subspace_overrides: Mapping[str, Any] | None = None,
                        full_overrides: Mapping[str, Any] | None = None, device: str = "cpu",
                        progress: bool = True, log: Callable[[str], None] | None = None) -> IntrinsicDimensionResult:
    """d_int (d_int90 at threshold 0.9) of `task`'s model: train the full model and a subspace model per
    d in `dims` for each seed, and find where the mean `metric` (higher is better) first reaches
    threshold x the full model's mean (see crossing_dimension).

    The full model trains with the task's own settings (plus `full_overrides`); the subspace models with
    `subspace_overrides` (default: default_subspace_overrides). `metric` is any run metric of
    trainlab.claims.metrics (final "test_acc", "best:test_acc", ...).
    """
    from trainlab.claims.metrics import metric_value
    from trainlab.training.trainer import resolve_task, run_training

    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(f"dims must be whole numbers >= 1, got {list(dims)!r}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold!r}")
    if not seeds:
        raise ConfigError("give at least one seed")
    base = resolve_task(task)
    full_task = base.with_overrides(full_overrides)
    sub_task = base.with_overrides(default_subspace_overrides(base) if subspace_overrides is None
                                   else subspace_overrides)
    say = log or ((lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None))

    def value(result: Any, t: Any) -> float:
        if result.status != "finished":
            return math.nan
        return metric_value(metric, result.to_dict(), t.epochs)[0]

    full_values, num_params = [], 0
    for s in seeds:
        r = run_training(full_task, (), seed=s, device=device)
        full_values.append(value(r, full_task))
        num_params = r.params
        say(f"[intrinsic-dimension] full model (D={num_params}) seed {s}: {metric} {full_values[-1]:.4f}")
    values: dict[int, list[float]] = {}
    for d in sorted(set(dims)):
        values[d] = []
        for s in seeds:
            r = run_training(sub_task, [IntrinsicSubspace(d=d, projection=projection)], seed=s, device=device)
            values[d].append(value(r, sub_task))
            say(f"[intrinsic-dimension] d={d} seed {s}: {metric} {values[d][-1]:.4f}")
    result = IntrinsicDimensionResult(metric, threshold, full_values, values, num_params, projection, seeds=list(seeds))
    means = result.mean_values
    result.d_int = crossing_dimension(list(means), list(means.values()), result.target)
    say(f"[intrinsic-dimension] {result.summary()}")
    return result


# --------------------------------------------------------------------------------------------- claims

#: digits-mlp (width 128, depth 2): D = 26,122; at width 64: D = 8,970
_FRACTION = 0.02
_D_FIXED = round(_FRACTION * 8_970)  # 179: 2% of the smallest of the widths compared
#: the subspace arm's own training settings, fixed before any run: Adam (as the official scripts use for
#: the subspace runs) at 10x its 1e-3, since only d directions move; 3x the task's epochs; no weight decay
#: (on theta_d it would pull towards theta_0, another regularizer than the full model's)
_SUBSPACE_TRAINING = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0, "epochs": 30}
_LEARNS = (Precondition("test_acc", ">=", 0.5, arm="baseline", over="min", relative_to="chance",
                        why="the full model learns the task (test accuracy 50 points above chance in every seed)"),)
_SETTING = PaperSetting(train_size=60_000, epochs=100, params=199_210,
                        text="MNIST, 784-200-200-10 FC net (and 20 FC nets of widths 50-400, depths 1-5); dense, "
                             "sparse and Fastfood projections; Adam or SGD; d_int90 on validation (test) accuracy")
_QUOTE = ("Many problems have smaller intrinsic dimensions than one might suspect, and the intrinsic dimension for a "
          "given dataset varies little across a family of models with vastly different sizes.")
_NUMBER = "MNIST FC (D = 199,210): d_int90 = 750, 0.38% of D (Table 1); about constant across widths 50-400 (Fig. 4)"


def _subspace_arm(label: str, **settings: Any):
    return arm(("intrinsic-subspace", settings), label=label, **_SUBSPACE_TRAINING)


CLAIMS = [
    Claim(
        id="intrinsic-dim-digits-mlp", technique="intrinsic-subspace", task="digits-mlp", metric="test_acc",
        direction="higher", baseline_scale=0.9, seeds=5, suites=("full",),
        treatment=_subspace_arm("subspace d = 2% of D (522 of 26,122), Adam 1e-2, 30 epochs", fraction=_FRACTION),
        baseline=arm(label="full model (task defaults: SGD 0.05, 10 epochs)"),
        preconditions=_LEARNS, paper_quote=_QUOTE, paper_number=_NUMBER, paper_setting=_SETTING,
        paper_scale="MNIST, FC nets of 40k-1M parameters",
        notes="Reproduced means: a random subspace of 2% of the parameter count (50x fewer trained values) reaches "
              "90% of the full model's test accuracy, i.e. d_int90 <= 0.02 D. The 2% was fixed in advance as a "
              "rule: about 5x the paper's MNIST ratio (750 / 199,210), for a smaller data set and a short run. "
              "Scikit-learn digits (1,437 8x8 training images) instead of MNIST; dense projection; the full model "
              "at the task's own settings, the subspace model at its own (Adam 1e-2, 30 epochs, no weight decay), as "
              "the paper tunes each. Measured d_int90 curves come from intrinsic_dimension(), not from this claim.",
    ),
    *[
        Claim(
            id=f"intrinsic-dim-digits-mlp-width{w}", technique="intrinsic-subspace", task="digits-mlp",
            metric="test_acc", direction="higher", baseline_scale=0.9, seeds=5, suites=("full",),
            overrides={"model_kwargs": {"width": w}},
            treatment=_subspace_arm(f"subspace d = {_D_FIXED} (fixed across widths), Adam 1e-2, 30 epochs", d=_D_FIXED),
            baseline=arm(label=f"full width-{w} model (task defaults)"),
            preconditions=_LEARNS, paper_quote=_QUOTE, paper_number=_NUMBER, paper_setting=_SETTING,
            paper_scale="MNIST, FC nets of widths 50-400 and depths 1-5",
            notes=f"One of three claims (widths 64, 128, 256; D = 8,970, 26,122, 85,002) with the same d = {_D_FIXED}, "
                  f"2% of the smallest width's D, fixed in advance: if d_int90 grew with D as a fixed fraction, the "
                  f"wider nets would miss 90% at this d. All three reproduced reads 'the same d suffices across a "
                  f"9.5x range of D'. Where d lies near the widths' own d_int90, a modest growth of d_int90 with "
                  f"width reads as 'not reached' here, although the paper's 'varies little' allows some (its Fig. 4 "
                  f"spreads over a range); intrinsic_dimension() measures d_int90 per width beside it. "
                  f"Digits instead of MNIST; depth 2 only; dense projection.",
        )
        for w in (64, 128, 256)
    ],
]
