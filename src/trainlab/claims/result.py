"""ClaimResult: the outcome of checking one claim, as plain data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Analysis:
    """Statistics of the paired differences d_i = treatment_i - baseline_i (in metric units)."""

    n: int
    mean_treatment: float
    mean_baseline: float
    mean_diff: float
    ci_low: float
    ci_high: float
    ci_level: float
    ci_method: str
    p_ttest: float
    p_wilcoxon: float
    effect_size: float          # Cohen's d_z of the paired differences (mean / sd)
    verdict: str                # reproduced | contradicted | inconclusive
    seeds_needed: int | None    # for inconclusive: seeds likely needed to decide, else None
    note: str = ""


@dataclass
class ClaimResult:
    claim: dict[str, Any]                     # Claim.to_dict()
    seeds: list[int]
    #: per seed, paired with treatment_values: what the treatment is compared with, i.e. the
    #: baseline's values (times Claim.baseline_scale), or a one-arm claim's reference values
    baseline_values: list[float]
    treatment_values: list[float]
    analysis: Analysis | None
    #: per arm ("baseline"/"treatment"): list over seeds of list over epochs of metric dicts
    curves: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    #: time_ratio, memory_ratio, params_ratio, optimizer_state_bytes {"baseline","treatment"}, ...
    overhead: dict[str, Any] = field(default_factory=dict)
    #: per arm: counts of finished / diverged / failed runs, censored values for epochs_to metrics
    status_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: reproduced | contradicted | inconclusive | out of regime | degenerate | failed
    #: (see trainlab.claims.regime); "" for results made before outcomes existed
    outcome: str = ""
    #: each precondition with its per-seed values, aggregate, threshold and passed (True/False/None)
    preconditions: list[dict[str, Any]] = field(default_factory=list)
    #: degenerate arms and collapsed runs (trainlab.claims.regime.find_collapse)
    collapse: dict[str, Any] = field(default_factory=dict)
    #: the analysis without the seeds of single collapsed runs, when there are any
    analysis_without_collapsed: Analysis | None = None
    #: the technique's fidelity to its paper: {"level", "deviations", "evidence"}
    fidelity: dict[str, Any] = field(default_factory=dict)
    #: the task the runs used (a user's own task, or the claim's task)
    task: str = ""
    #: this run's scale beside the paper's: {"train_size", "epochs", "params"} of the treatment arm
    setting: dict[str, Any] = field(default_factory=dict)
    #: per arm and probe: {"seconds_per_run", "train_seconds_per_run", "ratio", "measurements_per_run"}
    #: (the probes' measuring seconds against the run's training seconds); {} without probes
    probe_cost: dict[str, Any] = field(default_factory=dict)
    #: per tuned arm (Arm.tune): {"tuning": Tuning.to_dict(), "per_seed": [{"seed", "chosen", "scores"}]};
    #: {} when no arm is tuned (trainlab.claims.tuning)
    tuning: dict[str, Any] = field(default_factory=dict)

    @property
    def one_arm(self) -> bool:
        """True when the claim compared one arm's metric with a reference (no baseline runs)."""
        return self.claim.get("reference") is not None

    @property
    def verdict(self) -> str:
        """The claim's outcome (the statistical verdict unless out of regime or degenerate)."""
        if self.outcome:
            return self.outcome
        return self.analysis.verdict if self.analysis else "failed"

    @property
    def statistical_verdict(self) -> str | None:
        """What the interval alone says, whatever the regime (None without an analysis)."""
        return self.analysis.verdict if self.analysis else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClaimResult":
        """Rebuild a result stored with to_dict (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("analysis", "analysis_without_collapsed"):
            if isinstance(kw.get(key), dict):
                a_names = {f.name for f in dataclasses.fields(Analysis)}
                kw[key] = Analysis(**{k: v for k, v in kw[key].items() if k in a_names})
        return cls(**kw)
