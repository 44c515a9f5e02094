"""Representation similarity: linear CKA, relative representations, neuron matching, the
seed-similarity probe."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainlab.diagnostics.similarity import (
    SeedSimilarity, fit_linear_head, linear_cka, match_units, mean_cosine, relative_representation,
    unit_correlations,
)
from trainlab.errors import ConfigError


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _features(n: int = 200, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- linear CKA

def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = _features()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_maps_isotropic_scaling_and_translation() -> None:
    x = _features(seed=0)
    y = torch.tanh(x[:, :6] / 3) + 0.1 * _features(d=6, seed=1)  # related to x, non-linearly
    q = _orthogonal(12, 3)
    base = linear_cka(x, y)
    assert 0.05 < base < 0.95
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(3.7 * x + 5.0, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x, 0.01 * y @ _orthogonal(6, 4)) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x @ q, y, debiased=True) == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-12)


def test_cka_is_not_invariant_to_an_invertible_linear_map() -> None:
    # independent, equal-variance columns: X^T X ~ n I, and for Y = X diag(1, 100)
    # CKA ~ (1 + 100^2) / sqrt(2 (1 + 100^4)) ~ 0.71, although Y determines X exactly
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = torch.diag(torch.tensor([1.0, 100.0], dtype=torch.float64))
    value = linear_cka(x, x @ a)
    assert value == pytest.approx(10001 / (2 * (1 + 100.0 ** 4)) ** 0.5, abs=0.02)
    assert value < 0.8


def test_cka_hand_computed_case() -> None:
    # one feature each: CKA is the squared Pearson correlation. x - mean = (-1.5, -.5, .5, 1.5),
    # y - mean = (-.5, .5, -.5, .5): dot 1, squared norms 5 and 1, so CKA = 1^2 / (5 * 1) = 0.2
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    assert linear_cka(x, y) == pytest.approx(0.2, abs=1e-12)


def _unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. (5), from Gram matrices with zeroed diagonals (an independent reference)."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def test_debiased_cka_matches_the_unbiased_hsic_estimator_on_gram_matrices() -> None:
    x, y = _features(30, 5, 0).numpy(), _features(30, 7, 1).numpy()
    # HSIC is translation-invariant only in expectation: center the features as the estimator does
    x, y = x - x.mean(0), y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    expected = _unbiased_hsic(k, l) / np.sqrt(_unbiased_hsic(k, k) * _unbiased_hsic(l, l))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y), debiased=True) == pytest.approx(expected, abs=1e-10)


def test_biased_cka_matches_the_centered_gram_formula() -> None:
    x, y = _features(40, 5, 0).numpy(), _features(40, 9, 1).numpy()
    h = np.eye(40) - 1.0 / 40
    kc, lc = h @ x @ x.T @ h, h @ y @ y.T @ h
    expected = np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-12)


def test_debiased_cka_of_independent_features_is_near_zero() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 50, generator=g), torch.randn(400, 50, generator=g)
    assert abs(linear_cka(x, y, debiased=True)) < 0.03 < linear_cka(x, y)  # the biased one is inflated


def test_cka_refuses_mismatched_examples() -> None:
    with pytest.raises(ConfigError, match="same examples"):
        linear_cka(torch.randn(10, 3), torch.randn(9, 3))


# --------------------------------------------------------------------------- relative representations

def test_relative_representation_is_the_cosine_to_each_anchor() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    anchors = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    r = relative_representation(x, anchors)
    s = 0.5 ** 0.5
    assert torch.allclose(r, torch.tensor([[1.0, 0.0, -s], [s, s, -1.0]], dtype=torch.float64))


def test_relative_representation_is_invariant_to_rotation_and_scaling_of_the_latent_space() -> None:
    x, anchors = _features(50, 8, 0), _features(10, 8, 1)
    q = _orthogonal(8, 2)
    r = relative_representation(x, anchors)
    assert torch.allclose(relative_representation(4.2 * x @ q, 4.2 * anchors @ q), r, atol=1e-12)
    # the absolute representations of the rotated space are not the same vectors at all
    assert mean_cosine(x, x @ q) < 0.9
    assert mean_cosine(r, relative_representation(x @ q, anchors @ q)) == pytest.approx(1.0, abs=1e-12)


def test_centered_relative_representation_is_also_invariant_to_translation() -> None:
    x, anchors = _features(50, 8, 0), _features(10, 8, 1)
    shift = torch.randn(1, 8, dtype=torch.float64)
    assert torch.allclose(relative_representation(x + shift, anchors + shift, center=True),
                          relative_representation(x, anchors, center=True), atol=1e-12)


# --------------------------------------------------------------------------- neuron matching

def test_unit_correlations_equal_numpy_corrcoef_and_dead_units_correlate_zero() -> None:
    x, y = _features(60, 4, 0), _features(60, 3, 1)
    y[:, 2] = 1.5  # a dead unit
    corr = unit_correlations(x, y)
    expected = np.corrcoef(x.numpy().T, y[:, :2].numpy().T)[:4, 4:]
    assert torch.allclose(corr[:, :2], torch.from_numpy(expected), atol=1e-12)
    assert torch.all(corr[:, 2] == 0)


def test_bipartite_matching_recovers_a_permutation_of_noisy_units() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(300, 32, generator=g))
    perm = torch.randperm(32, generator=g)
    scale = torch.rand(32, generator=g) * 3 + 0.2
    # unit j of y is unit perm[j] of x, rescaled, shifted and noisy
    y = x[:, perm] * scale + 1.0 + 0.3 * torch.randn(300, 32, generator=g)
    m = match_units(x, y)
    inverse = torch.argsort(perm)
    assert torch.equal(m.units_x, torch.arange(32))
    assert torch.equal(m.units_y, inverse)
    assert m.mean > 0.8
    semi = match_units(x, y, "semi")
    assert torch.equal(semi.units_y, inverse)


def test_bipartite_matching_is_one_to_one_where_semi_matching_is_not() -> None:
    # both units of x follow unit 0 of y best; the one-to-one assignment must give one of them unit 1
    t = torch.linspace(-1, 1, 100, dtype=torch.float64)
    u = torch.sin(7 * t)
    y = torch.stack([t, u], 1)
    x = torch.stack([t + 0.1 * u, t + 0.3 * u], 1)
    semi = match_units(x, y, "semi")
    assert semi.units_y.tolist() == [0, 0]
    full = match_units(x, y)
    assert sorted(full.units_y.tolist()) == [0, 1]
    corr = unit_correlations(x, y)
    # the optimum of the two possible assignments
    best = max(corr[0, 0] + corr[1, 1], corr[0, 1] + corr[1, 0])
    assert float(full.correlations.sum()) == pytest.approx(float(best), abs=1e-12)
    assert full.units_y.tolist() == ([0, 1] if corr[0, 0] + corr[1, 1] >= corr[0, 1] + corr[1, 0] else [1, 0])


def test_match_refuses_unknown_method() -> None:
    with pytest.raises(ConfigError, match="bipartite"):
        match_units(torch.randn(5, 2), torch.randn(5, 2), "greedy")


# --------------------------------------------------------------------------- linear head

def test_linear_head_is_the_ridge_least_squares_solution() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(80, 4, generator=g, dtype=torch.float64)
    labels = (z[:, 0] > 0).long() + (z[:, 1] > 0).long()
    head = fit_linear_head(z, labels, 3, ridge=0.0)
    design = torch.cat([z, torch.ones(80, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, torch.nn.functional.one_hot(labels, 3).double()).solution
    assert torch.allclose(head.logits(z), design @ coef, atol=1e-10)
    # scale invariance of the fit (the penalty follows the feature scale)
    h1, h2 = fit_linear_head(z, labels, 3), fit_linear_head(10 * z, labels, 3)
    assert torch.allclose(h1.logits(z), h2.logits(10 * z), atol=1e-10)


def test_relative_stitching_works_across_a_rotated_scaled_latent_space() -> None:
    # two "networks" whose latent spaces differ by a rotation and a scale: a head on one's relative
    # features classifies the other's exactly as its own, a head on absolute features does not
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (400,), generator=g)
    a = centers[labels] + torch.randn(400, 16, generator=g, dtype=torch.float64)
    b = 2.5 * a @ _orthogonal(16, 1)
    anchors = torch.arange(0, 400, 8)
    rel_a, rel_b = relative_representation(a, a[anchors]), relative_representation(b, b[anchors])
    head = fit_linear_head(rel_a[:300], labels[:300], 4)
    own = head.accuracy(rel_a[300:], labels[300:])
    assert own > 0.9
    assert head.accuracy(rel_b[300:], labels[300:]) == own
    assert fit_linear_head(a[:300], labels[:300], 4).accuracy(b[300:], labels[300:]) < 0.7


# --------------------------------------------------------------------------- the probe

def _run(**settings):
    from trainlab.training.trainer import run_training

    return run_training("blobs-mlp", [("seed-similarity", {"every": 2, "anchors": 20, **settings})], seed=0,
                        keep_state=True)


def test_probe_leaves_the_run_unchanged_and_records_every_key() -> None:
    from trainlab.training.trainer import run_training

    plain = run_training("blobs-mlp", seed=0, keep_state=True)
    probed = _run()
    for k, v in plain.state.items():
        assert torch.equal(v, probed.state[k]), k
    assert probed.final["test_acc"] == plain.final["test_acc"]
    for key in SeedSimilarity.metric_keys:
        assert key in probed.final, key
    f = probed.final
    # the init values (the untrained-networks control) are the same in every measured epoch
    init = [row["seed_cka_init"] for row in probed.epochs if "seed_cka_init" in row]
    assert len(set(init)) == 1
    assert 0.0 <= f["seed_cka"] <= 1.0 and 0.0 <= f["seed_stitch_rel_acc"] <= 1.0
    assert f["sibling_test_acc"] > 0.5


def test_probe_sibling_is_the_task_model_trained_from_another_seed() -> None:
    """The sibling trained under seed + offset follows the run's batches: with the model's own
    seed as offset 0 it would equal the model; with two different offsets the siblings differ."""
    a, b = SeedSimilarity(seed_offset=5), SeedSimilarity(seed_offset=6)
    from trainlab.training.trainer import run_training

    ra = run_training("blobs-mlp", [a], seed=0)
    rb = run_training("blobs-mlp", [b], seed=0)
    wa = [p.detach() for p in a.sibling.parameters()]
    wb = [p.detach() for p in b.sibling.parameters()]
    assert not all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert ra.final["test_acc"] == rb.final["test_acc"]  # the run itself is the same


def test_sibling_from_the_same_seed_trains_exactly_like_the_model() -> None:
    """seed_offset=0 builds the sibling from the run's own seed: stepped on the same batches with an
    optimizer and schedule built like the run's, it must end bitwise equal to the model, and every
    pair measure must read "identical"."""
    from trainlab.training.trainer import run_training

    probe = SeedSimilarity(seed_offset=0, anchors=20)
    result = run_training("blobs-mlp", [probe], seed=3, keep_state=True)
    for k, v in probe.sibling.state_dict().items():
        assert torch.equal(v, result.state[k]), k
    f = result.final
    assert f["seed_cka"] == pytest.approx(1.0, abs=1e-9)
    assert f["seed_cka_init"] == pytest.approx(1.0, abs=1e-9)
    assert f["seed_rel_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert f["seed_stitch_rel_acc"] == f["seed_head_rel_acc"]
    assert f["sibling_test_acc"] == pytest.approx(f["test_acc"], abs=1e-6)


def test_probe_resumes_from_a_checkpoint_exactly(tmp_path) -> None:
    from trainlab.training.trainer import run_training

    full = run_training("blobs-mlp", [("seed-similarity", {"every": 1, "anchors": 20})], seed=1)
    ck = tmp_path / "run.ckpt"
    techniques = [("seed-similarity", {"every": 1, "anchors": 20})]
    run_training("blobs-mlp", techniques, seed=1, checkpoint=ck, stop_after_epochs=2)
    resumed = run_training("blobs-mlp", techniques, seed=1, checkpoint=ck, resume=True)
    for key in SeedSimilarity.metric_keys:
        assert resumed.final[key] == full.final[key], key


def test_probe_refuses_a_model_without_a_classifier_layer() -> None:
    from trainlab.tasks.task import Task
    from trainlab.training.trainer import run_training

    class Pooled(torch.nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, num_classes, 1)

        def forward(self, x):
            return self.conv(x.flatten(1).unsqueeze(1)).mean(2)

    from trainlab.tasks.registry import get_task
    import dataclasses

    task = dataclasses.replace(get_task("blobs-mlp"), name="blobs-pooled", make_model=Pooled, model_kwargs={})
    with pytest.raises(ConfigError, match="classifier nn.Linear"):
        run_training(task, [("seed-similarity", {})], seed=0)


def test_probe_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="anchors"):
        SeedSimilarity(anchors=1)
    with pytest.raises(ConfigError, match="seed_offset"):
        SeedSimilarity(seed_offset=1.5)


def test_claims_are_one_arm_with_the_probe() -> None:
    from trainlab.diagnostics.similarity import CLAIMS

    assert {c.id for c in CLAIMS} == {"convergent-learning-matched-units",
                                      "relative-representations-agree-across-seeds",
                                      "relative-representations-zero-shot-stitching"}
    for c in CLAIMS:
        assert c.one_arm and c.treatment.techniques[0][0] == "seed-similarity"
        assert any(p.metric == "test_acc" for p in c.preconditions)
