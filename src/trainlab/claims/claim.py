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

Preconditions state the regime in which the paper's mechanism acts (the baseline overfits, memorizes
noisy labels, trains at all). Each is checked on the stored runs of one arm; if one fails the
claim's outcome is "out of regime", never reproduced or contradicted (the statistics are still
shown, marked as outside the paper's regime).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from trainlab.errors import ConfigError

TechniqueRef = tuple[str, Mapping[str, Any]]

PRECONDITION_OPS = (">=", "<=", ">", "<")
SEED_AGGREGATES = ("mean", "min", "max")


@dataclass(frozen=True)
class Precondition:
    """A check on one arm's stored runs that must hold for the claim to be in the paper's regime.

    metric: any claim metric (see trainlab.claims.metrics), e.g. "train_acc" (final value),
    "best:test_acc", "max:train_memorized", or the difference of two, "best:test_acc - test_acc".
    The value is computed per seed, then aggregated over seeds with `over` (mean, min or max:
    "max" reads "in at least one seed", "min" reads "in every seed").
    relative_to="chance" adds the task's chance accuracy (1 / number of classes) to `threshold`,
    so `threshold=0.1` reads "10 points above chance".
    why: the regime in words, e.g. "the baseline memorizes the noisy labels".
    """

    metric: str
    op: str
    threshold: float
    arm: str = "baseline"
    over: str = "mean"
    relative_to: str | None = None
    why: str = ""

    def __post_init__(self) -> None:
        from trainlab.claims.metrics import validate

        if self.op not in PRECONDITION_OPS:
            raise ConfigError(f"precondition on '{self.metric}': op must be one of {PRECONDITION_OPS}, got {self.op!r}")
        if self.arm not in ("baseline", "treatment"):
            raise ConfigError(f"precondition on '{self.metric}': arm must be 'baseline' or 'treatment'")
        if self.over not in SEED_AGGREGATES:
            raise ConfigError(f"precondition on '{self.metric}': over must be one of {SEED_AGGREGATES}")
        if self.relative_to not in (None, "chance"):
            raise ConfigError(f"precondition on '{self.metric}': relative_to must be None or 'chance'")
        for part in self.metric_terms():
            validate(part)

    def metric_terms(self) -> tuple[str, ...]:
        """The metric, or the two metrics of a difference "a - b"."""
        parts = tuple(p.strip() for p in self.metric.split(" - "))
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"precondition metric '{self.metric}': use one metric or 'a - b'")
        return parts

    def describe(self) -> str:
        """e.g. "baseline mean final train_acc >= 0.99"."""
        threshold = f"chance + {self.threshold:g}" if self.relative_to == "chance" else f"{self.threshold:g}"
        return f"{self.arm} {self.over} {self.metric} {self.op} {threshold}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "op": self.op, "threshold": self.threshold, "arm": self.arm,
                "over": self.over, "relative_to": self.relative_to, "why": self.why, "text": self.describe()}


@dataclass(frozen=True)
class PaperSetting:
    """Where the paper measured, in numbers the report can set beside ours (None = not stated).

    train_size: training examples; epochs; params: model parameters; text: anything else
    (dataset, architecture), shown as written."""

    train_size: int | None = None
    epochs: float | None = None
    params: int | None = None
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"train_size": self.train_size, "epochs": self.epochs, "params": self.params, "text": self.text}


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
    preconditions: tuple[Precondition, ...] = ()
    paper_setting: PaperSetting | None = None
    #: arms that may sit at chance without making the comparison degenerate (e.g. a network at
    #: initialization, a learning rate meant to fail); see trainlab.claims.regime
    allow_collapse: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if set(self.allow_collapse) - {"baseline", "treatment"}:
            raise ConfigError(f"claim '{self.id}': allow_collapse names arms 'baseline' and/or 'treatment'")
        if not all(isinstance(p, Precondition) for p in self.preconditions):
            raise ConfigError(f"claim '{self.id}': preconditions must be Precondition objects")
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
            "preconditions": [p.to_dict() for p in self.preconditions],
            "paper_setting": self.paper_setting.to_dict() if self.paper_setting else None,
            "allow_collapse": list(self.allow_collapse),
        }
