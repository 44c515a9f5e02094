"""Quantized distillation and differentiable quantization (Polino, Pascanu, Alistarh).

Paper: Antonio Polino, Razvan Pascanu, Dan Alistarh, "Model compression via distillation and
quantization", ICLR 2018, arXiv:1802.05668 (official code: github.com/antspy/quantized_distillation).
Claim: a student whose weights are quantized to a few levels, trained on the distillation loss of a
larger full-precision teacher, reaches higher accuracy than the same quantized student trained on
the labels alone ("quantized shallow students can reach similar accuracy levels to full-precision
teacher models"); differentiable quantization, which learns the quantization points by gradient
descent on the distillation loss, improves on fixed uniform points at the same bits.

The quantizer (Sec. 2.1 of the paper; ``uniformQuantization`` with linear scaling in the code):
the parameter tensor is flattened and cut into buckets of ``bucket_size`` consecutive values (the
last bucket is filled up with copies of the last value); each bucket is scaled to [0, 1] by
``v' = (v - beta) / alpha`` with ``beta = min``, ``alpha = max - min`` of the bucket (alpha = 1 where
the bucket is constant), rounded to one of ``s = 2^bits`` levels ``k / (s - 1)`` and scaled back:

    Q(v) = beta + alpha * round((s - 1) * v') / (s - 1)

Stochastic rounding (the paper's Q with xi ~ Bernoulli): floor((s-1) v') + 1 with probability equal
to the fractional part. The rounding is ``quantization.fake_quantize`` (the LSQ quantizer's rounding
and straight-through gradient) applied to ``v - beta`` with step ``alpha / (s - 1)``; the clamp
bounds are set one code beyond [0, s - 1] so that they never bind and every value, bucket minima and
maxima included, passes the gradient through unchanged, as the code's ``backprop_quantization_style
='none'`` does. The paper's quantizer differs from LSQ's (min-max affine scaling per bucket instead of
a learned symmetric step), so the scaling is here.

Quantized distillation (Algorithm 1): every parameter tensor of the student (weights, biases,
BatchNorm affine parameters: ``model.parameters()`` in the code) is kept in full precision and
quantized in the forward pass (a ``torch.nn.utils.parametrize`` parametrization); the gradient with
respect to the quantized tensor is applied to the full-precision one (straight-through). The loss is
the code's ``forward_and_backward``:

    L = w T^2 KL(softmax(t / T) || softmax(s / T)) + (1 - w) CE(s, y),   w = 0.7, T = 2

with the KL averaged over all batch x class elements, as ``nn.KLDivLoss()`` did in PyTorch 0.3
(``reduction="elementwise"``; ``"batchmean"`` gives Hinton et al.'s per-example mean).

Differentiable quantization (Sec. 2.2, ``optimize_quantization_points``): non-uniform quantization
to the nearest of a learned set of points p (in the scaled space [0, 1], per tensor, shared by its
buckets); the gradient with respect to the point p_j is the sum, over the values quantized to p_j,
of the loss gradient times the bucket's scale alpha (d Q(v) / d p_j = alpha when v is rounded to p_j);
values get the straight-through gradient. Points start at the quantiles of the scaled tensor; with
bit allocation each tensor gets its number of points from the norm of its gradient (5 batches of the
cross-entropy): half of the points are kept per tensor and the rest shared in proportion to the norms
(``assign_bits_automatically``). The weights stay fixed while the points are trained with the
distillation loss against the full-precision model (the code's teacher in this phase is the float
model being quantized); the points are sorted after each step.

Public API:

* ``bucket_view(x, bucket_size) -> (buckets, numel)``, ``linear_scaling(buckets) -> (alpha, beta)``
* ``uniform_quantize(x, bits, bucket_size=256, stochastic=False)``: Q(x) with straight-through gradient
* ``uniform_codes(x, bits, bucket_size) -> (codes, alpha, beta)``, ``dequantize_uniform(...)``
* ``nonuniform_quantize(x, points, bucket_size)``: nearest point, gradients to x (STE) and to points
* ``nonuniform_codes(x, points, bucket_size) -> (indices, alpha, beta)``
* ``quantile_points(x, n, bucket_size)``, ``allocate_points(grad_norms, points)``
* ``distillation_loss(student, teacher, hard_loss, temperature=2, weight=0.7, reduction="elementwise")``
* ``UniformQuantizer``, ``PointQuantizer`` (parametrizations), ``quantize_parameters(model, make)``,
  ``quantized_parameters(model)``, ``set_enabled(model, flag)``
* ``save_quantized_student(model, path) -> bytes``, ``load_quantized_student(path, model) -> model``:
  packed codes (uniform) or packed point indices + points, per-bucket float32 alpha/beta, the other
  tensors in float32; loads into a plain model of the same architecture
* ``train_teacher(task, seed, model_kwargs, epochs=None) -> (teacher, test_acc)``

Plain PyTorch::

    import torch, torch.nn.functional as F
    from trainlab.techniques.compression.quantized_distillation import (
        UniformQuantizer, distillation_loss, quantize_parameters, save_quantized_student, load_quantized_student)

    teacher = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)).eval()
    make = lambda: torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    student = quantize_parameters(make(), lambda: UniformQuantizer(bits=4, bucket_size=256))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)         # the full-precision shadow weights
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    for _ in range(10):
        out = student(x)
        loss = distillation_loss(out, teacher(x).detach(), F.cross_entropy(out, y))
        opt.zero_grad(); loss.backward(); opt.step()
    size = save_quantized_student(student, "/tmp/qd.pt")        # 4-bit codes + bucket scales
    plain = load_quantized_student("/tmp/qd.pt", make())        # same outputs as student.eval()
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.compression.artifact import load_artifact, pack_bits, save_artifact, unpack_bits
from trainlab.techniques.compression.quantization import fake_quantize, quantize_codes
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper("Model compression via distillation and quantization", "Polino, Pascanu, Alistarh", 2018,
              "1802.05668")
ARTIFACT_METHOD = "quantized-distillation"
KL_REDUCTIONS = ("elementwise", "batchmean")
_TOL_ZERO = 1e-10  # the code's tol_diff_zero: a bucket with max - min below it is scaled by 1


# --------------------------------------------------------------------------------- the quantizers

def _check_bits(bits: Any, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"quantized distillation: {what} must be a whole number from 1 to 8, got {bits!r}")
    return bits


def _check_bucket(bucket_size: Any) -> int | None:
    if bucket_size is not None and (isinstance(bucket_size, bool) or not isinstance(bucket_size, int)
                                    or bucket_size < 1):
        raise ConfigError(f"quantized distillation: bucket_size must be a positive whole number or None, "
                          f"got {bucket_size!r}")
    return bucket_size


def bucket_view(x: torch.Tensor, bucket_size: int | None) -> tuple[torch.Tensor, int]:
    """The flattened tensor as rows of `bucket_size` values, the last row filled up with copies of
    the last value (one row when None or when the tensor is not larger than a bucket), and numel."""
    flat = x.reshape(-1)
    n = flat.numel()
    if bucket_size is None or n <= bucket_size:
        return flat.view(1, n), n
    pad = (-n) % bucket_size
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, bucket_size), n


@torch.no_grad()
def linear_scaling(buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (alpha, beta) = (max - min, min), shape [rows, 1]; alpha = 1 for a constant row."""
    lo = buckets.min(dim=1, keepdim=True).values
    alpha = buckets.max(dim=1, keepdim=True).values - lo
    return torch.where(alpha < _TOL_ZERO, torch.ones_like(alpha), alpha), lo


