"""Subspace training (Li et al., 2018, arXiv:1804.08838): the reparametrization theta_0 + P theta_d,
its projections (dense, Fastfood) against their formulas, the technique, and the d_int sweep."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.diagnostics.intrinsic_dimension import (
    Fastfood, IntrinsicSubspace, SubspaceModel, crossing_dimension, dense_projection, fwht, intrinsic_dimension)
from trainlab.errors import ConfigError


def _mlp(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7)] + ([nn.BatchNorm1d(7)] if bn else []) + [nn.Tanh(), nn.Linear(7, 3)]
    return nn.Sequential(*layers)


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


# ------------------------------------------------------------------------------------------ projections

def test_fwht_is_the_sylvester_hadamard_matrix() -> None:
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ _sylvester(16))
    # H H = n I: applying it twice gives n x
    torch.testing.assert_close(fwht(fwht(x)), 16 * x)
    with pytest.raises(ConfigError):
        fwht(torch.randn(12))


def test_dense_columns_have_unit_norm() -> None:
    p = dense_projection(500, 20, torch.Generator().manual_seed(0))
    assert p.shape == (500, 20)
    torch.testing.assert_close(p.norm(dim=0), torch.ones(20))


@pytest.mark.parametrize("D,d", [(13, 5), (64, 64), (100, 7)])
def test_fastfood_equals_the_official_formula_as_a_matrix(D: int, d: int) -> None:
    """(H G Pi H B)[:D, :d] / (sqrt(L sum G^2) sqrt(D/L)) built from explicit matrices, as in
    tf_fastfood_transform: pad x to L, multiply by B, H, gather by Pi, multiply by G, H, slice, divide."""
    ff = Fastfood.draw(D, d, torch.Generator().manual_seed(3), dtype=torch.float64)
    L = ff.size
    assert L == 2 ** math.ceil(math.log2(D))
    H = _sylvester(L)
    B = torch.diag(ff.signs)
    Pi = torch.eye(L, dtype=torch.float64)[ff.perm]        # (Pi y)[i] = y[perm[i]]
    G = torch.diag(ff.gauss)
    divisor = math.sqrt(L * float((ff.gauss ** 2).sum())) * math.sqrt(D / L)
    explicit = (H @ G @ Pi @ H @ B)[:D, :d] / divisor
    built = ff(torch.eye(d, dtype=torch.float64)).T
    torch.testing.assert_close(built, explicit)


def test_fastfood_columns_are_unit_norm_before_the_slice_and_close_after() -> None:
    # D = L: nothing is sliced away and every column has unit norm exactly
    ff = Fastfood.draw(256, 32, torch.Generator().manual_seed(1), dtype=torch.float64)
    cols = ff(torch.eye(32, dtype=torch.float64)).norm(dim=1)
    torch.testing.assert_close(cols, torch.ones(32, dtype=torch.float64))
    # D < L: the sqrt(D/L) scaling makes squared norms 1 on average (over columns and draws)
    sq = torch.cat([Fastfood.draw(3000, 50, torch.Generator().manual_seed(s), dtype=torch.float64)(
        torch.eye(50, dtype=torch.float64)).norm(dim=1) ** 2 for s in range(4)])
    assert abs(float(sq.mean()) - 1.0) < 0.05
    # and a random vector keeps its length approximately
    x = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ratio = float(Fastfood.draw(3000, 50, torch.Generator().manual_seed(5), dtype=torch.float64)(x).norm() / x.norm())
    assert 0.8 < ratio < 1.2


def test_fastfood_refuses_d_above_D() -> None:
    with pytest.raises(ConfigError, match="d <= D"):
        Fastfood.draw(10, 11)


# ------------------------------------------------------------------------------------------ the model

@pytest.mark.parametrize("projection", ["dense", "fastfood"])
def test_outputs_equal_the_original_at_theta_d_zero(projection: str) -> None:
    x = torch.randn(6, 5)
    model = _mlp(bn=True)
    model.eval()
    ref = model(x)
    sub = SubspaceModel(model, 10, projection, seed=0)
    sub.eval()
    torch.testing.assert_close(sub(x), ref, rtol=0, atol=0)
    assert [n for n, _ in sub.named_parameters()] == ["theta_d"]
    assert sub.num_params == 5 * 7 + 7 + 7 + 7 + 7 * 3 + 3


def test_outputs_at_nonzero_theta_d_equal_the_model_with_theta0_plus_P_theta_d() -> None:
    x = torch.randn(6, 5)
    twin = _mlp(seed=1)
    sub = SubspaceModel(_mlp(seed=1), 8, "fastfood", seed=2)
    with torch.no_grad():
        sub.theta_d.normal_()
        theta = sub.theta_0() + sub.projection_matrix() @ sub.theta_d
        torch.nn.utils.vector_to_parameters(theta, twin.parameters())
    torch.testing.assert_close(sub(x), twin(x))


@pytest.mark.parametrize("projection", ["dense", "fastfood"])
def test_gradient_is_P_transpose_times_the_full_gradient(projection: str) -> None:
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    full = _mlp(seed=4)
    nn.functional.cross_entropy(full(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in full.parameters()])
    sub = SubspaceModel(_mlp(seed=4), 12, projection, seed=7)
    nn.functional.cross_entropy(sub(x), y).backward()
    torch.testing.assert_close(sub.theta_d.grad, sub.projection_matrix().T @ g)


def test_batchnorm_statistics_pass_through_and_update() -> None:
    x = torch.randn(16, 5) * 3 + 1
    ref, wrapped = _mlp(seed=5, bn=True), _mlp(seed=5, bn=True)
    sub = SubspaceModel(wrapped, 4, "dense", seed=0)
    ref.train(), sub.train()
    torch.testing.assert_close(sub(x), ref(x))
    bn_ref, bn_sub = ref[1], sub.module[1]
    torch.testing.assert_close(bn_sub.running_mean, bn_ref.running_mean)
    assert float(bn_sub.running_mean.abs().sum()) > 0      # moved from zero: the statistics were updated
    assert "module.1.running_mean" in sub.state_dict() and "module.0.weight" in sub.state_dict()


def test_projection_is_regenerated_from_the_seed_and_not_stored() -> None:
    a = SubspaceModel(_mlp(), 6, "dense", seed=11)
    b = SubspaceModel(_mlp(), 6, "dense", seed=11)
    c = SubspaceModel(_mlp(), 6, "dense", seed=12)
    torch.testing.assert_close(a.projection_matrix(), b.projection_matrix())
    assert not torch.allclose(a.projection_matrix(), c.projection_matrix())
    assert "matrix" not in a.state_dict()
    f = SubspaceModel(_mlp(), 6, "fastfood", seed=11)
    assert not any(t.numel() >= f.num_params * f.d for t in f.buffers())  # no dense D x d matrix held


def test_full_subspace_reaches_the_full_models_minimum_and_a_small_one_does_not() -> None:
    """Least squares with a linear model (D = 4): with d = D the (invertible) dense P reaches the
    exact minimum, found in closed form; with d = 1 the minimum over a line is higher."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(40, 1, generator=g, dtype=torch.float64)
    design = torch.cat((x, torch.ones(40, 1, dtype=torch.float64)), 1)
    best = float(((design @ torch.linalg.lstsq(design, y).solution - y) ** 2).mean())

    def fit(d: int) -> float:
        torch.manual_seed(0)
        sub = SubspaceModel(nn.Linear(3, 1).double(), d, "dense", seed=1)
        opt = torch.optim.LBFGS(sub.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = ((sub(x) - y) ** 2).mean()
            loss.backward()
            return loss
        opt.step(closure)
        return float(((sub(x) - y) ** 2).mean().detach())

    assert fit(4) == pytest.approx(best, abs=1e-9)
    assert fit(1) > best + 1e-3


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="projection"):
        SubspaceModel(_mlp(), 3, "sparse")
    with pytest.raises(ConfigError, match="d must"):
        SubspaceModel(_mlp(), 0)
    with pytest.raises(ConfigError, match="either d or fraction"):
        IntrinsicSubspace(d=3, fraction=0.1)
    with pytest.raises(ConfigError, match="either d or fraction"):
        IntrinsicSubspace()
    with pytest.raises(ConfigError, match="fraction"):
        IntrinsicSubspace(fraction=-1.0)


