"""Hessian alignment (Hemati et al. 2023): each term against exact references (torch.func.hessian),
the penalty against a direct evaluation of its formula, and the technique in the Trainer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError
from trainlab.techniques.domain.hessian_alignment import (
    HessianAlignment, head_gradient, head_hessian, hessian_alignment_penalty, hessian_gradient_product,
    hutchinson_diagonal, penalty_weight_at,
)


def _setup(n: int = 24, d: int = 5, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(d, c)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return head, x, y


def _softmax_hessian(head: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Hand-derived Hessian of mean cross-entropy for a linear head, parameters ordered (W row-major,
    b): (1/n) sum_i (diag(p_i) - p_i p_i^T) kron [x_i; 1][x_i; 1]^T, reordered to [W, b]."""
    p = torch.softmax(head(x), 1).detach()
    n, d = x.shape
    c = p.shape[1]
    a = torch.stack([torch.diag(pi) - torch.outer(pi, pi) for pi in p])          # [n, c, c]
    xx = torch.einsum("ni,nj->nij", x, x)                                          # [n, d, d]
    hww = torch.einsum("nab,nij->aibj", a, xx).reshape(c * d, c * d) / n
    hwb = torch.einsum("nab,ni->aib", a, x).reshape(c * d, c) / n
    hbb = a.mean(0)
    return torch.cat([torch.cat([hww, hwb], 1), torch.cat([hwb.T, hbb], 1)], 0)


def test_head_hessian_equals_the_hand_derived_softmax_hessian() -> None:
    head, x, y = _setup()
    h = head_hessian(x, y, head)
    assert h.shape == (18, 18)
    torch.testing.assert_close(h, _softmax_hessian(head, x), rtol=1e-5, atol=1e-6)


def test_head_gradient_matches_autograd_on_the_loss() -> None:
    head, x, y = _setup()
    g = head_gradient(x, y, head)
    loss = F.cross_entropy(head(x), y)
    ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(head.parameters()))])
    torch.testing.assert_close(g, ref)


def test_hgp_equals_the_exact_hessian_times_the_gradient() -> None:
    head, x, y = _setup(seed=1)
    g, hg = hessian_gradient_product(x, y, head)
    h = head_hessian(x, y, head)
    torch.testing.assert_close(hg, h @ g.detach(), rtol=1e-5, atol=1e-7)
    # the official form ||g|| * d||g||/dw is the same vector
    params = list(head.parameters())
    norm = g.norm()
    off = torch.cat([t.reshape(-1) for t in torch.autograd.grad(norm, params, retain_graph=True)]) * norm
    torch.testing.assert_close(hg, off.detach(), rtol=1e-5, atol=1e-7)


def test_hutchinson_diagonal_converges_to_the_exact_diagonal() -> None:
    head, x, y = _setup(seed=2)
    exact = torch.diagonal(head_hessian(x, y, head))
    s = 4000
    probes = (2 * torch.randint(0, 2, (s, exact.numel()), generator=torch.Generator().manual_seed(3)) - 1).float()
    _, est = hutchinson_diagonal(x, y, head, probes=probes, create_graph=False)
    # per-probe values z * Hz: their standard error bounds the error of the mean
    h = head_hessian(x, y, head)
    per = probes * (probes @ h)          # H symmetric: row s is (H z_s)^T
    se = per.std(0) / math.sqrt(s)
    assert torch.all((est - exact).abs() <= 5 * se + 1e-6), ((est - exact).abs() / (se + 1e-12)).max()
    # a single probe is unbiased but noisy; the mean error shrinks with more probes
    _, est_small = hutchinson_diagonal(x, y, head, probes=probes[:10], create_graph=False)
    assert (est - exact).norm() < (est_small - exact).norm()


