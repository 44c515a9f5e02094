"""Paired statistics and verdicts, checked against hand-computed values and scipy references."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from trainlab.claims.stats import (
    SEEDS_NEEDED_CAP,
    analyze,
    false_positive_rate,
    power,
    summarize_censoring,
    verdict_rates,
)
from trainlab.errors import ConfigError


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # degenerate inputs must be handled, not merely produce RuntimeWarnings and NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_hand_computed_case_matches_formulas_and_scipy():
    baseline = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0]) / 100
    a = analyze(baseline + d, baseline, "higher")
    # mean 0.03, sd = sqrt(2.5)/100, t = 0.03 / (sd / sqrt(5)) = 4.2426...
    sd = math.sqrt(2.5) / 100
    t_stat = 0.03 / (sd / math.sqrt(5))
    assert t_stat == pytest.approx(4.242640687, rel=1e-9)
    assert a.mean_diff == pytest.approx(0.03)
    assert a.p_ttest == pytest.approx(2 * stats.t.sf(t_stat, df=4), rel=1e-6)
    assert a.p_ttest == pytest.approx(stats.ttest_rel(baseline + d, baseline).pvalue, rel=1e-9)
    assert a.effect_size == pytest.approx(0.03 / sd, rel=1e-9)  # Cohen's d_z = 1.897
    # exact Wilcoxon: all 5 differences positive, two-sided p = 2 / 2**5
    assert a.p_wilcoxon == pytest.approx(2 / 32)
    # the interval contains the paired t interval 0.03 -/+ t_{.975,4} * sd / sqrt(5)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert a.ci_low <= 0.03 - half + 1e-12 and a.ci_high >= 0.03 + half - 1e-12
    assert a.ci_method == "BCa+t" and a.ci_level == 0.95
    assert a.mean_treatment == pytest.approx(float((baseline + d).mean()))
    assert a.mean_baseline == pytest.approx(float(baseline.mean()))
    assert a.verdict == "reproduced" and a.seeds_needed is None


def test_bootstrap_part_is_scipys_bca_interval():
    rng = np.random.default_rng(3)
    b = rng.normal(0.9, 0.01, 12)
    t = b + rng.normal(0.01, 0.02, 12)
    a = analyze(t, b, "higher", combine_t=False, seed=5)
    ref = stats.bootstrap((t - b,), np.mean, n_resamples=10000, method="BCa",
                          rng=np.random.default_rng(5)).confidence_interval
    assert (a.ci_low, a.ci_high) == pytest.approx((ref.low, ref.high))
    assert a.ci_method == "BCa"
    # the reported interval with the t guard is the hull of both
    hull = analyze(t, b, "higher", seed=5)
    t_ci = stats.ttest_1samp(t - b, 0.0).confidence_interval(0.95)
    assert hull.ci_low == pytest.approx(min(ref.low, t_ci.low))
    assert hull.ci_high == pytest.approx(max(ref.high, t_ci.high))


def test_same_seed_same_interval():
    b, t = [0.1, 0.4, 0.3, 0.2, 0.5], [0.2, 0.45, 0.2, 0.4, 0.5]
    a1 = analyze(t, b, "higher", combine_t=False, seed=7)
    a2 = analyze(t, b, "higher", combine_t=False, seed=7)
    assert (a1.ci_low, a1.ci_high) == (a2.ci_low, a2.ci_high)


def test_constant_difference_falls_back_to_percentile_and_is_decided():
    b = [0.70, 0.75, 0.72, 0.71, 0.74]
    t = [x + 0.02 for x in b]  # rounding makes these differ in the last bits
    a = analyze(t, b, "higher")
    assert a.ci_method == "percentile+t"
    assert a.ci_low == pytest.approx(0.02) and a.ci_high == pytest.approx(0.02)
    assert a.p_ttest == 0.0 and a.p_wilcoxon == 0.0 and a.effect_size == math.inf
    assert a.verdict == "reproduced"
    assert analyze(t, b, "lower").verdict == "contradicted"


def test_all_zero_differences_give_p_one_and_no_decision():
    a = analyze([0.5] * 5, [0.5] * 5, "higher")
    assert (a.ci_low, a.ci_high, a.mean_diff) == (0.0, 0.0, 0.0)
    assert a.p_ttest == 1.0 and a.p_wilcoxon == 1.0 and a.effect_size == 0.0
    assert a.verdict == "inconclusive" and a.seeds_needed is None
    assert "equal" in a.note


def test_some_zero_differences_are_fine():
    a = analyze([1.0, 1.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0], "higher")
    assert 0.0 < a.p_wilcoxon <= 1.0 and 0.0 < a.p_ttest < 1.0
    assert all(math.isfinite(x) for x in (a.ci_low, a.ci_high, a.effect_size))


def test_interval_covers_true_mean_in_known_effect_case():
    rng = np.random.default_rng(11)
    true_diff, covered, reproduced, trials = 0.5, 0, 0, 300
    for _ in range(trials):
        b = rng.normal(80.0, 2.0, 10)
        t = b + rng.normal(true_diff, 0.3, 10)
        a = analyze(t, b, "higher", n_resamples=2000, seed=int(rng.integers(2**31)))
        covered += a.ci_low <= true_diff <= a.ci_high
        reproduced += a.verdict == "reproduced"
    assert covered / trials >= 0.92  # nominal 95%
    assert reproduced / trials >= 0.9


def test_direction_lower():
    b = np.array([0.50, 0.52, 0.49, 0.55, 0.51])
    t = b - np.array([0.10, 0.12, 0.09, 0.11, 0.10])  # loss goes down
    a = analyze(t, b, "lower")
    assert a.mean_diff == pytest.approx(-0.104)
    assert a.ci_high < 0 and a.verdict == "reproduced"
    assert analyze(t, b, "higher").verdict == "contradicted"
    assert analyze(b, t, "lower").verdict == "contradicted"


def test_min_effect_boundary():
    b = [0.70, 0.75, 0.72, 0.71, 0.74]
    up = [x + 0.02 for x in b]
    assert analyze(up, b, "higher", min_effect=0.019).verdict == "reproduced"
    # interval [0.02, 0.02] on the claimed side of 0 but not past min_effect: inconclusive
    at = analyze(up, b, "higher", min_effect=0.021)
    assert at.verdict == "inconclusive" and at.seeds_needed is None
    down = [x - 0.02 for x in b]
    assert analyze(down, b, "lower", min_effect=0.019).verdict == "reproduced"
    assert analyze(down, b, "lower", min_effect=0.021).verdict == "inconclusive"
    # contradicted is judged against 0, not min_effect
    assert analyze(down, b, "higher", min_effect=0.05).verdict == "contradicted"


def test_effect_within_min_effect_never_needs_more_seeds():
    b = [0.70, 0.75, 0.72, 0.71, 0.74]
    t = [0.711, 0.759, 0.731, 0.722, 0.749]  # clearly positive, ~0.01, below min_effect 0.05
    a = analyze(t, b, "higher", min_effect=0.05)
    assert a.ci_low > 0 and a.verdict == "inconclusive" and a.seeds_needed is None
    assert "min_effect" in a.note


def _reference_seeds_needed(gap: float, sd: float, n: int) -> int | None:
    for k in range(n + 1, SEEDS_NEEDED_CAP + 1):
        if stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k) < gap:
            return k
    return None


def test_seeds_needed_for_noisy_positive_effect():
    d = np.array([0.03, -0.01, 0.02, 0.00, 0.01])
    b = np.full(5, 0.8)
    a = analyze(b + d, b, "higher")
    assert a.verdict == "inconclusive"
    sd = float(d.std(ddof=1))
    expected = _reference_seeds_needed(a.mean_diff, sd, 5)
    assert a.seeds_needed == expected
    assert 5 < expected < 20
    # at that many seeds the t half-width clears 0; one fewer does not
    k = a.seeds_needed
    assert stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k) < a.mean_diff
    assert stats.t.ppf(0.975, k - 2) * sd / math.sqrt(k - 1) >= a.mean_diff
    # with min_effect the boundary moves to min_effect
    a2 = analyze(b + d, b, "higher", min_effect=0.005)
    assert a2.seeds_needed == _reference_seeds_needed(a.mean_diff - 0.005, sd, 5)
    assert a2.seeds_needed > a.seeds_needed
    # a negative observed mean points toward "contradicted": same count, boundary 0
    a3 = analyze(b - d, b, "higher")
    assert a3.seeds_needed == expected


def test_seeds_needed_is_none_past_the_cap():
    d = np.array([0.5, -0.5, 0.5, -0.5, 0.001])  # mean ~0 next to the noise
    a = analyze(d, np.zeros(5), "higher")
    assert a.verdict == "inconclusive" and a.seeds_needed is None
    assert str(SEEDS_NEEDED_CAP) in a.note


def test_nan_pairs_are_dropped_with_a_note():
    b = [0.8, 0.81, float("nan"), 0.79, 0.8, 0.82]
    t = [0.85, 0.86, 0.9, float("nan"), 0.84, 0.87]
    a = analyze(t, b, "higher")
    assert a.n == 4 and "dropped 2" in a.note
    assert a.mean_diff == pytest.approx(np.mean([0.05, 0.05, 0.04, 0.05]))


def test_fewer_than_two_pairs_is_inconclusive():
    a = analyze([0.9, float("nan")], [0.8, 0.7], "higher")
    assert a.n == 1 and a.verdict == "inconclusive" and a.seeds_needed is None
    assert "at least 2" in a.note and math.isnan(a.ci_low)
    empty = analyze([], [], "lower")
    assert empty.n == 0 and empty.verdict == "inconclusive" and math.isnan(empty.mean_diff)


def test_bad_arguments():
    with pytest.raises(ConfigError):
        analyze([1, 2], [1, 2], "up")
    with pytest.raises(ConfigError):
        analyze([1, 2], [1, 2], "higher", method="basic")
    with pytest.raises(ConfigError):
        analyze([1, 2], [1, 2], "higher", min_effect=-1)
    with pytest.raises(ValueError):
        analyze([1, 2, 3], [1, 2], "higher")


def test_percentile_method_option():
    a = analyze([0.2, 0.45, 0.2, 0.4, 0.5], [0.1, 0.4, 0.3, 0.2, 0.5], "higher", method="percentile")
    assert a.ci_method == "percentile+t"


def test_summarize_censoring():
    # 5 epochs: runs that never reach the threshold carry epochs + 1 = 6
    assert summarize_censoring([3, 5, 6, 6, float("nan")], cap=6) == 2
    assert summarize_censoring([], cap=6) == 0


def test_no_op_false_positive_rate_is_at_most_five_percent():
    # 400 no-op claims x 5 seeds, full 10,000 bootstrap resamples (nominal one-sided rate 2.5%)
    rate = false_positive_rate(400, 5, noise_sd=0.3, rng=np.random.default_rng(2024))
    assert rate <= 0.05


def test_no_op_is_rarely_decided_either_way():
    rates = verdict_rates(200, 5, 0.0, 0.3, np.random.default_rng(99))
    assert rates["reproduced"] + rates["contradicted"] <= 0.10
    assert sum(rates.values()) == pytest.approx(1.0)


def test_strong_effect_is_found():
    # effect 1.0 with per-arm noise 0.3: paired-difference sd 0.42, d_z ~ 2.4, 5 seeds
    assert power(400, 5, effect=1.0, noise_sd=0.3, rng=np.random.default_rng(2025)) > 0.9


def test_non_inferiority_margin_decides_against_minus_margin():
    from trainlab.claims.stats import analyze

    base = [0.90, 0.91, 0.92, 0.93, 0.94]
    slightly_worse = [b - 0.003 + e for b, e in zip(base, (0.001, -0.001, 0.0, 0.0005, -0.0005))]
    much_worse = [b - 0.05 + e for b, e in zip(base, (0.001, -0.001, 0.0, 0.0005, -0.0005))]
    # superiority: a small loss is contradicted; non-inferiority within 0.01: reproduced
    assert analyze(slightly_worse, base, "higher").verdict == "contradicted"
    assert analyze(slightly_worse, base, "higher", margin=0.01).verdict == "reproduced"
    assert analyze(much_worse, base, "higher", margin=0.01).verdict == "contradicted"
    # direction lower (e.g. a loss): treatment 0.003 higher is within a 0.01 margin
    assert analyze([-v for v in slightly_worse], [-b for b in base], "lower", margin=0.01).verdict == "reproduced"
    with pytest.raises(ConfigError):
        analyze(base, base, "higher", min_effect=0.01, margin=0.01)