def _unbucket(buckets: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    return buckets.reshape(-1)[:n].view_as(like)


def uniform_quantize(x: torch.Tensor, bits: int, bucket_size: int | None = 256, stochastic: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Bucketed linear-scaling uniform quantization to 2^bits levels (module docstring), with the
    straight-through gradient (identity) to x."""
    s = 2 ** _check_bits(bits)
    buckets, n = bucket_view(x, bucket_size)
    alpha, beta = linear_scaling(buckets.detach())
    step = alpha / (s - 1)
    if stochastic:
        v = (buckets.detach() - beta) / step
        low = torch.floor(v)
        u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        q = (low + (u <= v - low).to(v.dtype)) * step + beta
        out = buckets + (q - buckets).detach()
    else:
        # clamp bounds one code outside [0, s-1]: they never bind, so the STE passes every value
        out = fake_quantize(buckets - beta, step, -1, s) + beta
    return _unbucket(out, n, x)


@torch.no_grad()
def uniform_codes(x: torch.Tensor, bits: int, bucket_size: int | None = 256
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes in [0, 2^bits) (shape of x) and per-bucket alpha, beta (1-D) of the
    deterministic uniform quantizer."""
    s = 2 ** _check_bits(bits)
    buckets, n = bucket_view(x, bucket_size)
    alpha, beta = linear_scaling(buckets)
    codes = quantize_codes(buckets - beta, alpha / (s - 1), 0, s - 1)
    return _unbucket(codes, n, x), alpha.view(-1), beta.view(-1)


def dequantize_uniform(codes: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, bits: int,
                       bucket_size: int | None) -> torch.Tensor:
    """Values of uniform_codes' output: beta + codes * alpha / (2^bits - 1), bucket by bucket."""
    s = 2 ** _check_bits(bits)
    buckets, n = bucket_view(codes.to(alpha.dtype), bucket_size)
    step = alpha.view(-1, 1) / (s - 1)
    # same arithmetic as fake_quantize(...) + beta, so the values are bitwise those of the model
    return _unbucket(buckets * step + beta.view(-1, 1), n, codes)


def _nearest(scaled: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted points; a value halfway between two goes to the upper one
    (the code's searchsorted rule)."""
    if points.numel() == 1:
        return torch.zeros_like(scaled, dtype=torch.int64)
    mid = (points[:-1] + points[1:]) / 2
    return torch.bucketize(scaled, mid, right=True)


class _PointQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, points: torch.Tensor, bucket_size: int | None) -> torch.Tensor:
        buckets, n = bucket_view(x, bucket_size)
        alpha, beta = linear_scaling(buckets)
        idx = _nearest((buckets - beta) / alpha, points)
        ctx.save_for_backward(idx.reshape(-1)[:n], alpha.expand_as(buckets).reshape(-1)[:n])
        ctx.n_points = points.numel()
        return _unbucket(points[idx] * alpha + beta, n, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        idx, alpha = ctx.saved_tensors
        grad_points = None
        if ctx.needs_input_grad[1]:
            # d Q(v) / d p_j = alpha where v is rounded to p_j: sum the scaled gradients per point
            grad_points = torch.zeros(ctx.n_points, dtype=grad.dtype, device=grad.device)
            grad_points.index_add_(0, idx, grad.reshape(-1) * alpha)
        return grad, grad_points, None


def nonuniform_quantize(x: torch.Tensor, points: torch.Tensor, bucket_size: int | None = 256) -> torch.Tensor:
    """Quantize each bucket-scaled value to the nearest of the sorted `points` (in [0, 1] scaled
    space) and scale back; gradient to x straight-through, to points as in the module docstring."""
    if points.dim() != 1 or points.numel() < 1:
        raise ConfigError("quantized distillation: points must be a non-empty 1-D tensor")
    return _PointQuantize.apply(x, points, bucket_size)


@torch.no_grad()
def nonuniform_codes(x: torch.Tensor, points: torch.Tensor, bucket_size: int | None = 256
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Point indices (shape of x) and per-bucket alpha, beta (1-D)."""
    buckets, n = bucket_view(x, bucket_size)
    alpha, beta = linear_scaling(buckets)
    idx = _nearest((buckets - beta) / alpha, points)
    return _unbucket(idx, n, x), alpha.view(-1), beta.view(-1)


def dequantize_points(indices: torch.Tensor, points: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                      bucket_size: int | None) -> torch.Tensor:
    """Values of nonuniform_codes' output: points[idx] * alpha + beta, bucket by bucket."""
    buckets, n = bucket_view(indices, bucket_size)
    return _unbucket(points[buckets] * alpha.view(-1, 1) + beta.view(-1, 1), n, indices)


@torch.no_grad()
def quantile_points(x: torch.Tensor, n_points: int, bucket_size: int | None = 256) -> torch.Tensor:
    """The code's initialization: the 0, 1/(n-1), ..., 1 quantiles (linear interpolation, as
    numpy.percentile) of the bucket-scaled values of x."""
    buckets, n = bucket_view(x, bucket_size)
    alpha, beta = linear_scaling(buckets)
    scaled = ((buckets - beta) / alpha).reshape(-1)[:n]
    if n_points == 1:
        return scaled.median().view(1)
    return torch.quantile(scaled.double(), torch.linspace(0, 1, n_points, dtype=torch.float64)).to(x.dtype)


def allocate_points(grad_norms: Sequence[float], points: Sequence[int]) -> list[int]:
    """The code's assign_bits_automatically(input_is_point=True): each tensor keeps half of its
    points (floor); the rest of the total is shared in proportion to the gradient norms (rounded),
    and the rounding excess is taken from the largest (or the shortfall given to the smallest)."""
    if len(grad_norms) != len(points):
        raise ConfigError("allocate_points: one gradient norm per tensor")
    total = sum(points)
    base = [p // 2 for p in points]
    rest = total - sum(base)
    norm_sum = float(sum(grad_norms))
    if norm_sum <= 0:
        return list(points)
    out = [b + round(g / norm_sum * rest) for g, b in zip(grad_norms, base)]
    diff = sum(out) - total
    if diff > 0:
        out[out.index(max(out))] -= diff
    elif diff < 0:
        out[out.index(min(out))] -= diff
    return [max(1, p) for p in out]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor,
                      temperature: float = 2.0, weight: float = 0.7, reduction: str = "elementwise") -> torch.Tensor:
    """w T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - w) hard_loss. reduction "elementwise" averages
    the KL over batch x classes (PyTorch 0.3's nn.KLDivLoss(), the official code); "batchmean" over
    the batch (Hinton et al.)."""
    if reduction not in KL_REDUCTIONS:
        raise ConfigError(f"distillation_loss: reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    t = float(temperature)
    log_p = F.log_softmax(student_logits / t, dim=1)
    log_q = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum()
    kl = kl / (log_p.numel() if reduction == "elementwise" else log_p.shape[0])
    return weight * t * t * kl + (1.0 - weight) * hard_loss


# --------------------------------------------------------------------------------- parametrizations

class UniformQuantizer(nn.Module):
    """Parametrization: the tensor seen by the layer is uniform_quantize(original); stochastic
    rounding only in training mode (evaluation rounds to nearest)."""

    def __init__(self, bits: int, bucket_size: int | None = 256, stochastic: bool = False, enabled: bool = True):
        super().__init__()
        self.bits, self.bucket_size = _check_bits(bits), _check_bucket(bucket_size)
        self.stochastic, self.enabled = bool(stochastic), enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return uniform_quantize(x, self.bits, self.bucket_size, self.stochastic and self.training)

    def codes(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c, alpha, beta = uniform_codes(x, self.bits, self.bucket_size)
        return {"codes": pack_bits(c, self.bits), "alpha": alpha.float(), "beta": beta.float()}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bucket_size={self.bucket_size}, stochastic={self.stochastic}"


class PointQuantizer(nn.Module):
    """Parametrization: nonuniform_quantize(original, points) with learnable points (created with
    requires_grad=False; the differentiable-quantization phase switches them on)."""

    def __init__(self, n_points: int, bucket_size: int | None = 256, enabled: bool = True):
        super().__init__()
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
            raise ConfigError(f"quantized distillation: n_points must be a positive whole number, got {n_points!r}")
        self.bucket_size = _check_bucket(bucket_size)
        self.points = nn.Parameter(torch.linspace(0, 1, n_points), requires_grad=False)
        self.enabled = enabled

    def set_points(self, points: torch.Tensor) -> None:
        self.points = nn.Parameter(torch.sort(points.detach().clone())[0], requires_grad=self.points.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return nonuniform_quantize(x, self.points, self.bucket_size)

    def codes(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        idx, alpha, beta = nonuniform_codes(x, self.points.detach(), self.bucket_size)
        return {"codes": pack_bits(idx, _index_bits(self.points.numel())), "alpha": alpha.float(),
                "beta": beta.float(), "points": self.points.detach().float().clone()}

    def extra_repr(self) -> str:
        return f"points={self.points.numel()}, bucket_size={self.bucket_size}"


def _index_bits(n_points: int) -> int:
    return max(1, math.ceil(math.log2(n_points)))


def quantize_parameters(model: nn.Module, make: Callable[[], nn.Module], quantize_first_last: bool = True,
                        inplace: bool = True) -> nn.Module:
    """Register the parametrization `make()` on every parameter tensor (model.parameters() order;
    with quantize_first_last=False the first and last tensors stay in float, as the code's flag)."""
    model = model if inplace else copy.deepcopy(model)
    entries = [(m, name) for m in model.modules() for name, _ in m.named_parameters(recurse=False)]
    if not quantize_first_last:
        entries = entries[1:-1]
    for m, name in entries:
        parametrize.register_parametrization(m, name, make())
    return model


def quantized_parameters(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """(qualified name, module, attribute, quantizer) of every quantized tensor, in model order."""
    out = []
    for mname, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for attr, plist in m.parametrizations.items():
                for q in plist:
                    if isinstance(q, (UniformQuantizer, PointQuantizer)):
                        out.append((f"{mname}.{attr}" if mname else attr, m, attr, q))
    return out


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every quantizer on (quantized forward) or off (the full-precision weights)."""
    for _, _, _, q in quantized_parameters(model):
        q.enabled = enabled


# --------------------------------------------------------------------------------- artifact

@torch.no_grad()
def export_quantized_student(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and meta of the compressed student: per quantized tensor its packed codes (uniform:
    bits each; points: ceil(log2 n) bits each), float32 per-bucket alpha and beta (and the points);
    every other parameter and buffer as it is, under 'float.<name>'. Names are the plain model's
    state_dict names."""
    tensors: dict[str, torch.Tensor] = {}
    quant: dict[str, Any] = {}
    for name, m, attr, q in quantized_parameters(model):
        original = m.parametrizations[attr].original
        for k, v in q.codes(original).items():
            tensors[f"q.{name}.{k}"] = v
        kind = "uniform" if isinstance(q, UniformQuantizer) else "points"
        quant[name] = {"kind": kind, "shape": list(original.shape), "bucket_size": q.bucket_size,
                       "bits": q.bits if kind == "uniform" else _index_bits(q.points.numel())}
    for sd_name, tensor in model.state_dict().items():
        if ".parametrizations." in sd_name or sd_name.startswith("parametrizations."):
            continue  # originals and points of the quantized tensors: stored above
        tensors[f"float.{sd_name}"] = tensor.detach().clone()
    return tensors, {"quantized": quant}


def save_quantized_student(model: nn.Module, path: str) -> int:
    """Write the compressed student (export_quantized_student) with save_artifact; returns its bytes."""
    tensors, meta = export_quantized_student(model)
    return save_artifact(path, ARTIFACT_METHOD, tensors, meta)


@torch.no_grad()
def load_quantized_student(path: str, model: nn.Module) -> nn.Module:
    """Load a compressed student into a plain (not parametrized) model of the same architecture: its
    parameters become the dequantized values, so its outputs equal the quantized model's."""
    tensors, meta = load_artifact(path, ARTIFACT_METHOD)
    state: dict[str, torch.Tensor] = {}
    for name, info in meta["quantized"].items():
        shape, bs = tuple(info["shape"]), info["bucket_size"]
        numel = math.prod(shape)
        codes = unpack_bits(tensors[f"q.{name}.codes"], info["bits"], numel).view(shape)
        alpha, beta = tensors[f"q.{name}.alpha"], tensors[f"q.{name}.beta"]
        if info["kind"] == "uniform":
            state[name] = dequantize_uniform(codes, alpha, beta, info["bits"], bs)
        else:
            state[name] = dequantize_points(codes, tensors[f"q.{name}.points"], alpha, beta, bs)
    for key, v in tensors.items():
        if key.startswith("float."):
            state[key[len("float."):]] = v
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------------- the teacher

_TEACHERS: dict[tuple, tuple[dict[str, torch.Tensor], float]] = {}


def train_teacher(task: Any, seed: int, model_kwargs: dict[str, Any] | None, epochs: int | None = None
                  ) -> tuple[nn.Module, float]:
    """Train the full-precision teacher: the task's own recipe (data, optimizer, schedule,
    augmentation) with the teacher's model_kwargs, on the same seed; the global random state is
    left as it was. Returns the teacher in eval mode and its test accuracy. Cached per process."""
    from trainlab.tasks.loading import load_task_data
    from trainlab.training.trainer import run_training

    kwargs = dict(task.model_kwargs if model_kwargs is None else model_kwargs)
    t_task = dataclasses.replace(task, model_kwargs=kwargs, epochs=int(epochs or task.epochs))
    key = (task.name, repr(sorted(kwargs.items())), int(seed), t_task.epochs, repr(t_task))
    if key not in _TEACHERS:
        with torch.random.fork_rng():
            result = run_training(t_task, seed=int(seed), keep_state=True)
        if result.status != "finished":
            raise ConfigError(f"quantized distillation: the teacher run {result.status} (task '{task.name}')")
        if len(_TEACHERS) > 8:
            _TEACHERS.clear()
        _TEACHERS[key] = (result.state, float(result.final.get("test_acc", float("nan"))))
    state, acc = _TEACHERS[key]
    data = load_task_data(t_task, int(seed))
    with torch.random.fork_rng():
        teacher = t_task.make_model(data.input_shape, data.num_classes, **kwargs)
    teacher.load_state_dict(state)
    return teacher.eval(), acc


# --------------------------------------------------------------------------------- techniques

def _check_common(temperature: Any, distill_weight: Any, kl_reduction: Any, teacher_model_kwargs: Any,
                  teacher_epochs: Any) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
        raise ConfigError(f"quantized distillation: temperature must be a positive number, got {temperature!r}")
    if not isinstance(distill_weight, (int, float)) or isinstance(distill_weight, bool) or not 0 <= distill_weight <= 1:
        raise ConfigError(f"quantized distillation: distill_weight must be in [0, 1], got {distill_weight!r}")
    if kl_reduction not in KL_REDUCTIONS:
        raise ConfigError(f"quantized distillation: kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
    if teacher_model_kwargs is not None and not isinstance(teacher_model_kwargs, dict):
        raise ConfigError("quantized distillation: teacher_model_kwargs must be a dict of the task's model "
                          f"settings (e.g. {{'channels': [32, 64, 64]}}), got {teacher_model_kwargs!r}")
    if teacher_epochs is not None and (isinstance(teacher_epochs, bool) or not isinstance(teacher_epochs, int)
                                       or teacher_epochs < 1):
        raise ConfigError(f"quantized distillation: teacher_epochs must be a positive whole number, got "
                          f"{teacher_epochs!r}")


def _payload_bytes(model: nn.Module) -> int:
    tensors, _ = export_quantized_student(model)
    return sum(t.numel() * t.element_size() for t in tensors.values())


class _Distilling(Technique):
    """Shared parts: the teacher (trained in on_train_start) and the distillation loss."""

    requires = frozenset({"classification"})

    def _setup_teacher(self, state: TrainState) -> None:
        s = self._settings
        self.teacher, self.teacher_acc = train_teacher(state.task, state.seed, s["teacher_model_kwargs"],
                                                       s["teacher_epochs"])
        self.teacher.to(state.device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def _distill(self, outputs: torch.Tensor, teacher: nn.Module, batch: Batch,
                 base_loss: torch.Tensor) -> torch.Tensor:
        s = self._settings
        with torch.no_grad():
            t_out = teacher(batch.inputs)
        return distillation_loss(outputs, t_out, base_loss, s["temperature"], s["distill_weight"], s["kl_reduction"])


@register
class QuantizedDistillationTechnique(_Distilling):
    """Train the student with every parameter uniformly quantized in the forward pass (bucketed
    linear scaling, straight-through to the full-precision weights) on the distillation loss of a
    full-precision teacher trained in on_train_start with the task's recipe at `teacher_model_kwargs`.
    distill=False trains the same quantized student on the labels alone (the paper's comparison);
    log_teacher=True still trains the teacher to log its accuracy. Logs teacher_test_acc and
    model_bytes (packed codes + bucket scales + float tensors)."""

    name = "quantized-distillation"
    family = "compression"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = (
        "tests/techniques/compression/test_quantized_distillation.py compares with formulas of the official code "
        "(antspy/quantized_distillation): uniformQuantization with linear bucket scaling (s = 2^bits levels, "
        "bucket padding with the last value, stochastic rounding), forward_and_backward's loss 0.7 T^2 "
        "KLDivLoss + 0.3 CE with T = 2 and PyTorch 0.3's element-mean KLDivLoss, and the 'none' backprop style "
        "(the gradient at the quantized weights applied to the full-precision ones)")
    deviations = ()
    version = 1
    modifies = frozenset({"model", "loss_objective"})
    order = 90
    summary = "quantized distillation: bucketed uniform weight quantization trained on a larger teacher's soft targets"

    def __init__(self, bits: int = 4, bucket_size: int | None = 256, stochastic: bool = False, distill: bool = True,
                 log_teacher: bool = False, teacher_model_kwargs: dict | None = None,
                 teacher_epochs: int | None = None, temperature: float = 2.0, distill_weight: float = 0.7,
                 kl_reduction: str = "elementwise", quantize_first_last: bool = True) -> None:
        _check_bits(bits)
        _check_bucket(bucket_size)
        _check_common(temperature, distill_weight, kl_reduction, teacher_model_kwargs, teacher_epochs)
        super().__init__(bits=bits, bucket_size=bucket_size, stochastic=stochastic, distill=distill,
                         log_teacher=log_teacher, teacher_model_kwargs=teacher_model_kwargs,
                         teacher_epochs=teacher_epochs, temperature=temperature, distill_weight=distill_weight,
                         kl_reduction=kl_reduction, quantize_first_last=quantize_first_last)
        self.teacher: nn.Module | None = None
        self.teacher_acc = float("nan")

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        s = self._settings
        return quantize_parameters(model, lambda: UniformQuantizer(s["bits"], s["bucket_size"], s["stochastic"]),
                                   s["quantize_first_last"])

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        if self._settings["distill"] or self._settings["log_teacher"]:
            self._setup_teacher(state)

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        if not self._settings["distill"] or self.teacher is None:
            return base_loss
        return self._distill(outputs, self.teacher, batch, base_loss)

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self.teacher is not None:
            state.epoch_metrics["teacher_test_acc"] = self.teacher_acc
        if state.epoch == state.epochs - 1:
            state.epoch_metrics["model_bytes"] = float(_payload_bytes(model))


@register
class DifferentiableQuantizationTechnique(_Distilling):
    """Differentiable quantization in one run: the first `start` share of the epochs trains the
    full-precision student on the teacher's distillation loss (the paper starts from a distilled
    model); then the weights are frozen, each tensor gets its number of points (bit allocation from
    gradient norms) initialized at quantiles, and only the points are trained (SGD, Nesterov
    momentum) on the distillation loss against the frozen full-precision student, as in the code.
    learned=False is the control: fixed uniform points k/(s-1) (the uniform quantizer of the same
    bucket scaling), no allocation, nothing trained in the second phase (BatchNorm statistics are
    updated in both)."""

    name = "differentiable-quantization"
    family = "compression"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "one run holds both phases: the full-precision distilled student is trained for the first `start` share "
        "of the task's epochs, the points for the rest; the paper trains the distilled model to the end first",
        "the points' learning rate is constant (points_lr, SGD with Nesterov momentum 0.9); the code halves it "
        "when the validation error stops improving",
    )
    version = 1
    modifies = frozenset({"model", "loss_objective", "weights"})
    order = 90
    summary = "differentiable quantization: learn per-tensor quantization points by SGD on the distillation loss"

    def __init__(self, bits: int = 2, bucket_size: int | None = 256, start: float = 0.5, learned: bool = True,
                 allocate: bool = True, points_lr: float = 1e-3, momentum: float = 0.9,
                 teacher_model_kwargs: dict | None = None, teacher_epochs: int | None = None,
                 temperature: float = 2.0, distill_weight: float = 0.7, kl_reduction: str = "elementwise",
                 quantize_first_last: bool = True, grad_batches: int = 5) -> None:
        _check_bits(bits)
        _check_bucket(bucket_size)
        _check_common(temperature, distill_weight, kl_reduction, teacher_model_kwargs, teacher_epochs)
        if not isinstance(start, (int, float)) or not 0 <= start < 1:
            raise ConfigError(f"differentiable-quantization: start must be in [0, 1), got {start!r}")
        if not isinstance(points_lr, (int, float)) or points_lr < 0:
            raise ConfigError(f"differentiable-quantization: points_lr must be >= 0, got {points_lr!r}")
        super().__init__(bits=bits, bucket_size=bucket_size, start=start, learned=learned, allocate=allocate,
                         points_lr=points_lr, momentum=momentum, teacher_model_kwargs=teacher_model_kwargs,
                         teacher_epochs=teacher_epochs, temperature=temperature, distill_weight=distill_weight,
                         kl_reduction=kl_reduction, quantize_first_last=quantize_first_last,
                         grad_batches=grad_batches)
        self.model: nn.Module | None = None
        self.teacher: nn.Module | None = None
        self.float_student: nn.Module | None = None
        self.points_opt: torch.optim.Optimizer | None = None
        self.teacher_acc = float("nan")
        self.float_acc = float("nan")
        self.active = False

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        s = self._settings
        self.model = quantize_parameters(model, lambda: PointQuantizer(2 ** s["bits"], s["bucket_size"], enabled=False),
                                         s["quantize_first_last"])
        return self.model

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self._setup_teacher(state)

    def _gradient_norms(self, model: nn.Module, state: TrainState) -> list[float]:
        """Norms of the cross-entropy gradient of each quantized tensor, averaged over the first
        grad_batches batches of a fixed permutation (the code's 5 minibatches)."""
        data, bs = state.data, state.task.batch_size
        order = torch.randperm(len(data.train_y), generator=state.generator)
        entries = quantized_parameters(model)
        originals = [m.parametrizations[a].original for _, m, a, _ in entries]
        for p in originals:
            p.grad = None
        k = self._settings["grad_batches"]
        for b in range(k):
            idx = order[b * bs:(b + 1) * bs]
            x, y = data.train_x[idx].to(state.device), data.train_y[idx].to(state.device)
            F.cross_entropy(model(x), y).backward()
        norms = [float((p.grad / k).norm()) if p.grad is not None else 0.0 for p in originals]
        for p in model.parameters():
            p.grad = None
        return norms

    def _switch(self, model: nn.Module, state: TrainState) -> None:
        s = self._settings
        entries = quantized_parameters(model)
        self.float_student = copy.deepcopy(model).eval()  # quantizers still off: the float student
        for p in self.float_student.parameters():
            p.requires_grad_(False)
        n = 2 ** s["bits"]
        if s["learned"] and s["allocate"]:
            counts = allocate_points(self._gradient_norms(model, state), [n] * len(entries))
        else:
            counts = [n] * len(entries)
        for (_, m, attr, q), c in zip(entries, counts):
            original = m.parametrizations[attr].original
            q.set_points(quantile_points(original, c, q.bucket_size) if s["learned"] else torch.linspace(0, 1, n))
        for p in model.parameters():
            p.requires_grad_(False)
        points = [q.points for _, _, _, q in entries]
        for p in points:
            p.requires_grad_(True)  # the control keeps them fixed (no optimizer) but needs a graph to backprop
        if s["learned"]:
            self.points_opt = torch.optim.SGD(points, lr=s["points_lr"], momentum=s["momentum"],
                                              nesterov=s["momentum"] > 0)
        set_enabled(model, True)
        self.active = True
        from trainlab.training.metrics import evaluate_task

        data = state.data  # the full-precision student's accuracy, before its quantization
        self.float_acc = float(evaluate_task(self.float_student, data.test_x, data.test_y, state.task, state.device,
                                             True)["acc"])

    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        if not self.active and self.model is not None and state.epoch >= int(self._settings["start"] * state.epochs):
            self._switch(self.model, state)
        return batch

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        teacher = self.float_student if self.active else self.teacher
        return base_loss if teacher is None else self._distill(outputs, teacher, batch, base_loss)

    def after_backward(self, model: nn.Module, state: TrainState) -> None:
        if not self.active:
            return
        entries = quantized_parameters(model)
        if self.points_opt is not None:
            self.points_opt.step()
            with torch.no_grad():
                for _, _, _, q in entries:
                    q.points.copy_(torch.sort(q.points)[0])
        for _, _, _, q in entries:
            q.points.grad = None

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        state.epoch_metrics["teacher_test_acc"] = self.teacher_acc
        state.epoch_metrics["quant_active"] = float(self.active)
        if self.active:
            state.epoch_metrics["float_test_acc"] = self.float_acc
        if state.epoch == state.epochs - 1 and self.active:
            state.epoch_metrics["model_bytes"] = float(_payload_bytes(model))


# --------------------------------------------------------------------------------- claims

_QUOTE = ("The first method we propose is called quantized distillation and leverages distillation during the "
          "training process, by incorporating distillation loss, expressed with respect to the teacher, into the "
          "training of a student network whose weights are quantized to a limited set of levels ... We show that "
          "quantized shallow students can reach similar accuracy levels to full-precision teacher models")
_DQ_QUOTE = ("The second method, differentiable quantization, optimizes the location of quantization points through "
             "stochastic gradient descent, to better fit the behavior of the teacher model")
_SETTING = PaperSetting(train_size=50_000, epochs=200, params=1_000_000,
                        text="CIFAR-10; teacher: a 5.3M-parameter convolutional network; students of about 1M "
                             "parameters (shallower, fewer filters); weights (every parameter tensor) quantized to 2, "
                             "4 or 8 bits with bucket size 256; SGD with Nesterov momentum, 200 epochs; also "
                             "CIFAR-100 wide ResNets, ImageNet ResNets, WMT/OpenNMT translation")
_TEACHER = {"teacher_model_kwargs": {"channels": [32, 64, 64]}, "teacher_epochs": 15}
_STUDENT = {"model_kwargs": {"channels": (8, 16, 16)}}
_WEAKER = Precondition(
    metric="teacher_test_acc - test_acc", op=">=", threshold=0.03, arm="baseline",
    why="the quantized student trained alone is clearly weaker than the full-precision teacher (>= 3 points), so "
        "the teacher has something to transfer (the paper's students are smaller than their teachers)")
_SCAN = ("Single-seed scan of the setting (seed 0, before the claims were run): teacher (channels 32-64-64, the "
         "task's model, 19.5k parameters) 0.968; float student (8-16-16, 1.4k parameters) 0.890; the same student "
         "quantized without a teacher: 4 bits 0.870, 2 bits 0.716.")


def _qd_claim(bits: int) -> Claim:
    base = {"bits": bits, "bucket_size": 256}
    return Claim(
        id=f"quantized-distillation-{bits}bit-beats-quantized-alone-mnist1d", technique="quantized-distillation",
        task="mnist1d-cnn", metric="test_acc", direction="higher", seeds=5, overrides=_STUDENT,
        treatment=arm(("quantized-distillation", {**base, **_TEACHER}),
                      label=f"{bits}-bit student (8-16-16) distilled from a float 32-64-64 teacher"),
        baseline=arm(("quantized-distillation", {**base, **_TEACHER, "distill": False, "log_teacher": True}),
                     label=f"the same {bits}-bit student trained on the labels alone"),
        preconditions=(_WEAKER,), paper_quote=_QUOTE,
        paper_number="CIFAR-10 (Table 1): 2- and 4-bit students distilled from the 5.3M-parameter teacher; the "
                     "official code's experiment 'distilled + quantized better than quantized' trains the same "
                     "quantized student with and without the teacher",
        paper_scale="CIFAR-10/100, ImageNet, WMT13 translation", paper_setting=_SETTING,
        notes=f"Both arms quantize every parameter tensor of the same 8-16-16 MNIST-1D CNN to {bits} bits (bucket 256, "
              "linear scaling, straight-through to the float weights) for the whole run, with the task's Adam and "
              "cosine schedule for 15 epochs; only the loss differs (0.7 T^2 KL + 0.3 CE with T = 2 against the "
              "teacher, versus CE). The teacher is the task's own 32-64-64 CNN trained in full precision with the "
              "task's recipe on the same seed inside the run (the baseline trains it too, only to log its accuracy "
              f"for the precondition). {_SCAN} Setting chosen by the paper's regime (a student much smaller than the "
              "teacher, quantized enough to lose accuracy); nothing was tuned on the claim's outcome. "
              + _MEASURED[bits])


_MEASURED = {
    4: "Measured (seeds 0-4, test_acc): alone 0.870, 0.869, 0.870, 0.856, 0.885; distilled 0.861, 0.867, 0.872, "
       "0.852, 0.875; teacher 0.968, 0.962, 0.967, 0.971, 0.969. At 4 bits the teacher's soft targets did not lift "
       "this student (mean -0.5 points).",
    2: "Measured (seeds 0-4, test_acc): alone 0.716, 0.723, 0.758, 0.652, 0.722; distilled 0.647, 0.788, 0.788, "
       "0.703, 0.740 (mean +1.9 points, 4 of 5 seeds higher, seed-to-seed spread of about 5 points at 2 bits).",
}


CLAIMS = [
    _qd_claim(4),
    _qd_claim(2),
    Claim(
        id="differentiable-quantization-beats-uniform-2bit-mnist1d", technique="differentiable-quantization",
        task="mnist1d-cnn", metric="test_acc", direction="higher", seeds=5, overrides={**_STUDENT, "epochs": 30},
        treatment=arm(("differentiable-quantization", {"bits": 2, "points_lr": 1e-3, **_TEACHER}),
                      label="learned points (bit allocation, quantile init), 2 bits on average"),
        baseline=arm(("differentiable-quantization", {"bits": 2, "learned": False, **_TEACHER}),
                     label="fixed uniform points (4 levels per bucket), the same distilled float student"),
        preconditions=(Precondition(
            metric="float_test_acc - test_acc", op=">=", threshold=0.02, arm="baseline",
            why="uniform 2-bit quantization of the trained float student loses accuracy (>= 2 points), the loss "
                "learned points are meant to reduce"),),
        paper_quote=_DQ_QUOTE,
        paper_number="CIFAR-10 (Table 1): differentiable quantization of the distilled students at 2 and 4 bits, "
                     "against post-training (uniform) quantization of the same model",
        paper_scale="CIFAR-10/100, ImageNet, WMT13 translation", paper_setting=_SETTING,
        notes="One run per arm of 30 epochs: the first 15 train the full-precision 8-16-16 student on the "
              "distillation loss of the 32-64-64 teacher (identical in both arms); then every parameter tensor is "
              "quantized (bucket 256) and the weights are frozen. Treatment: per-tensor points with bit allocation "
              "(4 points per tensor on average, from gradient norms) and quantile initialization, trained by SGD "
              "(Nesterov momentum 0.9, lr 1e-3) on the distillation loss against the frozen float student, as in "
              "the official code. Baseline: the 4 uniform levels of the same bucket scaling, nothing trained "
              "(post-training uniform quantization; BatchNorm statistics are re-estimated in both arms). "
              "float_test_acc is the float student's accuracy before quantization. The points' learning rate was "
              "set from a single-seed look at the points only (seed 0): at 1e-2 points of several tensors merged "
              "or left [0, 1], at 1e-3 they stayed ordered and inside; no accuracy was looked at. "
              "The points are counted as in the paper and the code (2^bits per tensor on average); with bit "
              "allocation some tensors get 5-10 points, stored as 3-4-bit indices, so the learned arm's payload is "
              "1,134-1,181 bytes against the uniform arm's 989 (+15-19%). Measured (seeds 0-4, test_acc): float "
              "student 0.921, 0.922, 0.932, 0.918, 0.922; uniform points 0.290, 0.475, 0.125, 0.394, 0.216; learned "
              "points 0.690, 0.718, 0.844, 0.738, 0.612. Uniform 2-bit quantization after training nearly destroys "
              "this 1.4k-parameter student; learned points recover much of it.",
    ),
]
