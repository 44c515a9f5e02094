"""Checking claims: plan paired runs, execute them (skipping finished ones), analyze, report.

Pairing: seed i of the baseline and seed i of the treatment use the same seed, hence the same
initialization (where the architectures match), the same data order and the same evaluation data.
Runs are interleaved by seed (b0, t0, b1, t1, ...) so that machine-load drifts hit both arms.
A one-arm claim (Claim.reference) plans the treatment runs only and pairs each seed's metric with
its reference value (a number, or a metric of the same run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cloudpickle

from trainlab.claims.claim import Arm, Claim, compared_text, is_one_arm
from trainlab.claims.executors import get_executor
from trainlab.claims.metrics import is_accuracy, metric_value, validate
from trainlab.claims.regime import (describe_precondition, evaluate_preconditions, failed_preconditions,
                                   find_collapse, outcome)
from trainlab.claims.result import ClaimResult
from trainlab.claims.store import Store, run_key
from trainlab.claims.tuning import chosen_text
from trainlab.claims.tuning import summarize as summarize_tuning
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
    #: a tuned arm's real run: {"chosen": {...}, "scores": [...]} from its tuning runs (not part of
    #: the key: the chosen values are already in the task and techniques)
    tuned: dict[str, Any] | None = field(default=None, compare=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = run_key(self.config())

    def config(self) -> dict[str, Any]:
        config = {"task": {"name": self.task.name, **self.task.budget()},
                  "techniques": [[n, dict(s)] for n, s in self.techniques], "seed": self.seed, "device": self.device}
        versions = technique_versions(n for n, _ in self.techniques)
        if versions:  # only techniques past version 1, so unchanged techniques keep their run keys
            config["technique_versions"] = versions
        return config


def technique_versions(names: Any) -> dict[str, int]:
    """Technique name -> version, for the techniques whose behaviour changed since version 1."""
    from trainlab.techniques.registry import get_technique

    return {n: get_technique(n).version for n in names if get_technique(n).version > 1}


def arm_task(claim: Claim, arm: Arm, task: Task | str | None = None) -> Task:
    base = get_task(task if task is not None else claim.task)
    return base.with_overrides(claim.overrides).with_overrides(arm.overrides)


def seed_count(claim: Claim, seeds: int | None) -> int:
    """The number of seeds to run: `seeds`, or the claim's own when None."""
    n = claim.seeds if seeds is None else seeds  # seeds=0 is a mistake, not "the claim's default"
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"a claim needs at least 2 seeds, got {n!r}")
    return n


def plan(claim: Claim, seeds: int | None = None, task: Task | str | None = None, device: str = "cpu",
         first_seed: int = 0, store: Store | None = None) -> list[RunSpec]:
    """The claim's real runs. A tuned arm's run (Arm.tune) is at the values its tuning runs chose,
    read from `store` (run trainlab.claims.tuning.plan_tuning's specs first); ConfigError without."""
    validate(claim.metric)
    if isinstance(claim.reference, str):
        validate(claim.reference)
    n = seed_count(claim, seeds)
    arms = {name: getattr(claim, name) for name in claim.arms}
    tasks = {name: arm_task(claim, a, task) for name, a in arms.items()}
    techs = {name: [(t, dict(s)) for t, s in a.techniques] for name, a in arms.items()}
    from trainlab.techniques.registry import get_technique

    for refs in techs.values():  # unknown technique names fail now, not in every worker
        for name, _ in refs:
            get_technique(name)
    tuned = [name for name, a in arms.items() if a.tune is not None]
    if tuned and store is None:
        raise ConfigError(f"claim '{claim.id}' tunes its {' and '.join(tuned)} arm(s) on a validation split: "
                          "its runs are planned from the stored tuning runs; give plan() the store")
    from trainlab.claims.tuning import tuned_spec

    return [tuned_spec(claim.id, name, arms[name].tune, tasks[name], techs[name], seed, device, store)
            if arms[name].tune is not None else RunSpec(claim.id, name, tasks[name], techs[name], seed, device)
            for seed in range(first_seed, first_seed + n) for name in claim.arms]


