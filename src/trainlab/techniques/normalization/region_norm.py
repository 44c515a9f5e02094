"""Region Normalization, basic form (RN-B): separate statistics for the masked and unmasked regions.

Paper: Tao Yu, Zongyu Guo, Xin Jin, Shilin Wu, Zhibo Chen, Weiping Li, Zhizheng Zhang, Sen Liu,
"Region Normalization for Image Inpainting", AAAI 2020, arXiv:1911.12541.

Claim: in inpainting networks, normalizing a feature map whose corrupted (hole) pixels are filled
with a constant shifts the mean and variance of the valid pixels ("mean and variance shifts");
RN-B, which "normalizes and transforms corrupted and uncorrupted regions separately" using the
input mask, improves reconstruction (PSNR/SSIM) over the same network with BatchNorm or InstanceNorm.
Paper scale: an EdgeConnect-style inpainting generator on Places2, CelebA and Paris StreetView at
256x256 with irregular masks, RN-B in the encoder and the learnable RN-L in the decoder.
Where this falls short: only RN-B is implemented (not RN-L); there is no inpainting task in this
repository, so no claim is checked here — the module is tested against its formula only.

What RN-B computes (paper Sec. 3, official ``RN_binarylabel``/``RN_B``): the mask (1 = hole /
corrupted, 0 = valid; resized to the feature map with nearest-neighbour interpolation) splits the
positions into two regions R_1, R_2. For each channel c and region k, over all samples and spatial
positions in the region (the official code reduces over the batch too, like BatchNorm):

    mu_kc = mean_{x in R_k} x,   var_kc = mean_{x in R_k} (x - mu_kc)^2
    x_hat = (x - mu_kc) / sqrt(var_kc + eps)        for x in R_k
    y = gamma_kc * x_hat + beta_kc                   separate affine per region

with gamma = 1, beta = 0 at init (the official code's 1 + gamma with gamma = 0). eps = 1e-5 on the
region variance, as in the paper's formula; the official code normalizes with eps relative to the whole map
(eps * |map| / |region|), which differs only for tiny regions. Like the official code it keeps no
running statistics: training and evaluation compute the same function. An empty region (no hole in
the batch) contributes nothing.

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.region_norm import RegionNormB

    rn = RegionNormB(16)
    x = torch.randn(2, 16, 32, 32)
    mask = (torch.rand(2, 1, 64, 64) > 0.7).float()   # 1 = hole; resized to 32x32 inside
    y = rn(x, mask)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique

PAPER = Paper("Region Normalization for Image Inpainting",
              "Yu, Guo, Jin, Wu, Chen, Li, Zhang, Liu", 2020, "1911.12541")


def _resize_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if mask.dim() == x.dim() - 1:
        mask = mask.unsqueeze(1)
    if mask.dim() != x.dim() or mask.shape[0] != x.shape[0] or mask.shape[1] != 1:
        raise ConfigError(f"RegionNormB: mask must be [N, 1, ...] or [N, ...] for input {list(x.shape)}, "
                          f"got {list(mask.shape)}")
    mask = mask.to(dtype=x.dtype).detach()
    if mask.shape[2:] != x.shape[2:]:
        mask = F.interpolate(mask, size=x.shape[2:], mode="nearest")
    return mask


class RegionNormB(nn.Module):
    """RN-B for channel-first input [N, C, spatial...] and a binary mask; see the module docstring."""

    is_normalization = True

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        # index 0: hole region (mask 1), index 1: valid region (mask 0)
        self.weight = nn.Parameter(torch.ones(2, num_channels))
        self.bias = nn.Parameter(torch.zeros(2, num_channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_channels:
            raise ConfigError(f"RegionNormB({self.num_channels}): expected input [N, {self.num_channels}, spatial...], "
                              f"got {list(x.shape)}")
        hole = _resize_mask(mask, x)
        dims = [0] + list(range(2, x.dim()))
        view = [1, -1] + [1] * (x.dim() - 2)
        out = torch.zeros_like(x)
        for k, region in enumerate((hole, 1.0 - hole)):
            count = region.sum(dim=dims) * 1.0  # [1] (the mask has one channel)
            if float(count) == 0.0:
                continue
            mean = (x * region).sum(dim=dims) / count
            var = (((x - mean.view(view)) ** 2) * region).sum(dim=dims) / count
            x_hat = (x - mean.view(view)) * torch.rsqrt(var.view(view) + self.eps)
            out = out + region * (x_hat * self.weight[k].view(view) + self.bias[k].view(view))
        return out

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class InputHoleMask:
    """A forward pre-hook for a model's root: marks positions where every input channel equals
    `hole_value` as holes and hands that mask to every RegionNormB wrapper of the model."""

    def __init__(self, layers: list[MaskedRegionNorm], hole_value: float) -> None:
        self.layers, self.hole_value = layers, hole_value

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        mask = (x == self.hole_value).all(dim=1, keepdim=True).to(x.dtype) if x.dim() >= 3 else None
        for layer in self.layers:
            layer.mask = mask


class MaskedRegionNorm(nn.Module):
    """RegionNormB behind a one-argument forward; the mask is set per batch by InputHoleMask."""

    is_normalization = True

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.rn = RegionNormB(num_channels, eps)
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise ConfigError("MaskedRegionNorm: no mask was set (the model's input must be [N, C, spatial...])")
        return self.rn(x, self.mask)


def apply_region_norm(model: nn.Module, hole_value: float = 0.0) -> list[str]:
    """Replace the 2-D/3-D BatchNorm, GroupNorm and InstanceNorm layers of `model` by RN-B layers whose
    mask is the input's hole pixels (all channels equal to `hole_value`), set on each forward.

    Returns the converted paths. Inpainting inputs with holes filled by a constant are the intended
    use; for other inputs this splits by whatever equals `hole_value` (e.g. a black background).
    """
    layers: list[MaskedRegionNorm] = []
    paths = []
    types = (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)
    for parent_path, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, types):
                channels = child.num_channels if isinstance(child, nn.GroupNorm) else child.num_features
                new = MaskedRegionNorm(channels)
                ref = next(iter(child.parameters()), None)
                if ref is not None:
                    new = new.to(device=ref.device, dtype=ref.dtype)
                setattr(parent, name, new)
                layers.append(new)
                paths.append(f"{parent_path}.{name}" if parent_path else name)
    if layers:
        model.register_forward_pre_hook(InputHoleMask(layers, hole_value))
    return paths


@register
class RegionNorm(Technique):
    """Replace spatial norms by RN-B, with the input's constant-filled hole pixels as the mask."""

    name = "region-norm"
    family = "normalization"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "RN-B only: the paper's learnable RN-L (used in its decoder) is not implemented",
        "eps = 1e-5 on each region's variance (the paper's formula); the authors' code scales eps by the ratio "
        "of the whole map to the region's size",
        "the technique takes the mask from input pixels whose channels all equal hole_value; the paper's "
        "network receives the mask as an input",
    )
    modifies = frozenset({"norm_layers"})
    summary = "inpainting: normalize hole and valid regions with separate statistics (RN-B)"

    def __init__(self, hole_value: float = 0.0) -> None:
        super().__init__(hole_value=hole_value)
        self.hole_value = float(hole_value)

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        if not apply_region_norm(model, self.hole_value):
            raise ConfigError("region-norm: the model has no 2-D/3-D BatchNorm/GroupNorm/InstanceNorm layer to convert")
        return model


CLAIMS: list = []
