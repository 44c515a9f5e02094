"""Checking claims: plan paired runs, execute them (skipping finished ones), analyze, report.

Pairing: seed i of the baseline and seed i of the treatment use the same seed, hence the same
initialization (where the architectures match), the same data order and the same evaluation data.
Runs are interleaved by seed (b0, t0, b1, t1, ...) so that machine-load drifts hit both arms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cloudpickle

from trainlab.claims.claim import Arm, Claim
from trainlab.claims.executors import get_executor
from trainlab.claims.metrics import metric_value, validate
from trainlab.claims.result import ClaimResult
from trainlab.claims.store import Store, run_key
from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task
from trainlab.tasks.task import Task
from trainlab.training.result import RunResult

ARMS = ("baseline", "treatment")


@dataclass
class RunSpec:
    claim_id: str | None
    arm: str
    task: Task
    techniques: list[tuple[str, dict[str, Any]]]
    seed: int
    device: str = "cpu"
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = run_key(self.config())

    def config(self) -> dict[str, Any]:
        return {"task": {"name": self.task.name, **self.task.budget()},
                "techniques": [[n, dict(s)] for n, s in self.techniques], "seed": self.seed, "device": self.device}


def arm_task(claim: Claim, arm: Arm, task: Task | str | None = None) -> Task:
    base = get_task(task if task is not None else claim.task)
    return base.with_overrides(claim.overrides).with_overrides(arm.overrides)


def plan(claim: Claim, seeds: int | None = None, task: Task | str | None = None, device: str = "cpu",
         first_seed: int = 0) -> list[RunSpec]:
    validate(claim.metric)
    n = seeds or claim.seeds
    if n < 2:
        raise ConfigError(f"a claim needs at least 2 seeds, got {n}")
    arms = {"baseline": claim.baseline, "treatment": claim.treatment}
    tasks = {name: arm_task(claim, a, task) for name, a in arms.items()}
    techs = {name: [(t, dict(s)) for t, s in a.techniques] for name, a in arms.items()}
    from trainlab.techniques.registry import get_technique

    for refs in techs.values():  # unknown technique names fail now, not in every worker
        for name, _ in refs:
            get_technique(name)
    return [RunSpec(claim.id, name, tasks[name], techs[name], seed, device)
            for seed in range(first_seed, first_seed + n) for name in ARMS]


ResultCallback = Callable[[RunSpec, RunResult, int, int], None]


def execute(specs: Sequence[RunSpec], store: Store, executor: str = "local", workers: int | None = None,
            address: str | None = None, on_result: ResultCallback | None = None) -> int:
    """Run the specs not yet in the store; each result is stored as soon as it arrives.
    Returns the number of runs executed."""
    done = store.done_keys()
    todo, seen = [], set()
    for s in specs:
        if s.key not in done and s.key not in seen:
            todo.append(s)
            seen.add(s.key)
    if not todo:
        return 0
    run = get_executor(executor)
    kwargs: dict[str, Any] = {"workers": workers}
    if executor == "ray":
        kwargs["address"] = address
    payloads = [cloudpickle.dumps(s) for s in todo]
    for count, (i, result_dict) in enumerate(run(payloads, **kwargs), start=1):
        spec, result = todo[i], RunResult.from_dict(result_dict)
        store.add_run(spec.key, spec.config(), result, claim_id=spec.claim_id, arm=spec.arm)
        if on_result is not None:
            on_result(spec, result, count, len(todo))
    return len(todo)


def collect(claim: Claim, specs: Sequence[RunSpec], store: Store, overhead: dict[str, Any] | None = None,
            n_resamples: int = 10_000) -> ClaimResult:
    """Pair the stored runs by seed and analyze the claim's metric."""
    from trainlab.claims.stats import analyze

    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    counts = {a: {"finished": 0, "diverged": 0, "failed": 0, "missing": 0, "censored": 0} for a in ARMS}
    curves: dict[str, list[list[dict[str, float]]]] = {a: [] for a in ARMS}
    provenance: dict[str, Any] = {"data_fingerprints": set(), "code_versions": set()}
    errors: list[str] = []
    for s in specs:
        row = store.get_run(s.key)
        if row is None:
            counts[s.arm]["missing"] += 1
            continue
        counts[s.arm][row["status"]] = counts[s.arm].get(row["status"], 0) + 1
        if row["status"] == "failed":
            errors.append(f"{s.arm} seed {s.seed}: {(row['error'] or '').splitlines()[0] if row['error'] else ''}")
            continue
        value, censored = metric_value(claim.metric, row, s.task.epochs)
        counts[s.arm]["censored"] += int(censored)
        by_seed.setdefault(s.seed, {})[s.arm] = {"value": value}
        curves[s.arm].append(row["epochs"])
        if row["data_fingerprint"]:
            provenance["data_fingerprints"].add(row["data_fingerprint"])
        prov = row["provenance"] or {}
        provenance["code_versions"].add(prov.get("code_version", ""))
        for k in ("torch_version", "device", "threads", "python"):
            provenance[k] = prov.get(k)
    seeds = sorted(sd for sd, arms in by_seed.items() if len(arms) == 2)
    base = [by_seed[sd]["baseline"]["value"] for sd in seeds]
    treat = [by_seed[sd]["treatment"]["value"] for sd in seeds]
    analysis = None
    if len(seeds) >= 2:
        analysis = analyze(treat, base, claim.direction, claim.min_effect, n_resamples=n_resamples,
                           margin=claim.margin)
    provenance = {k: sorted(v) if isinstance(v, set) else v for k, v in provenance.items()}
    if errors:
        provenance["errors"] = errors[:10]
    return ClaimResult(claim=claim.to_dict(), seeds=seeds, baseline_values=base, treatment_values=treat,
                       analysis=analysis, curves=curves, overhead=overhead or {}, status_counts=counts,
                       provenance=provenance)


