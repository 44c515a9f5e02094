"""Regime preconditions and collapsed arms, on hand-made stored runs (no training)."""
from __future__ import annotations

import math

import pytest

from trainlab.claims.claim import Claim, Precondition, arm
from trainlab.claims.regime import (collapse_state, describe_precondition, evaluate_preconditions, find_collapse,
                                    outcome)
from trainlab.errors import ConfigError


def _run(seed, test_acc, train_acc=0.9, top=0.2, chance=0.1, status="finished", epochs=None):
    epochs = epochs or [{"epoch": 1, "test_acc": test_acc, "train_acc": train_acc, "chance_acc": chance}]
    return {"seed": seed, "status": status, "epochs": epochs,
            "final": {"test_acc": test_acc, "train_acc": train_acc, "test_top_class_frac": top, "chance_acc": chance}}


def _claim(*pre, allow=()):
    return Claim(id="c", technique="t", task="digits-mlp", metric="test_acc", direction="higher",
                 treatment=arm("placebo"), preconditions=tuple(pre), allow_collapse=allow)


def test_precondition_mean_min_max_and_difference():
    runs = {"baseline": [_run(0, 0.5, train_acc=0.99), _run(1, 0.6, train_acc=0.90)], "treatment": []}
    pre_mean = Precondition("train_acc", ">=", 0.95)
    pre_min = Precondition("train_acc", ">=", 0.95, over="min")
    pre_max = Precondition("train_acc", ">=", 0.95, over="max")
    gap = Precondition("train_acc - test_acc", ">=", 0.4)
    checks = evaluate_preconditions(_claim(pre_mean, pre_min, pre_max, gap), runs, {"baseline": 1, "treatment": 1})
    assert [c["passed"] for c in checks] == [False, False, True, False]
    assert checks[0]["value"] == pytest.approx(0.945)
    assert checks[0]["per_seed"] == pytest.approx([0.99, 0.90])
    assert checks[3]["per_seed"] == pytest.approx([0.49, 0.30])   # 0.99-0.5, 0.9-0.6
    assert "needs >= 0.95" in describe_precondition(checks[0]) and "FAILED" in describe_precondition(checks[0])


def test_precondition_relative_to_chance_uses_recorded_chance():
    pre = Precondition("test_acc", ">=", 0.10, relative_to="chance", over="max")
    runs = {"baseline": [_run(0, 0.55, chance=0.5), _run(1, 0.58, chance=0.5)]}
    (check,) = evaluate_preconditions(_claim(pre), runs, {"baseline": 1, "treatment": 1})
    assert check["effective_threshold"] == pytest.approx(0.60)
    assert check["passed"] is False
    runs = {"baseline": [_run(0, 0.55, chance=0.5), _run(1, 0.61, chance=0.5)]}
    (check,) = evaluate_preconditions(_claim(pre), runs, {"baseline": 1, "treatment": 1})
    assert check["passed"] is True


def test_precondition_without_the_metric_is_not_evaluated_not_failed():
    pre = Precondition("max:train_memorized", ">=", 0.5)
    (check,) = evaluate_preconditions(_claim(pre), {"baseline": [_run(0, 0.5)]}, {"baseline": 1, "treatment": 1})
    assert check["passed"] is None and "do not record" in check["reason"]
    assert outcome("reproduced", [check], {}) == "reproduced"


def test_bad_precondition_is_a_config_error():
    with pytest.raises(ConfigError):
        Precondition("train_acc", "=>", 0.9)
    with pytest.raises(ConfigError):
        Precondition("train_acc", ">=", 0.9, over="median")
    with pytest.raises(ConfigError):
        Precondition("a - b - c", ">=", 0.9)
    with pytest.raises(ConfigError):
        _claim(allow=("control",))


def test_collapse_state():
    assert collapse_state(_run(0, 0.11)) == (True, False)           # at chance
    assert collapse_state(_run(0, 0.62, top=0.99)) == (True, False)   # constant predictions (imbalanced data)
    assert collapse_state(_run(0, 0.15)) == (False, False)           # neither collapsed nor clearly learning
    assert collapse_state(_run(0, 0.9)) == (False, True)
    assert collapse_state(_run(0, 0.11, status="diverged")) is None
    assert collapse_state({"status": "finished", "final": {"test_acc": 0.5}}) is None  # no chance level recorded


def test_degenerate_arm_and_single_collapsed_run():
    claim = _claim()
    all_collapsed = {s: {"baseline": _run(s, 0.9), "treatment": _run(s, 0.10, top=1.0)} for s in range(3)}
    found = find_collapse(claim, all_collapsed)
    assert found["degenerate_arms"] == ["treatment"]
    assert outcome("contradicted", [], found) == "degenerate"

    one = {s: {"baseline": _run(s, 0.9 if s != 2 else 0.1), "treatment": _run(s, 0.88)} for s in range(4)}
    found = find_collapse(claim, one)
    assert found["degenerate_arms"] == [] and found["unpaired_collapse"] == [2]
    assert found["collapsed"]["baseline"] == [2]

    # both arms at chance everywhere: nothing learns, so no arm is "degenerate against the other"
    none_learn = {s: {"baseline": _run(s, 0.1), "treatment": _run(s, 0.1)} for s in range(3)}
    assert find_collapse(claim, none_learn)["degenerate_arms"] == []


