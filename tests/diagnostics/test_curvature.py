"""Curvature estimators against the exact Hessian (torch.func.hessian on the flattened parameters)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.diagnostics.curvature import (
    HessianOperator,
    Sharpness,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    spectral_density,
    stability_limit,
    top_eigenvalues,
)
from trainlab.errors import ConfigError


def mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(6, 10)]
    if bn:
        layers.append(nn.BatchNorm1d(10))
    layers += [nn.Tanh(), nn.Linear(10, 3)]
    return nn.Sequential(*layers).double()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)]
    return nn.Sequential(*layers).double()


def data(n: int = 64, image: bool = False, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g) if image else torch.randn(n, 6, generator=g)
    return x.double(), torch.randint(0, 3, (n,), generator=g)


def trained_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BatchNorm running statistics that differ from the batch's (so bn_mode matters)."""
    model.train()
    with torch.no_grad():
        model(x * 2 + 1)
    return model


MODELS = {
    "mlp": lambda: (mlp(), data()),
    "mlp-bn": lambda: (trained_bn(mlp(True), data()[0]), data()),
    "cnn": lambda: (trained_bn(cnn(), data(image=True)[0]), data(image=True)),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    model, (x, y) = MODELS[request.param]()
    H = HessianOperator(model, x, y)
    M = H.matrix()
    return H, M, torch.linalg.eigvalsh(M)


def test_hvp_equals_the_exact_hessian_times_v(case) -> None:
    H, M, _ = case
    torch.testing.assert_close(M, M.T, atol=1e-10, rtol=0)
    v = torch.randn(H.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(H(v), M @ v, atol=1e-10, rtol=1e-8)


def test_hand_computed_hessian_of_least_squares() -> None:
    """Linear model, loss mean((Xw + b - t)^2): H = 2/N [X 1]^T [X 1] (a user loss callable)."""
    x, _ = data(40)
    t = torch.randn(40, 1, dtype=torch.float64)
    model = nn.Linear(6, 1).double()
    H = HessianOperator(model, x, t, F.mse_loss, chunk_size=7)
    xa = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)  # weight then bias, parameter order
    torch.testing.assert_close(H.matrix(), 2 * xa.T @ xa / 40, atol=1e-12, rtol=1e-10)
    # Lanczos on a 7-dim operator reaches an invariant subspace: all eigenvalues, exactly
    exact = torch.linalg.eigvalsh(2 * xa.T @ xa / 40).flip(0)
    torch.testing.assert_close(top_eigenvalues(H, k=7, max_iter=7).values, exact, atol=1e-10, rtol=1e-10)


def test_lanczos_top_eigenvalues_and_vectors(case) -> None:
    H, M, exact = case
    eig = top_eigenvalues(H, k=3, tol=1e-8, max_iter=H.dim)
    assert eig.converged
    torch.testing.assert_close(eig.values, exact.flip(0)[:3], atol=1e-7, rtol=1e-6)
    for i in range(3):  # H u = lambda u
        u = eig.vectors[:, i]
        torch.testing.assert_close(M @ u, eig.values[i] * u, atol=1e-5, rtol=0)
    assert eig.matvecs < H.dim  # it is a Krylov method, not a full decomposition


def test_power_iteration_with_deflation(case) -> None:
    _, M, exact = case
    by_magnitude = exact[exact.abs().argsort(descending=True)][:2]
    eig = top_eigenvalues(M, k=2, method="power", tol=1e-12, max_iter=5000)
    torch.testing.assert_close(eig.values, by_magnitude, atol=1e-6, rtol=1e-5)


def test_estimators_are_seeded_and_leave_the_global_rng_alone(case) -> None:
    H, _, _ = case
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = hutchpp_trace(H, 12, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert a == hutchpp_trace(H, 12, seed=3)
    assert a.estimate != hutchpp_trace(H, 12, seed=4).estimate
    torch.testing.assert_close(top_eigenvalues(H, seed=1).values, top_eigenvalues(H, seed=1).values, atol=0, rtol=0)


def test_hutchpp_is_exact_with_a_full_sketch_and_close_with_fewer(case) -> None:
    H, M, _ = case
    exact = float(M.trace())
    full = hutchpp_trace(M, 3 * H.dim)
    assert full.stderr == 0.0 and math.isclose(full.estimate, exact, rel_tol=1e-8)
    # as many matvecs as the dimension (a sketch of a third of it): within 8% of the trace on each
    # seed (these spectra decay slowly; errors measured: at most 5%), and within 4 standard errors
    for seed in range(5):
        est = hutchpp_trace(M, H.dim, seed=seed)
        assert abs(est.estimate - exact) <= 0.08 * abs(exact)
        assert abs(est.estimate - exact) <= 4 * est.stderr
        assert est.matvecs == 2 * math.ceil(H.dim / 3) + H.dim // 3


def test_hutchpp_is_the_official_formula() -> None:
    """Meyer et al.'s simple_hutchplusplus.m, given the same sign matrices S and G:
    [Q,~] = qr(A*S,0); G = G - Q*(Q'*G); trace(Q'*A*Q) + 1/size(G,2)*trace(G'*A*G)."""
    from trainlab.diagnostics.curvature import _hutchpp, _Op

    g = torch.Generator().manual_seed(0)
    B = torch.randn(40, 40, generator=g, dtype=torch.float64)
    A = B @ B.T / 40 + torch.diag(torch.linspace(0, 5, 40, dtype=torch.float64))
    S = torch.randint(0, 2, (40, 7), generator=g).double() * 2 - 1
    G = torch.randint(0, 2, (40, 6), generator=g).double() * 2 - 1
    Q, _ = torch.linalg.qr(A @ S)
    Gp = G - Q @ (Q.T @ G)
    official = float(torch.trace(Q.T @ A @ Q) + torch.trace(Gp.T @ A @ Gp) / 6)
    est = _hutchpp(_Op(A, None), S, G)
    assert est.estimate == pytest.approx(official, rel=1e-12) and est.matvecs == 7 + 7 + 6


def test_hutchinson_is_unbiased_with_its_standard_error(case) -> None:
    _, M, _ = case
    exact = float(M.trace())
    est = hutchinson_trace(M, 400, seed=0)
    assert abs(est.estimate - exact) <= 4 * est.stderr
    # Rademacher variance of z^T M z is 2 * sum_{i != j} M_ij^2: the standard error estimates it
    var = 2 * float((M ** 2).sum() - (M.diagonal() ** 2).sum())
    assert 0.7 < est.stderr / math.sqrt(var / 400) < 1.3


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum() -> None:
    """Meyer et al.'s point: for a fast-decaying spectrum, the same matvecs give a smaller error."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(0.8 ** torch.arange(200, dtype=torch.float64)) @ Q.T
    exact = float(A.trace())
    err_h = [abs(hutchinson_trace(A, 30, seed=s).estimate - exact) for s in range(20)]
    err_pp = [abs(hutchpp_trace(A, 30, seed=s).estimate - exact) for s in range(20)]
    assert sum(err_pp) < 0.5 * sum(err_h)  # measured: 0.31


def test_lanczos_tridiagonal_is_the_projection() -> None:
    g = torch.Generator().manual_seed(0)
    B = torch.randn(30, 30, generator=g, dtype=torch.float64)
    A = B + B.T
    lz = lanczos(A, 12, seed=0)
    Qb = lz.basis
    torch.testing.assert_close(Qb.T @ Qb, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(Qb.T @ A @ Qb, lz.tridiagonal(), atol=1e-10, rtol=0)


def test_slq_density_moments(case) -> None:
    H, M, exact = case
    runs = 30
    sd = spectral_density(M, num_runs=runs, num_steps=20, seed=0)
    dx = float(sd.grid[1] - sd.grid[0])
    assert abs(float(sd.density.sum()) * dx - 1) < 1e-6
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(runs, dtype=torch.float64), atol=1e-10, rtol=0)
    mean = float((sd.density * sd.grid).sum()) * dx
    # the density's mean is the runs' average of v^T H v for unit v: unbiased for trace / n
    per_run = (sd.weights * sd.nodes).sum(1)
    assert abs(mean - float(per_run.mean())) < 1e-6 * abs(mean)
    assert abs(mean - float(M.trace()) / H.dim) <= 4 * float(per_run.std()) / math.sqrt(runs)
    assert float(sd.nodes.min()) >= float(exact[0]) - 1e-8 and float(sd.nodes.max()) <= float(exact[-1]) + 1e-8
    # the extreme Ritz values converge first: the top one is found by every run
    torch.testing.assert_close(sd.nodes.max(1).values, exact[-1].expand(runs), atol=1e-6, rtol=1e-5)


def test_slq_mean_is_exactly_the_quadratic_forms() -> None:
    """sum_j w_j theta_j = e1^T T e1 = v^T A v per run, for any number of Lanczos steps."""
    A = torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64))
    sd = spectral_density(A, num_runs=4, num_steps=5, seed=0)
    per_run = (sd.weights * sd.nodes).sum(1)
    # Rademacher / sqrt(n): v^T diag(d) v = mean(d) for every v
    torch.testing.assert_close(per_run, torch.full((4,), 20.5, dtype=torch.float64), atol=1e-10, rtol=0)


def test_full_set_chunked_hvp_equals_one_batch(case) -> None:
    H, _, _ = case
    x = torch.cat([x for x, _ in H.chunks])
    y = torch.cat([y for _, y in H.chunks])
    chunked = HessianOperator(H.model, x, y, chunk_size=9)
    assert len(chunked.chunks) == math.ceil(len(x) / 9)
    v = torch.randn(H.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(chunked(v), H(v), atol=1e-10, rtol=1e-8)
    assert math.isclose(chunked.loss(), H.loss(), rel_tol=1e-12)


@pytest.mark.parametrize("name", ["mlp-bn", "cnn"])
def test_bn_mode_matters_and_modes_are_restored(name: str) -> None:
    model, (x, y) = MODELS[name]()
    model.train()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    ev = HessianOperator(model, x, y, bn_mode="eval")(v)
    tr_op = HessianOperator(model, x, y, bn_mode="train")
    tr = tr_op(v)
    assert (ev - tr).norm() > 1e-3 * ev.norm()
    assert all(m.training for m in model.modules())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    for k, b in model.named_buffers():  # running statistics untouched in either mode
        assert torch.equal(b, buffers[k]), k
    model.eval()
    HessianOperator(model, x, y, bn_mode="train")(v)
    assert not any(m.training for m in model.modules())
    # train mode = the Hessian of the batch-statistics forward pass: against central differences
    # of the gradient and against torch.autograd.functional.hessian (matrix())
    model.train()
    eps, d = 1e-6, tr_op.unflatten(v)
    with _modes(model):
        g = [tr_op.flatten(torch.func.grad(lambda p: tr_op._chunk_loss(p, x, y))(
            {k: p + sign * eps * d[k] for k, p in tr_op.params.items()})) for sign in (1, -1)]
    fd = (g[0] - g[1]) / (2 * eps)
    torch.testing.assert_close(tr, fd, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(tr_op.matrix() @ v, tr, atol=1e-10, rtol=1e-8)


def _modes(model):
    from trainlab.diagnostics.curvature import _hvp_modes
    return _hvp_modes(model, "train")


def test_dropout_is_off_during_a_product() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Dropout(0.5), nn.Tanh(), nn.Linear(10, 3)).double().train()
    x, y = data()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    H = HessianOperator(model, x, y)
    torch.testing.assert_close(H(v), H(v), atol=0, rtol=0)
    assert model[1].training


# --------------------------------------------------------------------------- stability limits

def _sgd_is_stable(curvature: float, **opt) -> bool:
    """Run torch.optim.SGD on 0.5 * a * x^2 and tell whether it contracts."""
    x = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    sgd = torch.optim.SGD([x], **opt)
    for _ in range(3000):
        sgd.zero_grad()
        (0.5 * curvature * x ** 2).sum().backward()
        sgd.step()
    return abs(float(x.detach())) < 1.0


@pytest.mark.parametrize("opt", [
    dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.5, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.1, momentum=0.9, weight_decay=0.5),
    dict(lr=0.2, weight_decay=1.0),
])
def test_stability_limit_matches_simulated_sgd(opt) -> None:
    x = torch.nn.Parameter(torch.ones(1))
    limit = stability_limit(torch.optim.SGD([x], **opt))
    assert _sgd_is_stable(0.99 * limit, **opt)
    assert not _sgd_is_stable(1.01 * limit, **opt)


def test_stability_limit_values_and_adam() -> None:
    p = [torch.nn.Parameter(torch.ones(1))]
    assert stability_limit(torch.optim.SGD(p, lr=0.05)) == pytest.approx(40.0)
    assert stability_limit(torch.optim.SGD(p, lr=0.05, momentum=0.9)) == pytest.approx(76.0)
    assert math.isnan(stability_limit(torch.optim.Adam(p, lr=1e-3)))
    assert stability_limit(torch.optim.SGD(p, lr=0.0)) == math.inf


# --------------------------------------------------------------------------- the probe

def test_probe_matches_the_exact_hessian_of_the_training_loss() -> None:
    from trainlab.tasks.registry import get_task
    from trainlab.training.trainer import setup_run

    run = setup_run(get_task("blobs-mlp"), [], seed=0)
    state = run.state
    probe = Sharpness(samples=100, trace_samples=60, tol=1e-8, max_iter=300)
    x, y = state.data.train_x[:100], state.data.train_y[:100]
    H = HessianOperator(run.model, x, y, state.loss_fn)
    if H.dim > 2000:
        pytest.skip("model too large for an exact Hessian in a test")
    M = H.matrix().double()
    out = probe.measure(run.model, state)
    top = float(torch.linalg.eigvalsh(M)[-1])
    assert out["sharpness"] == pytest.approx(top, rel=1e-4)
    est = hutchpp_trace(H, 60, seed=state.seed * 1_000_003 + state.epoch + 1)
    assert out["hessian_trace"] == pytest.approx(est.estimate, rel=1e-6)
    assert abs(est.estimate - float(M.trace())) <= 4 * est.stderr
    limit = stability_limit(run.optimizer)
    assert out["stability_limit"] == limit and out["sharpness_ratio"] == pytest.approx(top / limit, rel=1e-4)
    assert set(Sharpness.metric_keys) <= set(out)


def test_probe_in_a_run_records_its_keys_and_changes_nothing() -> None:
    from trainlab.tasks.registry import get_task
    from trainlab.training.trainer import run_training

    task = get_task("blobs-mlp").with_overrides({"epochs": 2})
    a = run_training(task, [("sharpness", {"samples": 200, "trace_samples": 9})], seed=1, keep_state=True)
    base = run_training(task, [], seed=1, keep_state=True)
    for k in base.state:
        assert torch.equal(a.state[k], base.state[k]), k
    for row in a.epochs:
        assert math.isfinite(row["sharpness"]) and math.isfinite(row["hessian_trace"]) and row["sharpness"] > 0
        # the lr at measurement time (cosine schedule): never above the task's peak lr; 0 at the end
        assert row["stability_limit"] >= (2 + 2 * task.momentum) / task.lr - task.weight_decay
        assert row["sharpness_ratio"] == pytest.approx(row["sharpness"] / row["stability_limit"])
    assert row["lr"] == 0 and row["stability_limit"] == math.inf and row["sharpness_ratio"] == 0


def test_config_errors() -> None:
    model, (x, y) = mlp(), data()
    with pytest.raises(ConfigError):
        HessianOperator(model, x, y, bn_mode="batch")
    with pytest.raises(ConfigError):
        HessianOperator(model, x, y[:3])
    H = HessianOperator(model, x, y)
    with pytest.raises(ConfigError):
        H(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ConfigError):
        top_eigenvalues(H, k=0)
    with pytest.raises(ConfigError):
        top_eigenvalues(H, method="arnoldi")
    with pytest.raises(ConfigError):
        hutchpp_trace(H, 2)
    with pytest.raises(ConfigError):
        top_eigenvalues(lambda v: v, k=1)  # a callable needs dim=
    for bad in (dict(samples=0), dict(top_k=0), dict(method="x"), dict(bn_mode="x"), dict(trace_samples=1)):
        with pytest.raises(ConfigError):
            Sharpness(**bad)


def test_uncached_products_and_callable_operators_agree(case) -> None:
    H, M, exact = case
    v = torch.randn(H.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    fresh = HessianOperator(H.model, torch.cat([x for x, _ in H.chunks]), torch.cat([y for _, y in H.chunks]),
                            cache=False)
    torch.testing.assert_close(fresh(v), H(v), atol=1e-12, rtol=1e-10)
    by_callable = top_eigenvalues(lambda u: M @ u, dim=H.dim, tol=1e-8, max_iter=H.dim)
    torch.testing.assert_close(by_callable.values[0], exact[-1], atol=1e-7, rtol=1e-6)


def test_unconverged_lanczos_is_a_lower_bound(case) -> None:
    """Ritz values interlace: with too few steps the top Ritz value is below the top eigenvalue."""
    _, M, exact = case
    eig = top_eigenvalues(M, max_iter=2, tol=1e-12)
    assert not eig.converged and float(eig.values[0]) <= float(exact[-1]) + 1e-12


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_probe_sharpness_is_cohen_et_als_computation(loss: str) -> None:
    """The official edge-of-stability code (locuslab/edge-of-stability, src/utilities.py) defines
    sharpness as the top eigenvalue of the Hessian of sum-reduced loss / n over the whole training
    set, with HVPs by autograd double backward over physical batches, and eigenvalues by
    scipy.sparse.linalg.eigsh on a LinearOperator. That computation, written out here, agrees with
    the probe."""
    from types import SimpleNamespace

    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    from trainlab.training.technique import TrainState

    model, (x, y) = mlp(), data(90)
    if loss == "ce":
        summed = nn.CrossEntropyLoss(reduction="sum")
        targets = y
    else:  # their SquaredLoss: 0.5 * sum of squares, against one-hot targets
        summed = lambda out, t: 0.5 * ((out - t) ** 2).sum()  # noqa: E731
        targets = F.one_hot(y, 3).double()
    params = list(model.parameters())
    n, physical = len(x), 40

    def hvp(vec: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(vec, dtype=torch.float64).reshape(-1)
        out = torch.zeros_like(v)
        for i in range(0, n, physical):
            value = summed(model(x[i:i + physical]), targets[i:i + physical]) / n
            grads = torch.autograd.grad(value, params, create_graph=True)
            dot = torch.cat([g.reshape(-1) for g in grads]) @ v
            out += torch.cat([g.reshape(-1) for g in torch.autograd.grad(dot, params)])
        return out.numpy()

    dim = sum(p.numel() for p in params)
    official = float(eigsh(LinearOperator((dim, dim), matvec=hvp, dtype=np.float64), k=1)[0][-1])
    state = TrainState(data=SimpleNamespace(train_x=x, train_y=targets), seed=0,
                       optimizer=torch.optim.SGD(params, lr=0.1),
                       loss_fn=lambda out, t: summed(out, t) / len(out))
    out = Sharpness(tol=1e-9, max_iter=dim, trace=False, chunk_size=physical).measure(model, state)
    assert out["sharpness"] == pytest.approx(official, rel=1e-7)
    assert out["stability_limit"] == pytest.approx(20.0) and "hessian_trace" not in out
