"""Weight Standardization (WS) as a ``torch.nn.utils.parametrize`` parametrization.

Paper: Siyuan Qiao, Huiyu Wang, Chenxi Liu, Wei Shen, Alan Yuille, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", 2019 (v1 titled "Weight
Standardization"), arXiv:1903.10520.

What WS computes (paper, Sec. 3): a convolution's weight W has one row per output channel,
W_i in R^{C_in * k * k}. WS reparameterizes it as

    W_hat_i = (W_i - mu_i) / sigma_i,   mu_i = mean_j W_ij,
    sigma_i = sqrt( mean_j (W_ij - mu_i)^2 + eps )

and the layer uses W_hat; gradients flow through the standardization to W. The paper's claim for WS
is that it "smooths the loss landscape by reducing the Lipschitz constants of the loss and the
gradients", which together with a channel/batch-channel normalization after the layer makes
micro-batch training (1-2 images per GPU) match large-batch BatchNorm. The claims live with the
ws-bcn technique (trainlab.techniques.normalization.batch_channel_norm).

eps placement: this follows the paper's formula (biased variance, eps inside the square root,
eps = 1e-5). The official code has several variants: the ImageNet code uses the unbiased variance
with eps inside the square root, the README and segmentation code divide by (unbiased std + 1e-5).
They differ by O(1/fan_in) in scale, which the following normalization removes anyway.

Which layers: the paper standardizes convolutions that are followed by a normalization layer
(the official README: "only replace convolutional layers that are followed by normalization
layers"). ``apply_weight_standardization`` standardizes every Conv1d/2d/3d by default, optionally
Linear layers too, or those a ``select`` callable picks; it cannot see what follows a layer, so a
final classifier convolution should be excluded with ``select``.

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.weight_standardization import (
        apply_weight_standardization, remove_weight_standardization)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.ReLU())
    names = apply_weight_standardization(model)          # ['0']
    y = model(torch.randn(2, 3, 8, 8))                   # the conv now uses standardized weights
    remove_weight_standardization(model)                 # bakes W_hat into .weight, plain Conv2d again
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique

PAPER = Paper(
    "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization",
    "Qiao, Wang, Liu, Shen, Yuille", 2019, "1903.10520",
)

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class WeightStandardization(nn.Module):
    """The parametrization W -> (W - mean) / sqrt(var + eps), per output channel (dim 0)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        if not eps > 0:
            raise ConfigError(f"weight standardization: eps must be positive, got {eps}")
        self.eps = eps

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, weight.dim()))
        mean = weight.mean(dim=dims, keepdim=True)
        var = weight.var(dim=dims, unbiased=False, keepdim=True)
        return (weight - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The standardized weight, as a function (for a layer's own forward)."""
    return WeightStandardization(eps)(weight)


def _default_select(include_linear: bool) -> Callable[[str, nn.Module], bool]:
    types = CONV_TYPES + ((nn.Linear,) if include_linear else ())
    return lambda name, module: isinstance(module, types)


def apply_weight_standardization(model: nn.Module, eps: float = 1e-5, include_linear: bool = False,
                                 select: Callable[[str, nn.Module], bool] | None = None) -> list[str]:
    """Register WS on the `weight` of every selected layer of `model` (in place).

    select(name, module) -> bool picks the layers (default: every Conv1d/2d/3d, plus Linear when
    include_linear). Layers already standardized are skipped. Returns the names of the layers that
    were parametrized now.
    """
    pick = select or _default_select(include_linear)
    done = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or not pick(name, module):
            continue
        if is_weight_standardized(module):
            continue
        parametrize.register_parametrization(module, "weight", WeightStandardization(eps))
        done.append(name)
    return done


def is_weight_standardized(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, WeightStandardization) for p in module.parametrizations["weight"]
    )


def remove_weight_standardization(model: nn.Module, leave_standardized: bool = True) -> list[str]:
    """Remove WS from every layer of `model` that has it; returns their names.

    leave_standardized=True keeps the function the same (the standardized weight becomes the
    plain weight); False restores the raw, unstandardized parameter.
    """
    removed = []
    for name, module in model.named_modules():
        if is_weight_standardized(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=leave_standardized)
            removed.append(name)
    return removed


@register
class WeightStandardizationTechnique(Technique):
    """Weight Standardization alone on the model's convolutions (no change to its norm layers)."""

    name = "weight-standardization"
    family = "normalization"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the filter variance is the biased one (the paper's formula); the authors' code "
        "(joe-siyuan-qiao/Batch-Channel-Normalization, imagenet/models/layers.py) uses the unbiased variance, "
        "so the standardized filters differ by the factor sqrt((n - 1) / n) for n inputs per filter",
        "every convolution is standardized by default; the authors standardize only convolutions followed by a "
        "normalization layer",
    )
    modifies = frozenset({"model"})
    summary = "standardize each conv filter to zero mean, unit variance (a reparameterization)"

    def __init__(self, eps: float = 1e-5, include_linear: bool = False) -> None:
        super().__init__(eps=eps, include_linear=include_linear)
        if not eps > 0:
            raise ConfigError(f"weight-standardization: eps must be positive, got {eps}")
        self.eps, self.include_linear = eps, include_linear

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        if not apply_weight_standardization(model, self.eps, self.include_linear):
            raise ConfigError("weight-standardization: the model has no convolution to standardize "
                              "(pass include_linear=True for Linear layers)")
        return model
