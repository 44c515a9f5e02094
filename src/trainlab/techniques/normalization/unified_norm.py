"""Unified Normalization (UN) for transformers, foldable into a linear layer at inference.

Paper: Qiming Yang, Kai Zhang, Chaoxiang Lan, Zhi Yang, Zheyang Li, Wenming Tan, Jun Xiao,
Shiliang Pu, "Unified Normalization for Accelerating and Stabilizing Transformers", ACM MM 2022,
arXiv:2208.01313.

Claim (abstract): UN "can speed up the inference by being fused with other linear operations and
achieve comparable performance on par with LN", with "about 31% inference speedup and nearly 18%
memory reduction" on GPU. Paper scale: Transformers on IWSLT14 De-En translation (100k updates,
5 seeds), language modeling, ViT/T2T-ViT on ImageNet, detection.
Where this falls short: here UN replaces LayerNorm in a 2-layer transformer classifier trained for
a few epochs on CPU, so its warm-up and windows are scaled down (see the technique below); the
inference speed-up (a GPU kernel-fusion effect) is not measured, only accuracy parity and the
exactness of the folding.

What UN computes (paper Sec. 3-4; details from the official ``UN1d``/``UN2dFunction``), per channel
c, over all tokens of the batch (channel-last input ``[..., C]``), with no mean centring:

* Statistic: x2_t = mean over tokens of x^2 (the quadratic mean, as in PowerNorm).
* Fluctuation smoothing, forward: the last ``window`` values of x2 are kept; after warm-up the
  forward divides by their *geometric* mean, var_t = exp(mean_k log x2_{t-k}); before that (and
  for the first ``window`` steps) by x2_t itself. z = x / sqrt(var_t + eps), y = gamma z + beta, and
  running_var <- m running_var + (1 - m) var_t (m = 0.9).
* Fluctuation smoothing, backward (approximate, like PowerNorm's): with g = gamma * r * dL/dy and
  gz_t = mean(g z), the window's arithmetic mean of gz (or gz_t before warm-up) feeds
  ema_gz <- m ema_gz + (1 - m) mean_gz, and dL/dx = (g - ema_gz * z) / sqrt(var_t + eps).
  r = sqrt(var_t + eps) / sqrt(running_var + eps), clipped to [1/5, 5], is the "gradient
  compensation" factor (1 during the first max(compensation_start, warmup) steps); dL/dgamma uses
  r z in place of z, as in the official code.
* Adaptive outlier filtration (``outlier_filtration=True``; the official code recommends it for
  vision and off for NLP): after warm-up, if for any channel the window's arithmetic mean of x2
  exceeds its geometric mean by more than window * Var(sqrt(x2) over the previous window, all
  channels), the step is treated as an outlier: its slot in the window is replaced by running_var,
  the forward uses x2_t alone, the backward uses gz_t alone (and stores ema_gz in the window), r = 1,
  and ``skip_counter`` counts it.
* Inference: y = gamma * x / sqrt(running_var + eps) + beta, a per-channel affine map, which
  ``fold_unified_norm`` merges into the Linear layer before (or after) it.

With window 1 every step is "skipped" by construction (as in the official code), so the layer is
batch quadratic-mean normalization with its exact gradient; ``test_unified_norm.py`` gradchecks that.

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.unified_norm import UnifiedNorm, fold_unified_norm

    linear, un = torch.nn.Linear(32, 64), UnifiedNorm(64, window_size=4, warmup_iters=100)
    for _ in range(10):                                   # train as usual; UN keeps its statistics
        un(linear(torch.randn(8, 16, 32))).sum().backward()
    un.eval()
    fused = fold_unified_norm(un, linear)                 # one Linear computing un(linear(x))
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(fused(x), un(linear(x)))
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.normalization.convert import (
    ChannelFirst,
    convert_norms,
    register_builder,
)
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper("Unified Normalization for Accelerating and Stabilizing Transformers",
              "Yang, Zhang, Lan, Yang, Li, Tan, Xiao, Pu", 2022, "2208.01313")


class UNFunction(torch.autograd.Function):
    """y = weight * x / sqrt(var + eps) + bias on rows x [M, C], with UN's smoothed backward.

    `state` carries the per-step values decided in the forward (r, skip, whether to average the
    window) and the module whose ema_gz / buffer_gz the backward updates.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, var: torch.Tensor,
                r: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        inv = torch.rsqrt(var + state["eps"])
        z = x * inv
        ctx.save_for_backward(z, inv, weight, r)
        ctx.state = state
        return z * weight + bias

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, inv, weight, r = ctx.saved_tensors
        st = ctx.state
        un: UnifiedNorm = st["module"]
        g = grad_y * weight * r
        with torch.no_grad():
            gz = (g * z).mean(dim=0)
            slot = st["step"] % un.bp_window
            un.buffer_gz[slot].copy_(un.ema_gz if st["skip"] else gz)
            mean_gz = gz if st["use_current_gz"] else un.buffer_gz.mean(dim=0)
            un.ema_gz.mul_(un.momentum).add_((1 - un.momentum) * mean_gz)
            center = mean_gz if st["skip"] else un.ema_gz.clone()
        grad_x = (g - center * z) * inv
        return grad_x, (grad_y * r * z).sum(dim=0), grad_y.sum(dim=0), None, None, None


