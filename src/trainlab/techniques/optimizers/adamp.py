"""AdamP and SGDP: momentum optimizers that remove the radial part of updates to scale-invariant weights.

Paper: Byeongho Heo, Sanghyuk Chun, Seong Joon Oh, Dongyoon Han, Sangdoo Yun, Gyuwan Kim,
Youngjung Uh, Jung-Woo Ha. "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
Scale-invariant Weights". ICLR 2021, arXiv:2006.08217 (first titled "Slowing Down the Weight Norm
Increase in Momentum-based Optimizers").

Claim: with normalization layers (e.g. BatchNorm after a conv), the preceding weights are scale
invariant; momentum makes their norms grow fast, which shrinks the effective step size early.
Projecting the update onto the tangent space of such weights ("get rid of the radial component, or
the norm-increasing direction, at each optimizer step") slows the norm growth and improves
accuracy. The paper measured it on 13 benchmarks, from ImageNet classification, CUB and SOP
retrieval and COCO detection to WikiText language modelling and DCASE audio classification.
Here: small BatchNorm CNNs on 8x8 digits / CIFAR-10 subsets for a few epochs, so the norm growth
(the mechanism) is measurable, while small accuracy gains may be within this scale's seed noise.

The update (as in the paper's Algorithm and the authors' code): for every parameter with more than
one dimension, compute |cos(grad, w)| per output channel (rows of w.view(C, -1)); if the largest
is below delta / sqrt(row length), remove from the update each row's component along its row of w,
and scale weight decay by wd_ratio. Otherwise try the same on the whole tensor (one row). AdamP's
weight decay is decoupled (w *= 1 - lr * wd * ratio, as in AdamW); SGDP divides the decay by
(1 - momentum). As in the authors' SGDP, without Nesterov the projection acts on the momentum
buffer itself (the buffer and the step are the same tensor there).

Fast paths: ``fused`` re-homes a group's tensors into flat buffers (see ``fastpath``) and runs the
projection for all tensors of one shape at once (per-row reductions on a [count, C, L] view, with
the two tests and the projection written branch-free with ``torch.where``), compiled with
``torch.compile``; ``foreach`` does the moment updates with ``torch._foreach_*`` and the projection
per tensor. All paths match the single-tensor reference to float32 rounding, except where a cosine
lies within rounding of the threshold (then the two paths may take different branches).

Plain PyTorch::

    import torch
    from trainlab.techniques.optimizers.adamp import AdamP, SGDP

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.LazyLinear(10))
    model(torch.randn(2, 1, 8, 8))
    opt = AdamP(model.parameters(), lr=1e-3, weight_decay=1e-2)    # or SGDP(..., lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = model(torch.randn(16, 1, 8, 8)).logsumexp(1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.techniques.optimizers import HandCase, OptimizerSpec, register_optimizer
from trainlab.techniques.optimizers.fastpath import (
    MultiPathOptimizer,
    check_betas,
    check_range,
    run_kernel,
    scalars,
)
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper(
    title="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
    authors="Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha", year=2021, arxiv="2006.08217",
)


# ---- the projection, reference form (one tensor) --------------------------------------------------
def _channel_rows(x: Tensor) -> Tensor:
    return x.reshape(x.size(0), -1)


def _layer_row(x: Tensor) -> Tensor:
    return x.reshape(1, -1)


def project_scale_invariant(p: Tensor, grad: Tensor, update: Tensor, delta: float, wd_ratio: float,
                            eps: float) -> tuple[Tensor, float]:
    """Remove the radial component of `update` if `p` looks scale invariant (per channel, then per
    tensor). Returns (update, weight-decay ratio). Works in place on `update`."""
    for rows in (_channel_rows, _layer_row):
        p_rows = rows(p)
        cos = F.cosine_similarity(rows(grad), p_rows, dim=1, eps=eps).abs()
        if cos.max() < delta / math.sqrt(p_rows.size(1)):
            expand = (-1,) + (1,) * (p.dim() - 1) if rows is _channel_rows else (1,) * p.dim()
            unit = p / p_rows.norm(dim=1).add(eps).reshape(expand)
            radial = rows(unit * update).sum(dim=1).reshape(expand)
            update.sub_(unit * radial)
            return update, wd_ratio
    return update, 1.0


def _bucket_projection(p3: Tensor, g3: Tensor, u3: Tensor, delta: Tensor, eps: Tensor, decay: Tensor,
                       wd_ratio: Tensor) -> tuple[Tensor, Tensor]:
    """For `count` tensors of one shape viewed as [count, C, L]: the per-row coefficient c such that
    the projected update is u - c * p (0 where no projection applies), and the factor
    1 - decay * (wd_ratio if the tensor is projected else 1), both per row ([count, C]; per row
    rather than per tensor so that a compiled update indexes both alike and stays one loop)."""
    count, channels, length = p3.shape
    gp, gg = (g3 * p3).sum(-1), (g3 * g3).sum(-1)
    pp, pu = (p3 * p3).sum(-1), (p3 * u3).sum(-1)
    g_norm, p_norm = gg.sqrt(), pp.sqrt()
    cos_rows = (gp / (g_norm.clamp_min(eps) * p_norm.clamp_min(eps))).abs()
    by_channel = cos_rows.amax(-1) < delta / math.sqrt(length)
    gp_t, gg_t, pp_t, pu_t = gp.sum(-1), gg.sum(-1), pp.sum(-1), pu.sum(-1)
    p_norm_t = pp_t.sqrt()
    cos_t = (gp_t / (gg_t.sqrt().clamp_min(eps) * p_norm_t.clamp_min(eps))).abs()
    by_tensor = (cos_t < delta / math.sqrt(channels * length)) & ~by_channel
    coef_rows = pu / (p_norm + eps) ** 2
    coef_t = (pu_t / (p_norm_t + eps) ** 2).unsqueeze(-1).expand_as(coef_rows)
    zero = torch.zeros_like(coef_rows)
    coef = torch.where(by_channel.unsqueeze(-1), coef_rows, torch.where(by_tensor.unsqueeze(-1), coef_t, zero))
    one = torch.ones_like(decay)
    keep = one - decay * torch.where(by_channel | by_tensor, wd_ratio, one)
    return coef, keep.unsqueeze(-1).expand_as(coef).contiguous()


# The fused kernels run in two compiled calls per step, so that each is a few full passes over
# memory. The first only reads: it computes this step's moments and update in registers and
# returns, per >1-D segment, the projection coefficients (small tensors). The second recomputes the
# moments, stores them and applies p <- p * keep - step_size * (u - coef * p) in one pass. (Inside
# one compiled function, the compiler inlined the coefficients' scalar arithmetic (square roots,
# divisions, selects) into the innermost loop over every element and stored the moments in a pass
# of their own: about twice as slow.)
def _adam_moments(g: Tensor, m: Tensor, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    b1, one_minus_b1, b2, one_minus_b2 = h[:4].unbind()
    return m * b1 + g * one_minus_b1, v * b2 + g * g * one_minus_b2


def _adamp_direction(g: Tensor, m: Tensor, v: Tensor, h: Tensor, nesterov: bool) -> Tensor:
    b1, one_minus_b1, bc2_sqrt, eps = h[0], h[1], h[4], h[5]
    denom = v.sqrt() / bc2_sqrt + eps
    return (b1 * m + one_minus_b1 * g) / denom if nesterov else m / denom


def _adamp_coefficients(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], h: Tensor, nesterov: bool) -> list[Tensor]:
    eps, decay, delta, wd_ratio = h[5], h[7], h[8], h[9]
    coefs: list[Tensor] = []
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        if p.dim() > 1:
            m, v = _adam_moments(g, m, v, h)
            coefs += _bucket_projection(p, g, _adamp_direction(g, m, v, h, nesterov), delta, eps, decay, wd_ratio)
    return coefs


def _adamp_apply(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 h: Tensor, nesterov: bool, coefs: list[Tensor]) -> None:
    step_size, decay = h[6], h[7]
    pairs = iter(zip(coefs[0::2], coefs[1::2]))
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        m_new, v_new = _adam_moments(g, m, v, h)
        m.copy_(m_new)
        v.copy_(v_new)
        u = _adamp_direction(g, m_new, v_new, h, nesterov)
        if p.dim() == 1:
            p.copy_(p * (1 - decay) - step_size * u)
        else:
            coef, keep = next(pairs)
            p.copy_(p * keep.unsqueeze(-1) - step_size * (u - coef.unsqueeze(-1) * p))


def _sgdp_direction(g: Tensor, buf: Tensor, h: Tensor, nesterov: bool) -> tuple[Tensor, Tensor]:
    """(new momentum buffer, update direction)."""
    momentum, one_minus_dampening = h[0], h[1]
    buf = buf * momentum + g * one_minus_dampening
    return buf, (g + momentum * buf if nesterov else buf)


def _sgdp_coefficients(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], h: Tensor,
                       nesterov: bool) -> list[Tensor]:
    decay, delta, wd_ratio, eps = h[3], h[4], h[5], h[6]
    coefs: list[Tensor] = []
    for p, g, buf in zip(params, grads, bufs):
        if p.dim() > 1:
            coefs += _bucket_projection(p, g, _sgdp_direction(g, buf, h, nesterov)[1], delta, eps, decay, wd_ratio)
    return coefs


def _sgdp_apply(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], h: Tensor, nesterov: bool,
                coefs: list[Tensor]) -> None:
    lr, decay = h[2], h[3]
    pairs = iter(zip(coefs[0::2], coefs[1::2]))
    for p, g, buf in zip(params, grads, bufs):
        buf_new, u = _sgdp_direction(g, buf, h, nesterov)
        if p.dim() == 1:
            buf.copy_(buf_new)
            p.copy_(p * (1 - decay) - lr * u)
            continue
        coef, keep = next(pairs)
        u = u - coef.unsqueeze(-1) * p
        # without Nesterov the buffer is the step and is projected too (as in the authors' code)
        buf.copy_(buf_new if nesterov else u)
        p.copy_(p * keep.unsqueeze(-1) - lr * u)


# ---- the optimizers ---------------------------------------------------------------------------------
class AdamP(MultiPathOptimizer):
    """Adam with the AdamP projection for scale-invariant weights and decoupled weight decay.

    Args: lr, betas, eps, weight_decay (decoupled, like AdamW), delta (cosine threshold factor),
    wd_ratio (weight-decay factor on projected tensors), nesterov, foreach, fused (see fastpath).
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    flat_by_shape = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False, *,
                 foreach: bool | None = None, fused: bool | None = None) -> None:
        check_range("learning rate", lr, 0.0)
        check_betas(betas)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("delta", delta, 0.0)
        check_range("wd_ratio", wd_ratio, 0.0)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                        wd_ratio=wd_ratio, nesterov=bool(nesterov))
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    def _single_update(self, group, p, grad, state, step):
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        step_size = group["lr"] / (1 - beta1 ** step)
        if group["nesterov"]:
            update = (beta1 * exp_avg + (1 - beta1) * grad) / denom
        else:
            update = exp_avg / denom
        ratio = 1.0
        if p.dim() > 1:
            update, ratio = project_scale_invariant(p, grad, update, group["delta"], group["wd_ratio"], group["eps"])
        if group["weight_decay"] > 0:
            p.mul_(1 - group["lr"] * group["weight_decay"] * ratio)
        p.add_(update, alpha=-step_size)

    def _foreach_update(self, group, params, grads, states, steps):
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        exp_avgs = [st["exp_avg"] for st in states]
        exp_avg_sqs = [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, [math.sqrt(1 - beta2 ** s) for s in steps])
        torch._foreach_add_(denoms, eps)
        if group["nesterov"]:
            updates = list(torch._foreach_mul(exp_avgs, beta1))
            torch._foreach_add_(updates, grads, alpha=1 - beta1)
            torch._foreach_div_(updates, denoms)
        else:
            updates = list(torch._foreach_div(exp_avgs, denoms))
        ratios = [1.0] * len(params)
        for i, p in enumerate(params):
            if p.dim() > 1:
                updates[i], ratios[i] = project_scale_invariant(p, grads[i], updates[i], group["delta"],
                                                                group["wd_ratio"], eps)
        if wd > 0:
            torch._foreach_mul_(params, [1 - lr * wd * r for r in ratios])
        torch._foreach_mul_(updates, [-lr / (1 - beta1 ** s) for s in steps])
        torch._foreach_add_(params, updates)

    def _flat_update(self, group, flat, step):
        beta1, beta2 = group["betas"]
        h = scalars([beta1, 1 - beta1, beta2, 1 - beta2, math.sqrt(1 - beta2 ** step), group["eps"],
                     group["lr"] / (1 - beta1 ** step), group["lr"] * group["weight_decay"], group["delta"],
                     group["wd_ratio"]], flat.params[0])
        args = (flat.tensors("param"), flat.tensors("grad"), flat.tensors("exp_avg"), flat.tensors("exp_avg_sq"), h,
                group["nesterov"])
        coefs = run_kernel(_adamp_coefficients, *args) if flat.has_matrices else []
        run_kernel(_adamp_apply, *args, coefs)