# ------------------------------------------------------------------------------------------ technique

def test_technique_trains_only_d_parameters_in_a_run() -> None:
    from trainlab.training.trainer import run_training

    full = run_training("blobs-mlp", seed=0)
    r = run_training("blobs-mlp", [("intrinsic-subspace", {"fraction": 0.05})], seed=0)
    assert r.status == "finished"
    d = max(1, round(0.05 * full.params))
    assert r.trainable_params == d
    assert r.final["subspace_dim"] == d and r.final["native_dim"] == full.params


def test_technique_draws_its_subspace_from_the_run_seed() -> None:
    def prepared(run_seed: int) -> SubspaceModel:
        model = _mlp()                 # (seeds the global generator itself)
        torch.manual_seed(run_seed)    # as the Trainer does before building and preparing
        return IntrinsicSubspace(d=3).prepare(model, None)

    a, b, c = prepared(0), prepared(0), prepared(1)
    assert a.seed == b.seed != c.seed
    assert IntrinsicSubspace(d=3, seed=5).prepare(_mlp(), None).seed == 5


# ------------------------------------------------------------------------------------------ d_int

def test_crossing_dimension_interpolates_linearly() -> None:
    # target 0.8 lies between d=10 (0.6) and d=20 (1.0): halfway, d = 15
    assert crossing_dimension([10, 20, 40], [0.6, 1.0, 1.0], 0.8) == pytest.approx(15.0)
    # unsorted input, and the first crossing counts even if a larger d dips again
    assert crossing_dimension([40, 10, 20, 30], [0.9, 0.5, 0.7, 0.6], 0.6) == pytest.approx(15.0)
    assert crossing_dimension([10, 20], [0.9, 1.0], 0.8) == 10.0    # already reached at the smallest d
    assert crossing_dimension([10, 20], [0.1, 0.2], 0.8) is None