def test_allow_collapse_keeps_the_verdict():
    claim = _claim(allow=("treatment",))
    runs = {s: {"baseline": _run(s, 0.9), "treatment": _run(s, 0.10, top=1.0)} for s in range(3)}
    found = find_collapse(claim, runs)
    assert found["degenerate_arms"] == [] and found["unpaired_collapse"] == []
    assert outcome("contradicted", [], found) == "contradicted"


def test_outcome_order():
    failed = [{"passed": False}]
    assert outcome(None, failed, {"degenerate_arms": ["baseline"]}) == "failed"
    assert outcome("reproduced", failed, {"degenerate_arms": ["baseline"]}) == "out of regime"
    assert outcome("reproduced", [{"passed": True}], {"degenerate_arms": []}) == "reproduced"
    assert math.isnan(evaluate_preconditions(_claim(Precondition("train_acc", ">=", 1)), {"baseline": []},
                                             {"baseline": 1, "treatment": 1})[0]["value"])


# ------------------------------------------------------------------ end to end, through the harness

class _Zero(__import__("torch").nn.Module):
    def forward(self, x):
        return x * 0.0


def _halfspace_task():
    import torch
    from torch import nn

    from trainlab import DataBundle, Task

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(400, 6, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        return DataBundle(x[:300], y[:300], x[300:], y[300:], num_classes=2, name="halfspace")

    def model(input_shape, num_classes, dead=False):
        layers = [nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes)]
        if dead:  # a "technique" that breaks the model: every logit 0, so one class is always predicted
            layers.append(_Zero())
        return nn.Sequential(*layers)

    return Task("halfspace", make_data=data, make_model=model, epochs=3, batch_size=30, lr=0.1, weight_decay=0.0)


def test_failed_precondition_gives_out_of_regime_with_values(tmp_path):
    import trainlab
    from trainlab.claims.runner import verdict_line

    claim = Claim(id="u-regime", technique="none", task="blobs-mlp", metric="test_acc", direction="higher",
                  treatment=arm(epochs=3), baseline=arm(epochs=1, lr=0.001), seeds=2,
                  preconditions=(Precondition("train_acc", ">=", 1.01, why="impossible on purpose"),
                                 Precondition("test_acc", ">=", 0.0, arm="treatment", over="min")))
    result = trainlab.check(claim, task=_halfspace_task(), workers=1, overhead=False, store=tmp_path / "s.sqlite")
    assert result.verdict == "out of regime"
    assert result.statistical_verdict in ("reproduced", "inconclusive", "contradicted")
    failed, holds = result.preconditions
    assert failed["passed"] is False and len(failed["per_seed"]) == 2 and holds["passed"] is True
    line = verdict_line(result)
    assert "out of regime" in line and "needs >= 1.01" in line and "impossible on purpose" in line
    assert "on halfspace" in line


def test_a_treatment_that_breaks_the_model_is_degenerate_not_a_verdict(tmp_path):
    import trainlab
    from trainlab.claims.runner import verdict_line

    claim = Claim(id="u-broken", technique="none", task="blobs-mlp", metric="test_acc", direction="higher",
                  treatment=arm(model_kwargs={"dead": True}, label="broken model"), seeds=2)
    result = trainlab.check(claim, task=_halfspace_task(), workers=1, overhead=False, store=tmp_path / "s.sqlite")
    assert result.statistical_verdict == "contradicted"
    assert result.collapse["degenerate_arms"] == ["treatment"]
    assert result.verdict == "degenerate"
    assert "degenerate: every treatment run collapsed" in verdict_line(result)


def test_a_single_collapsed_seed_is_named_and_the_verdict_shown_without_it(tmp_path):
    """Seed 1 of the baseline is broken (as a collapsed cross-entropy run would be): it is named,
    and the verdict is computed with and without it."""
    import trainlab
    from trainlab.claims.runner import verdict_line

    claim = Claim(id="u-one-collapsed", technique="placebo", task="blobs-mlp", metric="test_acc",
                  direction="higher", treatment=arm("placebo"), seeds=3)
    store = tmp_path / "s.sqlite"
    result = trainlab.check(claim, task=_halfspace_task(), workers=1, overhead=False, store=store)
    assert result.collapse["unpaired_collapse"] == []
    # replace seed 1's baseline run in the store by a collapsed one (constant predictions)
    import sqlite3
    import json
    con = sqlite3.connect(store)
    key, final = con.execute("select run_key, final from runs where arm='baseline' and seed=1").fetchone()
    final = json.loads(final)
    final.update(test_acc=0.5, test_top_class_frac=1.0)
    con.execute("update runs set final=? where run_key=?", (json.dumps(final), key))
    con.commit()
    con.close()
    result = trainlab.check(claim, task=_halfspace_task(), workers=1, overhead=False, store=store)
    assert result.collapse["unpaired_collapse"] == [1]
    assert result.analysis.n == 3 and result.analysis_without_collapsed.n == 2
    line = verdict_line(result)
    assert "seed(s) [1] of the baseline arm collapsed" in line and "without them:" in line


def test_the_console_line_keeps_the_fidelity_tag(tmp_path, capsys):
    """Square brackets in a verdict line are text, not console markup (a stand-in's tag once vanished)."""
    from trainlab.claims.api import _RunProgress

    with _RunProgress(True) as prog:
        prog.note("c: out of regime [this stand-in of x, not the paper's method]  +1.0 pt")
    assert "[this stand-in of x, not the paper's method]" in capsys.readouterr().err