class SGDP(MultiPathOptimizer):
    """SGD with momentum, the AdamP projection for scale-invariant weights, and decoupled weight
    decay scaled by 1 / (1 - momentum) (as in the authors' code)."""

    state_keys = ("momentum",)
    flat_by_shape = True

    def __init__(self, params: Any, lr: float = 0.1, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, eps: float = 1e-8, delta: float = 0.1,
                 wd_ratio: float = 0.1, *, foreach: bool | None = None, fused: bool | None = None) -> None:
        check_range("learning rate", lr, 0.0)
        check_range("momentum", momentum, 0.0, 1.0)
        check_range("dampening", dampening, 0.0, 1.0, high_inclusive=True)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("eps", eps, 0.0)
        check_range("delta", delta, 0.0)
        check_range("wd_ratio", wd_ratio, 0.0)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=bool(nesterov), eps=eps, delta=delta, wd_ratio=wd_ratio)
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    def _single_update(self, group, p, grad, state, step):
        momentum = group["momentum"]
        buf = state["momentum"]
        buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        update = grad + momentum * buf if group["nesterov"] else buf  # the buffer itself, as in the paper's code
        ratio = 1.0
        if p.dim() > 1:
            update, ratio = project_scale_invariant(p, grad, update, group["delta"], group["wd_ratio"], group["eps"])
        if group["weight_decay"] > 0:
            p.mul_(1 - group["lr"] * group["weight_decay"] * ratio / (1 - momentum))
        p.add_(update, alpha=-group["lr"])

    def _foreach_update(self, group, params, grads, states, steps):
        momentum, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        bufs = [st["momentum"] for st in states]
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
        if group["nesterov"]:
            updates = list(torch._foreach_mul(bufs, momentum))
            torch._foreach_add_(updates, grads)
        else:
            updates = list(bufs)
        ratios = [1.0] * len(params)
        for i, p in enumerate(params):
            if p.dim() > 1:
                updates[i], ratios[i] = project_scale_invariant(p, grads[i], updates[i], group["delta"],
                                                                group["wd_ratio"], group["eps"])
        if wd > 0:
            torch._foreach_mul_(params, [1 - lr * wd * r / (1 - momentum) for r in ratios])
        torch._foreach_add_(params, updates, alpha=-lr)

    def _flat_update(self, group, flat, step):
        momentum = group["momentum"]
        h = scalars([momentum, 1 - group["dampening"], group["lr"],
                     group["lr"] * group["weight_decay"] / (1 - momentum), group["delta"], group["wd_ratio"],
                     group["eps"]], flat.params[0])
        args = (flat.tensors("param"), flat.tensors("grad"), flat.tensors("momentum"), h, group["nesterov"])
        coefs = run_kernel(_sgdp_coefficients, *args) if flat.has_matrices else []
        run_kernel(_sgdp_apply, *args, coefs)