ResultCallback = Callable[[RunSpec, RunResult, int, int], None]


def execute(specs: Sequence[RunSpec], store: Store, executor: str = "local", workers: int | None = None,
            address: str | None = None, on_result: ResultCallback | None = None,
            on_note: Callable[[str], None] | None = None, poll_seconds: float = 2.0) -> int:
    """Run the specs not yet in the store; each result is stored as soon as it arrives.

    Several processes may run this on one store at once: each run is leased in the store right
    before it starts (Store.lease), so no run is trained twice. A run another process is training
    is waited for, and its stored result is passed to `on_result` like this process's own; a lease
    left by a killed process is taken over and the run trained here. Returns the number of runs
    this process trained."""
    import time

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
    since = time.time()  # a failed run stored after this was tried by a process running alongside
    reported = 0
    trained = 0

    def report(spec: RunSpec, result: RunResult) -> None:
        nonlocal reported
        reported += 1
        if on_result is not None:
            on_result(spec, result, reported, len(todo))

    pending, noted = todo, False
    with store.holding_leases():
        while pending:
            payloads = [cloudpickle.dumps(s) for s in pending]
            batch = pending
            stored: set[str] = set()
            for i, result_dict in run(payloads, acquire=lambda i: store.lease(batch[i].key, since) == "claimed",
                                      **kwargs):
                spec, result = batch[i], RunResult.from_dict(result_dict)
                store.add_run(spec.key, spec.config(), result, claim_id=spec.claim_id, arm=spec.arm)
                stored.add(spec.key)
                trained += 1
                report(spec, result)
            # what is left was refused: stored by another process meanwhile, or being trained there
            pending = [s for s in batch if s.key not in stored]
            while pending:
                busy, mine = [], []
                for s in pending:
                    state = store.lease(s.key, since)
                    if state == "done":
                        report(s, _stored_result(store.get_run(s.key)))
                    else:
                        (mine if state == "claimed" else busy).append(s)
                if mine:  # released or taken over (its process is gone): train them here
                    pending = mine + busy
                    break
                pending = busy
                if busy:
                    if not noted and on_note is not None:
                        on_note(_waiting_note(store, busy))
                        noted = True
                    time.sleep(poll_seconds)
    return trained


def _stored_result(row: dict[str, Any]) -> RunResult:
    """A stored run as a RunResult (for runs another process trained)."""
    return RunResult(status=row["status"], epochs=row["epochs"], final=row["final"] or {},
                     time_per_step=row["time_per_step"] if row["time_per_step"] is not None else float("nan"),
                     train_seconds=row["train_seconds"] or 0.0, peak_memory=row["peak_memory"] or 0,
                     params=row["params"] or 0, trainable_params=row["trainable_params"] or 0,
                     optimizer_state_bytes=row["optimizer_state_bytes"] or 0, diverged_step=row["diverged_step"],
                     error=row["error"], data_fingerprint=row["data_fingerprint"] or "",
                     provenance=row["provenance"] or {})


def _waiting_note(store: Store, busy: Sequence[RunSpec]) -> str:
    holders = sorted({f"pid {h['pid']} on {h['host']}" for h in map(store.lease_holder, (s.key for s in busy)) if h})
    return (f"waiting for {len(busy)} runs that another process is training ({', '.join(holders) or 'just finished'}); "
            "their results are read from the store")


