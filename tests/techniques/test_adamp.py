"""AdamP and SGDP against the authors' code (clovaai/AdamP, adamp/adamp.py and adamp/sgdp.py; the
same code is the `adamp` 0.3.0 package on PyPI).

The expected parameters below were produced by running that official package on exactly this case
(three steps, the gradients built by `_grads` from the current parameters) and rounded to 6
decimals. The case exercises every branch of the official `_projection`: a tensor projected per
output channel, one that is scale invariant only as a whole (per-channel cosine 1, whole-tensor
cosine near 0: projected on the layer view), one projected or not as its cosine test decides, and a
1-D tensor (never projected); with decoupled weight decay (scaled by wd_ratio where projected;
divided by 1 - momentum in SGDP) and with and without Nesterov.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.techniques.optimizers.adamp import AdamP, SGDP


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINLAB_OPTIM_COMPILE", "0")


def _params() -> list[torch.Tensor]:
    return [torch.tensor([[1.0, -2.0, 2.0], [0.5, 1.0, -1.0]]),   # scale invariant per channel
            torch.tensor([[3.0, 0.0], [0.0, 4.0]]),               # scale invariant as a whole only
            torch.tensor([[1.0, 2.0], [-1.0, 0.5]]),              # no special structure
            torch.tensor([0.3, -0.7])]                             # 1-D


def _grads(ps: list[torch.Tensor], t: int) -> list[torch.Tensor]:
    w_ch, w_layer, _, _ = ps
    # per row: a direction orthogonal to the row, plus a small radial part
    v = torch.tensor([[0.4, 0.1, -0.3], [-0.2, 0.5, 0.1]]) * (1 + t)
    g_ch = v - (v * w_ch).sum(1, keepdim=True) / (w_ch * w_ch).sum(1, keepdim=True) * w_ch + 1e-3 * w_ch
    # rows parallel to the weight's rows, weighted so that the whole tensor is (nearly) orthogonal
    r0, r1 = (w_layer[0] ** 2).sum(), (w_layer[1] ** 2).sum()
    g_layer = torch.stack([w_layer[0], -(r0 / r1) * w_layer[1]]) + 1e-3 * w_layer
    g_none = torch.tensor([[0.3, -0.2], [0.1, 0.9]]) * (1 + t)
    g_b = torch.tensor([0.5, -1.0]) / (1 + t)
    return [g_ch, g_layer, g_none, g_b]


OFFICIAL = [
    (AdamP, dict(lr=0.1, weight_decay=0.1), [
        [[0.664641, -1.924396, 2.205121], [0.729822, 0.621099, -1.181162]],
        [[2.651091, 0.0], [0.0, 4.228464]],
        [[0.645829, 2.140263], [-1.211566, 0.18148]],
        [0.013478, -0.401598]]),
    (AdamP, dict(lr=0.1, weight_decay=0.1, nesterov=True), [
        [[0.460256, -1.824052, 2.365242], [0.851226, 0.380177, -1.252932]],
        [[2.475708, 0.0], [0.0, 4.342462]],
        [[0.461944, 2.327224], [-1.397501, -0.002917]],
        [-0.107997, -0.280123]]),
    (SGDP, dict(lr=0.1, momentum=0.9, weight_decay=0.1), [
        [[0.547216, -1.937663, 2.125048], [0.725532, 0.589551, -1.163893]],
        [[1.334064, 0.0], [0.0, 4.792973]],
        [[0.4581, 1.6386], [-0.8193, -0.4482]],
        [0.035533, -0.143967]]),
    (SGDP, dict(lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True), [
        [[0.324309, -1.924017, 2.20744], [0.839752, 0.357179, -1.238729]],
        [[0.872444, 0.0], [0.0, 4.958203]],
        [[0.388279, 1.88839], [-0.944195, -0.848203]],
        [-0.025817, -0.021267]]),
]
PATHS = [dict(foreach=False), dict(foreach=True), dict(fused=True)]


@pytest.mark.parametrize("path", PATHS, ids=["single", "foreach", "fused"])
@pytest.mark.parametrize("cls,settings,expected", OFFICIAL,
                         ids=["adamp", "adamp-nesterov", "sgdp", "sgdp-nesterov"])
def test_three_steps_match_the_official_package(cls, settings, expected, path) -> None:
    ps = [nn.Parameter(p) for p in _params()]
    opt = cls(ps, **settings, **path)
    for t in range(3):
        grads = _grads([p.detach().clone() for p in ps], t)
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
    for p, e in zip(ps, expected):
        torch.testing.assert_close(p.detach(), torch.tensor(e), rtol=0, atol=2e-6)