# ---- test registry --------------------------------------------------------------------------------
# Hand case: w = [[3, 4]] (one channel), gradient [[-4, 3]] is orthogonal to w, so |cos| = 0 < 0.1/sqrt(2):
# projected. Adam's first step direction is g/|g| = [-1, 1]; unit w = [0.6, 0.8]; radial part
# (0.6*-1 + 0.8*1) = 0.2; projected [-1 - 0.12, 1 - 0.16] = [-1.12, 0.84]; w1 = w - 0.1 * that.
register_optimizer(OptimizerSpec(
    name="adamp", cls=AdamP, example=dict(lr=0.1),
    hand_cases=(
        HandCase(dict(lr=0.1), [[3.0, 4.0]], [[-4.0, 3.0]], [[3.112, 3.916]], note="projected (orthogonal grad)"),
        HandCase(dict(lr=0.1), [1.0, -2.0], [0.5, -3.0], [0.9, -1.9], note="1-D: Adam step lr*sign(g)"),
        # decoupled decay with wd_ratio: w * (1 - 0.1 * 0.5 * 0.1) = 0.995 w, then the projected step
        HandCase(dict(lr=0.1, weight_decay=0.5), [[3.0, 4.0]], [[-4.0, 3.0]], [[3.097, 3.896]],
                 note="weight decay scaled by wd_ratio on projected tensors"),
        # not scale invariant: gradient parallel to w (cos = 1) -> plain Adam step, full decay
        HandCase(dict(lr=0.1, weight_decay=0.5), [[3.0, 4.0]], [[3.0, 4.0]], [[2.75, 3.7]], note="no projection"),
    ),
    invalid=(dict(lr=-1e-3), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=-1.0),
             dict(weight_decay=-0.1), dict(delta=-0.1), dict(foreach=True, fused=True)),
    fast_paths=(dict(foreach=True), dict(fused=True)), reference=dict(foreach=False),
))
# SGDP hand case: first momentum buffer = g; same orthogonal gradient -> no radial part -> w - lr g,
# with decay w * (1 - 0.1 * 0.1 * 0.1 / (1 - 0.9)) = 0.99 w.
register_optimizer(OptimizerSpec(
    name="sgdp", cls=SGDP, example=dict(lr=1e-3, momentum=0.9),
    hand_cases=(
        HandCase(dict(lr=0.1, momentum=0.9), [[3.0, 4.0]], [[-4.0, 3.0]], [[3.4, 3.7]]),
        HandCase(dict(lr=0.1, momentum=0.9, weight_decay=0.1), [[3.0, 4.0]], [[-4.0, 3.0]], [[3.37, 3.66]]),
        # second step with the same gradient: buffer 0.9 g + g = 1.9 g -> w1 - 0.19 g
        HandCase(dict(lr=0.1, momentum=0.9), [[3.0, 4.0]], [[-4.0, 3.0]], [[4.16, 3.13]], steps=2),
    ),
    invalid=(dict(lr=-0.1), dict(momentum=1.0), dict(momentum=-0.5), dict(dampening=1.5), dict(weight_decay=-1.0)),
    fast_paths=(dict(foreach=True), dict(fused=True)), reference=dict(foreach=False),
    quadratic_steps=3000,
))


