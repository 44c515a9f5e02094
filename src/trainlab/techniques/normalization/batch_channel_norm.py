"""Batch-Channel Normalization (BCN), and the ws-bcn technique (Weight Standardization + BCN).

Paper: Siyuan Qiao, Huiyu Wang, Chenxi Liu, Wei Shen, Alan Yuille, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", 2019, arXiv:1903.10520.

Claim (abstract): "WS and BCN improve micro-batch training significantly. Moreover, using WS and
BCN with micro-batch training is even able to match or outperform the performances of BN with
large-batch training." Micro-batch means 1-2 images per GPU. Paper scale: ImageNet (ResNet-50/101,
ResNeXt), COCO detection/segmentation (Mask R-CNN), Kinetics video, PASCAL VOC segmentation
(DeepLabv3), trained for tens to a hundred epochs on GPU clusters.
Where this falls short: here the check runs a two-layer CNN on 8x8 digits with a few epochs at
micro-batch 2 (one process, so "per GPU" and "per step" coincide); the paper's effect on deep
networks and large images may not show at this scale.

What BCN computes (Sec. 5; official code's ``BCNorm``/``EstBN``): a batch normalization followed by
a channel (group) normalization,

    x1 = gamma_b * (x - mu) / sqrt(var + eps) + beta_b          per channel c
    y  = gamma_g * GN(x1) + beta_g                              GN over each sample's group of
                                                                channels (and spatial axes)

* Large-batch mode (``estimate=False``): mu, var are the batch's statistics over (N, spatial), with
  running averages for evaluation, exactly as ``nn.BatchNorm`` (momentum 0.1, unbiased running var).
* Micro-batch mode (``estimate=True``, "micro-batch BCN"): mu, var are *estimates* (running
  statistics) used in training as well as in evaluation, and they receive no gradient. Each
  training step first updates them with rate r (the official code's ``estbn_moving_speed``):

      mu_b  = mean_{n,spatial} x                       (this batch)
      v_b   = mean_{n,spatial} (x - mu_hat)^2          (around the *current estimate*, as in the
                                                         official code, not around mu_b)
      mu_hat  <- (1 - r) mu_hat  + r mu_b
      var_hat <- (1 - r) var_hat + r v_b

  and then normalizes with the updated mu_hat, var_hat. The channel normalization after it keeps
  each sample's activations standardized even while the estimates lag behind.
* The channel normalization's affine (gamma_g, beta_g) is per group, as in the official code
  (weights of shape [1, G, 1]); the batch part's affine (gamma_b, beta_b) is per channel. eps = 1e-5
  inside both square roots; the group norm uses the biased variance.
* Groups: by default the largest divisor of C that is at most 32 (the official code uses 32
  groups; trainlab.tasks.norms.group_count gives 32 wherever 32 divides C).

Input: channel-first ``[N, C, ...]`` (any number of trailing axes), and ``[N, C]`` features (an MLP's
BatchNorm1d): there a group's statistics are over its C/G channels alone, so 32 groups of C <= 32
channels would normalize single values to constants. On a 2-D input the channel part therefore uses
``feature_groups`` groups (default: ``num_groups`` when given, else
trainlab.tasks.norms.feature_group_count, groups of at least 16 channels: C=32 -> 2 groups of 16);
the per-group affine stays per ``num_groups`` group, applied after the normalization as in the
official code. A group of fewer than 3 values per sample is refused with a ConfigError naming the
layer. Channel-last tokens ``[N, L, C]`` (``dims=0``) are normalized token by token as ``[N*L, C]``
features, with ``num_groups`` = feature_group_count(C); a BatchNorm1d that sees ``[N, C, L]`` (tokens
transposed for it) gets the channel part over C/G channels and all L positions, as on any signal.

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.batch_channel_norm import BatchChannelNorm, prepare_ws_bcn

    bcn = BatchChannelNorm(64, estimate=True, rate=0.01)      # micro-batch BCN for 64 channels
    y = bcn(torch.randn(2, 64, 8, 8))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU())
    report = prepare_ws_bcn(model, estimate=True)             # BN -> BCN, conv weights standardized
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.tasks.norms import (
    ChannelLast,
    check_feature_groups,
    check_group_values,
    feature_group_count,
    group_count,
    register_norm,
)
from trainlab.techniques.normalization.convert import (
    ConversionReport,
    convert_norms,
    register_builder,
)
from trainlab.techniques.normalization.weight_standardization import (
    PAPER,
    apply_weight_standardization,
)
from trainlab.techniques.registry import register
from trainlab.training.technique import Technique


class BatchChannelNorm(nn.Module):
    """Batch-Channel Normalization for channel-first input [N, C, ...]; see the module docstring.

    estimate: False = batch statistics in training (large batches); True = micro-batch BCN, which
    normalizes with running estimates updated at `rate` each training step.
    momentum: the running-average momentum in large-batch mode (as nn.BatchNorm).
    feature_groups: groups of the channel part on [N, C] input (no spatial axis); default
    `num_groups` if given, else feature_group_count(num_channels).
    """

    is_normalization = True

    def __init__(self, num_channels: int, num_groups: int | None = None, eps: float = 1e-5,
                 momentum: float = 0.1, estimate: bool = False, rate: float = 0.01,
                 feature_groups: int | None = None) -> None:
        super().__init__()
        groups = group_count(num_channels) if num_groups is None else num_groups
        if feature_groups is None:
            feature_groups = feature_group_count(num_channels) if num_groups is None else num_groups
        for label, value in (("num_groups", groups), ("feature_groups", feature_groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1 or num_channels % value:
                raise ConfigError(f"BatchChannelNorm: {label} ({value}) must divide num_channels ({num_channels})")
        self.feature_groups = feature_groups
        if not 0.0 < rate <= 1.0 or not 0.0 < momentum <= 1.0:
            raise ConfigError(f"BatchChannelNorm: rate and momentum must be in (0, 1], got {rate}, {momentum}")
        self.num_channels, self.num_groups, self.eps = num_channels, groups, eps
        self.momentum, self.estimate, self.rate = momentum, estimate, rate
        self.bn_weight = nn.Parameter(torch.ones(num_channels))
        self.bn_bias = nn.Parameter(torch.zeros(num_channels))
        self.gn_weight = nn.Parameter(torch.ones(1, groups, 1))
        self.gn_bias = nn.Parameter(torch.zeros(1, groups, 1))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _batch_part(self, x: torch.Tensor) -> torch.Tensor:
        if not self.estimate:
            if self.training:
                self.num_batches_tracked.add_(1)
            return F.batch_norm(x, self.running_mean, self.running_var, self.bn_weight, self.bn_bias,
                                self.training, self.momentum, self.eps)
        if self.training:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                dims = [0] + list(range(2, x.dim()))
                batch_mean = x.mean(dim=dims)
                shape = [1, -1] + [1] * (x.dim() - 2)
                around_estimate = ((x - self.running_mean.view(shape)) ** 2).mean(dim=dims)
                self.running_mean.lerp_(batch_mean, self.rate)
                self.running_var.lerp_(around_estimate, self.rate)
        # the estimates are constants here: no gradient flows into them
        return F.batch_norm(x, self.running_mean, self.running_var, self.bn_weight, self.bn_bias, False, 0.0, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ConfigError(f"BatchChannelNorm({self.num_channels}): expected input [N, {self.num_channels}, ...], "
                              f"got {list(x.shape)}")
        # [N, C] features: the channel statistics are over channel groups alone (feature_groups)
        groups = self.feature_groups if x.dim() == 2 else self.num_groups
        check_group_values(self, f"BatchChannelNorm({groups} groups, {self.num_channels} channels)", x, groups)
        out = self._batch_part(x)
        normed = F.group_norm(out, groups, None, None, self.eps)
        # the affine is per num_groups group (the official code's [1, G, 1] weights)
        grouped = normed.reshape(x.shape[0], self.num_groups, -1)
        return (grouped * self.gn_weight + self.gn_bias).reshape(x.shape)

    def extra_repr(self) -> str:
        mode = f"estimate=True, rate={self.rate}" if self.estimate else f"estimate=False, momentum={self.momentum}"
        return (f"{self.num_channels}, num_groups={self.num_groups}, feature_groups={self.feature_groups}, "
                f"eps={self.eps}, {mode}")


def build_bcn(num_channels: int, dims: int, **settings: Any) -> nn.Module:
    """BCN for `dims` as in trainlab.tasks.norms (0: channel-last features/tokens, whose groups hold
    at least 16 channels unless `num_groups` is given)."""
    if dims == 0 and settings.get("num_groups") is None:
        settings = {**settings, "num_groups": feature_group_count(num_channels)}
    layer = BatchChannelNorm(num_channels, **settings)
    if dims == 0:
        check_feature_groups(f"BatchChannelNorm({layer.feature_groups} groups, {num_channels} channels)", num_channels,
                             layer.feature_groups)
    return ChannelLast(layer, num_channels) if dims == 0 else layer



def bcn_micro_norm(num_channels: int, dims: int) -> nn.Module:
    return build_bcn(num_channels, dims, estimate=True)


register_norm("bcn-micro", bcn_micro_norm)
register_builder("bcn", build_bcn)


def prepare_ws_bcn(model: nn.Module, estimate: bool = True, rate: float = 0.01, num_groups: int | None = None,
                   ws_eps: float = 1e-5) -> ConversionReport:
    """Convert `model`'s BatchNorm/GroupNorm/LayerNorm layers to BCN and standardize its convolutions."""
    settings: dict[str, Any] = {"estimate": estimate, "rate": rate}
    if num_groups is not None:
        settings["num_groups"] = num_groups
    report = convert_norms(model, "bcn", **settings)
    apply_weight_standardization(model, eps=ws_eps)
    return report


