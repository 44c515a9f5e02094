"""One-arm claims (Claim.reference), scaled baselines (Claim.baseline_scale) and the metrics
at:<key>@<cond> and mean_last<k>:<key>, on hand-made stored runs (plus one short real check)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trainlab.claims.claim import Claim, Precondition, arm, compared_text
from trainlab.claims.metrics import curve_key, metric_value, validate
from trainlab.claims.result import ClaimResult
from trainlab.claims.runner import collect, measure_claim_overhead, metric_scale, plan, verdict_line
from trainlab.claims.stats import analyze
from trainlab.errors import ConfigError

ONE_ARM = dict(id="law", technique="placebo", task="blobs-mlp", metric="sharp", direction="lower",
               treatment=arm("placebo"), seeds=4)


def _row(epoch, **values):
    return {"epoch": epoch, **values}


def _run(epochs, status="finished", test_acc=0.9, top=0.4, chance=0.25, **final):
    return {"status": status, "epochs": epochs, "data_fingerprint": "f", "provenance": {},
            "final": {**(epochs[-1] if epochs else {}), "test_acc": test_acc, "test_top_class_frac": top,
                      "chance_acc": chance, **final},
            "params": 10, "train_seconds": 1.0, "error": None}


class FakeStore:
    """collect() only reads runs by key."""

    def __init__(self, runs_by_key):
        self.runs = runs_by_key

    def get_run(self, key):
        return self.runs.get(key)


def _store(specs, make):
    return FakeStore({s.key: make(s) for s in specs})


# ---------------------------------------------------------------------------------- metrics

RUN = {"status": "finished", "final": {"x": 3.0},
       "epochs": [_row(1, train_acc=0.5, nc=9.0, s=1.0), _row(2, train_acc=0.99, s=2.0),
                  _row(3, train_acc=1.0, nc=4.0, s=4.0), _row(4, train_acc=0.98, nc=3.0),
                  _row(5, train_acc=1.0, nc=2.0, s=float("nan"))]}


def test_at_metric_reads_key_at_first_epoch_meeting_the_condition():
    # epoch 2 meets train_acc >= 0.99 but records no nc: the first epoch that records nc and meets it is 3
    assert metric_value("at:nc@train_acc>=0.99", RUN, 5) == (4.0, False)
    assert metric_value("at:nc@train_acc<0.6", RUN, 5) == (9.0, False)
    assert metric_value("at:s@train_acc>0.99", RUN, 5) == (4.0, False)
    assert metric_value("at:nc@epoch>=4", RUN, 5) == (3.0, False)
    value, censored = metric_value("at:nc@train_acc>=1.5", RUN, 5)
    assert math.isnan(value) and not censored


def test_mean_last_metric_averages_the_last_k_recorded_values():
    assert metric_value("mean_last2:nc", RUN, 5)[0] == pytest.approx((3.0 + 2.0) / 2)
    assert metric_value("mean_last3:nc", RUN, 5)[0] == pytest.approx((4.0 + 3.0 + 2.0) / 3)
    assert metric_value("mean_last10:nc", RUN, 5)[0] == pytest.approx((9 + 4 + 3 + 2) / 4)  # fewer than k: all
    assert metric_value("mean_last1:s", RUN, 5)[0] == 4.0                                  # NaN is not a value
    assert math.isnan(metric_value("mean_last2:missing", RUN, 5)[0])


@pytest.mark.parametrize("metric, key", [("at:nc1@train_acc>=0.999", "nc1"), ("mean_last5:sharpness", "sharpness"),
                                         ("epochs_to:test_acc>=0.9", "test_acc"), ("best:test_acc", "test_acc"),
                                         ("diverged", "test_acc"), ("hessian_trace", "hessian_trace")])
def test_curve_key(metric, key):
    assert curve_key(metric) == key


@pytest.mark.parametrize("metric, says", [
    ("at:nc1", "at:<key>@<key2><op><number>"), ("at:nc1@train_acc", "at:<key>@"), ("at:@train_acc>=1", "at:<key>@"),
    ("at:nc1@train_acc>=abc", "at:<key>@"), ("mean_last:nc", "mean_last<k>:<key>"), ("mean_last0:nc", "k >= 1"),
    ("mean_lastx:nc", "mean_last<k>"), ("mean_last3:", "mean_last<k>"), ("best:", "name the key"),
    ("median:x", "unknown prefix 'median'"), ("epochs_to:test_acc=0.9", "epochs_to:<key>"), ("", "metric name"),
])
def test_bad_metrics_say_the_expected_form(metric, says):
    with pytest.raises(ConfigError, match=None) as e:
        validate(metric)
    assert says in str(e.value)


def test_metric_scale_of_new_metrics():
    assert metric_scale("at:test_acc@train_acc>=0.99") == (100.0, " pt")
    assert metric_scale("mean_last3:test_acc") == (100.0, " pt")
    assert metric_scale("at:nc1@train_acc>=0.99") == (1.0, "")
    assert metric_scale("epochs_to:test_acc>=0.9") == (1.0, "")
    assert metric_scale("diverged") == (1.0, "")


# ---------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, says", [
    (dict(baseline=arm("placebo")), "leave baseline at its default"),
    (dict(baseline=arm(lr=0.1)), "leave baseline at its default"),
    (dict(preconditions=(Precondition("train_acc", ">=", 0.9),)), "must name arm='treatment'"),
    (dict(allow_collapse=("baseline",)), "no baseline arm"),
    (dict(baseline_scale=0.9), "baseline_scale is for two-arm claims"),
    (dict(reference="0.5"), "give it as a number"),
    (dict(reference="median:x"), "unknown prefix"),
    (dict(reference=True), "a number or a metric name"),
    (dict(reference=float("nan")), "finite"),
])
def test_one_arm_claim_refuses_what_needs_a_baseline(changes, says):
    with pytest.raises(ConfigError) as e:
        Claim(**{**ONE_ARM, "reference": 1.0, **changes})
    assert says in str(e.value) and "claim 'law'" in str(e.value)


@pytest.mark.parametrize("scale", [0, -1.0, float("inf"), "0.9", True])
def test_baseline_scale_must_be_positive(scale):
    with pytest.raises(ConfigError, match="baseline_scale must be a number > 0"):
        Claim(**{**ONE_ARM, "baseline_scale": scale})


def test_to_dict_and_compared_text():
    one = Claim(**ONE_ARM, reference="stability_limit",
                preconditions=(Precondition("train_acc", ">=", 0.9, arm="treatment"),))
    assert one.one_arm and one.arms == ("treatment",)
    assert one.to_dict()["reference"] == "stability_limit" and one.to_dict()["baseline_scale"] == 1.0
    assert one.compared() == "sharp - stability_limit"
    assert Claim(**ONE_ARM, reference=2).compared() == "sharp - 2"
    two = Claim(**{**ONE_ARM, "metric": "test_acc", "direction": "higher"}, baseline_scale=0.9)
    assert not two.one_arm and two.arms == ("baseline", "treatment")
    assert two.compared() == "test_acc vs 0.9 x baseline"
    assert Claim(**ONE_ARM).compared() == "sharp"
    assert compared_text({"metric": "test_acc"}) == "test_acc"   # a claim stored before these fields


# ---------------------------------------------------------------------------------- plan / collect

def test_one_arm_plan_runs_the_treatment_only_with_the_two_arm_run_keys():
    one = plan(Claim(**ONE_ARM, reference=1.0))
    two = plan(Claim(**ONE_ARM))
    assert [(s.arm, s.seed) for s in one] == [("treatment", sd) for sd in range(4)]
    assert [s.key for s in one] == [s.key for s in two if s.arm == "treatment"]


SHARP = [0.8, 1.1, 0.7, 0.9]
LIMIT = [1.0, 1.5, 1.0, 1.2]


def _law_run(spec):
    sd = spec.seed
    return _run([_row(1, sharp=5.0, stability_limit=LIMIT[sd], train_seconds=2.0),
                 _row(2, sharp=SHARP[sd], stability_limit=LIMIT[sd], train_seconds=2.0)])


def test_one_arm_collect_pairs_metric_with_reference_metric():
    claim = Claim(**ONE_ARM, reference="stability_limit")
    specs = plan(claim)
    result = collect(claim, specs, _store(specs, _law_run), n_resamples=2000)
    assert result.treatment_values == SHARP and result.baseline_values == LIMIT
    expected = analyze(SHARP, LIMIT, "lower", n_resamples=2000)
    assert result.analysis.mean_diff == pytest.approx(np.mean(np.subtract(SHARP, LIMIT)))
    assert (result.analysis.ci_low, result.analysis.ci_high) == pytest.approx((expected.ci_low, expected.ci_high))
    assert result.verdict == expected.verdict == "reproduced"
    assert set(result.status_counts) == {"treatment"} and set(result.curves) == {"treatment"}
    assert result.collapse["degenerate_arms"] == [] and result.collapse["unpaired_collapse"] == []
    line = verdict_line(result)
    assert line.startswith("law: reproduced  ") and "sharp - stability_limit [95% CI" in line and "4 seeds" in line


def test_one_arm_collect_with_a_number_and_a_precondition():
    pre = Precondition("sharp", "<=", 1.0, arm="treatment", over="max")
    claim = Claim(**ONE_ARM, reference=1.0, preconditions=(pre,))
    specs = plan(claim)
    result = collect(claim, specs, _store(specs, _law_run), n_resamples=2000)
    assert result.baseline_values == [1.0] * 4
    assert result.analysis.mean_diff == pytest.approx(np.mean(SHARP) - 1.0)
    assert result.preconditions[0]["passed"] is False and result.verdict == "out of regime"  # max sharp 1.1


def test_baseline_scale_compares_with_the_scaled_baseline():
    base, treat = [0.90, 0.92, 0.88, 0.91], [0.85, 0.84, 0.83, 0.86]
    claim = Claim(**{**ONE_ARM, "metric": "test_acc", "direction": "higher", "margin": 0.0}, baseline_scale=0.9)
    specs = plan(claim)
    store = _store(specs, lambda s: _run([_row(1, test_acc=0.5)],
                                         test_acc=(base if s.arm == "baseline" else treat)[s.seed]))
    result = collect(claim, specs, store, n_resamples=2000)
    assert result.baseline_values == pytest.approx([0.9 * b for b in base])
    assert result.analysis.mean_diff == pytest.approx(np.mean(treat) - 0.9 * np.mean(base))
    assert result.verdict == "reproduced"     # 0.85 > 0.9 * 0.9; unscaled it would be contradicted
    assert "pt test_acc vs 0.9 x baseline [95% CI" in verdict_line(result)
    unscaled = collect(Claim(**{**ONE_ARM, "metric": "test_acc", "direction": "higher"}), specs, store, n_resamples=2000)
    assert unscaled.verdict == "contradicted"
    assert [s.key for s in plan(claim)] == [s.key for s in specs]


def _collapsing(collapsed_seeds):
    def make(spec):
        run = _law_run(spec)
        if spec.seed in collapsed_seeds:
            run["final"].update(test_acc=0.25, test_top_class_frac=1.0)
        return run
    return make


def test_one_arm_degenerate_only_when_every_run_collapsed_and_not_allowed():
    claim = Claim(**ONE_ARM, reference="stability_limit")
    specs = plan(claim)
    all_collapsed = _store(specs, _collapsing({0, 1, 2, 3}))
    result = collect(claim, specs, all_collapsed, n_resamples=500)
    assert result.collapse["degenerate_arms"] == ["treatment"] and result.verdict == "degenerate"
    assert "the model did not learn" in verdict_line(result)
    allowed = Claim(**ONE_ARM, reference="stability_limit", allow_collapse=("treatment",))
    assert collect(allowed, specs, all_collapsed, n_resamples=500).verdict == "reproduced"
    one = collect(claim, specs, _store(specs, _collapsing({2})), n_resamples=500)
    assert one.verdict == "reproduced" and one.collapse["unpaired_collapse"] == [2]
    assert one.analysis_without_collapsed.n == 3
    assert "collapsed while other seeds learn" in verdict_line(one)
    none = collect(claim, specs, _store(specs, _collapsing(set())), n_resamples=500)
    assert none.collapse == {**none.collapse, "degenerate_arms": [], "unpaired_collapse": []}


def test_two_arm_collapse_detection_unchanged():
    claim = Claim(**ONE_ARM)
    specs = plan(claim)
    store = _store(specs, lambda s: _collapsing({0, 1, 2, 3} if s.arm == "treatment" else set())(s))
    result = collect(claim, specs, store, n_resamples=500)
    assert result.collapse["degenerate_arms"] == ["treatment"]
    assert "while the other arm learns" in verdict_line(result)


def test_one_arm_overhead_is_skipped_with_a_reason():
    assert "no other arm" in measure_claim_overhead(Claim(**ONE_ARM, reference=1.0))["skipped"]


def test_result_stored_before_reference_existed_still_loads():
    claim = Claim(**{**ONE_ARM, "metric": "test_acc", "direction": "higher"})
    specs = plan(claim)
    store = _store(specs, lambda s: _run([_row(1, test_acc=0.5)], test_acc=0.8 + 0.01 * s.seed
                                         + (0.05 if s.arm == "treatment" else 0)))
    d = collect(claim, specs, store, n_resamples=500).to_dict()
    for key in ("reference", "baseline_scale"):
        d["claim"].pop(key)
    d.pop("probe_cost")
    old = ClaimResult.from_dict(d)
    assert not old.one_arm and old.probe_cost == {}
    assert "pt test_acc [95% CI" in verdict_line(old)


def test_one_arm_check_end_to_end(tmp_path):
    # test_acc of a trained blobs MLP against a fixed number: one arm, real runs, in this process
    from trainlab.claims.api import check

    claim = Claim(id="t-one-arm", technique="placebo", task="blobs-mlp", metric="test_acc", direction="higher",
                  treatment=arm(epochs=2), reference=0.3, seeds=2,
                  preconditions=(Precondition("train_acc", ">=", 0.3, arm="treatment"),))
    result = check(claim, store=tmp_path / "s.sqlite", workers=1)
    assert [len(result.treatment_values), result.baseline_values] == [2, [0.3, 0.3]]
    assert result.overhead == {"skipped": "one-arm claim without probes: there is no other arm to compare its cost with"}
    assert result.analysis is not None
    assert "test_acc - 0.3 [95% CI" in verdict_line(result)


# ---------------------------------------------------------------------------------- report

PROBE = "test-ref-claims-probe"


@pytest.fixture
def toy_probe():
    """A probe registered for one test only (the global registry is left as it was)."""
    from trainlab.diagnostics.probe import Probe
    from trainlab.techniques import registry

    class ToyProbe(Probe):
        name = PROBE
        fidelity = "control"
        metric_keys = ("toy_norm", "toy_limit", "toy_never_recorded")

        def measure(self, model, state):
            return {}

    registry.register(ToyProbe)
    yield PROBE
    registry._REGISTRY.pop(PROBE, None)


def _probe_run(spec):
    sd = spec.seed
    key = "probe_seconds_" + PROBE.replace("-", "_")
    return _run([_row(1, toy_norm=3.0 + sd, toy_limit=5.0, train_seconds=2.0, **{key: 0.5}),
                 _row(2, train_seconds=2.0),
                 _row(3, toy_norm=2.0 + 0.1 * sd, toy_limit=4.0, train_seconds=2.0, **{key: 0.5})])


def test_report_of_a_one_arm_probe_claim(tmp_path, toy_probe):
    from PIL import Image

    from trainlab.claims.report import probe_metric_keys, write_report

    claim = Claim(id="toy-law", technique=PROBE, task="blobs-mlp", metric="toy_norm", reference="toy_limit",
                  direction="lower", treatment=arm((PROBE, {"every": 2})), seeds=3)
    specs = plan(claim)
    result = collect(claim, specs, _store(specs, _probe_run), overhead=measure_claim_overhead(claim),
                     n_resamples=500)
    cost = result.probe_cost["treatment"][PROBE]
    assert cost == {"seconds_per_run": 1.0, "train_seconds_per_run": 6.0, "ratio": pytest.approx(1 / 6),
                    "measurements_per_run": 2.0}
    assert f"{PROBE} measuring 1.0 s per run (0.17x the 6.0 s of training)" in verdict_line(result)
    assert probe_metric_keys(result) == {PROBE: ["toy_norm", "toy_limit"]}   # never-recorded key left out

    scaled_claim = Claim(id="toy-scaled", technique=PROBE, task="blobs-mlp", metric="toy_norm", direction="lower",
                         treatment=arm((PROBE, {"every": 2}), lr=0.1), baseline=arm((PROBE, {"every": 2})),
                         baseline_scale=0.5, seeds=3)
    scaled_specs = plan(scaled_claim)
    scaled = collect(scaled_claim, scaled_specs, _store(scaled_specs, _probe_run), n_resamples=500)
    assert set(scaled.probe_cost) == {"baseline", "treatment"}

    paths = write_report([result, scaled], tmp_path / "rep")
    for name in (f"probes_toy-law_{PROBE}", f"probes_toy-scaled_{PROBE}", "curves_toy-law"):
        with Image.open(paths[name]) as img:
            assert img.format == "PNG" and img.size[0] > 100
    md = (tmp_path / "rep" / "report.md").read_text()
    law = md[md.index("## toy-law"):md.index("## toy-scaled")]
    assert "| reference | toy_limit (a metric of the same run; one-arm claim: no baseline runs) |" in law
    assert "| baseline |" not in law
    assert "| seed | toy_norm | reference: toy_limit | diff |" in law
    assert "Per-step overhead not measured: one-arm claim: its probes" in law
    assert "| treatment | " + PROBE + " | 1 | 6 | 0.17 | 2 |" in law
    assert f"probes_toy-law_{PROBE}.png" in law
    assert "toy_norm - toy_limit (lower)" in md                 # summary row names what was compared
    other = md[md.index("## toy-scaled"):]
    assert "| seed | 0.5 x baseline | treatment | diff |" in other and "(compared as 0.5 x baseline)" in other
