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
    baseline_values: list[float]              # per seed, paired with treatment_values
    treatment_values: list[float]
    analysis: Analysis | None
    #: per arm ("baseline"/"treatment"): list over seeds of list over epochs of metric dicts
    curves: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    #: time_ratio, memory_ratio, params_ratio, optimizer_state_bytes {"baseline","treatment"}, ...
    overhead: dict[str, Any] = field(default_factory=dict)
    #: per arm: counts of finished / diverged / failed runs, censored values for epochs_to metrics
    status_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.analysis.verdict if self.analysis else "failed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
