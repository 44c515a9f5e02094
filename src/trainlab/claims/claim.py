"""The Claim: what a paper says, as data a program can check.

A claim compares two arms (baseline and treatment) on one task and one metric. Each arm is a list
of techniques with settings, plus task overrides (e.g. a different batch size or normalization
placement). The harness runs both arms on the same seeds and decides reproduced / contradicted /
inconclusive from the paired differences (treatment - baseline).

Metrics (see trainlab.claims.metrics): any key of a run's final metrics, e.g. "test_acc",
"test_loss", "test_ece", "train_loss", or a key a technique or probe logs per epoch;
"best:test_acc" (best epoch); "epochs_to:test_acc>=0.95" (first epoch reaching the threshold,
runs that never reach it count as epochs+1 and are reported as censored); "diverged" (1 if the run
diverged); "time_per_step", "peak_memory".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from trainlab.errors import ConfigError

TechniqueRef = tuple[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: techniques (name, settings) and task overrides."""

    techniques: tuple[TechniqueRef, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        parts = [n + (f"({', '.join(f'{k}={v}' for k, v in s.items())})" if s else "") for n, s in self.techniques]
        parts += [f"{k}={v}" for k, v in self.overrides.items()]
        return " + ".join(parts) or "baseline"

    def to_dict(self) -> dict[str, Any]:
        return {
            "techniques": [[n, dict(s)] for n, s in self.techniques],
            "overrides": dict(self.overrides),
            "label": self.label,
        }


def arm(*techniques: str | TechniqueRef, label: str = "", **overrides: Any) -> Arm:
    """Shorthand: arm("adamp", ("mixup", {"alpha": 0.2}), batch_size=2)."""
    refs = tuple((t, {}) if isinstance(t, str) else (t[0], dict(t[1])) for t in techniques)
    return Arm(techniques=refs, overrides=overrides, label=label)


@dataclass(frozen=True)
class Claim:
    """A paper's claim, checkable by the harness.

    id: unique, e.g. "adamp-digits". technique: the technique's registry name (for `trainlab check
    <technique>`). task: a named task or "file.py:attr". metric/direction: what is compared and which
    way is better. min_effect: the smallest effect (in metric units, >= 0) that counts as reproduced.
    paper_quote/paper_number: the paper's own words and number. paper_scale: where the paper measured.
    suites: "quick" and/or "full". overrides: task overrides applied to both arms.
    """

    id: str
    technique: str
    task: str
    metric: str
    direction: str
    treatment: Arm
    baseline: Arm = field(default_factory=Arm)
    paper_quote: str = ""
    paper_number: str = ""
    paper_scale: str = ""
    min_effect: float = 0.0
    margin: float = 0.0
    seeds: int = 5
    suites: tuple[str, ...] = ("full",)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ConfigError(f"claim '{self.id}': direction must be 'higher' or 'lower'")
        if self.min_effect < 0 or self.margin < 0:
            raise ConfigError(f"claim '{self.id}': min_effect and margin must be >= 0")
        if self.min_effect > 0 and self.margin > 0:
            raise ConfigError(f"claim '{self.id}': give a min_effect (superiority) or a margin (non-inferiority), not both")
        if self.seeds < 2:
            raise ConfigError(f"claim '{self.id}': needs at least 2 seeds")
        bad = set(self.suites) - {"quick", "full"}
        if bad:
            raise ConfigError(f"claim '{self.id}': unknown suites {sorted(bad)}")

    @property
    def sign(self) -> int:
        """+1 if larger metric values are better, -1 if smaller are."""
        return 1 if self.direction == "higher" else -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "technique": self.technique, "task": self.task, "metric": self.metric,
            "direction": self.direction, "treatment": self.treatment.to_dict(),
            "baseline": self.baseline.to_dict(), "paper_quote": self.paper_quote,
            "paper_number": self.paper_number, "paper_scale": self.paper_scale,
            "min_effect": self.min_effect, "margin": self.margin, "seeds": self.seeds, "suites": list(self.suites),
            "overrides": dict(self.overrides), "notes": self.notes,
        }