# ---- techniques ---------------------------------------------------------------------------------------
@register
class AdamPTechnique(Technique):
    """Trains with AdamP (the task's lr, betas and weight decay; decay is decoupled, as in AdamW)."""

    name = "adamp"
    family = "optimizers"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = ("tests/techniques/test_adamp.py::test_three_steps_match_the_official_package: three steps "
                         "(channel-view, layer-view, unprojected and 1-D tensors; weight decay; with and without "
                         "Nesterov) equal the parameters the official adamp 0.3.0 package (clovaai/AdamP, "
                         "adamp/adamp.py) produces, on the single, foreach and fused paths")
    modifies = frozenset({"optimizer"})
    summary = "Adam without the radial (norm-increasing) update component on scale-invariant weights"

    def __init__(self, lr: float | None = None, delta: float = 0.1, wd_ratio: float = 0.1,
                 nesterov: bool = False) -> None:
        super().__init__(lr=lr, delta=delta, wd_ratio=wd_ratio, nesterov=nesterov)
        self.lr, self.delta, self.wd_ratio, self.nesterov = lr, delta, wd_ratio, nesterov

    def make_optimizer(self, params, task):
        return AdamP(params, lr=self.lr if self.lr is not None else task.lr, betas=tuple(task.betas),
                     weight_decay=task.weight_decay, delta=self.delta, wd_ratio=self.wd_ratio, nesterov=self.nesterov)


