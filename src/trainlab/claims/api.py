"""The harness's entry points: `check` (a technique's claims, or one claim), `run_suite`.

    import trainlab
    results = trainlab.check("adamp", task=my_task, seeds=10)   # every claim of adamp, on my_task
    for r in results:
        print(r.claim["id"], r.task, r.verdict, r.analysis.ci_low, r.analysis.ci_high)
    for s in results.skipped:                                   # claims that cannot run on my_task
        print(s.line())
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from trainlab.claims.claim import Claim
from trainlab.claims.preflight import Skipped, preflight
from trainlab.claims.registry import resolve, suite_claims
from trainlab.claims.result import ClaimResult
from trainlab.claims.runner import (RunSpec, collect, execute, measure_claim_overhead, metric_scale, plan,
                                    verdict_line)
from trainlab.claims.store import Store
from trainlab.claims.tuning import plan_tuning
from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task
from trainlab.tasks.task import Task
from trainlab.training.result import RunResult


def _claims(name_or_claim: str | Claim) -> list[Claim]:
    return [name_or_claim] if isinstance(name_or_claim, Claim) else resolve(name_or_claim)


class CheckResults(list):
    """What `check` returns: a list of ClaimResult, one per claim that ran (in the claims' order),
    plus `skipped`, the claims refused before training with the reason for each (Skipped:
    claim_id, task, reason, line()), and `task`, the task they were asked to run on (None: each
    claim's own).

    results["mixup-mnist1d"] picks a result by claim id. When exactly one claim ran, the result's
    attributes are also the list's (results.verdict, results.analysis, ...), as `check` returned a
    single ClaimResult before; with several, index or iterate.
    """

    def __init__(self, results: Sequence[ClaimResult] = (), skipped: Sequence[Skipped] = (),
                 task: str | None = None) -> None:
        super().__init__(results)
        self.skipped = list(skipped)
        self.task = task

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for r in self:
                if r.claim["id"] == key:
                    return r
            refused = [s for s in self.skipped if s.claim_id == key]
            if refused:
                raise KeyError(f"claim '{key}' did not run: {refused[0].reason}")
            raise KeyError(f"no result for claim '{key}' (ran: {', '.join(r.claim['id'] for r in self) or 'none'})")
        return super().__getitem__(key)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if len(self) == 1:
            return getattr(self[0], name)
        ids = ", ".join(r.claim["id"] for r in self) or "none"
        raise AttributeError(f"'{name}': these results hold {len(self)} claims ({ids}); iterate over them or pick one "
                             f"with results['<claim id>']")


def _check_seeds(seeds: Any) -> None:
    if seeds is None:
        return
    if isinstance(seeds, bool) or not isinstance(seeds, int):
        raise ConfigError(f"seeds must be a whole number >= 2, got {seeds!r}")
    if seeds < 2:
        raise ConfigError(f"seeds must be >= 2 (a paired comparison needs at least 2 seeds per arm), got {seeds}")


def check(name_or_claim: str | Claim, task: Task | str | None = None, seeds: int | None = None,
          executor: str = "local", workers: int | None = None, store: Store | str | Path | None = None,
          overhead: bool = True, progress: bool = False, device: str = "cpu", address: str | None = None,
          console: Any = None) -> CheckResults:
    """Check a technique's claims: a technique name (every claim of it, as `trainlab check NAME`),
    a claim id or a Claim (that one claim).

    task: run the claims on another task (a Task object, a named task, or "file.py:name"), e.g.
    your own model and data; claims that cannot run there are refused before any training and
    listed in `.skipped` (ConfigError if none can). seeds: seeds per arm, >= 2 (default: each
    claim's own). Returns CheckResults: a list of ClaimResult (verdict, CI, per-seed values,
    overhead, and `task`, the task that ran).
    """
    return check_claims(_claims(name_or_claim), task, seeds, executor, workers, store, overhead, progress, device,
                        address, console)


def check_all(name: str | Claim, **kwargs: Any) -> CheckResults:
    """The same as `check` (kept for code written when `check` ran one claim only)."""
    return check(name, **kwargs)


def run_suite(suite: str, **kwargs: Any) -> list[ClaimResult]:
    return check_claims(suite_claims(suite), **kwargs)


def check_claims(claims: Sequence[Claim], task: Task | str | None = None, seeds: int | None = None,
                 executor: str = "local", workers: int | None = None, store: Store | str | Path | None = None,
                 overhead: bool = True, progress: bool = False, device: str = "cpu",
                 address: str | None = None, console: Any = None) -> CheckResults:
    """Refuse the claims that cannot run on `task` (one line each, before any training), plan every
    other claim's runs, execute all of them in one pool (skipping finished ones), then measure
    overhead and analyze each claim."""
    _check_seeds(seeds)
    claims, skipped = preflight(claims, task, device)
    if skipped and progress:
        from rich.console import Console

        out = console or Console(stderr=True, soft_wrap=True)
        for s in skipped:
            out.print(s.line(), highlight=False, markup=False)
    if not claims:
        why = ("each one's reason is above" if progress
               else "; ".join(f"{s.claim_id}: {s.reason}" for s in skipped))
        raise ConfigError(f"none of the {len(skipped)} claims can run on task '{skipped[0].task}': {why}")
    # tuned arms (Arm.tune) first train their grid on a validation split; their real runs follow
    # from the stored tuning runs, so they are planned once those are in
    tune_specs = [s for c in claims for s in plan_tuning(c, seeds, task, device)]
    untuned = [c for c in claims if not any(getattr(c, a).tune for a in c.arms)]
    specs = {c.id: plan(c, seeds, task, device) for c in untuned}  # mistakes surface before any training
    task_name = None if task is None else get_task(task).name
    with _open_store(store) as st, _RunProgress(progress, console, task_name) as prog:
        if tune_specs:
            prog.note(f"tuning: {len({s.key for s in tune_specs})} runs on held-out validation splits")
            prog.start(tune_specs, st)
            execute(tune_specs, st, executor=executor, workers=workers, address=address, on_result=prog.on_result,
                    on_note=prog.note)
        specs.update({c.id: plan(c, seeds, task, device, store=st) for c in claims if c.id not in specs})
        all_specs = [s for c in claims for s in specs[c.id]]
        prog.start(all_specs, st)
        execute(all_specs, st, executor=executor, workers=workers, address=address, on_result=prog.on_result,
                on_note=prog.note)
        results = []
        for c in claims:
            oh = None
            if overhead:
                prog.note(f"measuring overhead of {c.id}")
                try:
                    oh = measure_claim_overhead(c, task, device)
                    st.add_overhead(c.id, oh)
                except Exception as e:  # overhead is secondary: report, keep the verdict
                    oh = {"error": f"{type(e).__name__}: {e}"}
            result = collect(c, specs[c.id], st, overhead=oh)
            results.append(result)
            label = c.id if task is None else f"{c.id}@{specs[c.id][0].task.name}"
            st.add_verdict(label, result.verdict, verdict_line(result), result.to_dict())
            prog.note(verdict_line(result), style="bold")
    return CheckResults(results, skipped, task_name)


@contextlib.contextmanager
def _open_store(store: Store | str | Path | None) -> Iterator[Store]:
    if isinstance(store, Store):
        yield store
        return
    st = Store(store)
    try:
        yield st
    finally:
        st.close()


class _RunProgress:
    """A live progress bar over runs, and one line per finished run."""

    def __init__(self, enabled: bool, console: Any = None, task_name: str | None = None) -> None:
        self.enabled = enabled
        self.console = console
        self.on_task = f" on {task_name}" if task_name else ""  # runs on a task other than the claims' own
        self.progress = None
        self.bar = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> "_RunProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.console = self.console or Console(stderr=True, soft_wrap=True)
            self.progress = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=True)
        return self

    def start(self, specs: Sequence[RunSpec], store: Store) -> None:
        if not self.enabled:
            return
        done = store.done_keys()
        todo = len({s.key for s in specs} - done)
        skipped = len({s.key for s in specs}) - todo
        if skipped:
            self.console.print(f"{skipped} runs already in the store {store.path}: skipped", markup=False)
        self.progress.start()
        self.bar = self.progress.add_task("runs", total=todo)

    def on_result(self, spec: RunSpec, result: RunResult, count: int, total: int) -> None:
        if not self.enabled:
            return
        key = next((k for k in ("test_acc", "test_ppl", "test_loss") if k in result.final), None)
        scale, unit = metric_scale(key or "test_acc")
        detail = (f"{key} {result.final[key] * scale:.2f}{unit}" if scale != 1 else f"{key} {result.final[key]:.4g}") \
            if key else ""
        if getattr(spec.task, "holdout_validation", 0.0):  # a tuning run's test split is its validation slice
            detail = detail.replace("test_", "val_", 1)
        if result.status == "failed":
            detail = (result.error or "").splitlines()[0][:120] if result.error else ""
        self.console.print(f"[{count}/{total}] {spec.claim_id}{self.on_task} {spec.arm} seed {spec.seed}: {result.status} {detail} "
                           f"({result.train_seconds:.1f} s training)", markup=False, highlight=False)
        self.progress.update(self.bar, completed=count)

    def note(self, text: str, style: str | None = None) -> None:
        if self.enabled:
            self.console.print(text, style=style, highlight=False, markup=False)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
