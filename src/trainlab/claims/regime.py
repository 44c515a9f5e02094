"""What a verdict may claim: regime preconditions and degenerate (collapsed) runs.

Both are judged on the stored runs of a claim, before the paired statistics are read:

* **Preconditions** (`Claim.preconditions`): the regime in which the paper's mechanism acts. Each
  is evaluated per seed on one arm's runs, aggregated over seeds (mean, min or max) and compared
  with its threshold. A failed precondition makes the outcome "out of regime".
* **Collapsed runs**: a finished classification run whose test predictions are (almost) all one
  class, or whose test accuracy is at chance. An arm whose every run collapsed while the other arm
  learns is *degenerate*: the comparison says the technique broke the model on this task, not
  whether the paper's mechanism helps, so no verdict is given. Single collapsed runs (a run at
  chance while its paired run learns) are named, and the verdict is also computed without them,
  leaving the decision to the reader. A claim whose arm may legitimately sit at chance (a network
  at initialization, a learning rate meant to fail) lists that arm in `Claim.allow_collapse`.

  A one-arm claim (Claim.reference) has no other arm: its treatment arm is degenerate when every
  run collapsed (the model never learned, so what was measured is not a trained model's property),
  unless the claim allows it; a single collapsed run is one that collapsed while other seeds learn.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from trainlab.claims.claim import Claim, Precondition
from trainlab.claims.metrics import metric_value

#: a run whose most frequent predicted class covers at least this share of the test set predicts
#: one class: it has collapsed (a balanced 2-class task gives 0.5 for a useful model)
CONSTANT_PREDICTIONS = 0.98
#: test accuracy within this many points of chance counts as "at chance"
AT_CHANCE_MARGIN = 0.02
#: a run "learns" when its test accuracy is at least this far above chance (and it has not collapsed)
LEARNS_MARGIN = 0.10

OUTCOMES = ("reproduced", "contradicted", "inconclusive", "out of regime", "degenerate", "failed")

_AGGREGATE = {"mean": np.mean, "min": np.min, "max": np.max}
_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}


def chance_accuracy(run: Mapping[str, Any]) -> float | None:
    """1 / number of classes, as the run recorded it (None for runs that did not record it)."""
    final = run.get("final") or {}
    if "chance_acc" in final:
        return float(final["chance_acc"])
    for row in reversed(run.get("epochs") or []):
        if "chance_acc" in row:
            return float(row["chance_acc"])
    return None


def precondition_value(p: Precondition, run: Mapping[str, Any], planned_epochs: int) -> float:
    """The precondition's metric for one run (a difference "a - b" where given)."""
    terms = p.metric_terms()
    values = [metric_value(t, dict(run), planned_epochs)[0] for t in terms]
    return values[0] - values[1] if len(values) == 2 else values[0]


def evaluate_preconditions(claim: Claim, runs: Mapping[str, Sequence[Mapping[str, Any]]],
                           planned_epochs: Mapping[str, int]) -> list[dict[str, Any]]:
    """Each precondition with its per-seed values, aggregate, effective threshold and outcome.

    runs: arm -> that arm's stored runs (failed runs excluded), ordered by seed.
    passed is None when it cannot be evaluated (no runs, or the runs lack the metric)."""
    out = []
    for p in claim.preconditions:
        arm_runs = list(runs.get(p.arm, ()))
        per_seed = [precondition_value(p, r, planned_epochs[p.arm]) for r in arm_runs]
        seeds = [int(r.get("seed", i)) for i, r in enumerate(arm_runs)]
        finite = [v for v in per_seed if math.isfinite(v)]
        threshold: float | None = p.threshold
        if p.relative_to == "chance":
            chances = [c for c in (chance_accuracy(r) for r in arm_runs) if c is not None]
            threshold = p.threshold + chances[0] if chances else None
        value = float(_AGGREGATE[p.over](finite)) if finite else math.nan
        if threshold is None or not finite:
            passed, reason = None, ("no runs" if not arm_runs else
                                    "the runs do not record this metric" if not finite else
                                    "the runs do not record their chance level")
        else:
            passed, reason = bool(_OPS[p.op](value, threshold)), ""
        out.append({**p.to_dict(), "per_seed": per_seed, "seeds": seeds, "value": value,
                    "effective_threshold": threshold, "passed": passed, "reason": reason})
    return out


