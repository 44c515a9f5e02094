"""Tversky similarity and projection layer against hand computations, symmetry and gradcheck."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.layers.tversky import (CLAIMS, INTERSECTIONS, TverskyHead, TverskyProjection, noisy_xor,
                                                single_linear, tversky_similarity, xor_task)

# Features = identity on R^3, so the feature scores are the coordinates themselves:
# a . f = (2, 1, -1), b . f = (1, 3, 2). Feature 0, 1 shared; feature 2 only in B.
A = torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64)
B = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
EYE = torch.eye(3, dtype=torch.float64)
ALPHA, BETA, THETA = 0.5, 0.25, 2.0

# common-feature measure by hand over the shared features 0 and 1: (2,1) and (1,3)
COMMON = {"product": 2 * 1 + 1 * 3, "min": 1 + 1, "max": 2 + 3, "mean": 1.5 + 2.0, "gmean": 2 ** 0.5 + 3 ** 0.5}
# ignorematch: A - B has no features (feature 2 is not in A); B - A = feature 2 with b . f = 2
IGNORE = (0.0, 2.0)
# substractmatch: shared features only; feature 0: a > b by 1 (A - B); feature 1: b > a by 2 (B - A)
SUBTRACT = (1.0, 2.0)


@pytest.mark.parametrize("intersection", INTERSECTIONS)
@pytest.mark.parametrize("difference", ["ignorematch", "substractmatch"])
def test_similarity_equals_hand_computation(intersection: str, difference: str) -> None:
    a_only, b_only = IGNORE if difference == "ignorematch" else SUBTRACT
    expected = THETA * COMMON[intersection] - ALPHA * a_only - BETA * b_only
    got = tversky_similarity(A, B, EYE, ALPHA, BETA, THETA, intersection, difference)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_feature_bank_enters_through_dot_products() -> None:
    # a rotated bank with rotated objects gives the same similarity
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    direct = tversky_similarity(A, B, EYE, ALPHA, BETA, THETA)
    rotated = tversky_similarity(A @ q, B @ q, EYE @ q, ALPHA, BETA, THETA)
    assert rotated.item() == pytest.approx(direct.item(), abs=1e-10)


@pytest.mark.parametrize("intersection", INTERSECTIONS)
@pytest.mark.parametrize("difference", ["ignorematch", "substractmatch"])
def test_symmetric_when_alpha_equals_beta(intersection: str, difference: str) -> None:
    g = torch.Generator().manual_seed(1)
    a, b, f = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((20, 6), (20, 6), (12, 6)))
    ab = tversky_similarity(a, b, f, 0.7, 0.7, 1.3, intersection, difference)
    ba = tversky_similarity(b, a, f, 0.7, 0.7, 1.3, intersection, difference)
    torch.testing.assert_close(ab, ba)


def test_asymmetric_when_alpha_differs_from_beta() -> None:
    # hand case: S(a,b) - S(b,a) = (beta - alpha)(f(A-B) - f(B-A)) = (0.25 - 0.5)(0 - 2) = 0.5 for ignorematch
    ab = tversky_similarity(A, B, EYE, ALPHA, BETA, THETA, "product", "ignorematch")
    ba = tversky_similarity(B, A, EYE, ALPHA, BETA, THETA, "product", "ignorematch")
    assert (ab - ba).item() == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("intersection", INTERSECTIONS)
@pytest.mark.parametrize("difference", ["ignorematch", "substractmatch"])
def test_gradcheck_float64(intersection: str, difference: str) -> None:
    g = torch.Generator().manual_seed(2)
    # away from the indicators' jumps (scores bounded away from 0 and from each other) the map is smooth
    a = torch.tensor([[1.3, -0.7, 2.1]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.4, 1.6, 0.9]], dtype=torch.float64, requires_grad=True)
    f = (torch.eye(3, dtype=torch.float64) + 0.05 * torch.randn(3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    params = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.5, 0.3, 1.2))
    assert torch.autograd.gradcheck(
        lambda a_, b_, f_, al, be, th: tversky_similarity(a_, b_, f_, al, be, th, intersection, difference),
        (a, b, f, *params))


def test_projection_is_similarity_to_each_prototype() -> None:
    torch.manual_seed(0)
    layer = TverskyProjection(5, 4, 7, alpha=0.3, beta=0.6, theta=1.1, intersection="min",
                              difference="ignorematch").double()
    x = torch.randn(6, 5, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (6, 4)
    for i in range(6):
        for j in range(4):
            want = tversky_similarity(x[i], layer.prototypes[j], layer.features, layer.alpha, layer.beta,
                                      layer.theta, "min", "ignorematch")
            assert out[i, j].item() == pytest.approx(want.item(), abs=1e-12)
    assert sum(p.numel() for p in layer.parameters()) == 4 * 5 + 7 * 5 + 3


def test_projection_gradcheck_float64() -> None:
    torch.manual_seed(3)
    layer = TverskyProjection(3, 2, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_bad_settings_raise() -> None:
    with pytest.raises(ConfigError):
        tversky_similarity(A, B, EYE, 1, 1, 1, intersection="median")
    with pytest.raises(ConfigError):
        TverskyProjection(3, 2, 4, difference="xor")
    with pytest.raises(ConfigError):
        TverskyHead(num_features=0)
    with pytest.raises(ConfigError):
        TverskyProjection(3, 2, 4)(torch.randn(2, 5))


def test_head_replaces_the_classifier() -> None:
    from trainlab.tasks.models import build_model

    model = build_model("mlp", (64,), 10, width=128, depth=2)
    out = TverskyHead(num_features=64).prepare(model, None)
    assert isinstance(out.head, TverskyProjection) and out.head.num_prototypes == 10
    assert not any(isinstance(m, nn.Linear) and m.out_features == 10 for m in out.modules())
    assert out(torch.randn(3, 64)).shape == (3, 10)
    assert sum(p.numel() for p in out.parameters()) == 26122 - 1290 + 9475   # the counts in the claim's notes


def test_xor_data_and_linear_model() -> None:
    data = noisy_xor(repeats=5, noise=0.0)
    assert data.train_x.shape == (20, 2)
    assert torch.equal(data.train_y, (data.train_x[:, 0] != data.train_x[:, 1]).long())
    model = single_linear((2,), 2)
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [nn.Linear]
    assert isinstance(TverskyHead(num_features=4).prepare(model, None)[1], TverskyProjection)
    assert xor_task.make_data().num_classes == 2


def test_one_tversky_layer_represents_xor_by_hand() -> None:
    # features f1 = (1, -2), f2 = (-2, 1): (0,0) and (1,1) have no features, (1,0) = {f1: 1}, (0,1) = {f2: 1}.
    # class 0: empty prototype (0, 0): S = -alpha f(X); class 1: prototype (-1, -1) with scores (1, 1):
    # S = theta * (shared product) - alpha * (x only) - beta * (prototype only).
    layer = TverskyProjection(2, 2, 2, alpha=0.5, beta=0.5, theta=1.0, intersection="product",
                              difference="ignorematch")
    with torch.no_grad():
        layer.features.copy_(torch.tensor([[1.0, -2.0], [-2.0, 1.0]]))
        layer.prototypes.copy_(torch.tensor([[0.0, 0.0], [-1.0, -1.0]]))
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([[0.0, -1.0], [-0.5, 0.5], [-0.5, 0.5], [0.0, -1.0]])
    torch.testing.assert_close(layer(x), expected)
    assert torch.equal(layer(x).argmax(1), torch.tensor([0, 1, 1, 0]))


def test_claims_are_well_formed() -> None:
    ids = {c.id for c in CLAIMS}
    assert ids == {"tversky-xor", "tversky-head-digits"}
    xor = next(c for c in CLAIMS if c.id == "tversky-xor")
    assert xor.task.endswith("tversky.py:xor_task") and xor.allow_collapse == ("baseline",)
