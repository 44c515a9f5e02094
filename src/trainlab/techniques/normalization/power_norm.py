"""Power Normalization (PN) for transformers: running quadratic mean, approximate backward.

Paper: Sheng Shen, Zhewei Yao, Amir Gholami, Michael W. Mahoney, Kurt Keutzer, "PowerNorm:
Rethinking Batch Normalization in Transformers", ICML 2020, arXiv:2003.07845.

Claim (abstract): the batch statistics of NLP data "exhibit large fluctuations throughout
training", which makes naive BatchNorm unstable in transformers; PN fixes this "by (i) relaxing
zero-mean normalization in BN, (ii) incorporating a running quadratic mean instead of per batch
statistics to stabilize fluctuations, and (iii) using an approximate backpropagation for
incorporating the running statistics in the forward pass", and "significantly outperforms both LN
and BN", e.g. "PN outperforms LN by 0.4/0.6 BLEU on IWSLT14/WMT14 and 5.6/3.0 PPL on
PTB/WikiText-103". Paper scale: Transformer-base/big on IWSLT14 and WMT14 translation and
Transformer-XL language modeling on PTB and WikiText-103, tens of thousands of updates.
Where this falls short: here it runs in a 2-layer, 64-wide transformer classifier on a synthetic
sequence task for a few epochs; no padding masks (the official code excludes padded tokens from the
statistics).

What one training step computes (paper, Algorithm 2, "Power Normalization (Every Iteration)"), per channel c, over all B tokens x_i of the
batch (every leading index of a ``[..., C]`` input is a token):

    forward:   psi2_B = mean_i x_i^2                       batch quadratic mean (no centring)
               z = x / sqrt(psi2_{t-1} + eps)               normalize with the RUNNING quadratic mean
               y = gamma * z + beta
               psi2_t = alpha_f psi2_{t-1} + (1 - alpha_f) psi2_B
    backward:  g = gamma * dL/dy
               dL/dx_tilde = g - nu_{t-1} * z
               nu_t = nu_{t-1} (1 - (1 - alpha_b) Gamma_t) + (1 - alpha_b) Lambda_t,
                      Gamma_t = mean_i z_i^2,  Lambda_t = mean_i g_i z_i
               dL/dx = dL/dx_tilde / sqrt(psi2_{t-1} + eps)
    inference: y = gamma * x / sqrt(psi2_T + eps) + beta

nu is the running estimate of mean(g z), the term through which the exact gradient of a
batch-statistics normalization couples the samples: for z = x / sqrt(mean x^2 + eps) with the
*batch's own* quadratic mean, dL/dx = (g - z mean(g z)) / sqrt(mean x^2 + eps) exactly. So when the
running statistics equal the current batch's (psi2_{t-1} = psi2_B and nu_{t-1} = Lambda_t), the
approximate backward is the exact gradient; ``test_power_norm.py`` checks both this and the
approximate formula itself.

Details from the official code (fairseq ``MaskPowerNorm``), kept here:

* ``group_num``: before PN, each token is divided by its root mean square over groups of
  C/group_num channels (the official ``GroupScaling1D``, eps 1e-5; the paper's scripts use the
  number of attention heads); gradients flow through this part normally. ``group_num=0`` turns it
  off (Algorithm 2 alone). Default 1.
* ``warmup_iters``: for the first iterations the forward divides by the batch's own quadratic mean,
  and the running mean is the plain average of the batch means so far (the official scripts tie this
  to the learning-rate warm-up). The backward is the approximate one throughout, as in the code.
  Default 0 (Algorithm 2 from the first step); the pn technique sets it to the task's warm-up steps.
* The official code keeps ema_gz = nu / (1 - alpha_b) and divides the backward by the *batch*
  quadratic mean; this module follows Algorithm 2 (the forward's divisor, psi_{t-1}), which is the
  same during warm-up. alpha_f = alpha_b = 0.9, eps = 1e-5 as in the code.

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.power_norm import PowerNorm

    pn = PowerNorm(64)                              # replaces nn.LayerNorm(64) on tokens [N, T, 64]
    x = torch.randn(8, 16, 64, requires_grad=True)
    pn(x).sum().backward()                          # approximate backward; updates pn.nu
    pn.eval(); y = pn(x)                            # uses the running quadratic mean
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.normalization.convert import (
    ChannelFirst,
    convert_norms,
    register_builder,
)
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper("PowerNorm: Rethinking Batch Normalization in Transformers",
              "Shen, Yao, Gholami, Mahoney, Keutzer", 2020, "2003.07845")


class PowerFunction(torch.autograd.Function):
    """y = weight * x / sqrt(scale_sq + eps) + bias, with PN's approximate backward for x.

    x: [M, C] rows (tokens); scale_sq: [C], treated as a constant. `nu` ([C]) is read as nu_{t-1}
    and updated in place to nu_t during backward.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale_sq: torch.Tensor,
                nu: torch.Tensor, eps: float, alpha_bkw: float) -> torch.Tensor:
        inv = torch.rsqrt(scale_sq + eps)
        z = x * inv
        ctx.save_for_backward(z, inv, weight)
        ctx.nu, ctx.alpha_bkw = nu, alpha_bkw
        return z * weight + bias

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, inv, weight = ctx.saved_tensors
        nu, alpha = ctx.nu, ctx.alpha_bkw
        g = grad_y * weight
        grad_x = (g - nu * z) * inv
        with torch.no_grad():
            gamma_t = (z * z).mean(dim=0)
            lambda_t = (g * z).mean(dim=0)
            nu.mul_(1 - (1 - alpha) * gamma_t).add_((1 - alpha) * lambda_t)
        return grad_x, (grad_y * z).sum(dim=0), grad_y.sum(dim=0), None, None, None, None


