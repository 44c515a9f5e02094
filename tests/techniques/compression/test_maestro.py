"""Maestro (Horváth et al. 2024): factorized layers, ordered dropout over rank, group lasso, shrinking."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import CheckpointError, ConfigError
from trainlab.techniques.compression import maestro as M
from trainlab.techniques.compression.artifact import dense_bytes


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 6, 3, stride=2, padding=1, dilation=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 8, 20), nn.ReLU(), nn.Linear(20, 5))


@pytest.mark.parametrize("layer", [
    nn.Linear(7, 5), nn.Linear(4, 9, bias=False),
    nn.Conv1d(3, 4, 3, stride=2, padding=1), nn.Conv2d(3, 8, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
])
def test_full_rank_factorization_equals_the_dense_layer(layer: nn.Module) -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 7) if isinstance(layer, nn.Linear) and layer.in_features == 7 else \
        torch.randn(4, 4) if isinstance(layer, nn.Linear) else \
        torch.randn(2, 3, 11) if isinstance(layer, nn.Conv1d) else torch.randn(2, 3, 9, 8)
    low = M.LowRankLayer.from_dense(layer)
    assert low.rank == min(layer.weight.shape[0], layer.weight[0].numel())
    torch.testing.assert_close(low(x), layer(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low.to_dense()(x), layer(x), atol=1e-5, rtol=1e-5)


def test_svd_initialization_is_balanced_and_truncation_is_eckart_young() -> None:
    torch.manual_seed(2)
    layer = nn.Linear(12, 8)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    low = M.LowRankLayer.from_dense(layer)
    # U = A sqrt(S), V = B sqrt(S): both factors have Gram matrix diag(S)
    torch.testing.assert_close(low.weight_u.T.double() @ low.weight_u.double(), torch.diag(s), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low.weight_v.double() @ low.weight_v.T.double(), torch.diag(s), atol=1e-5, rtol=1e-5)
    r = 3
    cut = M.LowRankLayer.from_dense(layer, rank=r)
    err = (layer.weight.detach().double() - cut.dense_weight().double()).pow(2).sum()
    torch.testing.assert_close(err, s[r:].pow(2).sum(), atol=1e-5, rtol=1e-5)


def test_ordered_dropout_keeps_exactly_the_first_r_components() -> None:
    torch.manual_seed(3)
    low = M.LowRankLayer.from_dense(nn.Linear(6, 5))
    x = torch.randn(10, 6)
    for r in range(1, low.rank + 1):
        low.sample_rank = r
        expected = x @ low.weight_v[:r].T @ low.weight_u[:, :r].T + low.bias
        torch.testing.assert_close(low(x), expected)
        with torch.no_grad():                           # components past r do not matter ...
            saved = low.weight_v.clone()
            low.weight_v[r:] += 100.0
        torch.testing.assert_close(low(x), expected)
        with torch.no_grad():                           # ... component r-1 does
            low.weight_v.copy_(saved)
            low.weight_v[r - 1] += 1.0
        assert not torch.allclose(low(x), expected)
        with torch.no_grad():
            low.weight_v.copy_(saved)
    low.sample_rank = None
    torch.testing.assert_close(low(x), x @ (low.weight_u @ low.weight_v).T + low.bias)


def test_group_lasso_and_importance_by_hand() -> None:
    u = torch.tensor([[3.0, 0.0, 1.0], [4.0, 2.0, 0.0]])          # column norms 5, 2, 1
    v = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 0.5]])        # row norms 1, 3, 0.5
    low = M.LowRankLayer(u, v, None)
    vin, uout = low.group_norms(hierarchical=False)
    torch.testing.assert_close(vin, torch.tensor([1.0, 3.0, 0.5]))
    torch.testing.assert_close(uout, torch.tensor([5.0, 2.0, 1.0]))
    torch.testing.assert_close(low.importance(hierarchical=False), torch.tensor([5.0, 6.0, 0.5]))
    # hierarchical: norms of the tails [b:]
    tv = torch.tensor([math.sqrt(1 + 9 + 0.25), math.sqrt(9 + 0.25), 0.5])
    tu = torch.tensor([math.sqrt(25 + 4 + 1), math.sqrt(4 + 1), 1.0])
    vin, uout = low.group_norms(hierarchical=True)
    torch.testing.assert_close(vin, tv)
    torch.testing.assert_close(uout, tu)
    torch.testing.assert_close(low.group_lasso(True), (tv + tu).sum())
    torch.testing.assert_close(low.importance(True), tv * tu)
    model = nn.Sequential(low, nn.ReLU(), M.LowRankLayer(u, v, None))
    torch.testing.assert_close(M.group_lasso(model, False), 2 * (vin.new_tensor([1, 3, 0.5]).sum() + 8.0))


def test_hierarchical_importance_is_non_increasing_so_shrinking_keeps_a_prefix() -> None:
    torch.manual_seed(4)
    low = M.LowRankLayer(torch.randn(7, 6), torch.randn(6, 9), None)
    imp = low.importance(True)
    assert torch.all(imp[1:] <= imp[:-1])
    threshold = float(imp[3])
    low.shrink(threshold)
    assert low.rank == 4


def test_shrinking_removes_small_components_and_the_layer_shrinks() -> None:
    torch.manual_seed(5)
    u, v = torch.randn(8, 5), torch.randn(5, 10)
    u[:, 3:] *= 1e-4
    v[3:] *= 1e-4                                     # components 3, 4: importance ~1e-8 x norms
    low = M.LowRankLayer(u, v, torch.randn(8))
    model = nn.Sequential(low)
    x = torch.randn(4, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    live = model(x).pow(2).sum()                      # a graph that saw the old parameters stays alive
    live.backward()
    opt.step()
    params_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        low.weight_u.copy_(u)
        low.weight_v.copy_(v)
    removed = M.shrink(model, threshold=1e-4, optimizer=opt)
    assert removed == 2 and low.rank == 3
    assert sum(p.numel() for p in model.parameters()) == params_before - 2 * (8 + 10)
    assert low.factor_params() == 3 * 18
    kept_out = x @ v[:3].T @ u[:, :3].T + low.bias.detach()
    torch.testing.assert_close(model(x), kept_out, atol=1e-5, rtol=1e-5)
    # the optimizer now holds the new parameters, with its momentum cut to the kept components
    held = [p for g in opt.param_groups for p in g["params"]]
    assert any(p is low.weight_u for p in held) and any(p is low.weight_v for p in held)
    assert opt.state[low.weight_v]["momentum_buffer"].shape == (3, 10)
    loss = model(x).pow(2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()                                        # and training goes on at the new size
    assert low.weight_u.grad.shape == (8, 3)


def test_shrink_keeps_the_most_important_component_at_least() -> None:
    low = M.LowRankLayer(torch.ones(3, 2) * 1e-6, torch.ones(2, 3) * 1e-6, None)
    low.shrink(1.0)
    assert low.rank == 1


def test_sampler_draws_every_layer_rank_pair_once_per_pass() -> None:
    model = M.maestro_decompose(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    ranks = [m.rank for _, m in M.low_rank_layers(model)]
    assert ranks == [3, 2]
    sampler = M.RankSampler(model, torch.Generator().manual_seed(0))
    layers = [m for _, m in M.low_rank_layers(model)]
    for _ in range(2):
        seen = []
        for _ in range(5):
            with sampler.sampled() as (layer, b):
                assert layer.sample_rank == b
                assert all(m.sample_rank is None for m in layers if m is not layer)
                seen.append((layers.index(layer), b))
            assert layer.sample_rank is None
        assert sorted(seen) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]


def test_principal_directions_and_prefix_alignment() -> None:
    torch.manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    x = (torch.randn(4000, 5, dtype=torch.float64) * torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25])) @ q.T
    pcs = M.principal_directions(x, 3)
    for j in range(3):                                 # the top eigenvectors, up to sign
        assert abs(float(pcs[:, j] @ q[:, j])) > 0.99
    torch.testing.assert_close(M.prefix_alignment(q[:, :3] * 2.0, q[:, :3]), torch.ones(3, dtype=torch.float64))
    # the right subspaces in the wrong order: prefixes 1 and 2 miss, the full span of 3 is right
    swapped = q[:, [1, 0, 2]]
    torch.testing.assert_close(M.prefix_alignment(swapped, q[:, :3]),
                               torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    rotated = q[:, [2, 1, 0]]
    torch.testing.assert_close(M.prefix_alignment(rotated, q[:, :3]),
                               torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_ordered_dropout_recovers_pca_in_order_on_a_linear_autoencoder() -> None:
    """The mechanism of claim 1: E_b ||x - U_b V_b^T x||^2 over uniform b is minimized by the nested
    PCA projections, so the columns of U line up with the principal directions, in order."""
    data = M.pca_data(dim=6, n_train=1000, n_test=10, decay=0.5)
    torch.manual_seed(0)
    model = M.maestro_decompose(M.linear_autoencoder((6,), None))
    sampler = M.RankSampler(model, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    x = data.train_x
    for _ in range(600):
        loss = F.mse_loss(model(x), x)
        with sampler.sampled():
            loss = loss + F.mse_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer = M.low_rank_layers(model)[0][1]
    pcs = M.principal_directions(x, 3)
    align = M.prefix_alignment(M.output_directions(layer), pcs)
    assert torch.all(align > 0.98), align
    # and each rank-b cut reconstructs as well as the best rank-b map (Eckart-Young: the variance left over)
    xc = x.double() - x.double().mean(0)
    evals = torch.linalg.eigvalsh(xc.T @ xc / len(x)).flip(0)
    with torch.no_grad():
        for b in (1, 2, 3):
            layer.sample_rank = b
            err = (model(x) - x).double().pow(2).sum(1).mean()
            assert float(err) <= 1.05 * float(evals[b:].sum()) + 1e-4, (b, float(err), float(evals[b:].sum()))
        layer.sample_rank = None


def test_truncate_to_budget_keeps_the_most_important_prefixes_across_layers() -> None:
    # layer a: 4 inputs + 2 outputs = 6 weights per component; layer b: 3 + 3 = 6
    a = M.LowRankLayer(torch.eye(2, 2) * torch.tensor([3.0, 1.0]), torch.eye(2, 4), None)
    b = M.LowRankLayer(torch.eye(3) * torch.tensor([2.0, 1.5, 0.1]), torch.eye(3), None)
    model = nn.Sequential(a, nn.Linear(2, 3), b)
    # importances (plain): a: 3, 1; b: 2, 1.5, 0.1 -> hierarchical tails keep this order
    kept = M.truncate_to_budget(model, budget=6 * 3, hierarchical=False)
    assert (a.rank, b.rank) == (1, 2) and kept == 18
    assert M.truncate_to_budget(model, budget=1000) == 18       # already under: unchanged
    c = M.LowRankLayer(torch.eye(2) * 1e-3, torch.eye(2), None)
    model2 = nn.Sequential(c, M.LowRankLayer(torch.eye(2), torch.eye(2), None))
    assert M.truncate_to_budget(model2, budget=8) == 8            # every layer keeps one component
    assert c.rank == 1


def test_decompose_skips_layers_and_fixed_rank_rule() -> None:
    model = M.maestro_decompose(_net(), skip_last=True)
    names = [n for n, _ in M.low_rank_layers(model)]
    assert names == ["0", "3"] and isinstance(model[5], nn.Linear)
    assert M.fixed_rank(nn.Linear(40, 256), 0.125) == 5 and M.fixed_rank(nn.Linear(256, 256), 0.125) == 32
    model = M.maestro_decompose(_net(), skip_first=1, rank_ratio=0.25)
    assert [m.rank for _, m in M.low_rank_layers(model)] == [5, 2]    # ceil(0.25 * 20), ceil(0.25 * 5)
    with pytest.raises(ConfigError):
        M.maestro_decompose(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError):
        M.LowRankLayer.from_dense(nn.Linear(3, 3), rank=4)


def test_densify_if_larger_turns_back_layers_that_do_not_save_weights() -> None:
    model = M.maestro_decompose(_net())
    x = torch.randn(3, 2, 16)
    before = model(x)
    M.densify_if_larger(model)
    # the full-rank factorizations hold more weights than dense layers: all three turn dense again
    assert not M.low_rank_layers(model)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_artifact_round_trip(tmp_path) -> None:
    model = M.maestro_decompose(_net(), rank_ratio=0.5)
    M.shrink(model, 0.0)
    x = torch.randn(3, 2, 16)
    size = M.save_factors(tmp_path / "m.pt", model)
    fresh = _net()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)                                 # different values: everything must come from the file
    M.load_factors(tmp_path / "m.pt", fresh)
    torch.testing.assert_close(fresh(x), model(x))
    assert [m.rank for _, m in M.low_rank_layers(fresh)] == [m.rank for _, m in M.low_rank_layers(model)]
    # on a layer big enough for the file's fixed overhead not to matter, the factors are the smaller file
    big = M.maestro_decompose(nn.Sequential(nn.Linear(256, 256)), rank_ratio=1 / 16)
    assert M.save_factors(tmp_path / "big.pt", big) < 0.2 * dense_bytes(nn.Linear(256, 256))
    assert size > 0
    with pytest.raises(CheckpointError):
        M.load_factors(tmp_path / "m.pt", nn.Sequential(nn.Linear(2, 2)))


def test_maestro_technique_trains_shrinks_and_reports() -> None:
    from trainlab.training.trainer import run_training

    result = run_training("blobs-mlp", [("maestro", {"gp_lambda": 0.05, "threshold": 1e-2, "skip_last": True,
                                                     "budget_rank_ratio": 0.25})], seed=0)
    final = result.final
    assert result.status == "finished"
    assert final["factor_params"] <= final["factor_param_ratio"] * 1e9
    assert final["budget_params"] <= final["budget_target"]
    assert 0.0 <= final["budget_test_acc"] <= 1.0
    ranks = [e["rank_l0"] for e in result.epochs]
    assert all(b <= a for a, b in zip(ranks, ranks[1:]))      # ranks only shrink
    assert ranks[-1] < 16                                     # the strong group lasso removed components


def test_low_rank_technique_trains_at_the_fixed_rank() -> None:
    from trainlab.training.trainer import run_training

    result = run_training("blobs-mlp", [("low-rank", {"rank_ratio": 0.25, "skip_last": True,
                                                      "budget_rank_ratio": 0.25})], seed=0)
    final = result.final
    # blobs-mlp: 16 -> 32 -> 32 -> 4; ranks ceil(0.25 * 16) = 4 and ceil(0.25 * 32) = 8
    assert (final["rank_l0"], final["rank_l1"]) == (4, 8)
    assert final["factor_params"] == 4 * (16 + 32) + 8 * (32 + 32) == final["budget_target"]
    assert final["budget_test_acc"] == final["test_acc"]


def test_settings_are_checked() -> None:
    from trainlab.techniques.registry import build_technique

    with pytest.raises(ConfigError):
        build_technique("maestro", {"gp_lambda": -1.0})
    with pytest.raises(ConfigError):
        build_technique("low-rank", {"rank_ratio": 1.5})
    with pytest.raises(ConfigError):
        build_technique("maestro", {"budget_rank_ratio": 0.0})


def test_sampled_only_step_resets_the_rank_and_convs_train() -> None:
    from trainlab.training.trainer import run_training

    result = run_training("blobs-mlp", [("maestro", {"full_pass": False, "gp_lambda": 0.0})], seed=0)
    assert result.status == "finished" and result.final["rank_l0"] == 16
    from trainlab.tasks.registry import get_task

    task = get_task("digits-cnn").with_overrides({"train_subset": 256, "epochs": 1})
    cnn = run_training(task, [("maestro", {"gp_lambda": 1e-3})], seed=0)
    assert cnn.status == "finished" and cnn.final["factor_params"] > 0