@register
class SGDPTechnique(Technique):
    """Trains with SGDP (the task's lr, momentum, Nesterov flag and weight decay)."""

    name = "sgdp"
    family = "optimizers"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = ("tests/techniques/test_adamp.py::test_three_steps_match_the_official_package: three steps "
                         "(channel-view, layer-view, unprojected and 1-D tensors; weight decay over 1 - momentum; "
                         "the projected momentum buffer; with and without Nesterov) equal the parameters the "
                         "official adamp 0.3.0 package (clovaai/AdamP, adamp/sgdp.py) produces, on every path")
    modifies = frozenset({"optimizer"})
    summary = "SGD+momentum without the radial update component on scale-invariant weights"

    def __init__(self, lr: float | None = None, delta: float = 0.1, wd_ratio: float = 0.1) -> None:
        super().__init__(lr=lr, delta=delta, wd_ratio=wd_ratio)
        self.lr, self.delta, self.wd_ratio = lr, delta, wd_ratio

    def make_optimizer(self, params, task):
        return SGDP(params, lr=self.lr if self.lr is not None else task.lr, momentum=task.momentum,
                    nesterov=task.nesterov and task.momentum > 0, weight_decay=task.weight_decay,
                    delta=self.delta, wd_ratio=self.wd_ratio)


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