def group_scaling(x: torch.Tensor, groups: int, eps: float = 1e-5) -> torch.Tensor:
    """Divide each token by its RMS over each group of C/groups channels (official GroupScaling1D)."""
    shape = x.shape
    grouped = x.reshape(*shape[:-1], groups, shape[-1] // groups)
    return (grouped * torch.rsqrt(grouped.pow(2).mean(dim=-1, keepdim=True) + eps)).reshape(shape)


class PowerNorm(nn.Module):
    """Power Normalization for channel-last input [..., C] (tokens); see the module docstring."""

    is_normalization = True

    def __init__(self, num_channels: int, eps: float = 1e-5, alpha_fwd: float = 0.9, alpha_bkw: float = 0.9,
                 warmup_iters: int = 0, group_num: int = 1) -> None:
        super().__init__()
        for label, a in (("alpha_fwd", alpha_fwd), ("alpha_bkw", alpha_bkw)):
            if not 0.0 <= a < 1.0:
                raise ConfigError(f"PowerNorm: {label} must be in [0, 1), got {a}")
        if not isinstance(warmup_iters, int) or warmup_iters < 0:
            raise ConfigError(f"PowerNorm: warmup_iters must be a non-negative integer, got {warmup_iters!r}")
        if not isinstance(group_num, int) or group_num < 0 or (group_num and num_channels % group_num):
            raise ConfigError(f"PowerNorm: group_num ({group_num}) must be 0 or divide num_channels ({num_channels})")
        self.num_channels, self.eps = num_channels, eps
        self.alpha_fwd, self.alpha_bkw = alpha_fwd, alpha_bkw
        self.warmup_iters, self.group_num = warmup_iters, group_num
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_phi", torch.ones(num_channels))  # psi^2, the running quadratic mean
        self.register_buffer("nu", torch.zeros(num_channels))          # backward running statistic
        self.register_buffer("iters", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.num_channels:
            raise ConfigError(f"PowerNorm({self.num_channels}): expected channel-last input [..., {self.num_channels}], "
                              f"got {list(x.shape)}")
        if self.group_num:
            x = group_scaling(x, self.group_num)
        rows = x.reshape(-1, self.num_channels)
        if not self.training:
            out = rows * torch.rsqrt(self.running_phi + self.eps) * self.weight + self.bias
            return out.reshape(x.shape)
        self.iters.add_(1)
        t = int(self.iters)
        batch_sq = rows.detach().pow(2).mean(dim=0)
        in_warmup = t <= self.warmup_iters
        scale_sq = batch_sq if in_warmup else self.running_phi.clone()
        out = PowerFunction.apply(rows, self.weight, self.bias, scale_sq, self.nu, self.eps, self.alpha_bkw)
        with torch.no_grad():
            if in_warmup:  # plain average of the batch quadratic means so far
                self.running_phi.mul_((t - 1) / t).add_(batch_sq / t)
            else:
                self.running_phi.lerp_(batch_sq, 1 - self.alpha_fwd)
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
                f"warmup_iters={self.warmup_iters}, group_num={self.group_num}")


def build_power_norm(num_channels: int, dims: int, **settings: Any) -> nn.Module:
    """PowerNorm for `dims` as in trainlab.tasks.norms (1/2: channel-first maps, e.g. replacing BatchNorm)."""
    layer = PowerNorm(num_channels, **settings)
    return layer if dims == 0 else ChannelFirst(layer)



register_builder("power", build_power_norm)


@register
class PowerNormTechnique(Technique):
    """Replace the model's norm layers by Power Normalization."""

    name = "power-norm"
    family = "normalization"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the backward divides by the forward's divisor sqrt(psi2_{t-1} + eps) (the paper's Algorithm 2); the "
        "authors' MaskPowerNorm divides by the batch's own quadratic mean (the two agree during warm-up)",
        "no padding mask: every token counts in the statistics (the authors' code excludes padded tokens)",
        "group scaling uses group_num=1 by default; the authors' scripts use the number of attention heads",
    )
    modifies = frozenset({"norm_layers"})
    summary = "BN for transformers without centring: running quadratic mean + approximate backward"

    def __init__(self, group_num: int = 1, alpha_fwd: float = 0.9, alpha_bkw: float = 0.9,
                 warmup: str | int = "task") -> None:
        super().__init__(group_num=group_num, alpha_fwd=alpha_fwd, alpha_bkw=alpha_bkw, warmup=warmup)
        if warmup != "task" and (not isinstance(warmup, int) or warmup < 0):
            raise ConfigError(f"power-norm: warmup must be 'task' (the task's LR warm-up steps) or a step count, got {warmup!r}")
        self.group_num, self.alpha_fwd, self.alpha_bkw, self.warmup = group_num, alpha_fwd, alpha_bkw, warmup

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        report = convert_norms(model, "power", group_num=self.group_num, alpha_fwd=self.alpha_fwd,
                               alpha_bkw=self.alpha_bkw)
        if not report.converted:
            raise ConfigError("power-norm: the model has no BatchNorm/GroupNorm/LayerNorm layer to convert")
        return model

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        # the official scripts tie PN's warm-up to the learning-rate warm-up (--warmup-updates)
        if self.warmup == "task":
            warmup_epochs = getattr(state.task, "warmup_epochs", 0.0) or 0.0
            steps = round(warmup_epochs * state.steps_per_epoch)
        else:
            steps = self.warmup
        for m in model.modules():
            if isinstance(m, PowerNorm):
                m.warmup_iters = steps