@register
class WSBCN(Technique):
    """Weight Standardization on the convolutions + Batch-Channel Normalization for the norms."""

    name = "ws-bcn"
    version = 2  # 2: correct group statistics on [N, C] features and [N, L, C] tokens (or a refusal)
    family = "normalization"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the weight standardization part uses the biased filter variance (the paper's formula), the authors' "
        "code the unbiased one (a scale factor sqrt((n - 1) / n) on the filters); the BCN part follows the "
        "authors' EstBN / BCNorm (test_batch_channel_norm.py::test_micro_batch_mode_updates_estimates_as_the_"
        "official_code_then_normalizes_with_them and ::test_large_batch_mode_is_batchnorm_then_groupnorm_with_"
        "per_group_affine)",
        "every convolution is standardized; the authors standardize only convolutions followed by a "
        "normalization layer",
        "groups: the largest divisor of C up to 32 where 32 does not divide C (the authors' code always uses 32)",
        "on [N, C] feature vectors (no spatial axis) the channel part uses groups of at least 16 channels "
        "(the paper defines BCN for images only)",
    )
    modifies = frozenset({"norm_layers", "model"})
    summary = "micro-batch training: standardized conv weights, batch norm with estimates + group norm"

    def __init__(self, estimate: bool = True, rate: float = 0.01, num_groups: int | None = None) -> None:
        super().__init__(estimate=estimate, rate=rate, num_groups=num_groups)
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"ws-bcn: rate must be in (0, 1], got {rate}")
        self.estimate, self.rate, self.num_groups = estimate, rate, num_groups

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        report = prepare_ws_bcn(model, self.estimate, self.rate, self.num_groups)
        if not report.converted:
            raise ConfigError("ws-bcn: the model has no BatchNorm/GroupNorm/LayerNorm layer to convert")
        return model