def failed_preconditions(checks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in checks if c["passed"] is False]


def describe_precondition(c: Mapping[str, Any], scale: float = 1.0) -> str:
    """e.g. "baseline mean train_acc 0.71 (needs >= 0.99; per seed 0.70, 0.72)"."""
    if c["passed"] is None:
        return f"{c['text']}: not evaluated ({c['reason']})"
    per_seed = ", ".join(_fmt(v) for v in c["per_seed"])
    return (f"{c['arm']} {c['over']} {c['metric']} {_fmt(c['value'])} "
            f"(needs {c['op']} {_fmt(c['effective_threshold'])}; per seed {per_seed})"
            + ("" if c["passed"] else ": FAILED"))


def collapse_state(run: Mapping[str, Any]) -> tuple[bool, bool] | None:
    """(collapsed, learns) of a finished classification run, None when it cannot be told
    (a diverged or failed run, a run without the metrics, a task that is not classification)."""
    if run.get("status") != "finished":
        return None
    final = run.get("final") or {}
    chance = chance_accuracy(run)
    acc = final.get("test_acc")
    if chance is None or acc is None or not math.isfinite(acc):
        return None
    top = final.get("test_top_class_frac")
    constant = top is not None and math.isfinite(top) and top >= CONSTANT_PREDICTIONS
    collapsed = constant or acc <= chance + AT_CHANCE_MARGIN
    learns = not collapsed and acc >= chance + LEARNS_MARGIN
    return collapsed, learns


def find_collapse(claim: Claim, runs_by_seed: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Degenerate arms and single collapsed runs among paired runs.

    runs_by_seed: seed -> arm -> stored run. Returns {"degenerate_arms": [...], "collapsed":
    {arm: [seeds]}, "unpaired_collapse": [seeds where one arm collapsed and its pair learns],
    "detail": {arm: {seed: (test_acc, top_class_frac)}}}."""
    arms = claim.arms
    collapsed: dict[str, list[int]] = {a: [] for a in arms}
    learns: dict[str, list[int]] = {a: [] for a in arms}
    judged: dict[str, int] = {a: 0 for a in arms}
    detail: dict[str, dict[int, tuple[float, float]]] = {a: {} for a in arms}
    for seed, pair in sorted(runs_by_seed.items()):
        for a in arms:
            run = pair.get(a)
            state = collapse_state(run) if run is not None else None
            if state is None:
                continue
            judged[a] += 1
            final = run.get("final") or {}
            detail[a][seed] = (float(final.get("test_acc", math.nan)), float(final.get("test_top_class_frac", math.nan)))
            if state[0]:
                collapsed[a].append(seed)
            if state[1]:
                learns[a].append(seed)
    allowed = set(claim.allow_collapse)
    if claim.one_arm:  # no pair: judged against the arm's own other seeds
        a = "treatment"
        degenerate = [a] if a not in allowed and judged[a] >= 2 and len(collapsed[a]) == judged[a] else []
        unpaired = sorted(collapsed[a]) if a not in allowed and not degenerate and learns[a] else []
    else:
        degenerate = [a for a in arms if a not in allowed and judged[a] >= 2 and len(collapsed[a]) == judged[a]
                      and learns[_other(a)]]
        unpaired = sorted(
            seed for a in arms if a not in allowed and a not in degenerate for seed in collapsed[a]
            if seed in learns[_other(a)]
        )
    return {"degenerate_arms": degenerate, "collapsed": collapsed, "unpaired_collapse": unpaired,
            "detail": {a: {str(k): v for k, v in d.items()} for a, d in detail.items()}}


def outcome(verdict: str | None, checks: Sequence[Mapping[str, Any]], collapse: Mapping[str, Any]) -> str:
    """The claim's outcome: a failed precondition first, then a degenerate arm, then the verdict."""
    if verdict is None:
        return "failed"
    if failed_preconditions(checks):
        return "out of regime"
    if collapse.get("degenerate_arms"):
        return "degenerate"
    return verdict


def _other(arm: str) -> str:
    return "treatment" if arm == "baseline" else "baseline"


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}"