def measure_claim_overhead(claim: Claim, task: Task | str | None = None, device: str = "cpu") -> dict[str, Any]:
    from trainlab.claims.overhead import measure_overhead

    return measure_overhead(
        arm_task(claim, claim.baseline, task), list(claim.baseline.techniques),
        arm_task(claim, claim.treatment, task), list(claim.treatment.techniques), device=device,
    )


def verdict_line(result: ClaimResult) -> str:
    """e.g. `adamp-digits: reproduced  +0.8 pt test_acc [95% CI +0.3, +1.4], 10 seeds, overhead 1.06x time, 1.00x memory`"""
    c, a = result.claim, result.analysis
    if a is None:
        counts = result.status_counts
        return f"{c['id']}: failed  (runs finished: {counts})"
    scale, unit = metric_scale(c["metric"])
    level = int(round(a.ci_level * 100))
    text = (f"{c['id']}: {a.verdict}  {a.mean_diff * scale:+.{_digits(scale)}f}{unit} {c['metric']} "
            f"[{level}% CI {a.ci_low * scale:+.{_digits(scale)}f}, {a.ci_high * scale:+.{_digits(scale)}f}], "
            f"{a.n} seeds")
    o = result.overhead
    if o.get("time_ratio") is not None:
        text += f", overhead {o['time_ratio']:.2f}x time, {o['memory_ratio']:.2f}x memory"
        load, cores = o.get("load_average_1min"), o.get("cpu_count")
        if load is not None and cores and load > cores:
            text += f" (timed with load {load:.1f} on {cores} cores: time ratio unreliable)"
    if a.verdict == "inconclusive" and a.seeds_needed:
        text += f" (about {a.seeds_needed} seeds would likely decide)"
    diverged = {arm: n["diverged"] for arm, n in result.status_counts.items() if n.get("diverged")}
    if diverged:
        text += f"; diverged runs: {diverged}"
    return text


def metric_scale(metric: str) -> tuple[float, str]:
    """Accuracy-like metrics print in percentage points."""
    key = metric.split(":", 1)[-1]
    if key.endswith("acc") and not metric.startswith("epochs_to"):
        return 100.0, " pt"
    return 1.0, ""


def _digits(scale: float) -> int:
    return 1 if scale == 100.0 else 3

