"""Neural collapse measures against their math: an exact simplex ETF, a hand-computed NC1, NC1 against
the d x d formula, invariances, errors; the mixup boundary gap on hand-made logits and a linear map;
the probes through the Trainer."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.diagnostics.collapse import (
    AFFINE_GAP_BOUND,
    DEFAULT_LAMS,
    MixupBoundary,
    NeuralCollapse,
    between_class_covariance,
    boundary_gap_ratio,
    collapse_measures,
    different_class_pairs,
    etf_gram_distance,
    mix_boundary_gap,
    nc1,
    nc2_equiangular,
    nc2_equinorm,
    nc2_etf_distance,
    nc2_maxangle,
    nc3,
    nc4,
    neural_collapse,
    within_class_covariance,
)
from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task
from trainlab.training.trainer import run_training


def simplex_etf(num_classes: int, dim: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A simplex ETF [C, dim] (dim >= C), rotated by a random orthogonal matrix."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    etf = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    return scale * math.sqrt(num_classes / (num_classes - 1)) * etf @ q[:num_classes]


def collapsed(num_classes: int = 5, dim: int = 8, per_class: int = 4, offset: float = 3.0):
    """Features at their class means, which form a simplex ETF around a common offset."""
    means = simplex_etf(num_classes, dim)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return means[labels] + offset, labels, means


def test_exact_simplex_etf_is_fully_collapsed() -> None:
    h, y, means = collapsed()
    out = collapse_measures(h, y, 5, weight=2.5 * means, predictions=y)
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf_distance", "nc3"):
        assert out[key] == pytest.approx(0.0, abs=1e-10), key
    assert out["nc4"] == 1.0


def test_a_whole_model_with_etf_features_is_fully_collapsed() -> None:
    # one-hot inputs -> features M[y] (an ETF), classifier W = M: every measure at its collapsed value
    means = simplex_etf(4, 6).float()
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Identity(), nn.Linear(6, 4))
    with torch.no_grad():
        model[0].weight.copy_(means.T + 1.0)   # +1 keeps the features positive through the ReLU
        model[3].weight.copy_(means)
        model[3].bias.copy_(-means.sum(1))     # cancels the +1 offset: logits M M[y]^T, largest at y
    y = torch.arange(4).repeat(5)
    out = neural_collapse(model, torch.eye(4)[y], y, 4)
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf_distance", "nc3"):
        assert out[key] == pytest.approx(0.0, abs=1e-6), key
    assert out["nc4"] == 1.0 and out["nc_accuracy"] == 1.0
    assert neural_collapse(model, torch.eye(4)[y], y, 4, classifier=model[3]) == out
    with pytest.raises(ConfigError, match="nn.Linear"):
        neural_collapse(model, torch.eye(4)[y], y, 4, classifier=model[1])


def test_nc1_hand_computed() -> None:
    # class means (-1, 0), (1, 0); deviations (+-a, +-s): Sigma_B = diag(1, 0), Sigma_W = [[a^2, as], [as, s^2]]
    a, s = 0.5, 3.0
    h = torch.tensor([[-1 + a, s], [-1 - a, -s], [1 + a, s], [1 - a, -s]])
    y = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(between_class_covariance(h, y, 2), torch.tensor([[1.0, 0], [0, 0]], dtype=torch.float64))
    assert torch.allclose(within_class_covariance(h, y, 2),
                          torch.tensor([[a * a, a * s], [a * s, s * s]], dtype=torch.float64))
    # Tr(Sigma_W Sigma_B^+) / C = a^2 / 2: spread orthogonal to the means' direction does not count
    assert nc1(h, y, 2) == pytest.approx(a * a / 2)


def test_nc1_equals_the_d_by_d_trace_formula() -> None:
    g = torch.Generator().manual_seed(1)
    num_classes, dim = 4, 10
    y = torch.randint(0, num_classes, (200,), generator=g)
    h = torch.randn(200, dim, generator=g) + 2.0 * torch.randn(num_classes, dim, generator=g)[y]
    sigma_w, sigma_b = within_class_covariance(h, y, num_classes), between_class_covariance(h, y, num_classes)
    reference = torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True, rtol=1e-8)) / num_classes
    assert nc1(h, y, num_classes) == pytest.approx(float(reference), rel=1e-8)


def test_nc1_invariances() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat(30)
    h = (torch.randn(90, 6, generator=g) + 3 * torch.randn(3, 6, generator=g)[y]).double()
    base = nc1(h, y, 3)
    assert base > 0
    perm = torch.randperm(90, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert nc1(7.5 * h, y, 3) == pytest.approx(base, rel=1e-9)          # scale
    assert nc1(h[perm], y[perm], 3) == pytest.approx(base, rel=1e-9)     # order of the samples
    assert nc1(h + 4.0, y, 3) == pytest.approx(base, rel=1e-9)           # translation
    assert nc1(h @ q, y, 3) == pytest.approx(base, rel=1e-9)             # rotation
    # more within-class spread, more NC1: doubling the deviations from the class means quadruples it
    means = torch.stack([h[y == c].mean(0) for c in range(3)])
    assert nc1(means[y] + 2 * (h - means[y]), y, 3) == pytest.approx(4 * base, rel=1e-9)


def test_nc2_measures_on_hand_made_means() -> None:
    # three centered means at angles 0, 90, 180 degrees with norms 1, 2, 1 (no sample spread)
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    shift = means.mean(0)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    h = means[y]
    centered = means - shift
    norms = centered.norm(dim=1)
    assert nc2_equinorm(h, y, 3) == pytest.approx(float(norms.std() / norms.mean()), rel=1e-6)
    unit = centered / norms[:, None]
    cos = [float(unit[i] @ unit[j]) for i in range(3) for j in range(3) if i != j]
    assert nc2_equiangular(h, y, 3) == pytest.approx(float(torch.tensor(cos).std()), rel=1e-6)
    assert nc2_maxangle(h, y, 3) == pytest.approx(sum(abs(c + 0.5) for c in cos) / 6, rel=1e-6)
    assert nc2_etf_distance(h, y, 3) > 0.1


def test_etf_distance_is_zero_only_for_a_simplex() -> None:
    assert etf_gram_distance(simplex_etf(6, 9, scale=11.0)) == pytest.approx(0.0, abs=1e-12)
    # an orthogonal frame (centered) is a simplex too; unequal norms or an off angle are not
    orth = torch.eye(4, dtype=torch.float64) - 0.25
    assert etf_gram_distance(orth) == pytest.approx(0.0, abs=1e-12)
    assert etf_gram_distance(orth * torch.tensor([[1.0], [1.0], [1.0], [2.0]], dtype=torch.float64)) > 0.05
    # the distance between two unit-Frobenius matrices is at most 2
    assert etf_gram_distance(torch.randn(5, 3, dtype=torch.float64)) <= 2.0


def test_nc3_self_duality() -> None:
    h, y, means = collapsed(4, 6)
    assert nc3(h, y, 4, 0.1 * means) == pytest.approx(0.0, abs=1e-12)
    # W = -M is the farthest: ||u + u||^2 = 4
    assert nc3(h, y, 4, -means) == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="classifier weight"):
        nc3(h, y, 4, torch.randn(3, 6))


def test_nc4_counts_agreement_with_the_nearest_class_mean() -> None:
    h = torch.tensor([[0.0], [0.2], [1.0], [0.9], [0.4]])   # class means 0.1 and 0.7667: 0.4 is nearer 0.1
    y = torch.tensor([0, 0, 1, 1, 1])
    assert nc4(h, y, 2, torch.tensor([0, 0, 1, 1, 0])) == 1.0
    assert nc4(h, y, 2, torch.tensor([0, 0, 1, 1, 1])) == pytest.approx(0.8)
    logits = torch.tensor([[1.0, 0.0]] * 5)                  # always class 0, as logits
    assert nc4(h, y, 2, logits) == pytest.approx(0.6)


def test_errors() -> None:
    h, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ConfigError, match="at least 2 samples"):
        nc1(h, torch.tensor([0, 0, 1, 1, 1, 2]), 3)            # class 2 has one sample
    with pytest.raises(ConfigError, match=r"classes with fewer: 3 \(0\)"):
        nc1(h, y, 4)                                             # class 3 is missing
    with pytest.raises(ConfigError, match="at least 1 samples"):
        nc2_equinorm(h, y, 4)
    with pytest.raises(ConfigError, match="lie in"):
        nc1(h, torch.tensor([0, 0, 1, 1, 2, 5]), 3)
    with pytest.raises(ConfigError, match=r"\[N, d\]"):
        nc1(h[:, 0], y, 3)
    with pytest.raises(ConfigError, match="integer"):
        nc1(h, y.float(), 3)
    with pytest.raises(ConfigError, match="coincide"):
        nc1(torch.ones(6, 3), y, 3)


def test_boundary_gap_ratio_on_hand_made_logits() -> None:
    lams = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    zi = torch.tensor([[2.0, 0.0, 5.0]])                     # a = 0, b = 1: gap +2 at x_i
    zj = torch.tensor([[0.0, 2.0, -1.0]])                    # gap -2 at x_j
    linear = lams[:, None, None] * zi + (1 - lams[:, None, None]) * zj
    expected = float((2 * lams - 1).abs().mean())
    assert boundary_gap_ratio(linear, zi, zj, torch.tensor([0]), torch.tensor([1])) == pytest.approx(expected)
    on_boundary = torch.tensor([[[1.0, 1.0, 0.0]]]).expand(5, 1, 3)
    assert boundary_gap_ratio(on_boundary, zi, zj, torch.tensor([0]), torch.tensor([1])) == 0.0


def test_affine_activations_never_go_below_the_bound() -> None:
    # logits of mixes affine in lam (any clean logits, any pairs): the ratio is >= 4/9, with equality for
    # equal and opposite clean gaps
    g = torch.Generator().manual_seed(3)
    lams = torch.tensor(DEFAULT_LAMS)[:, None, None]
    for _ in range(20):
        zi, zj = torch.randn(50, 4, generator=g) * 3, torch.randn(50, 4, generator=g) * 3
        a = torch.randint(0, 4, (50,), generator=g)
        b = (a + torch.randint(1, 4, (50,), generator=g)) % 4
        ratio = boundary_gap_ratio(lams * zi + (1 - lams) * zj, zi, zj, a, b)
        assert ratio >= AFFINE_GAP_BOUND - 1e-12
    assert AFFINE_GAP_BOUND == pytest.approx(float((2 * lams - 1).abs().mean()))


def test_mix_boundary_gap_of_a_linear_map_is_mean_abs_2lam_minus_1() -> None:
    # x_1 = -x_0 and a linear model without bias: the gap at a mix is (2 lam - 1) times the clean gap
    model = nn.Linear(3, 2, bias=False)
    v = torch.tensor([[1.0, -2.0, 0.5]])
    x, y = torch.cat([v, -v]), torch.tensor([0, 1])
    value = mix_boundary_gap(model, x, y, num_pairs=16, generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(4.0 / 9.0, rel=1e-5)
    with pytest.raises(ConfigError, match="strictly between"):
        mix_boundary_gap(model, x, y, lams=(0.0, 0.5))


def test_different_class_pairs() -> None:
    y = torch.tensor([0, 0, 0, 1, 2])
    i, j = different_class_pairs(y, 300, torch.Generator().manual_seed(0))
    assert len(i) == len(j) == 300 and torch.all(y[i] != y[j])
    with pytest.raises(ConfigError, match="at least 2 classes"):
        different_class_pairs(torch.zeros(4, dtype=torch.long), 3)


def test_probes_through_the_trainer() -> None:
    task = get_task("digits-mlp").with_overrides({"epochs": 2})
    result = run_training(task, [("neural-collapse", {"every": 1}), ("mixup-boundary", {"pairs": 64})],
                          seed=0, keep_state=True)
    assert result.status == "finished"
    for row in result.epochs:
        for key in NeuralCollapse.metric_keys + MixupBoundary.metric_keys:
            assert key in row and math.isfinite(row[key]), key
        assert 0.0 <= row["nc4"] <= 1.0 and row["nc1"] > 0
    # the last epoch's values are neural_collapse of the final model on the whole training set
    from trainlab.training.trainer import load_task_data

    data = load_task_data(task, 0)
    model = task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs))
    model.load_state_dict(result.state)
    model.eval()
    expected = neural_collapse(model, data.train_x, data.train_y, data.num_classes)
    for key, value in expected.items():
        assert result.epochs[-1][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key


def test_probe_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="split"):
        NeuralCollapse(split="valid")
    with pytest.raises(ConfigError, match="samples"):
        NeuralCollapse(samples=1)
    with pytest.raises(ConfigError, match="pairs"):
        MixupBoundary(pairs=0)


def test_claims_measure_probe_keys_in_the_terminal_phase() -> None:
    from trainlab.diagnostics.collapse import CLAIMS, TPT_DIGITS
    from trainlab.techniques.registry import all_techniques

    probes = all_techniques()
    assert len({c.id for c in CLAIMS}) == len(CLAIMS) == 4
    for c in CLAIMS:
        assert c.overrides == TPT_DIGITS and c.preconditions and c.seeds == 5
        keys = {k for name, _ in c.treatment.techniques if name in probes
                for k in getattr(probes[name], "metric_keys", ())}
        assert c.metric.split(":")[-1].split("@")[0] in keys
    two_arm = [c for c in CLAIMS if not c.one_arm]
    assert len(two_arm) == 1
    # the comparison is the paper's: the same probes, mixup added
    assert [t for t in two_arm[0].treatment.techniques if t[0] != "mixup"] == list(two_arm[0].baseline.techniques)