_QUOTE = ("\"WS and BCN improve micro-batch training significantly. Moreover, using WS and BCN with micro-batch "
          "training is even able to match or outperform the performances of BN with large-batch training.\" (abstract)")
_SCALE = ("ImageNet ResNet-50/101 and ResNeXt, COCO Mask R-CNN, Kinetics, VOC DeepLabv3; micro-batch = 1-2 images "
          "per GPU vs BN with 32-64 images per GPU")
_SETTING = PaperSetting(
    train_size=1_281_167, epochs=90, params=25_600_000,
    text="ImageNet, ResNet-50 (25.6M parameters, the standard count; not restated in the paper) with WS + micro-batch "
         "BCN at 1 image per GPU against BN with large batches; 90 epochs, learning rate x0.1 at epochs 30 and 60 "
         "(official ImageNet script); also ResNet-101/ResNeXt, COCO Mask R-CNN, VOC DeepLabv3, Kinetics")
# The micro-batch regime itself (batch 2) is set by the arms; whether BN degrades there is a comparison with a
# large-batch run, which the micro-vs-micro claim does not hold, so it has no precondition.
_BN_LARGE_FITS = Precondition(
    "train_acc", ">=", 0.98,
    why="the large-batch BN reference fits its training set (final-epoch training accuracy at least 98%): the paper "
        "compares with BN trained on its full schedule, and 'not worse than' an under-trained reference says little")

CLAIMS = [
    Claim(
        id="ws-bcn-micro-vs-bn-digits", technique="ws-bcn", task="digits-cnn", metric="test_acc", direction="higher",
        overrides={"batch_size": 2, "epochs": 2, "lr": 0.01, "train_subset": 500},
        treatment=arm(("ws-bcn", {"estimate": True, "rate": 0.01}), label="WS + micro-batch BCN, batch 2"),
        baseline=arm(label="BatchNorm, batch 2"),
        paper_quote=_QUOTE,
        paper_number="micro-batch WS+BCN beats micro-batch BN on every task; BN at 1-2 images/GPU is many points worse",
        paper_scale=_SCALE, paper_setting=_SETTING, seeds=5, suites=("quick", "full"),
        notes="Digits CNN, 500 training images, batch 2 (250 steps an epoch), 2 epochs, lr 0.01 in both arms. "
              "BN with batch 2 normalizes each step with two samples' statistics and evaluates with running "
              "averages of them.",
    ),
    Claim(
        id="ws-bcn-micro-vs-bn-large-digits", technique="ws-bcn", task="digits-cnn", metric="test_acc",
        direction="higher", margin=0.005,
        treatment=arm(("ws-bcn", {"estimate": True, "rate": 0.01}), batch_size=2, lr=0.01, epochs=4,
                      label="WS + micro-batch BCN, batch 2, 4 epochs"),
        baseline=arm(epochs=15, label="BatchNorm, batch 64, 15 epochs (the task's budget)"),
        paper_quote=_QUOTE,
        paper_number="\"match or outperform\" BN with large batches, i.e. a distance of at most 0 points",
        paper_scale=_SCALE, paper_setting=_SETTING, preconditions=(_BN_LARGE_FITS,), seeds=5, suites=("full",),
        notes="'Within the paper's stated distance' is 'match or outperform' (distance <= 0), checked as "
              "non-inferiority with a 0.5-point margin: reproduced if WS+BCN at batch 2 is shown to be not "
              "worse than BN at batch 64 by more than 0.5 points, contradicted if shown to be worse by more. "
              "Batch 2 gets fewer epochs (about "
              "2.9k steps vs 330 steps of 64) to keep its run time near the baseline's.",
    ),
]