def test_intrinsic_dimension_on_a_tiny_task() -> None:
    from trainlab.training.trainer import run_training

    lines: list[str] = []
    res = intrinsic_dimension("blobs-mlp", dims=[1, 4, 32], seeds=(0,), log=lines.append,
                              subspace_overrides={"optimizer": "adam", "lr": 0.05, "weight_decay": 0.0})
    # the full value is the plain run's (same seed, same settings)
    assert res.full_values == [pytest.approx(run_training("blobs-mlp", seed=0).final["test_acc"])]
    assert sorted(res.values) == [1, 4, 32] and all(len(v) == 1 for v in res.values.values())
    means = res.mean_values
    assert res.d_int == crossing_dimension(list(means), list(means.values()), 0.9 * res.full_value)
    assert res.num_params > 32
    assert len(lines) == 1 + 3 + 1      # full model, three dimensions, the summary
    assert ("d_int90 = " in lines[-1]) == (res.d_int is not None)
    with pytest.raises(ConfigError):
        intrinsic_dimension("blobs-mlp", dims=[0])


def test_claims_use_the_stated_dimensions() -> None:
    from trainlab.claims.registry import all_claims
    from trainlab.diagnostics import intrinsic_dimension as mod
    from trainlab.tasks.models import MLP

    counts = {w: sum(p.numel() for p in MLP((64,), 10, width=w, depth=2).parameters()) for w in (64, 128, 256)}
    assert counts == {64: 8_970, 128: 26_122, 256: 85_002}      # the D values the claims' notes state
    assert mod._D_FIXED == round(0.02 * counts[64]) == 179
    claims = all_claims()
    main = claims["intrinsic-dim-digits-mlp"]
    assert main.baseline_scale == 0.9 and main.treatment.techniques[0] == ("intrinsic-subspace", {"fraction": 0.02})
    for w in (64, 128, 256):
        c = claims[f"intrinsic-dim-digits-mlp-width{w}"]
        assert c.overrides["model_kwargs"] == {"width": w}
        assert c.treatment.techniques[0] == ("intrinsic-subspace", {"d": 179})
        assert f"{counts[w]:,}" in c.notes
