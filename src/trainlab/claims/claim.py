"""The Claim: what a paper says, as data a program can check.

A claim compares two arms (baseline and treatment) on one task and one metric. Each arm is a list
of techniques with settings, plus task overrides (e.g. a different batch size or normalization
placement). The harness runs both arms on the same seeds and decides reproduced / contradicted /
inconclusive from the paired differences (treatment - baseline).

`baseline_scale` compares the treatment with a multiple of the baseline (0.9: "reaches 90% of the
baseline's accuracy"); the differences are then treatment - 0.9 x baseline.

A ONE-ARM claim (`reference=...`) states a property of one arm instead, e.g. a diagnostic law such as
"trace(H) <= 2/eta": only the treatment arm runs, and per seed the metric is paired with the
reference, a number or another metric of the same run (metric="hessian_trace",
reference="stability_limit", direction="lower"). The same statistics then read the differences
metric - reference; direction, min_effect and margin apply to them.

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

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainlab.claims.metrics import validate
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
    """One side of a comparison: techniques (name, settings) and task overrides.

    tune: a trainlab.claims.tuning.Tuning (or a bare grid such as {"lr": (1e-3, 1e-2)}): per seed,
    the arm's settings are chosen from the grid on a held-out validation split of the training data
    before its real run (each arm at its own best learning rate)."""

    techniques: tuple[TechniqueRef, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    tune: Any = None

    def __post_init__(self) -> None:
        if self.tune is not None:
            from trainlab.claims.tuning import as_tuning

            object.__setattr__(self, "tune", as_tuning(self.tune))

    def describe(self) -> str:
        if self.label:
            return self.label
        parts = [n + (f"({', '.join(f'{k}={v}' for k, v in s.items())})" if s else "") for n, s in self.techniques]
        parts += [f"{k}={v}" for k, v in self.overrides.items()]
        return " + ".join(parts) or "baseline"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "techniques": [[n, dict(s)] for n, s in self.techniques],
            "overrides": dict(self.overrides),
            "label": self.label,
        }
        if self.tune is not None:  # only tuned arms carry it, so other claims' dicts are as before
            out["tune"] = self.tune.to_dict()
        return out


def arm(*techniques: str | TechniqueRef, label: str = "", tune: Any = None, **overrides: Any) -> Arm:
    """Shorthand: arm("adamp", ("mixup", {"alpha": 0.2}), batch_size=2); tune=Tuning({"lr": (...)})
    chooses settings per seed on a held-out validation split (trainlab.claims.tuning)."""
    refs = tuple((t, {}) if isinstance(t, str) else (t[0], dict(t[1])) for t in techniques)
    return Arm(techniques=refs, overrides=overrides, label=label, tune=tune)


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
    #: one-arm claims: what each seed's metric is compared with, a number or a metric of the same
    #: run (e.g. "stability_limit"); None for a two-arm claim
    reference: str | float | None = None
    #: two-arm claims: compare the treatment with baseline_scale x baseline (0.9: "90% of the baseline")
    baseline_scale: float = 1.0

    def __post_init__(self) -> None:
        if set(self.allow_collapse) - {"baseline", "treatment"}:
            raise ConfigError(f"claim '{self.id}': allow_collapse names arms 'baseline' and/or 'treatment'")
        self._check_reference()
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

    def _check_reference(self) -> None:
        scale = self.baseline_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"claim '{self.id}': baseline_scale must be a number > 0, got {scale!r}")
        ref = self.reference
        if ref is None:
            return
        if isinstance(ref, bool) or not isinstance(ref, (str, int, float)):
            raise ConfigError(f"claim '{self.id}': reference must be a number or a metric name, got {ref!r}")
        if isinstance(ref, str):
            try:
                float(ref)
            except ValueError:
                try:
                    validate(ref)
                except ConfigError as e:
                    raise ConfigError(f"claim '{self.id}': reference: {e}") from None
            else:
                raise ConfigError(f"claim '{self.id}': reference {ref!r} is a number written as text; "
                                  f"give it as a number (reference={ref})")
        elif not math.isfinite(ref):
            raise ConfigError(f"claim '{self.id}': reference must be a finite number, got {ref!r}")
        if self.baseline != Arm():
            raise ConfigError(f"claim '{self.id}': a one-arm claim (reference={ref!r}) runs the treatment arm only; "
                              "leave baseline at its default (put shared settings in the claim's overrides)")
        if scale != 1.0:
            raise ConfigError(f"claim '{self.id}': baseline_scale is for two-arm claims; a one-arm claim "
                              f"(reference={ref!r}) has no baseline to scale")
        for p in self.preconditions:
            if isinstance(p, Precondition) and p.arm != "treatment":
                raise ConfigError(f"claim '{self.id}': a one-arm claim has no baseline runs; its precondition on "
                                  f"'{p.metric}' must name arm='treatment'")
        if "baseline" in self.allow_collapse:
            raise ConfigError(f"claim '{self.id}': a one-arm claim has no baseline arm to allow_collapse")

    @property
    def one_arm(self) -> bool:
        """True for a claim that compares one arm's metric with a reference."""
        return self.reference is not None

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms that run: ("treatment",) for a one-arm claim, else ("baseline", "treatment")."""
        return ("treatment",) if self.one_arm else ("baseline", "treatment")

    def compared(self) -> str:
        """What the paired differences are, in words, e.g. "hessian_trace - stability_limit",
        "test_acc vs 0.9 x baseline", "test_acc"."""
        return compared_text(self.to_dict())

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
            "reference": self.reference, "baseline_scale": self.baseline_scale,
        }


def is_one_arm(claim: Mapping[str, Any]) -> bool:
    """Whether a claim given as Claim.to_dict() is a one-arm claim (older dicts: never)."""
    return claim.get("reference") is not None


def reference_text(claim: Mapping[str, Any]) -> str:
    """What the treatment is compared with, from Claim.to_dict(): "baseline", "0.9 x baseline",
    the reference metric's name, or the reference number."""
    ref = claim.get("reference")
    if ref is not None:
        return f"{ref:g}" if isinstance(ref, (int, float)) else str(ref)
    scale = claim.get("baseline_scale", 1.0)
    return "baseline" if scale in (None, 1.0) else f"{scale:g} x baseline"


def compared_text(claim: Mapping[str, Any]) -> str:
    """The compared quantity, from Claim.to_dict(): "test_acc" (treatment - baseline),
    "test_acc vs 0.9 x baseline", or "hessian_trace - stability_limit" (one-arm)."""
    metric = str(claim.get("metric", ""))
    if is_one_arm(claim):
        return f"{metric} - {reference_text(claim)}"
    scale = claim.get("baseline_scale", 1.0)
    return metric if scale in (None, 1.0) else f"{metric} vs {reference_text(claim)}"