def collect(claim: Claim, specs: Sequence[RunSpec], store: Store, overhead: dict[str, Any] | None = None,
            n_resamples: int = 10_000) -> ClaimResult:
    """Pair the stored runs by seed, analyze the claim's metric, and judge what the verdict may
    claim: the regime preconditions and collapsed (degenerate) arms (trainlab.claims.regime).

    Two-arm claims pair treatment with baseline (times Claim.baseline_scale); one-arm claims pair
    each treatment run's metric with its reference value, stored as the result's baseline_values."""
    from trainlab.claims.stats import analyze

    arms = claim.arms
    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    rows_by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    counts = {a: {"finished": 0, "diverged": 0, "failed": 0, "missing": 0, "censored": 0} for a in arms}
    curves: dict[str, list[list[dict[str, float]]]] = {a: [] for a in arms}
    provenance: dict[str, Any] = {"data_fingerprints": set(), "code_versions": set()}
    errors: list[str] = []
    epochs = {s.arm: s.task.epochs for s in specs}
    tuned: dict[str, list[dict[str, Any]]] = {}
    for s in specs:
        if s.tuned is not None:
            tuned.setdefault(s.arm, []).append({"seed": s.seed, **s.tuned})
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
        if claim.one_arm:  # the reference takes the baseline's place in the pair
            by_seed[s.seed]["baseline"] = {"value": reference_value(claim, row, s.task.epochs)}
        rows_by_seed.setdefault(s.seed, {})[s.arm] = {**row, "seed": s.seed}
        curves[s.arm].append(row["epochs"])
        if row["data_fingerprint"]:
            provenance["data_fingerprints"].add(row["data_fingerprint"])
        prov = row["provenance"] or {}
        provenance["code_versions"].add(prov.get("code_version", ""))
        for k in ("torch_version", "device", "threads", "python"):
            provenance[k] = prov.get(k)
    seeds = sorted(sd for sd, pair in by_seed.items() if len(pair) == 2)
    scale = claim.baseline_scale  # 1.0 for one-arm claims (validated in Claim)
    base = [by_seed[sd]["baseline"]["value"] * scale for sd in seeds]
    treat = [by_seed[sd]["treatment"]["value"] for sd in seeds]

    def run_analysis(keep: Sequence[int]):
        if len(keep) < 2:
            return None
        return analyze([by_seed[sd]["treatment"]["value"] for sd in keep],
                       [by_seed[sd]["baseline"]["value"] * scale for sd in keep], claim.direction, claim.min_effect,
                       n_resamples=n_resamples, margin=claim.margin)

    analysis = run_analysis(seeds)
    arm_rows = {a: [rows_by_seed[sd][a] for sd in sorted(rows_by_seed) if a in rows_by_seed[sd]] for a in arms}
    checks = evaluate_preconditions(claim, arm_rows, epochs)
    collapse = find_collapse(claim, {sd: rows_by_seed[sd] for sd in seeds})
    without = None
    if collapse["unpaired_collapse"]:
        without = run_analysis([sd for sd in seeds if sd not in collapse["unpaired_collapse"]])
    provenance = {k: sorted(v) if isinstance(v, set) else v for k, v in provenance.items()}
    if errors:
        provenance["errors"] = errors[:10]
    task_name = specs[0].task.name if specs else claim.task
    setting: dict[str, Any] = {}
    for sd in seeds:  # the treatment arm's scale, from its first stored run
        row = rows_by_seed[sd]["treatment"]
        setting = {"train_size": (row.get("provenance") or {}).get("train_size"),
                   "epochs": epochs.get("treatment"), "params": row.get("params")}
        break
    return ClaimResult(claim=claim.to_dict(), seeds=seeds, baseline_values=base, treatment_values=treat,
                       analysis=analysis, curves=curves, overhead=overhead or {}, status_counts=counts,
                       provenance=provenance, outcome=outcome(analysis.verdict if analysis else None, checks, collapse),
                       preconditions=checks, collapse=collapse, analysis_without_collapsed=without,
                       fidelity=technique_fidelity(claim), task=task_name, setting=setting,
                       probe_cost=probe_cost(claim, curves), tuning=summarize_tuning(claim.to_dict(), tuned))


def reference_value(claim: Claim, run: dict[str, Any], planned_epochs: int) -> float:
    """A one-arm claim's reference for one run: the number, or the reference metric of that run."""
    if isinstance(claim.reference, str):
        return metric_value(claim.reference, run, planned_epochs)[0]
    return float(claim.reference)


