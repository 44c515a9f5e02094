"""Per-arm hyper-parameter selection on a held-out validation split, per seed.

Methods whose best learning rate differs (an adapter with another scaling, an optimizer whose term
changes the effective step) are compared at each one's own best setting, as papers tune per method:

    Claim(..., baseline=arm("lora", tune=Tuning({"lr": (1e-3, 3e-3, 1e-2)})),
               treatment=arm("lora-sb", tune=Tuning({"lr": (1e-3, 3e-3, 1e-2)})))

For each seed and each tuned arm, the harness first trains the arm once per grid point (the
Cartesian product of the grid's values, in the order given) on the training set minus a held-out
slice: the last `validation` fraction of a permutation of the training examples fixed by the seed
(Task.holdout_validation, trainlab.tasks.wrappers.holdout_split), evaluated on that slice in the
test split's place, so the test set is never seen while choosing. Each grid point is scored by
`metric` on its tuning run ("val_acc" = the final epoch's accuracy on the held-out slice;
"best:val_acc" = its best epoch; any claim metric with "val_" for the test split), the best wins
(ties and all-failed grids: the first in grid order; diverged or failed tuning runs rank last), and
the real run trains on the full training set at the chosen values.

Tuning runs are ordinary stored runs (arm "<arm>-tune"), so they are reused and resumable. The real
run's config holds the chosen values (they are task or technique settings), so its run key follows
from the tuning runs deterministically, and a real run that equals an untuned one shares its key.

Grid keys: any Task field ("lr", "weight_decay", "batch_size", ...) or a technique setting written
"technique:<name>.<setting>" (e.g. "technique:lora.alpha"; the technique must be in the arm).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from trainlab.claims.metrics import metric_value, validate
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.claims.claim import Arm, Claim
    from trainlab.claims.runner import RunSpec
    from trainlab.claims.store import Store
    from trainlab.tasks.task import Task

TECHNIQUE_PREFIX = "technique:"
_VAL = re.compile(r"\bval_")


@dataclass(frozen=True)
class Tuning:
    """A grid searched per seed on a held-out validation split (see the module docstring).

    grid: setting -> candidate values, e.g. {"lr": (1e-3, 3e-3, 1e-2)}; several settings are
    searched jointly (their product). metric: how a tuning run is scored, "val_acc" (final epoch)
    by default; "val_" names the held-out slice's metrics. direction: "higher" or "lower" is better.
    validation: the held-out fraction of the training set, in (0, 1).
    """

    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    metric: str = "val_acc"
    direction: str = "higher"
    validation: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.grid, Mapping) or not self.grid:
            raise ConfigError("Tuning: give a grid, e.g. Tuning({'lr': (1e-3, 3e-3, 1e-2)})")
        grid = {}
        for key, values in self.grid.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"Tuning: grid keys are setting names, got {key!r}")
            if key.startswith(TECHNIQUE_PREFIX) and "." not in key[len(TECHNIQUE_PREFIX):]:
                raise ConfigError(f"Tuning: technique settings are written 'technique:<name>.<setting>', got {key!r}")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
                raise ConfigError(f"Tuning: grid['{key}'] must be a non-empty list of values, got {values!r}")
            if len(set(map(repr, values))) != len(values):
                raise ConfigError(f"Tuning: grid['{key}'] repeats a value: {values!r}")
            grid[key] = tuple(values)
        object.__setattr__(self, "grid", grid)
        if self.direction not in ("higher", "lower"):
            raise ConfigError(f"Tuning: direction must be 'higher' or 'lower', got {self.direction!r}")
        v = self.validation
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ConfigError(f"Tuning: validation is the held-out fraction of the training set, in (0, 1); got {v!r}")
        try:
            validate(self.run_metric)
        except ConfigError as e:
            raise ConfigError(f"Tuning: metric: {e}") from None

    @property
    def run_metric(self) -> str:
        """The metric as a tuning run stores it: the held-out slice is its test split."""
        return _VAL.sub("test_", self.metric)

    def points(self) -> list[dict[str, Any]]:
        """The grid points in grid order (the product, last key fastest)."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def describe(self) -> str:
        """e.g. "lr in (0.001, 0.003, 0.01) by final val_acc on a 20% held-out split"."""
        grid = "; ".join(f"{k} in ({', '.join(_fmt(v) for v in vs)})" for k, vs in self.grid.items())
        return f"{grid} by {_metric_text(self.metric)} on a {self.validation:.0%} held-out split of the training set"

    def to_dict(self) -> dict[str, Any]:
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "metric": self.metric,
                "direction": self.direction, "validation": self.validation, "text": self.describe()}


