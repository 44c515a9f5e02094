"""Loss curvature: Hessian-vector products, top eigenvalues, trace and spectral density.

The Hessian is that of the mean loss over given data with respect to a model's trainable
parameters (flattened in `named_parameters()` order). Everything is matrix-free: an estimator
only calls the Hessian-vector product (HVP), computed with torch.func reverse over reverse (`vjp`
of `grad` of a `functional_call`; the vjp is kept and reused across products), summed over chunks.

* `HessianOperator`: the HVP as a callable on flat vectors (and `matrix()`, the exact Hessian by
  `torch.func.hessian`, for small models);
* `lanczos`: the Lanczos tridiagonalization with full reorthogonalization;
* `top_eigenvalues`: power iteration with deflation, or Lanczos with full reorthogonalization
  (Yao et al. 2020, "PyHessian: Neural Networks Through the Lens of the Hessian", arXiv:1912.07145);
* `hutchinson_trace` (Rademacher probes) and `hutchpp_trace` (Meyer, Musco, Musco, Woodruff 2021,
  "Hutch++: Optimal Stochastic Trace Estimation", arXiv:2010.09649);
* `spectral_density`: stochastic Lanczos quadrature with Gaussian broadening (Ghorbani, Krishnan,
  Xiao 2019, "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density",
  arXiv:1901.10159; Ubaru, Chen, Saad 2017, "Fast Estimation of tr(f(A)) via Stochastic Lanczos
  Quadrature").
* the probe `sharpness` records the top eigenvalue and the trace of the training loss's Hessian per
  epoch beside the optimizer's linear-stability limit (Cohen, Kaur, Li, Kolter, Talwalkar 2021,
  "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability", arXiv:2103.00065:
  under full-batch GD the sharpness rises to about 2/lr and hovers there); `stability_limit(optimizer)`
  is that limit for the optimizer's current step. In a run: `trainlab train digits-mlp --probe
  sharpness:every=2`, or `("sharpness", {"every": 2})` in a claim's arm.

The estimators accept a `HessianOperator`, a dense symmetric matrix, or any callable on flat
vectors with `dim=` given, so they are usable on other symmetric operators too.

    import torch
    from torch import nn
    from trainlab.diagnostics.curvature import (HessianOperator, top_eigenvalues,
                                                hutchpp_trace, spectral_density)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    H = HessianOperator(model, x, y)               # cross-entropy; chunk_size=... for big data
    print(top_eigenvalues(H, k=3).values)          # Lanczos; method="power" too
    print(hutchpp_trace(H, num_matvecs=60))        # TraceEstimate(estimate, stderr, matvecs)
    print(torch.linalg.eigvalsh(H.matrix())[-3:], H.matrix().trace())   # exact, small models only
    grid, density = spectral_density(H, num_runs=5, num_steps=40)[:2]

BatchNorm: `bn_mode="eval"` uses the running statistics (the Hessian of the model as evaluated);
`"train"` uses each chunk's batch statistics (the loss as trained; the function then depends on the
chunking), without touching the running statistics. Other modules (dropout) are put in eval mode
during a product, since a random forward pass has no fixed Hessian. All modes are restored.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian, vjp

from trainlab.diagnostics.probe import Probe, probe_data
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, TrainState

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BN_MODES = ("eval", "train")


# --------------------------------------------------------------------------- the operator

@contextmanager
def _hvp_modes(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """BatchNorm layers in `bn_mode` (train mode without updating running statistics), all other
    modules in eval mode; everything restored on exit."""
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    try:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn_mode == "train":
                m.train(True)
                # with tracking off, train-mode BN uses batch statistics and writes no buffers
                m.track_running_stats = False
            else:
                m.train(False)
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


class HessianOperator:
    """The Hessian of the mean loss over (inputs, targets) w.r.t. the model's trainable parameters,
    as a linear operator on flat vectors: `H(v)` returns H @ v.

    loss_fn(outputs, targets) must return the mean loss of a chunk (default: cross-entropy); the
    full-set loss is the chunks' means weighted by chunk size, so H is the Hessian of the mean over
    all examples. chunk_size bounds the examples per forward pass (memory). The parameter values
    are taken when the operator is built (later training does not change it). cache=True keeps
    each chunk's gradient graph after the first product, so later products cost one double-backward
    pass each (about 4-10x faster on small models); cache=False recomputes forward and backward
    per product (memory of one chunk only).
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                 loss_fn: LossFn | None = None, *, bn_mode: str = "eval", chunk_size: int | None = 4096,
                 cache: bool = True) -> None:
        if bn_mode not in BN_MODES:
            raise ConfigError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
        if len(inputs) != len(targets) or len(inputs) == 0:
            raise ConfigError("inputs and targets must be non-empty and of equal length, "
                              f"got {len(inputs)} and {len(targets)}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
            raise ConfigError(f"chunk_size must be a whole number >= 1 or None, got {chunk_size!r}")
        self.model, self.bn_mode = model, bn_mode
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else F.cross_entropy
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("the model has no trainable parameters")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.params = {n: p.detach() for n, p in named}
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.buffers = {n: b for n, b in model.named_buffers()}
        self.dim = sum(p.numel() for _, p in named)
        first = named[0][1]
        self.dtype, self.device = first.dtype, first.device
        n = len(inputs)
        size = n if chunk_size is None else int(chunk_size)
        self.chunks = [(inputs[i:i + size], targets[i:i + size]) for i in range(0, n, size)]
        self.num_examples = n
        self.matvecs = 0  # products computed so far (cost accounting)
        self.cache, self._cached = cache, None

    # flat vector <-> parameter dict
    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(v, [math.prod(s) for s in self.shapes])
        return {n: part.view(s) for n, part, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def _chunk_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, {**params, **self.frozen, **self.buffers}, (x,))
        return self.loss_fn(out, y) * (len(x) / self.num_examples)

    def loss(self) -> float:
        """The mean loss over all examples (in the operator's modes)."""
        with _hvp_modes(self.model, self.bn_mode), torch.no_grad():
            return float(sum(self._chunk_loss(self.params, x, y) for x, y in self.chunks))

    def _products(self) -> list[Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor]]]]:
        """Per chunk, the vector-Jacobian product of the gradient (reverse over reverse: H is
        symmetric, so v^T H = (H v)^T). Built once and reused when caching (each call is then one
        double-backward pass; the chunks' graphs stay in memory)."""
        if self._cached is not None:
            return self._cached
        with _hvp_modes(self.model, self.bn_mode):
            fns = [vjp(grad(lambda p, x=x, y=y: self._chunk_loss(p, x, y)), self.params)[1] for x, y in self.chunks]
        if self.cache:
            self._cached = fns
        return fns

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.dim,):
            raise ConfigError(f"expected a flat vector of {self.dim} entries, got shape {tuple(v.shape)}")
        tangent = self.unflatten(v.to(device=self.device, dtype=self.dtype))
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for product in self._products():
            total += self.flatten(product(tangent)[0])
        self.matvecs += 1
        return total

    def matrix(self) -> torch.Tensor:
        """The exact [dim, dim] Hessian: torch.func.hessian on the flattened parameters, or, with
        BatchNorm in train mode, torch.autograd.functional.hessian (torch.func.hessian's vmapped
        batch_norm double backward gives a wrong, asymmetric matrix there, as of torch 2.13; see
        pytorch/pytorch#196699 for a related batch_norm second-order error)."""
        flat = self.flatten(self.params)
        total = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)
        train_bn = self.bn_mode == "train" and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        with _hvp_modes(self.model, self.bn_mode):
            for x, y in self.chunks:
                def f(w: torch.Tensor, x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                    return self._chunk_loss(self.unflatten(w), x, y)
                total += torch.autograd.functional.hessian(f, flat) if train_bn else hessian(f)(flat)
        return total


Operator = HessianOperator | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


class _Op:
    """An operator in float64 on the operator's device: the estimators' common view."""

    def __init__(self, op: Operator, dim: int | None) -> None:
        if isinstance(op, torch.Tensor):
            if op.dim() != 2 or op.shape[0] != op.shape[1]:
                raise ConfigError(f"a matrix operator must be square, got shape {tuple(op.shape)}")
            mat = op
            self.fn: Callable[[torch.Tensor], torch.Tensor] = lambda v: mat @ v.to(mat.dtype)
            self.dim, self.device = op.shape[0], op.device
        elif isinstance(op, HessianOperator):
            self.fn, self.dim, self.device = op, op.dim, op.device
        elif callable(op):
            if dim is None:
                raise ConfigError("a callable operator needs dim= (the length of its vectors)")
            self.fn, self.dim, self.device = op, int(dim), torch.device("cpu")
        else:
            raise ConfigError(f"not an operator: {type(op).__name__}")
        self.matvecs = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return self.fn(v).to(torch.float64)

    def rademacher(self, gen: torch.Generator, count: int | None = None) -> torch.Tensor:
        shape = (self.dim,) if count is None else (self.dim, count)
        z = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
        return z.to(self.device)


def _generator(seed: int) -> torch.Generator:
    # a private generator: estimators never draw from (or disturb) the global RNG stream
    return torch.Generator().manual_seed(int(seed))


# --------------------------------------------------------------------------- Lanczos

class Lanczos(NamedTuple):
    alpha: torch.Tensor   # [m] diagonal of the tridiagonal T
    beta: torch.Tensor    # [m-1] off-diagonal of T
    basis: torch.Tensor   # [dim, m] orthonormal Lanczos vectors

    def tridiagonal(self) -> torch.Tensor:
        return torch.diag(self.alpha) + torch.diag(self.beta, 1) + torch.diag(self.beta, -1)


def _lanczos_steps(op: _Op, v0: torch.Tensor, max_steps: int) -> Iterator[tuple[Lanczos, float]]:
    """Yield (the decomposition after j steps, beta_j) for j = 1..; full reorthogonalization
    (classical Gram-Schmidt, twice) against every earlier vector keeps the basis orthonormal, so
    no spurious copies of converged Ritz values appear. Stops early on an invariant subspace."""
    q = v0 / v0.norm()
    basis, alphas, betas = [q], [], []
    for _ in range(min(max_steps, op.dim)):
        w = op(basis[-1])
        alphas.append(torch.dot(w, basis[-1]))
        Q = torch.stack(basis, 1)
        for _ in range(2):
            w = w - Q @ (Q.T @ w)
        b = w.norm()
        off = torch.stack(betas) if betas else torch.zeros(0, dtype=torch.float64, device=op.device)
        decomposition = Lanczos(torch.stack(alphas), off, Q)
        yield decomposition, float(b)
        scale = max(1.0, float(torch.stack(alphas).abs().max()))
        if float(b) <= 1e-10 * scale:
            return
        betas.append(b)
        basis.append(w / b)


def lanczos(op: Operator, num_steps: int, *, dim: int | None = None, seed: int = 0) -> Lanczos:
    """`num_steps` steps of Lanczos with full reorthogonalization from a seeded Rademacher start
    (fewer if an invariant subspace is found). T's eigenvalues are the Ritz values."""
    o = _Op(op, dim)
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    return _run_lanczos(o, o.rademacher(_generator(seed)), num_steps)


def _run_lanczos(o: _Op, v0: torch.Tensor, num_steps: int) -> Lanczos:
    result = None
    for result, _ in _lanczos_steps(o, v0, num_steps):
        pass
    assert result is not None
    return result


# --------------------------------------------------------------------------- eigenvalues

class Eigen(NamedTuple):
    values: torch.Tensor    # [k], descending (power: by the order found, largest magnitude first)
    vectors: torch.Tensor   # [dim, k], unit eigenvector estimates
    matvecs: int            # Hessian-vector products used
    converged: bool         # every value met the tolerance within max_iter


def top_eigenvalues(op: Operator, k: int = 1, *, method: str = "lanczos", max_iter: int = 100,
                    tol: float = 1e-4, seed: int = 0, dim: int | None = None) -> Eigen:
    """The k algebraically largest eigenvalues (Lanczos) or the k largest in magnitude (power
    iteration with deflation, as in PyHessian) of a symmetric operator.

    lanczos: runs until the top-k Ritz pairs' residual bounds |beta_m s_mi| fall below
    tol * max(1, |theta_1|), at most max_iter steps (so k <= max_iter); stopped by max_iter
    (converged=False), its top value is still a lower bound of the top eigenvalue (Ritz values of
    a symmetric operator lie within its spectrum).
    power: per eigenvalue, iterates v <- (H - sum_j l_j u_j u_j^T) v until the Rayleigh quotient
    changes by less than tol * |l| (at most max_iter products each).
    """
    o = _Op(op, dim)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= o.dim:
        raise ConfigError(f"k must be a whole number in [1, {o.dim}], got {k!r}")
    if method not in ("lanczos", "power"):
        raise ConfigError(f"method must be 'lanczos' or 'power', got {method!r}")
    if max_iter < 1 or tol <= 0:
        raise ConfigError(f"max_iter must be >= 1 and tol > 0, got {max_iter} and {tol}")
    gen = _generator(seed)
    if method == "power":
        return _power(o, k, max_iter, tol, gen)
    if k > max_iter:
        raise ConfigError(f"Lanczos needs max_iter >= k, got max_iter={max_iter}, k={k}")
    decomposition, converged = None, False
    for decomposition, b in _lanczos_steps(o, o.rademacher(gen), max_iter):
        m = len(decomposition.alpha)
        if m < k:
            continue
        theta, s = torch.linalg.eigh(decomposition.tridiagonal())
        residual = b * s[-1, -k:].abs()
        if float(residual.max()) <= tol * max(1.0, float(theta.abs().max())) or m == o.dim:
            converged = True
            break
    assert decomposition is not None
    theta, s = torch.linalg.eigh(decomposition.tridiagonal())
    k_found = min(k, len(theta))  # an invariant subspace smaller than k: fewer values exist in it
    values = theta.flip(0)[:k_found]
    vectors = decomposition.basis @ s.flip(1)[:, :k_found]
    return Eigen(values, vectors, o.matvecs, converged and k_found == k)


def _power(o: _Op, k: int, max_iter: int, tol: float, gen: torch.Generator) -> Eigen:
    values: list[torch.Tensor] = []
    vectors: list[torch.Tensor] = []
    all_converged = True

    def deflated(v: torch.Tensor) -> torch.Tensor:
        w = o(v)
        for lam, u in zip(values, vectors):
            w = w - lam * torch.dot(u, v) * u
        return w

    for _ in range(k):
        v = o.rademacher(gen)
        v = v / v.norm()
        lam, converged = torch.tensor(0.0, dtype=torch.float64), False
        for _ in range(max_iter):
            w = deflated(v)
            new = torch.dot(w, v)  # Rayleigh quotient of the unit vector v
            norm = w.norm()
            if float(norm) == 0.0:
                lam, converged = new, True
                break
            v = w / norm
            if abs(float(new - lam)) <= tol * abs(float(new)):
                lam, converged = new, True
                break
            lam = new
        all_converged &= converged
        values.append(lam)
        vectors.append(v)
    return Eigen(torch.stack(values), torch.stack(vectors, 1), o.matvecs, all_converged)


# --------------------------------------------------------------------------- trace

class TraceEstimate(NamedTuple):
    estimate: float
    stderr: float     # standard error of the random part (NaN with fewer than 2 samples)
    matvecs: int


def hutchinson_trace(op: Operator, num_samples: int = 100, *, seed: int = 0, dim: int | None = None) -> TraceEstimate:
    """Hutchinson's estimator: the mean of z^T H z over Rademacher z, unbiased, with the standard
    error of that mean (sample standard deviation / sqrt(num_samples))."""
    o = _Op(op, dim)
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    gen = _generator(seed)
    samples = []
    for _ in range(num_samples):
        z = o.rademacher(gen)
        samples.append(torch.dot(z, o(z)))
    s = torch.stack(samples)
    stderr = float(s.std() / math.sqrt(num_samples)) if num_samples > 1 else math.nan
    return TraceEstimate(float(s.mean()), stderr, o.matvecs)


def hutchpp_trace(op: Operator, num_matvecs: int = 60, *, seed: int = 0, dim: int | None = None) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021, Algorithm 1, split as in the authors' simple_hutchplusplus.m):
    S has ceil(m/3) and G floor(m/3) Rademacher columns (m = num_matvecs, so m products, or m + 1
    when m % 3 == 1); Q = orth(H S); trace = tr(Q^T H Q) + tr(G'^T H G') / |G| with G' = (I - QQ^T) G.
    The top of the spectrum is taken exactly, so the variance is that of the deflated remainder;
    stderr is the standard error of the mean of g'^T H g'. When S has as many columns as dim, Q spans
    everything and the estimate is exact (no residual products)."""
    o = _Op(op, dim)
    if num_matvecs < 3:
        raise ConfigError(f"Hutch++ needs num_matvecs >= 3 (sketch, projection, residual), got {num_matvecs}")
    gen = _generator(seed)
    S = o.rademacher(gen, min(-(-num_matvecs // 3), o.dim))
    G = o.rademacher(gen, num_matvecs // 3)
    return _hutchpp(o, S, G)


def _hutchpp(o: _Op, S: torch.Tensor, G: torch.Tensor) -> TraceEstimate:
    Y = torch.stack([o(S[:, i]) for i in range(S.shape[1])], 1)
    Q, _ = torch.linalg.qr(Y)
    HQ = torch.stack([o(Q[:, i]) for i in range(Q.shape[1])], 1)
    exact_part = float(torch.einsum("ij,ij->", Q, HQ))
    if S.shape[1] >= o.dim:
        return TraceEstimate(exact_part, 0.0, o.matvecs)
    G = G - Q @ (Q.T @ G)
    r = torch.stack([torch.dot(G[:, i], o(G[:, i])) for i in range(G.shape[1])])
    stderr = float(r.std() / math.sqrt(len(r))) if len(r) > 1 else math.nan
    return TraceEstimate(exact_part + float(r.mean()), stderr, o.matvecs)


# --------------------------------------------------------------------------- spectral density

class SpectralDensity(NamedTuple):
    grid: torch.Tensor     # [grid_size] eigenvalue axis
    density: torch.Tensor  # [grid_size] estimated eigenvalue density (integrates to ~1)
    nodes: torch.Tensor    # [num_runs, num_steps] Ritz values per run (padding: weight 0)
    weights: torch.Tensor  # [num_runs, num_steps] quadrature weights, each row sums to 1
    sigma: float           # the Gaussian broadening's standard deviation


def spectral_density(op: Operator, num_runs: int = 10, num_steps: int = 50, *, grid_size: int = 1000,
                     sigma: float | None = None, seed: int = 0, dim: int | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature: for each run, Lanczos from a random unit vector v gives T =
    V S V^T; its Ritz values are the nodes and the squared first components of its eigenvectors the
    weights of a Gauss quadrature for the spectral measure sum_i (v^T u_i)^2 delta(t - lambda_i).
    The density is the runs' average of these measures, each node broadened by a Gaussian of
    standard deviation sigma (default: 1% of the Ritz values' range). Its mean equals the mean of
    v^T H v over the runs, an unbiased estimate of trace(H) / dim."""
    o = _Op(op, dim)
    if num_runs < 1 or num_steps < 1 or grid_size < 2:
        raise ConfigError("need num_runs >= 1, num_steps >= 1, grid_size >= 2; "
                          f"got {num_runs}, {num_steps}, {grid_size}")
    gen = _generator(seed)
    m = min(num_steps, o.dim)
    nodes = torch.zeros(num_runs, m, dtype=torch.float64)
    weights = torch.zeros(num_runs, m, dtype=torch.float64)
    for r in range(num_runs):
        decomposition = _run_lanczos(o, o.rademacher(gen), m)
        theta, s = torch.linalg.eigh(decomposition.tridiagonal())
        nodes[r, :len(theta)] = theta.cpu()
        weights[r, :len(theta)] = (s[0] ** 2).cpu()
        nodes[r, len(theta):] = theta[-1].cpu()  # padding where an invariant subspace ended early
    used = weights > 0
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 0.01 * max(1.0, abs(hi))
    if sigma <= 0:
        raise ConfigError(f"sigma must be > 0, got {sigma}")
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size, dtype=torch.float64)
    gauss = torch.exp(-0.5 * ((grid[:, None] - nodes.reshape(1, -1)) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    density = gauss @ weights.reshape(-1) / num_runs
    return SpectralDensity(grid, density, nodes, weights, float(sigma))


# --------------------------------------------------------------------------- stability limit

def stability_limit(optimizer: torch.optim.Optimizer) -> float:
    """The largest curvature of the training loss at which the optimizer's step is stable on a
    quadratic, at the current lr of param_groups[0] (Cohen et al. 2021):

    * SGD without momentum: 2 / lr;
    * heavy-ball SGD (momentum b, dampening d): (2 + 2b) / (lr (1 - d));
    * Nesterov SGD (momentum b): (2 + 2b) / (lr (1 + 2b));
    * SGD's weight_decay wd adds wd to every curvature, so the limit on the loss is lowered by wd;
    * lr = 0: infinity (and the probe's sharpness_ratio is then 0).

    These are where an eigenvalue of the step's linear recurrence reaches -1. Any other optimizer
    (Adam, AdamW, ...): NaN. Adam's step is preconditioned by its second-moment estimate, so its
    stability is set by the preconditioned Hessian P^-1 H (Cohen et al. 2022, arXiv:2207.14484),
    not by the top eigenvalue of H recorded here; comparing H's sharpness with (2 + 2 b1) /
    ((1 - b1) lr) would be wrong, so no limit is given."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if type(optimizer) is not torch.optim.SGD or lr < 0:
        return math.nan
    if lr == 0:  # e.g. the end of a cosine schedule: no step, every curvature is stable
        return math.inf
    b = float(group.get("momentum", 0.0) or 0.0)
    d = float(group.get("dampening", 0.0) or 0.0)
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if b == 0.0:
        limit = 2.0 / lr
    elif group.get("nesterov", False):
        limit = (2.0 + 2.0 * b) / (lr * (1.0 + 2.0 * b))
    else:
        if d >= 1.0:
            return math.inf
        limit = (2.0 + 2.0 * b) / (lr * (1.0 - d))
    return limit - wd


# --------------------------------------------------------------------------- the probe

@register
class Sharpness(Probe):
    """Per epoch: the top Hessian eigenvalue ("sharpness") and the trace of the training loss
    (mean over the first `samples` training examples, all when None), the optimizer's stability
    limit (see `stability_limit`) and their ratio. Measured on the task's base loss over clean
    training data (batch transforms such as mixup are not applied). With top_k > 1 the further
    eigenvalues are recorded as hessian_eig_2, ...; with trace=False hessian_trace is not recorded.
    Lanczos runs at most max_iter products (tolerance tol); the trace uses trace_samples Hutch++
    products. Random probe vectors are seeded by (run seed, epoch) from a private generator, so
    the measurement neither varies between identical runs nor changes the run's random stream."""

    name: ClassVar[str] = "sharpness"
    paper: ClassVar[Paper] = Paper(
        "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability",
        "Cohen, Kaur, Li, Kolter, Talwalkar", 2021, "2103.00065")
    fidelity: ClassVar[str] = "exact"
    fidelity_evidence: ClassVar[str] = (
        "tests/diagnostics/test_curvature.py::test_probe_sharpness_is_cohen_et_als_computation: the official "
        "edge-of-stability code's sharpness (Hessian of summed loss / n over the training set, double-backward "
        "HVPs over physical batches, scipy eigsh), written out, agrees with the probe to 1e-7 (cross-entropy "
        "and their 0.5 * squared loss); test_hutchpp_is_the_official_formula: the trace is Meyer et al.'s "
        "simple_hutchplusplus.m on the same sign matrices; the stability limits are checked by simulating "
        "torch.optim.SGD on quadratics. Setting difference: the official code measures in the network's "
        "current mode (BatchNorm with physical-batch statistics); this probe's default bn_mode='eval' uses "
        "running statistics, and bn_mode='train', chunk_size=1000 is the official computation")
    summary: ClassVar[str] = "top Hessian eigenvalue and trace of the training loss vs the optimizer's 2/lr limit"
    metric_keys: ClassVar[tuple[str, ...]] = ("sharpness", "hessian_trace", "stability_limit", "sharpness_ratio")

    def __init__(self, every: int = 1, samples: int | None = None, top_k: int = 1, trace: bool = True,
                 trace_samples: int = 30, bn_mode: str = "eval", method: str = "lanczos",
                 max_iter: int = 100, tol: float = 1e-3, chunk_size: int | None = 4096) -> None:
        for label, value, low in (("samples", samples, 1), ("top_k", top_k, 1), ("trace_samples", trace_samples, 3),
                                  ("max_iter", max_iter, 1)):
            if value is None and label == "samples":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"probe 'sharpness': {label} must be a whole number >= {low}, got {value!r}")
        if bn_mode not in BN_MODES:
            raise ConfigError(f"probe 'sharpness': bn_mode must be 'eval' or 'train', got {bn_mode!r}")
        if method not in ("lanczos", "power"):
            raise ConfigError(f"probe 'sharpness': method must be 'lanczos' or 'power', got {method!r}")
        if not isinstance(trace, bool):
            raise ConfigError(f"probe 'sharpness': trace must be true or false, got {trace!r}")
        super().__init__(every=every, samples=samples, top_k=top_k, trace=trace, trace_samples=trace_samples,
                         bn_mode=bn_mode, method=method, max_iter=max_iter, tol=tol, chunk_size=chunk_size)
        self.samples, self.top_k, self.trace, self.trace_samples = samples, top_k, trace, trace_samples
        self.bn_mode, self.method, self.max_iter, self.tol, self.chunk_size = bn_mode, method, max_iter, tol, chunk_size

    def measure(self, model: nn.Module, state: TrainState) -> dict[str, float]:
        x, y = probe_data(state, "train", self.samples)
        H = HessianOperator(model, x, y, state.loss_fn, bn_mode=self.bn_mode, chunk_size=self.chunk_size)
        seed = state.seed * 1_000_003 + state.epoch  # fresh, reproducible probes each epoch
        eig = top_eigenvalues(H, min(self.top_k, H.dim), method=self.method, max_iter=max(self.max_iter, self.top_k),
                              tol=self.tol, seed=seed)
        out = {"sharpness": float(eig.values[0])}
        for i in range(1, len(eig.values)):
            out[f"hessian_eig_{i + 1}"] = float(eig.values[i])
        if self.trace:
            out["hessian_trace"] = hutchpp_trace(H, self.trace_samples, seed=seed + 1).estimate
        limit = stability_limit(state.optimizer) if state.optimizer is not None else math.nan
        out["stability_limit"] = limit
        out["sharpness_ratio"] = out["sharpness"] / limit if limit > 0 else math.nan  # NaN stays NaN
        return out


CLAIMS: list[Any] = []