def test_penalty_matches_its_formula_with_exact_hessians() -> None:
    torch.manual_seed(0)
    head, x, y = _setup(n=30, seed=4)
    dom = torch.tensor([0, 1, 2] * 10)
    alpha, beta = 0.7, 0.3
    pen = hessian_alignment_penalty(x, y, dom, head, "hgp", alpha, beta)
    # reference: exact per-domain Hessians; mean loss = mean of per-domain mean losses
    hs = [head_hessian(x[dom == e], y[dom == e], head) for e in range(3)]
    gs = [head_gradient(x[dom == e], y[dom == e], head).detach() for e in range(3)]
    h_bar, g_bar = sum(hs) / 3, sum(gs) / 3
    ref = sum(alpha * (h @ g - h_bar @ g_bar).pow(2).sum() + beta * (g - g_bar).pow(2).sum()
              for h, g in zip(hs, gs)) / 3
    torch.testing.assert_close(pen.detach(), ref, rtol=1e-5, atol=1e-8)


def test_hutchinson_penalty_uses_diagonals() -> None:
    head, x, y = _setup(n=30, seed=5)
    dom = torch.tensor([0, 1] * 15)
    gen = torch.Generator().manual_seed(0)
    pen = hessian_alignment_penalty(x, y, dom, head, "hutchinson", 1.0, 0.0, samples=20000, generator=gen)
    diags = [torch.diagonal(head_hessian(x[dom == e], y[dom == e], head)) for e in range(2)]
    d_bar = (diags[0] + diags[1]) / 2
    ref = sum((d - d_bar).pow(2).sum() for d in diags) / 2
    # the estimate's noise adds a positive bias of order P * var / S; with 20k probes it is small
    assert abs(float(pen.detach()) - float(ref)) < 0.1 * float(ref) + 1e-4


def test_penalty_is_zero_when_every_domain_has_identical_data() -> None:
    head, x, y = _setup(n=10, seed=6)
    xs, ys = torch.cat([x, x, x]), torch.cat([y, y, y])
    dom = torch.arange(3).repeat_interleave(10)
    for variant in ("hgp", "hutchinson"):
        pen = hessian_alignment_penalty(xs, ys, dom, head, variant, 1.0, 1.0, samples=8,
                                        generator=torch.Generator().manual_seed(0))
        assert float(pen) == pytest.approx(0.0, abs=1e-10)
    # and positive when domains differ
    assert float(hessian_alignment_penalty(x, y, torch.arange(10) % 2, head, "hgp", 1.0, 1.0)) > 0


def test_gradient_flows_to_the_featurizer_through_both_terms() -> None:
    torch.manual_seed(0)
    feat = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
    head = torch.nn.Linear(6, 3)
    x, y, dom = torch.randn(32, 4), torch.randint(0, 3, (32,)), torch.arange(32) % 2
    for variant, (a, b) in [("hgp", (1.0, 0.0)), ("hgp", (0.0, 1.0)), ("hutchinson", (1.0, 0.0))]:
        feat.zero_grad()
        hessian_alignment_penalty(feat(x), y, dom, head, variant, a, b, samples=4).backward()
        assert feat[0].weight.grad is not None and feat[0].weight.grad.norm() > 0, (variant, a, b)
    # the gradient w.r.t. features is that of the per-domain terms with the mean-loss targets held
    # fixed (stop-gradient, as in the official code): compare with a finite difference of that function
    z = feat(x).detach().double().requires_grad_()
    h64 = torch.nn.Linear(6, 3).double()
    parts = [hessian_gradient_product(z.detach()[dom == e], y[dom == e], h64) for e in range(2)]
    g_bar = sum(g.detach() for g, _ in parts) / 2
    a_bar = head_hessian(z.detach()[dom == 0], y[dom == 0], h64) @ g_bar / 2 + \
        head_hessian(z.detach()[dom == 1], y[dom == 1], h64) @ g_bar / 2

    def fixed_targets(t):
        out = 0.0
        for e in range(2):
            g, hg = hessian_gradient_product(t[dom == e], y[dom == e], h64)
            out = out + (hg - a_bar).pow(2).sum() + (g - g_bar).pow(2).sum()
        return out / 2

    pen = hessian_alignment_penalty(z, y, dom, h64, "hgp", 1.0, 1.0)
    torch.testing.assert_close(pen, fixed_targets(z))
    (gz,) = torch.autograd.grad(pen, z)
    v = torch.randn_like(z)
    eps = 1e-5
    fd = (fixed_targets(z.detach() + eps * v) - fixed_targets(z.detach() - eps * v)) / (2 * eps)
    torch.testing.assert_close((gz * v).sum(), fd.detach(), rtol=1e-5, atol=1e-9)