def as_tuning(tune: Tuning | Mapping[str, Sequence[Any]] | None) -> Tuning | None:
    """A Tuning from an Arm's `tune` (a Tuning, a bare grid mapping, or None)."""
    if tune is None or isinstance(tune, Tuning):
        return tune
    if isinstance(tune, Mapping):
        return Tuning(grid=tune)
    raise ConfigError(f"an arm's tune must be a Tuning or a grid such as {{'lr': (1e-3, 1e-2)}}, got {tune!r}")


def apply_point(task: "Task", techniques: Sequence[tuple[str, Mapping[str, Any]]], point: Mapping[str, Any]
                ) -> tuple["Task", list[tuple[str, dict[str, Any]]]]:
    """The task and technique list with one grid point's values set."""
    task_changes = {k: v for k, v in point.items() if not k.startswith(TECHNIQUE_PREFIX)}
    techs = [(n, dict(s)) for n, s in techniques]
    for key, value in point.items():
        if not key.startswith(TECHNIQUE_PREFIX):
            continue
        name, setting = key[len(TECHNIQUE_PREFIX):].split(".", 1)
        hits = [s for n, s in techs if n == name]
        if not hits:
            raise ConfigError(f"tuning '{key}': the arm has no technique '{name}' "
                              f"(it has: {', '.join(n for n, _ in techs) or 'none'})")
        for settings in hits:
            settings[setting] = value
    return task.with_overrides(task_changes), techs


def tuning_arm(arm_name: str) -> str:
    """The store's arm label of an arm's tuning runs."""
    return f"{arm_name}-tune"


def tuning_specs(claim_id: str | None, arm_name: str, tuning: Tuning, task: "Task",
                 techniques: Sequence[tuple[str, Mapping[str, Any]]], seed: int, device: str = "cpu") -> list["RunSpec"]:
    """One tuning run per grid point for one arm and seed, in grid order."""
    from trainlab.claims.runner import RunSpec

    specs = []
    for point in tuning.points():
        t, techs = apply_point(task, techniques, point)
        specs.append(RunSpec(claim_id, tuning_arm(arm_name), t.with_overrides({"holdout_validation": tuning.validation}),
                             techs, seed, device))
    return specs


def plan_tuning(claim: "Claim", seeds: int | None = None, task: "Task | str | None" = None, device: str = "cpu",
                first_seed: int = 0) -> list["RunSpec"]:
    """Every tuning run of the claim's tuned arms, interleaved by seed ([] when no arm is tuned)."""
    from trainlab.claims.runner import arm_task, seed_count

    n = seed_count(claim, seeds)
    specs = []
    for seed in range(first_seed, first_seed + n):
        for name in claim.arms:
            a = getattr(claim, name)
            if a.tune is not None:
                specs += tuning_specs(claim.id, name, a.tune, arm_task(claim, a, task),
                                      [(t, dict(s)) for t, s in a.techniques], seed, device)
    return specs


def choose(tuning: Tuning, specs: Sequence["RunSpec"], store: "Store") -> dict[str, Any] | None:
    """The chosen grid point from one arm's and seed's stored tuning runs (in grid order), with
    every point's score: {"chosen": {...}, "scores": [{"values", "score", "status"}, ...]}.
    None while a tuning run is not in the store."""
    points = tuning.points()
    sign = 1.0 if tuning.direction == "higher" else -1.0
    scores, best, best_rank = [], 0, None
    for i, (point, spec) in enumerate(zip(points, specs)):
        row = store.get_run(spec.key)
        if row is None:
            return None
        score = float("nan")
        if row["status"] == "finished":
            score = metric_value(tuning.run_metric, row, spec.task.epochs)[0]
        # diverged and failed runs, and scores that are not numbers, rank below every finite score
        rank = sign * score if math.isfinite(score) else -math.inf
        if best_rank is None or rank > best_rank:  # strict: a tie keeps the earlier grid point
            best, best_rank = i, rank
        scores.append({"values": dict(point), "score": score if math.isfinite(score) else None,
                       "status": row["status"]})
    return {"chosen": dict(points[best]), "scores": scores}


