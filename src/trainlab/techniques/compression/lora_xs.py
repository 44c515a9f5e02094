"""LoRA-XS: low-rank adaptation with an r x r trainable matrix between frozen SVD factors.

Paper: Klaudia Balazy, Mohammadreza Banaei, Karl Aberer, Jacek Tabor. "LoRA-XS: Low-Rank Adaptation
with Extremely Small Number of Parameters". 2024, arXiv:2405.17604. Official code:
MohammadrezaBanaei/LoRA-XS.

Method: with the truncated SVD W ~ U_r Sigma_r V_r^T of the frozen pretrained weight, the adapted
weight is W + (alpha / r) U_r R Sigma_r V_r^T: B = U_r and A = Sigma_r V_r^T are frozen, only the
r x r matrix R trains (r^2 parameters per layer, independent of the layer's width). As in the
official code, Sigma_r sits on the input side (its encoder is the SVD's reduced matrix U Sigma of
W^T), R starts as N(0, 1e-5^2) (not zero: Delta W at the start is of order 1e-5), and alpha = 16.
A conv kernel is read as the matrix [out, in * kh * kw]; per layer r is capped at
min(d_out, d_in). The adapter file stores R only: B and A
are recomputed from the base weights when it is loaded.

Claim (the LoRA-SB paper's, checked in lora_sb.py): at the same r, LoRA-SB's initialization beats
LoRA-XS's. LoRA-XS's own claim, "LoRA-XS ... outperforms LoRA ... while using over 100x fewer
parameters" on GLUE with RoBERTa-large, is not checked separately.

Plain PyTorch::

    import torch
    from trainlab.techniques.compression.adapters import apply_adapters
    from trainlab.techniques.compression.lora_xs import LoRAXSDelta

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    apply_adapters(model, lambda layer: LoRAXSDelta.build(layer, rank=4))   # 16 trainable per layer
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    loss = model(torch.randn(16, 64)).logsumexp(1).mean(); loss.backward(); opt.step()
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.techniques.compression.adapters import AdapterTechnique, DeltaWeight, matrix_shape
from trainlab.techniques.compression.lora import check_alpha, check_rank
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper

PAPER = Paper(title="LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters",
              authors="Balazy, Banaei, Aberer, Tabor", year=2024, arxiv="2405.17604")

#: the official code's std of R's Gaussian init
R_INIT_STD = 1e-5


class CoreDelta(DeltaWeight):
    """Delta W = scaling * B R A with frozen B (d_out x r) and A (r x d_in) and a trained R (r x r):
    the structure LoRA-XS and LoRA-SB share. Subclasses fill B, A, R and the scaling."""

    def __init__(self, weight_shape: tuple[int, ...], rank: int, settings: dict[str, Any], scaling: float) -> None:
        super().__init__(weight_shape, settings)
        d_out, d_in = weight_shape[0], math.prod(weight_shape[1:])
        self.scaling = float(scaling)
        self.register_buffer("B", torch.zeros(d_out, rank))
        self.register_buffer("A", torch.zeros(rank, d_in))
        self.R = nn.Parameter(torch.zeros(rank, rank))

    def forward(self) -> Tensor:
        return (self.scaling * (self.B @ self.R @ self.A)).reshape(self.weight_shape)


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """U_r (m x r), S_r (r), V_r^T (r x n) of the best rank-r approximation (exact SVD in float64)."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return u[:, :rank].to(matrix.dtype), s[:rank].to(matrix.dtype), vh[:rank].to(matrix.dtype)


class LoRAXSDelta(CoreDelta):
    """LoRA-XS: B = U_r, A = Sigma_r V_r^T from the SVD of the frozen weight, R ~ N(0, 1e-5^2)."""

    method = "lora-xs"
    stored = ("R",)   # B and A follow from the base weight

    @classmethod
    def check_settings(cls, rank: int = 4, alpha: float | None = 16.0) -> None:
        check_rank("lora-xs", rank)
        check_alpha("lora-xs", alpha)

    @classmethod
    def build(cls, layer: nn.Module, rank: int = 4, alpha: float | None = 16.0) -> "LoRAXSDelta":
        cls.check_settings(rank, alpha)
        d_out, d_in = matrix_shape(layer)
        rank = min(rank, d_out, d_in)   # a rank-r SVD needs r <= min(d_out, d_in); alpha / r uses this r
        scaling = (rank if alpha is None else float(alpha)) / rank
        delta = cls(tuple(layer.weight.shape), rank, {"rank": rank, "alpha": alpha}, scaling)
        u, s, vh = truncated_svd(layer.weight.detach().reshape(d_out, d_in), rank)
        with torch.no_grad():
            delta.B.copy_(u)
            delta.A.copy_(s[:, None] * vh)
            delta.R.normal_(0.0, R_INIT_STD)
        return delta.to(layer.weight.dtype)


def lora_xs_param_count(rank: int) -> int:
    """Trainable parameters of one LoRA-XS (or LoRA-SB) layer: r^2."""
    return rank * rank


@register
class LoRAXS(AdapterTechnique):
    """Freeze the network; train an r x r matrix between the frozen top-r SVD factors of each weight."""

    name = "lora-xs"
    paper = PAPER
    delta_cls = LoRAXSDelta
    summary = "frozen base + (alpha/r) U_r R Sigma_r V_r^T per layer, only the r x r R trains; mergeable"
    fidelity = "faithful"
    deviations = ()

    def __init__(self, rank: int = 4, alpha: float | None = 16.0, targets: str | None = None) -> None:
        super().__init__(targets=targets, rank=rank, alpha=alpha)