def diagnostics_techniques(arm: Arm) -> list[str]:
    """Names of the arm's diagnostics-family techniques (probes)."""
    from trainlab.techniques.registry import get_technique

    return [n for n, _ in arm.techniques if get_technique(n).family == "diagnostics"]


def probe_cost(claim: Claim, curves: dict[str, list[list[dict[str, float]]]]) -> dict[str, Any]:
    """Per arm and probe, the seconds spent measuring per run against the run's training seconds,
    from the probes' `probe_seconds_<name>` epoch keys (mean over the arm's runs)."""
    from trainlab.diagnostics.probe import probe_seconds_key

    out: dict[str, Any] = {}
    for arm_name in claim.arms:
        names = diagnostics_techniques(getattr(claim, arm_name))
        runs = curves.get(arm_name) or []
        if not names or not runs:
            continue
        train = [sum(row.get("train_seconds", 0.0) for row in run) for run in runs]
        for name in names:
            key = probe_seconds_key(name)
            spent = [sum(row.get(key, 0.0) for row in run) for run in runs]
            mean_train, mean_spent = sum(train) / len(train), sum(spent) / len(spent)
            out.setdefault(arm_name, {})[name] = {
                "seconds_per_run": mean_spent, "train_seconds_per_run": mean_train,
                "ratio": mean_spent / mean_train if mean_train > 0 else float("nan"),
                "measurements_per_run": sum(sum(key in row for row in run) for run in runs) / len(runs),
            }
    return out


def technique_fidelity(claim: Claim) -> dict[str, Any]:
    """The fidelity of the claim's technique: of the treatment arm's techniques, the least
    faithful one (a verdict is only as close to the paper as its least faithful part)."""
    from trainlab.techniques.registry import get_technique
    from trainlab.training.technique import FIDELITY_LEVELS

    levels = []
    for name, _ in claim.treatment.techniques:
        cls = get_technique(name)
        if cls.fidelity:
            levels.append((FIDELITY_LEVELS.index(cls.fidelity) if cls.fidelity in FIDELITY_LEVELS else -1, cls))
    if not levels:
        return {}
    _, cls = max(levels, key=lambda x: x[0] if x[0] != FIDELITY_LEVELS.index("control") else -1)
    return {"technique": cls.name, "level": cls.fidelity, "deviations": list(cls.deviations),
            "evidence": cls.fidelity_evidence}