def tuned_spec(claim_id: str | None, arm_name: str, tuning: Tuning, task: "Task",
               techniques: Sequence[tuple[str, Mapping[str, Any]]], seed: int, device: str, store: "Store") -> "RunSpec":
    """The real run of a tuned arm for one seed: the full training set at the values chosen on the
    stored tuning runs. ConfigError while those runs are not all in the store."""
    from trainlab.claims.runner import RunSpec

    runs = tuning_specs(claim_id, arm_name, tuning, task, techniques, seed, device)
    picked = choose(tuning, runs, store)
    if picked is None:
        missing = sum(store.get_run(s.key) is None for s in runs)
        raise ConfigError(f"claim '{claim_id}': the {arm_name} arm's tuning runs for seed {seed} are not all in the "
                          f"store {store.path} ({missing} of {len(runs)} missing); run them first "
                          "(trainlab check runs them before the real runs)")
    t, techs = apply_point(task, techniques, picked["chosen"])
    return RunSpec(claim_id, arm_name, t, techs, seed, device, tuned=picked)


def summarize(claim: Mapping[str, Any], per_arm: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """ClaimResult.tuning: per tuned arm, the Tuning and per seed the chosen values and scores."""
    out = {}
    for arm_name, entries in per_arm.items():
        spec = (claim.get(arm_name) or {}).get("tune")
        out[arm_name] = {"tuning": spec, "per_seed": sorted(entries, key=lambda e: e["seed"])}
    return out


def chosen_text(tuning: Mapping[str, Any]) -> str:
    """e.g. "lr chosen per seed (final val_acc on a 20% held-out split): baseline 0.003 x5;
    treatment 0.01 x3, 0.003 x2" ("" without tuned arms)."""
    if not tuning:
        return ""
    keys: list[str] = []
    parts, hows = [], []
    for arm_name, info in tuning.items():
        per_seed = info.get("per_seed") or []
        counts: dict[str, int] = {}
        for entry in per_seed:
            chosen = entry["chosen"]
            keys += [k for k in chosen if k not in keys]
            text = ", ".join(_fmt(v) for v in chosen.values()) if len(chosen) == 1 else \
                ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in chosen.items())
            counts[text] = counts.get(text, 0) + 1
        ordered = sorted(counts.items(), key=lambda kv: -kv[1])  # most often chosen first (stable)
        sep = "; " if any("," in t for t, _ in ordered) else ", "
        spec = info.get("tuning") or {}
        edges = grid_edges(spec.get("grid") or {}, [e["chosen"] for e in per_seed])
        parts.append(f"{arm_name} " + sep.join(f"{t} x{n}" for t, n in ordered)
                     + "".join(f" [{_short(k)} at the grid's {end} end in {n}/{len(per_seed)} seeds]"
                               for (k, end), n in edges.items()))
        hows.append(f"{_metric_text(spec.get('metric', 'val_acc'))} on a {spec.get('validation', 0):.0%} held-out split"
                    if spec else "")
    names = "/".join(_short(k) for k in keys) or "values"
    if len(set(hows)) == 1:  # one selection rule for every tuned arm: say it once
        return f"{names} chosen per seed" + (f" ({hows[0]})" if hows[0] else "") + ": " + "; ".join(parts)
    return f"{names} chosen per seed: " + "; ".join(p + (f" ({h})" if h else "") for p, h in zip(parts, hows))


def grid_edges(grid: Mapping[str, Sequence[Any]], chosen: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """(key, "upper"/"lower") -> how many choices sit at that end of a numeric grid of 3 or more
    values (with two values every choice is an end, which says nothing)."""
    out: dict[tuple[str, str], int] = {}
    for key, values in grid.items():
        if len(values) < 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        for end, value in (("upper", max(values)), ("lower", min(values))):
            n = sum(1 for c in chosen if c.get(key) == value)
            if n:
                out[(key, end)] = n
    return out


def _metric_text(metric: str) -> str:
    return metric.replace("best:", "best-epoch ") if metric.startswith("best:") else (
        f"final {metric}" if ":" not in metric else metric)


def _short(key: str) -> str:
    return key[len(TECHNIQUE_PREFIX):] if key.startswith(TECHNIQUE_PREFIX) else key


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def tuned_claim(claim: "Claim", tuning: Tuning, id: str, notes: str, arms: Sequence[str] | None = None) -> "Claim":
    """A copy of `claim` under a new id whose arms (default: every arm that runs) are tuned with
    `tuning`, e.g. the same comparison with each arm at its own best learning rate."""
    import dataclasses

    names = claim.arms if arms is None else tuple(arms)
    changes: dict[str, Any] = {n: dataclasses.replace(getattr(claim, n), tune=tuning) for n in names}
    return dataclasses.replace(claim, id=id, notes=notes, **changes)