def test_domains_below_the_minimum_are_left_out() -> None:
    head, x, y = _setup(n=21, seed=7)
    dom = torch.tensor([0] * 10 + [1] * 10 + [2])
    full = hessian_alignment_penalty(x[:20], y[:20], dom[:20], head, "hgp", 1.0, 1.0)
    skip = hessian_alignment_penalty(x, y, dom, head, "hgp", 1.0, 1.0, min_per_domain=2)
    torch.testing.assert_close(skip, full)
    assert float(hessian_alignment_penalty(x[:10], y[:10], dom[:10], head)) == 0.0


def test_schedule_and_settings() -> None:
    assert penalty_weight_at(5, 100.0, 10) == 1.0 and penalty_weight_at(10, 100.0, 10) == 100.0
    assert HessianAlignment().alpha == 1e-4 and HessianAlignment(variant="hutchinson").alpha == 1e-3
    with pytest.raises(ConfigError):
        HessianAlignment(variant="exact")
    with pytest.raises(ConfigError):
        HessianAlignment(alpha=-1.0)


def _blob_task():
    from trainlab import Task
    from trainlab.tasks.domains import make_domain_bundle

    def data(seed: int = 0):
        g = torch.Generator().manual_seed(seed)

        def dom(off):
            yy = torch.randint(0, 3, (120,), generator=g)
            xx = torch.randn(120, 2, generator=g) + 3 * F.one_hot(yy, 3)[:, :2] + off
            return {"train_x": xx[:80], "train_y": yy[:80], "test_x": xx[80:], "test_y": yy[80:]}

        return make_domain_bundle({"a": dom(0.0), "b": dom(0.5), "c": dom(2.0)}, ["a", "b"], ["c"], num_classes=3,
                                  name="blobs3", val_fraction=0.2, seed=seed)

    class Net(torch.nn.Module):
        def __init__(self, shape, classes):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Linear(shape[0], 8), torch.nn.ReLU())
            self.head = torch.nn.Linear(8, classes)

        def forward(self, x):
            return self.head(self.features(x))

    return Task("blobs3", make_data=data, make_model=Net, epochs=2, lr=0.01, batch_size=32, optimizer="adam")


def test_technique_adds_the_penalty_in_the_trainer() -> None:
    from trainlab.training.trainer import run_training as train

    task = _blob_task()
    base = train(task, [], seed=0)
    hgp = train(task, [HessianAlignment(alpha=1.0, beta=1.0)], seed=0)
    hut = train(task, [HessianAlignment(variant="hutchinson", alpha=1.0, beta=1.0, samples=8)], seed=0)
    for r in (hgp, hut):
        assert r.status == "finished"
        assert r.epochs[-1]["ha_gradient_term"] > 0 and r.epochs[-1]["ha_hessian_term"] > 0
    assert hgp.final["test_acc"] != base.final["test_acc"] or hgp.final["train_loss"] != base.final["train_loss"]


def test_technique_refuses_single_domain_data() -> None:
    from trainlab import Task
    from trainlab.tasks.task import DataBundle
    from trainlab.training.trainer import run_training as train

    def data(seed: int = 0):
        x, y = torch.randn(40, 2), torch.arange(40) % 2
        return DataBundle(x[:32], y[:32], x[32:], y[32:], num_classes=2, name="plain")

    task = Task("plain", make_data=data, make_model=lambda shape, c: torch.nn.Linear(shape[0], c), epochs=1)
    with pytest.raises(ConfigError, match="multi-domain"):
        train(task, [HessianAlignment()], seed=0)