def measure_claim_overhead(claim: Claim, task: Task | str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Per-step time and memory of treatment against baseline. A one-arm claim has no baseline:
    its cost is that of its probes, which act at epoch ends (not per step) and are recorded in every
    run (ClaimResult.probe_cost), so the per-step measurement is skipped with the reason."""
    from trainlab.claims.overhead import measure_overhead

    if claim.one_arm:
        probes = diagnostics_techniques(claim.treatment)
        if probes:
            why = (f"one-arm claim: its probes ({', '.join(probes)}) measure at epoch ends, not in training steps, "
                   "so a per-step comparison with the arm without them says nothing; their measuring seconds "
                   "per run are reported against the training seconds (probe cost)")
        else:
            why = "one-arm claim without probes: there is no other arm to compare its cost with"
        return {"skipped": why}
    return measure_overhead(
        arm_task(claim, claim.baseline, task), list(claim.baseline.techniques),
        arm_task(claim, claim.treatment, task), list(claim.treatment.techniques), device=device,
    )


def verdict_line(result: ClaimResult) -> str:
    """One line per claim, e.g.
    `adamp-digits on digits-cnn: reproduced  +0.8 pt test_acc [95% CI +0.3, +1.4], 10 seeds, overhead ...`;
    an out-of-regime or degenerate outcome says why, with the measured values."""
    c, a = result.claim, result.analysis
    name = c["id"] + (f" on {result.task}" if result.task and result.task != c.get("task") else "")
    fid = result.fidelity.get("level") if result.fidelity else None
    if fid in ("variant", "stand-in"):
        tag = f" [this {fid} of {result.fidelity['technique']}, not the paper's method]"
    else:
        tag = f" [fidelity: {fid}]" if fid and fid != "control" else ""
    if a is None:
        counts = result.status_counts
        return f"{name}: failed  (runs finished: {counts})"
    scale, unit = metric_scale(c["metric"])
    compared = compared_text(c)
    text = f"{name}: {result.verdict}{tag}  {_interval_text(a, compared, scale, unit)}, {a.n} seeds"
    if result.verdict in ("out of regime", "degenerate"):
        text += f" (interval alone: {a.verdict}; not a verdict)"
    o = result.overhead
    if o.get("time_ratio") is not None:
        text += f", overhead {o['time_ratio']:.2f}x time, {o['memory_ratio']:.2f}x memory"
        load, cores = o.get("load_average_1min"), o.get("cpu_count")
        if o.get("time_ratio_reliable") is False or (load is not None and cores and load > cores):
            text += f" (timed with load {load:.1f} on {cores} cores: time ratio unreliable)"
    costs = result.probe_cost or {}
    for arm_name, probes in costs.items():
        where = f" in the {arm_name} arm" if len(costs) > 1 else ""  # both arms carry the probe: name them
        for probe, cost in probes.items():
            if cost.get("ratio") is not None and math.isfinite(cost["ratio"]):
                text += (f", {probe} measuring {cost['seconds_per_run']:.1f} s per run{where} "
                         f"({cost['ratio']:.2f}x the {cost['train_seconds_per_run']:.1f} s of training)")
    if result.verdict == "inconclusive" and a.seeds_needed:
        text += f" (about {a.seeds_needed} seeds would likely decide)"
    diverged = {arm: n["diverged"] for arm, n in result.status_counts.items() if n.get("diverged")}
    if diverged:
        text += f"; diverged runs: {diverged}"
    if getattr(result, "tuning", None):
        text += f"; {chosen_text(result.tuning)}"
    for check in failed_preconditions(result.preconditions):
        text += f"\n  out of regime: {describe_precondition(check)}" + (f" [{check['why']}]" if check.get("why") else "")
    collapse = result.collapse or {}
    one_arm = is_one_arm(c)
    for arm in collapse.get("degenerate_arms", []):
        accs = ", ".join(f"seed {sd} acc {v[0]:.3f} top-class {v[1]:.2f}" for sd, v in collapse["detail"][arm].items())
        if one_arm:
            text += (f"\n  degenerate: every {arm} run collapsed (constant predictions or chance accuracy) ({accs}): "
                     "the model did not learn on this task, so its measurement is not of a trained model")
        else:
            text += (f"\n  degenerate: every {arm} run collapsed (constant predictions or chance accuracy) while the "
                     f"other arm learns ({accs}): the technique broke the model on this task")
    if collapse.get("unpaired_collapse"):
        seeds = collapse["unpaired_collapse"]
        arms = [arm for arm, sds in collapse["collapsed"].items() if set(sds) & set(seeds)]
        text += (f"\n  collapsed run(s): seed(s) {seeds} of the {'/'.join(arms)} arm collapsed while "
                 + ("other seeds learn" if one_arm else "the paired run learns"))
        w = result.analysis_without_collapsed
        text += (f"; without them: {w.verdict} {_interval_text(w, compared, scale, unit)}, {w.n} seeds"
                 if w is not None else "; too few seeds remain without them for an interval")
    return text


def _interval_text(a: Any, metric: str, scale: float, unit: str) -> str:
    level = int(round(a.ci_level * 100))
    dg = _digits(scale)
    return (f"{a.mean_diff * scale:+.{dg}f}{unit} {metric} "
            f"[{level}% CI {a.ci_low * scale:+.{dg}f}, {a.ci_high * scale:+.{dg}f}]")


def metric_scale(metric: str) -> tuple[float, str]:
    """Accuracy-like metrics print in percentage points."""
    try:
        accuracy = is_accuracy(metric)
    except Exception:  # a metric that does not parse (an old stored result): print it as it is
        accuracy = False
    return (100.0, " pt") if accuracy else (1.0, "")


def _digits(scale: float) -> int:
    return 1 if scale == 100.0 else 3

