"""Batch augmentations on tensors, driven by an explicit generator so runs are reproducible."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding `pad` and random horizontal flip, for [N, C, H, W] images."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)          # [N, H]
    cols = (dx[:, None] + torch.arange(w)[None, :])                       # [N, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Random circular shift along the last axis, for 1-D signals [N, C, L]."""
    n, length = x.shape[0], x.shape[-1]
    s = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator).to(x.device)
    idx = (torch.arange(length, device=x.device)[None, :] - s[:, None]) % length
    return torch.gather(x, -1, idx[:, None, :].expand(-1, x.shape[1], -1))


AUGMENTATIONS = {"crop-flip": crop_flip, "shift": random_shift}


def augment(name: str | None, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if name is None:
        return x
    try:
        return AUGMENTATIONS[name](x, generator)
    except KeyError:
        raise ConfigError(f"unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})") from None