class UnifiedNorm(nn.Module):
    """Unified Normalization for channel-last input [..., C] (tokens); see the module docstring.

    window_size: int, or (forward window, backward window). warmup_iters: steps before the windows
    are used. compensation_start: steps before the gradient compensation r is used (the official
    code uses max(1000, warmup_iters)).
    """

    is_normalization = True

    def __init__(self, num_channels: int, window_size: int | tuple[int, int] = 4, warmup_iters: int = 4000,
                 outlier_filtration: bool = False, eps: float = 1e-5, momentum: float = 0.9,
                 compensation_start: int = 1000) -> None:
        super().__init__()
        fp, bp = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        for label, v in (("window_size", fp), ("window_size", bp), ("warmup_iters", warmup_iters + 1),
                         ("compensation_start", compensation_start + 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"UnifiedNorm: {label} must be a positive integer (warm-ups may be 0), got {v!r}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"UnifiedNorm: momentum must be in [0, 1), got {momentum}")
        self.num_channels, self.fp_window, self.bp_window = num_channels, fp, bp
        self.warmup_iters, self.outlier_filtration = warmup_iters, outlier_filtration
        self.eps, self.momentum, self.compensation_start = eps, momentum, compensation_start
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("ema_gz", torch.zeros(num_channels))
        self.register_buffer("iters", torch.tensor(0, dtype=torch.long))
        self.register_buffer("buffer_x2", torch.zeros(fp, num_channels))
        self.register_buffer("buffer_gz", torch.zeros(bp, num_channels))
        self.register_buffer("skip_counter", torch.tensor(0, dtype=torch.long))

    def scale(self) -> torch.Tensor:
        """The inference-time per-channel multiplier gamma / sqrt(running_var + eps)."""
        return self.weight * torch.rsqrt(self.running_var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.num_channels:
            raise ConfigError(f"UnifiedNorm({self.num_channels}): expected channel-last input "
                              f"[..., {self.num_channels}], got {list(x.shape)}")
        rows = x.reshape(-1, self.num_channels)
        if not self.training:
            return (rows * self.scale() + self.bias).reshape(x.shape)
        self.iters.add_(1)
        t = int(self.iters)
        with torch.no_grad():
            x2 = rows.detach().pow(2).mean(dim=0)
            var, r, skip = self._forward_statistics(t, x2)
        state = {"eps": self.eps, "module": self, "step": t, "skip": skip,
                 "use_current_gz": t <= self.bp_window or t < self.warmup_iters or skip}
        out = UNFunction.apply(rows, self.weight, self.bias, var, r, state)
        return out.reshape(x.shape)

    def _forward_statistics(self, t: int, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        skip = self.fp_window <= 1
        recorded = torch.var(torch.sqrt(self.buffer_x2)) if self.fp_window > 1 else x2.new_zeros(())
        slot = t % self.fp_window
        self.buffer_x2[slot].copy_(x2)
        geometric = torch.exp(torch.log(self.buffer_x2).mean(dim=0))
        if self.outlier_filtration and t >= self.warmup_iters and not skip:
            arithmetic = self.buffer_x2.mean(dim=0)
            if bool(((arithmetic - geometric) > recorded * self.fp_window).any()):
                self.buffer_x2[slot].copy_(self.running_var)
                skip = True
                self.skip_counter.add_(1)
        if t <= self.fp_window or t < self.warmup_iters or skip:
            var = x2.clone()
        else:
            var = geometric
        if t <= max(self.compensation_start, self.warmup_iters) or skip:
            r = torch.ones_like(var)
        else:
            r = (torch.sqrt(var + self.eps) / torch.sqrt(self.running_var + self.eps)).clamp(0.2, 5.0)
        self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var)
        return var, r, skip

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, window=({self.fp_window}, {self.bp_window}), warmup_iters={self.warmup_iters}, "
                f"outlier_filtration={self.outlier_filtration}, eps={self.eps}, momentum={self.momentum}")


def fold_unified_norm(norm: UnifiedNorm, linear: nn.Linear, position: str = "preceding") -> nn.Linear:
    """A new Linear equal to the eval-mode composition of `norm` and `linear`.

    position="preceding": `linear` comes before the norm, the result computes norm(linear(x)).
    position="following": `linear` comes after the norm, the result computes linear(norm(x)).
    Uses the norm's running statistics (its eval-mode function); the inputs are left unchanged.
    """
    if not isinstance(norm, UnifiedNorm) or not isinstance(linear, nn.Linear):
        raise ConfigError("fold_unified_norm: expected a UnifiedNorm and an nn.Linear")
    with torch.no_grad():
        s, beta = norm.scale().detach(), norm.bias.detach()
        w = linear.weight.detach()
        b = linear.bias.detach() if linear.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        if position == "preceding":
            if w.shape[0] != norm.num_channels:
                raise ConfigError(f"fold_unified_norm: the linear layer gives {w.shape[0]} features, the norm has "
                                  f"{norm.num_channels} channels")
            new_w, new_b = s[:, None] * w, s * b + beta
        elif position == "following":
            if w.shape[1] != norm.num_channels:
                raise ConfigError(f"fold_unified_norm: the linear layer takes {w.shape[1]} features, the norm has "
                                  f"{norm.num_channels} channels")
            new_w, new_b = w * s[None, :], w @ beta + b
        else:
            raise ConfigError(f"fold_unified_norm: position must be 'preceding' or 'following', got {position!r}")
        fused = nn.Linear(new_w.shape[1], new_w.shape[0], bias=True).to(device=w.device, dtype=w.dtype)
        fused.weight.copy_(new_w)
        fused.bias.copy_(new_b)
    return fused


def fold_unified_norms(model: nn.Module) -> list[str]:
    """In every nn.Sequential of `model`, fold each Linear -> UnifiedNorm pair into one Linear (in place).

    The norm's slot becomes nn.Identity. Returns the paths of the folded norms. Fold only a model
    you will use in eval mode: the folded layer no longer updates statistics.
    """
    folded = []
    for path, parent in list(model.named_modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            lin, un = parent._modules[a], parent._modules[b]
            if isinstance(lin, nn.Linear) and isinstance(un, UnifiedNorm):
                parent._modules[a] = fold_unified_norm(un, lin, "preceding")
                parent._modules[b] = nn.Identity()
                folded.append(f"{path}.{b}" if path else b)
    return folded


def build_unified_norm(num_channels: int, dims: int, **settings: Any) -> nn.Module:
    layer = UnifiedNorm(num_channels, **settings)
    return layer if dims == 0 else ChannelFirst(layer)



register_builder("unified", build_unified_norm)


@register
class UnifiedNormTechnique(Technique):
    """Replace the model's norm layers (LayerNorm in transformers) by Unified Normalization.

    warmup / compensation: the official IWSLT14 run uses a 4000-step warm-up and compensation from
    step 1000 in 100k updates; with "auto" this keeps those fractions (4% and 1% of the run's steps),
    with a warm-up of at least window_size + 1 steps.
    """

    name = "unified-norm"
    family = "normalization"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = ("tests/techniques/test_unified_norm.py::test_steps_match_a_transcription_of_the_authors_code: "
                         "14 training steps (batch statistics, window geometric mean, gradient compensation, "
                         "outlier filtration on and off) give the outputs, input and affine gradients, running_var "
                         "and ema_gz of a transcription of the authors' UN1d / UN2dFunction "
                         "(hikvision-research/Unified-Normalization); no padding mask. The technique's default "
                         "warm-up ('auto') keeps the official run's fractions (4% / 1% of the steps) instead of "
                         "its 4000 / 1000 steps")
    modifies = frozenset({"norm_layers"})
    summary = "LN replacement with offline statistics (foldable at inference), smoothed fluctuations"

    def __init__(self, window_size: int = 4, warmup: str | int = "auto", outlier_filtration: bool = False,
                 momentum: float = 0.9) -> None:
        super().__init__(window_size=window_size, warmup=warmup, outlier_filtration=outlier_filtration,
                         momentum=momentum)
        if warmup != "auto" and (not isinstance(warmup, int) or warmup < 0):
            raise ConfigError(f"unified-norm: warmup must be 'auto' or a step count, got {warmup!r}")
        self.window_size, self.warmup, self.outlier_filtration, self.momentum = window_size, warmup, outlier_filtration, momentum

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        report = convert_norms(model, "unified", window_size=self.window_size,
                               outlier_filtration=self.outlier_filtration, momentum=self.momentum)
        if not report.converted:
            raise ConfigError("unified-norm: the model has no BatchNorm/GroupNorm/LayerNorm layer to convert")
        return model

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        if self.warmup == "auto":
            # at least one full window first: filtration on a half-empty window would flag every step
            warmup = max(math.ceil(0.04 * state.total_steps), self.window_size + 1)
            compensation = max(math.ceil(0.01 * state.total_steps), warmup)
        else:
            warmup, compensation = self.warmup, max(1000, self.warmup)
        for m in model.modules():
            if isinstance(m, UnifiedNorm):
                m.warmup_iters, m.compensation_start = warmup, compensation


_QUOTE = ("UN can \"achieve comparable performance on par with LN\" and \"be an efficient drop-in alternative to LN\" "
          "(abstract)")

#: the majority-token task made harder, so that no norm reaches 100% (the task's default saturates)
SEQ_OVERRIDES = {"epochs": 10, "batch_size": 32, "data_kwargs": {"n_train": 1000, "vocab": 16, "seq_len": 32},
                 "model_kwargs": {"vocab_size": 16}}
_SETTING = PaperSetting(
    train_size=160_000,
    text="IWSLT14 De-En (about 160k sentence pairs), Transformer with UN in place of LN, 100k updates, 5 seeds; also "
         "language modelling, T2T-ViT / ViT on ImageNet and detection; epochs and parameter count not stated")
#: a parity claim needs a reference that learns: "on par with LN" is empty when LN learned nothing
_LN_LEARNS = Precondition(
    "test_acc", ">=", 0.1, relative_to="chance",
    why="the LayerNorm reference learns the task (final test accuracy at least 10 points above chance), as the "
        "paper's trained LN transformers do; otherwise non-inferiority to it is met trivially")

CLAIMS = [
    Claim(
        id="unified-norm-parity-seq-transformer", technique="unified-norm", task="seq-transformer",
        metric="test_acc", direction="higher", margin=0.01, overrides=SEQ_OVERRIDES,
        treatment=arm(("unified-norm", {}), label="Unified Normalization"),
        baseline=arm(label="LayerNorm"),
        paper_quote=_QUOTE,
        paper_number="comparable to LN on IWSLT14, language modeling and ImageNet ViTs; ~31% faster inference on GPU",
        paper_scale="Transformers on IWSLT14 De-En (100k updates, 5 seeds), LM, T2T-ViT/ViT on ImageNet; GPU timing",
        paper_setting=_SETTING, preconditions=(_LN_LEARNS,),
        seeds=5, suites=("full",),
        notes="Majority-token task made harder (1000 training sequences of 32 tokens over 16 symbols, batch 32, "
              "10 epochs; the default saturates at 100%). A parity claim checked as non-inferiority: 'UN is "
              "not worse than LN by more than 1 accuracy point' (margin 0.01).",
    ),
]