def scale_invariant_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weights of Conv/Linear layers whose output goes straight into a normalization layer (so the
    function does not change when the weight is scaled). Found with torch.fx; if the model does not
    trace, a layer counts when the next module in registration order is a normalization layer."""
    modules = dict(model.named_modules())
    found: list[nn.Parameter] = []
    try:
        graph = torch.fx.symbolic_trace(model).graph
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.Conv1d, nn.Conv2d, nn.Linear)):
                continue
            users = list(node.users)
            if users and all(u.op == "call_module" and isinstance(modules.get(u.target), _NORM_TYPES) for u in users):
                found.append(modules[node.target].weight)
    except Exception:
        ordered = [m for m in model.modules() if not list(m.children())]
        for layer, nxt in zip(ordered, ordered[1:]):
            if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(nxt, _NORM_TYPES):
                found.append(layer.weight)
    return found


@register
class ScaleInvariantNormProbe(Technique):
    """Diagnostics (changes nothing): logs, per epoch, the norm of all weights that are scale
    invariant because a normalization layer follows them ("si_weight_norm"), and that norm divided
    by its value at the start of training ("si_weight_norm_growth")."""

    name = "si-norm-probe"
    family = "diagnostics"
    fidelity = "control"  # a measuring instrument, not a paper's method: it changes nothing
    modifies = frozenset()
    summary = "logs the norm of normalization-preceded (scale-invariant) weights per epoch"

    def __init__(self) -> None:
        super().__init__()
        self._weights: list[nn.Parameter] = []
        self._initial = float("nan")

    def _norm(self) -> float:
        with torch.no_grad():
            return float(torch.sqrt(sum((w.detach().float() ** 2).sum() for w in self._weights)))

    def on_train_start(self, model, optimizer, state: TrainState) -> None:
        self._weights = scale_invariant_weights(model)
        if math.isnan(self._initial):  # a resumed run keeps the value from its checkpoint
            self._initial = self._norm() if self._weights else float("nan")

    def on_epoch_end(self, model, state: TrainState) -> None:
        if not self._weights:
            return
        norm = self._norm()
        state.epoch_metrics["si_weight_norm"] = norm
        state.epoch_metrics["si_weight_norm_growth"] = norm / self._initial

    def state_dict(self):
        return {"initial": self._initial}

    def load_state_dict(self, state):
        self._initial = float(state.get("initial", float("nan")))


# ---- claims -------------------------------------------------------------------------------------------
_QUOTE = ("we verify that the widely-adopted combination of the two ingredients lead to the premature decay of "
          "effective step sizes and sub-optimal model performances. We propose a simple and effective remedy, SGDP "
          "and AdamP: get rid of the radial component, or the norm-increasing direction, at each optimizer step.")
_SCALE = ("13 benchmarks, e.g. ImageNet classification, CUB and SOP retrieval, COCO detection, WikiText language "
          "modelling, DCASE audio classification")
_ADAM_NO_WD = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0, "epochs": 8}
_SGD_NO_WD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "epochs": 8}
#: the paper's norm-growth analysis (Sec. 2; project page "Empirical analysis of SGD variants on ImageNet")
_NORM_SETTING = PaperSetting(
    train_size=1_281_167, params=11_700_000,
    text="ImageNet, ResNet-18 trained with SGD, momentum SGD and SGDP, learning rate x0.1 every 30 epochs: weight "
         "norms, effective step sizes and accuracy per epoch (momentum SGD 66.6%, SGDP 69.0%); number of epochs not "
         "stated there")
#: the accuracy tables: ImageNet first, 13 benchmarks in all
_ACCURACY_SETTING = PaperSetting(
    train_size=1_281_167, params=25_600_000,
    text="ImageNet, ResNet-50 (Table 1; also ResNet-18, MobileNetV2, CutMix-ed ResNet), plus COCO detection, CIFAR-10 "
         "adversarial training, audio classification, image retrieval and WikiText-103: 13 benchmarks; epochs not "
         "read here")
#: the regime the projection acts in: the base optimizer grows the norm of scale-invariant weights
_NORM_GROWS = Precondition(
    "si_weight_norm_growth", ">=", 1.02,
    why="the baseline's momentum optimizer grows the norm of the scale-invariant weights (final / initial at least "
        "1.02, the claim's smallest effect): the growth the projection is meant to slow")
# The accuracy claims have no precondition: their arms do not run the norm probe (adding it would change their runs),
# and the paper names no other regime for its accuracy gains.

CLAIMS = [
    Claim(
        id="adamp-slows-norm-growth", technique="adamp", task="digits-cnn", metric="si_weight_norm_growth",
        direction="lower", treatment=arm("adamp", "si-norm-probe", label="AdamP"),
        baseline=arm("si-norm-probe", label="Adam"), overrides=_ADAM_NO_WD, min_effect=0.02, seeds=5,
        suites=("quick", "full"), paper_quote=_QUOTE,
        paper_number="qualitative: norms of scale-invariant weights grow much more slowly with AdamP/SGDP than with "
                     "Adam/SGD (the paper's norm-growth figures)",
        paper_scale=_SCALE, paper_setting=_NORM_SETTING, preconditions=(_NORM_GROWS,),
        notes="Mechanism claim. Both arms log the norm of conv weights that feed a BatchNorm (final / initial). "
              "Weight decay is 0 in both arms so that only the optimizer moves the norm (AdamW with wd 0 is Adam).",
    ),
    Claim(
        id="sgdp-slows-norm-growth", technique="sgdp", task="digits-cnn", metric="si_weight_norm_growth",
        direction="lower", treatment=arm("sgdp", "si-norm-probe", label="SGDP"),
        baseline=arm("si-norm-probe", label="SGD+momentum"), overrides=_SGD_NO_WD, min_effect=0.02, seeds=5,
        paper_quote=_QUOTE,
        paper_number="qualitative: norms of scale-invariant weights grow much more slowly with SGDP than with SGD",
        paper_scale=_SCALE, paper_setting=_NORM_SETTING, preconditions=(_NORM_GROWS,),
        notes="Mechanism claim, as adamp-slows-norm-growth, for SGD with momentum 0.9.",
        suites=("quick", "full"),
    ),
    Claim(
        id="adamp-accuracy-cifar10", technique="adamp", task="cifar10-cnn", metric="test_acc", direction="higher",
        treatment=arm("adamp", label="AdamP"), baseline=arm(label="AdamW"),
        overrides={"optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-2}, seeds=5,
        paper_quote="We verify that our solution brings about uniform gains in those benchmarks.",
        paper_number="uniform gains over the momentum optimizers on all 13 benchmarks (abstract; per-benchmark "
                     "numbers were not compared here)",
        paper_scale=_SCALE, paper_setting=_ACCURACY_SETTING,
        notes="Small BatchNorm CNN on a 10k-image CIFAR-10 subset, 8 epochs: far below the paper's scale; a small "
              "accuracy gain there may well be within seed noise here.",
    ),
    Claim(
        id="sgdp-accuracy-cifar10", technique="sgdp", task="cifar10-cnn", metric="test_acc", direction="higher",
        treatment=arm("sgdp", label="SGDP"), baseline=arm(label="SGD+momentum"), seeds=5,
        paper_quote="We verify that our solution brings about uniform gains in those benchmarks.",
        paper_number="uniform gains over SGD on the paper's benchmarks (abstract)", paper_scale=_SCALE,
        paper_setting=_ACCURACY_SETTING,
        notes="The task's SGD (lr 0.05, momentum 0.9, L2 5e-4) against SGDP with the same settings.",
    ),
]
