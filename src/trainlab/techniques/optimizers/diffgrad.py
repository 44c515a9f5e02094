"""diffGrad: Adam whose first moment is damped where consecutive gradients agree.

Paper: Shiv Ram Dubey, Soumendu Chakraborty, Swalpa Kumar Roy, Snehasis Mukherjee, Satish Kumar
Singh, Bidyut Baran Chaudhuri. "diffGrad: An Optimization Method for Convolutional Neural
Networks". IEEE TNNLS 2020, arXiv:1909.11015.

Claim: scaling Adam's step per parameter by the "diffGrad friction coefficient"
xi = sigmoid(|g_{t-1} - g_t|) (in [0.5, 1)) -- "a larger step size for faster gradient changing
parameters and a lower step size for lower gradient changing parameters" -- makes CNN training
better than Adam: "The experiments show that diffGrad outperforms the other optimizers." The paper
measured it with ResNet CNNs on CIFAR-10 and CIFAR-100 (and on three synthetic 1-D functions).
Here: small CNNs on MNIST-1D / a CIFAR-10 subset for a few epochs. Because xi = sigmoid(|g_prev - g|)
is 0.5 + about |g_prev - g| / 4 and consecutive gradients of a network's coordinates differ little,
xi stays just above 0.5 (measured mean 0.5015 on mnist1d-cnn): at the same lr, diffGrad takes about
half of Adam's step. The mechanism claim therefore compares diffGrad with Adam at the same effective
step (Adam's lr times diffGrad's measured step ratio, see ``probe_every``); the comparisons at the same
nominal lr are kept, labelled as what they test (halving Adam's step).

Update (Adam with bias correction, L2 weight decay added to the gradient as in the authors' code):
    g <- grad + wd * w;  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
    xi <- sigmoid(|g_prev - g|);  g_prev <- g   (g_prev starts at 0)
    w <- w - lr * sqrt(1 - b2^t) / (1 - b1^t) * xi * m / (sqrt(v) + eps)
Note on the paper's numbers: the authors' repository says its first implementation, which the
arXiv and journal results used, overwrote the stored previous gradient with the current one, so
|g_prev - g| was 0 and xi was 0.5 from the second step on (Adam at half the learning rate); their
fixed version (diffGrad_v2) keeps a copy. This implementation follows the fixed version, i.e. the
algorithm as the paper states it.

Fast paths (see ``fastpath``): the update is purely elementwise, so ``fused`` runs it as one
compiled loop over the group's flat buffers, in which this step's gradient buffer becomes the stored
previous gradient (double buffering); ``foreach`` uses ``torch._foreach_*``. Both match the
single-tensor reference to float32 rounding.

Plain PyTorch::

    import torch
    from trainlab.techniques.optimizers.diffgrad import DiffGrad

    model = torch.nn.Linear(8, 2)
    opt = DiffGrad(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.optimizers import HandCase, OptimizerSpec, register_optimizer
from trainlab.techniques.optimizers.fastpath import MultiPathOptimizer, check_betas, check_range, run_kernel, scalars
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique

PAPER = Paper(
    title="diffGrad: An Optimization Method for Convolutional Neural Networks",
    authors="Dubey, Chakraborty, Roy, Mukherjee, Singh, Chaudhuri", year=2019, arxiv="1909.11015",
)


def _diffgrad_kernel(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                     prevs: list[Tensor], h: Tensor, decay: bool) -> None:
    """The fused update. The gradient buffers become the previous gradient after the step (double
    buffering, see fastpath.FlatGroup.swap), so the decayed gradient is written back into them only
    with weight decay (`decay`); `prevs` are only read."""
    b1, one_minus_b1, b2, one_minus_b2, eps, step_size, wd = h.unbind()
    for p, grad, m, v, prev in zip(params, grads, exp_avgs, exp_avg_sqs, prevs):
        g = grad + wd * p
        m.mul_(b1).add_(g * one_minus_b1)
        v.mul_(b2).add_(g * g * one_minus_b2)
        friction = torch.sigmoid((prev - g).abs())
        if decay:
            grad.copy_(g)
        p.sub_(step_size * ((m * friction) / (v.sqrt() + eps)))


class DiffGrad(MultiPathOptimizer):
    """diffGrad (the fixed algorithm; see the module docstring).

    Args: lr, betas, eps, weight_decay (L2, added to the gradient), foreach, fused.
    """

    state_keys = ("exp_avg", "exp_avg_sq", "previous_grad")
    flat_grad_state = "previous_grad"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, foreach: bool | None = None, fused: bool | None = None) -> None:
        check_range("learning rate", lr, 0.0)
        check_betas(betas)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    def _single_update(self, group, p, grad, state, step):
        beta1, beta2 = group["betas"]
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        exp_avg, exp_avg_sq, prev = state["exp_avg"], state["exp_avg_sq"], state["previous_grad"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        friction = torch.sigmoid((prev - grad).abs())
        prev.copy_(grad)
        step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        p.addcdiv_(exp_avg * friction, denom, value=-step_size)

    def _foreach_update(self, group, params, grads, states, steps):
        beta1, beta2 = group["betas"]
        if group["weight_decay"] != 0:
            grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
        exp_avgs = [st["exp_avg"] for st in states]
        exp_avg_sqs = [st["exp_avg_sq"] for st in states]
        prevs = [st["previous_grad"] for st in states]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        friction = torch._foreach_sub(prevs, grads)
        torch._foreach_abs_(friction)
        torch._foreach_sigmoid_(friction)
        torch._foreach_copy_(prevs, grads)
        torch._foreach_mul_(friction, exp_avgs)
        step_sizes = [-group["lr"] * math.sqrt(1 - beta2 ** s) / (1 - beta1 ** s) for s in steps]
        torch._foreach_div_(friction, denoms)
        torch._foreach_mul_(friction, step_sizes)
        torch._foreach_add_(params, friction)

    def _flat_update(self, group, flat, step):
        beta1, beta2 = group["betas"]
        step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        h = scalars([beta1, 1 - beta1, beta2, 1 - beta2, group["eps"], step_size, group["weight_decay"]],
                    flat.params[0])
        run_kernel(_diffgrad_kernel, flat.tensors("param"), flat.tensors("grad"), flat.tensors("exp_avg"),
                   flat.tensors("exp_avg_sq"), flat.tensors("previous_grad"), h, group["weight_decay"] != 0)


# Hand cases. Step 1: m = (1-b1) g, v = (1-b2) g^2, previous gradient 0 so xi = sigmoid(|g|);
# w1 = w - lr sqrt(1-b2)/(1-b1) * xi (1-b1) g / (sqrt(1-b2)|g| + eps) = w - lr * sign(g) * sigmoid(|g|).
# g = [1, -2], lr = 0.1: w - 0.1 * [0.7310586, -0.8807971].
# Two steps with the same gradient: xi = sigmoid(0) = 0.5 at step 2, m = (1-b1)(1+b1) g = 0.19 g,
# v = (1-b2)(1+b2) g^2, bias corrections 1-b1^2 = 0.19 and sqrt(1-b2^2): the Adam part is sign(g)
# again, so w2 = w1 - 0.1 * 0.5 * sign(g).
_SIG1, _SIG2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))
register_optimizer(OptimizerSpec(
    name="diffgrad", cls=DiffGrad, example=dict(lr=0.2),
    hand_cases=(
        HandCase(dict(lr=0.1), [0.5, 0.5], [1.0, -2.0], [0.5 - 0.1 * _SIG1, 0.5 + 0.1 * _SIG2], note="first step"),
        HandCase(dict(lr=0.1), [0.5, 0.5], [1.0, -2.0], [0.5 - 0.1 * _SIG1 - 0.05, 0.5 + 0.1 * _SIG2 + 0.05],
                 steps=2, note="second step: friction 0.5"),
        # L2 decay: g = grad + wd * w = [1 + 0.5, -2 + 0.5] = [1.5, -1.5] with w = [0.5, 0.5], wd = 1
        HandCase(dict(lr=0.1, weight_decay=1.0), [0.5, 0.5], [1.0, -2.0],
                 [0.5 - 0.1 / (1 + math.exp(-1.5)), 0.5 + 0.1 / (1 + math.exp(-1.5))], note="L2 weight decay"),
    ),
    invalid=(dict(lr=-1e-3), dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.5)), dict(eps=-1e-8),
             dict(weight_decay=-1.0), dict(foreach=True, fused=True)),
    fast_paths=(dict(foreach=True), dict(fused=True)), reference=dict(foreach=False),
))


@register
class DiffGradTechnique(Technique):
    """Trains with diffGrad (the task's lr, betas and weight decay as L2, like torch's Adam).

    probe_every > 0 measures the friction coefficient every that many steps and logs, per epoch:
    "diffgrad_friction", the mean of xi over all coordinates and probed steps, and
    "diffgrad_step_ratio", sum |xi * u| / sum |u| with u = m / (sqrt(v) + eps) after the step: the
    factor by which xi shrinks the total (L1) Adam step. The claims use it to set the learning rate of
    the "Adam at the same effective step size" control. It costs one extra elementwise pass over the
    parameters on probed steps and does not change the update.
    """

    name = "diffgrad"
    family = "optimizers"
    paper = PAPER
    modifies = frozenset({"optimizer"})
    summary = "Adam with each step scaled by sigmoid(|g_prev - g|) (smaller where the gradient is stable)"
    fidelity = "exact"
    fidelity_evidence = (
        "tests/techniques/test_optimizers.py::test_diffgrad_matches_the_official_v2_update: the update of "
        "shivram1987/diffGrad diffGrad_v2.py (L2 decay added to the gradient, dfc = 1 / (1 + exp(-|prev - g|)) "
        "with prev including the decay, bias-corrected Adam step on dfc * m), transcribed as a formula, compared "
        "over several steps with all three paths; plus the hand cases")

    def __init__(self, lr: float | None = None, probe_every: int = 0) -> None:
        if not isinstance(probe_every, int) or isinstance(probe_every, bool) or probe_every < 0:
            raise ConfigError(f"diffgrad: probe_every must be an integer >= 0, got {probe_every!r}")
        super().__init__(lr=lr, probe_every=probe_every)
        self.lr = lr
        self.probe_every = probe_every
        self._optimizer: DiffGrad | None = None
        self._xi: dict[Tensor, Tensor] = {}
        self._frictions: list[float] = []
        self._ratios: list[float] = []

    def make_optimizer(self, params, task):
        self._optimizer = DiffGrad(params, lr=self.lr if self.lr is not None else task.lr, betas=tuple(task.betas),
                                   weight_decay=task.weight_decay)
        return self._optimizer

    def after_backward(self, model, state) -> None:
        opt = self._optimizer
        if not self.probe_every or opt is None or state.step % self.probe_every:
            return
        self._xi = {}
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad if group["weight_decay"] == 0 else p.grad + group["weight_decay"] * p
                    prev = opt.state[p].get("previous_grad") if p in opt.state else None
                    self._xi[p] = torch.sigmoid((g if prev is None else prev - g).abs())

    def after_step(self, model, optimizer, state) -> None:
        if not self._xi:
            return
        xi_sum = count = weighted = total = 0.0
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    xi = self._xi.get(p)
                    if xi is None:
                        continue
                    st = optimizer.state[p]
                    u = (st["exp_avg"] / (st["exp_avg_sq"].sqrt() + group["eps"])).abs()
                    xi_sum += float(xi.sum())
                    count += xi.numel()
                    weighted += float((xi * u).sum())
                    total += float(u.sum())
        self._xi = {}
        if count:
            self._frictions.append(xi_sum / count)
        if total > 0:
            self._ratios.append(weighted / total)

    def on_epoch_end(self, model, state) -> None:
        if self._frictions:
            state.epoch_metrics["diffgrad_friction"] = sum(self._frictions) / len(self._frictions)
        if self._ratios:
            state.epoch_metrics["diffgrad_step_ratio"] = sum(self._ratios) / len(self._ratios)
        self._frictions, self._ratios = [], []


_QUOTE = ("The experiments show that diffGrad outperforms the other optimizers. Also, we showed that diffGrad "
          "performs uniformly well on network using different activation functions.")
_SCALE = "ResNet CNNs on CIFAR-10 and CIFAR-100 (plus three synthetic 1-D non-convex functions)"
_SETTING = PaperSetting(
    train_size=50_000,
    text="CIFAR-10 and CIFAR-100 (50k training images), ResNet CNNs trained with the kuangliu/pytorch-cifar "
         "framework (per the authors' README); epochs and model sizes were not read here")
# diffGrad's friction xi = sigmoid(|g_prev - g|) is 0.5 plus about |g_prev - g| / 4, and gradient changes of a
# trained network's coordinates are small, so xi stays just above 0.5: diffGrad is, to first order, Adam at
# half the learning rate. The control isolates the per-parameter modulation from that halving: Adam with its
# learning rate multiplied by diffGrad's measured mean step ratio on the same task (the probe's
# "diffgrad_step_ratio": sum |xi * u| / sum |u|, u = m / (sqrt(v) + eps); the plain mean of xi agreed to
# 4 decimals). Measured with `DiffGradTechnique(probe_every=10)`, seed 0, the claim's full budget:
#   mnist1d-cnn (lr 3e-3):   mean friction 0.50150, step ratio 0.50154 (per epoch 0.5012 .. 0.5017)
#   cifar10-cnn (lr 2e-3, weight decay 5e-4): mean friction 0.50211, step ratio 0.50217 (per epoch 0.5013 .. 0.5027)
FRICTION_MNIST1D = 0.5015
FRICTION_CIFAR10 = 0.5022
_LR_MNIST1D = round(3e-3 * FRICTION_MNIST1D, 8)
_LR_CIFAR10 = round(2e-3 * FRICTION_CIFAR10, 8)
_CONTROL_NOTE = ("The control is Adam at lr x {f} = {lr:.4g}: diffGrad's mean step ratio (xi-weighted Adam step / "
                 "Adam step) measured on this task, seed 0, full budget. diffGrad's friction is 0.5 + O(|g_prev - "
                 "g|), so diffGrad at lr is Adam at about lr/2; this claim asks whether the per-parameter friction "
                 "helps beyond that halving.")
CLAIMS = [
    Claim(
        id="diffgrad-vs-adam-same-step-mnist1d", technique="diffgrad", task="mnist1d-cnn", metric="test_acc",
        direction="higher", treatment=arm("diffgrad", label="diffGrad (lr 3e-3)"),
        baseline=arm(label=f"Adam at the same effective step (lr {_LR_MNIST1D:.4g})", lr=_LR_MNIST1D),
        seeds=5, paper_quote=_QUOTE,
        paper_number="higher CIFAR-10/100 test accuracy than Adam with ResNets (the tables' values were not "
                     "accessible here, so no number is compared)",
        paper_scale=_SCALE, paper_setting=_SETTING,
        notes=_CONTROL_NOTE.format(f=FRICTION_MNIST1D, lr=_LR_MNIST1D) + " The diffGrad arm is the "
              "same run as in diffgrad-vs-adam-nominal-lr-mnist1d.",
        suites=("quick", "full"),
    ),
    Claim(
        id="diffgrad-vs-adam-nominal-lr-mnist1d", technique="diffgrad", task="mnist1d-cnn", metric="test_acc",
        direction="higher", treatment=arm("diffgrad", label="diffGrad (lr 3e-3)"),
        baseline=arm(label="Adam at the same nominal lr 3e-3 (about twice diffGrad's step)"), seeds=5,
        paper_quote=_QUOTE,
        paper_number="higher CIFAR-10/100 test accuracy than Adam with ResNets (table values not compared here)",
        paper_scale=_SCALE, paper_setting=_SETTING,
        notes="Not a test of diffGrad's mechanism: diffGrad's friction averages 0.5015 here, so this compares Adam "
              "at about lr/2 (plus the per-parameter modulation) with Adam at lr; it answers 'does halving Adam's "
              "step help on this task'. It is the comparison the paper's experiments made: their code's friction "
              "was constantly 0.5 (see the module docstring). The mechanism claim is "
              "diffgrad-vs-adam-same-step-mnist1d.",
    ),
    Claim(
        id="diffgrad-vs-adam-same-step-cifar10", technique="diffgrad", task="cifar10-cnn", metric="test_acc",
        direction="higher", treatment=arm("diffgrad", label="diffGrad (lr 2e-3)"),
        baseline=arm(label=f"Adam at the same effective step (lr {_LR_CIFAR10:.4g})", lr=_LR_CIFAR10),
        overrides={"optimizer": "adam", "lr": 2e-3, "weight_decay": 5e-4}, seeds=5,
        paper_quote=_QUOTE,
        paper_number="higher CIFAR-10 test accuracy than Adam with ResNets (table values not compared here)",
        paper_scale=_SCALE, paper_setting=_SETTING,
        notes=_CONTROL_NOTE.format(f=FRICTION_CIFAR10, lr=_LR_CIFAR10) + " A small BatchNorm CNN on a 10k-image "
              "CIFAR-10 subset for 8 epochs, not the paper's ResNets; the diffGrad arm is the same run as in "
              "diffgrad-vs-adam-nominal-lr-cifar10.",
    ),
    Claim(
        id="diffgrad-vs-adam-nominal-lr-cifar10", technique="diffgrad", task="cifar10-cnn", metric="test_acc",
        direction="higher", treatment=arm("diffgrad", label="diffGrad (lr 2e-3)"),
        baseline=arm(label="Adam at the same nominal lr 2e-3 (about twice diffGrad's step)"),
        overrides={"optimizer": "adam", "lr": 2e-3, "weight_decay": 5e-4}, seeds=5,
        paper_quote=_QUOTE,
        paper_number="higher CIFAR-10 test accuracy than Adam with ResNets (table values not compared here)",
        paper_scale=_SCALE, paper_setting=_SETTING,
        notes="A small BatchNorm CNN on a 10k-image CIFAR-10 subset for 8 epochs, not the paper's ResNets. Not a "
              "test of diffGrad's mechanism: with friction about 0.5 this compares Adam at about lr/2 with Adam "
              "at lr (what the paper's experiments compared, see the module docstring).",
    ),
]