_QUOTE = ("PN \"significantly outperforms both LN and BN\"; naive BN in transformers \"results in instability\" "
          "(abstract). \"PN outperforms LN by 0.4/0.6 BLEU on IWSLT14/WMT14 and 5.6/3.0 PPL on PTB/WikiText-103.\"")

#: the majority-token task made harder, so that no norm reaches 100% (the task's default saturates)
SEQ_OVERRIDES = {"epochs": 10, "batch_size": 32, "data_kwargs": {"n_train": 1000, "vocab": 16, "seq_len": 32},
                 "model_kwargs": {"vocab_size": 16}}
_SETTING = PaperSetting(
    train_size=160_000,
    text="IWSLT14 De-En (about 160k sentence pairs), fairseq transformer_iwslt_de_en_v2 with PN in the encoder, Adam "
         "lr 1.5e-3, inverse-sqrt schedule with 8,000 warm-up updates, up to 4,096 tokens a batch, early stopping "
         "(official train-iwslt14.sh); epochs and parameter count not stated; also WMT14 En-De Transformer-big and "
         "Transformer-XL on PTB / WikiText-103")
# No preconditions: the paper's premise (BN's batch statistics and their gradients fluctuate strongly on NLP data)
# is not recorded per epoch, and the comparison with BN needs no other regime.

CLAIMS = [
    Claim(
        id="power-norm-vs-bn-seq-transformer", technique="power-norm", task="seq-transformer", metric="test_acc",
        direction="higher", overrides=SEQ_OVERRIDES,
        treatment=arm(("power-norm", {}), label="PowerNorm"),
        baseline=arm(model_kwargs={"norm": "batch"}, label="BatchNorm (over all tokens)"),
        paper_quote=_QUOTE,
        paper_number="PN +0.4/+0.6 BLEU over LN on IWSLT14/WMT14; naive BN below both (abstract, Table 1)",
        paper_scale="Transformer on IWSLT14/WMT14, Transformer-XL on PTB/WikiText-103", paper_setting=_SETTING,
        seeds=5, suites=("full",),
        notes="Pre-norm 2-layer transformer on a harder majority-token task (1000 training sequences of 32 tokens "
              "over 16 symbols, batch 32, 10 epochs; the task's default saturates at 100% for every norm). Both "
              "arms replace the task's LayerNorm (BN via model_kwargs, PN via the technique); PN's warm-up = "
              "the task's LR warm-up steps.",
    ),
]
