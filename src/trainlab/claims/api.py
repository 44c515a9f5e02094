"""The harness's entry points: `check` (one claim), `check_all`, `run_suite`.

    import trainlab
    result = trainlab.check("adamp", task=my_task, seeds=10)
    print(result.verdict, result.analysis.ci_low, result.analysis.ci_high, result.overhead["time_ratio"])
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from trainlab.claims.claim import Claim
from trainlab.claims.registry import resolve, suite_claims
from trainlab.claims.result import ClaimResult
from trainlab.claims.runner import (RunSpec, collect, execute, measure_claim_overhead, metric_scale, plan,
                                    verdict_line)
from trainlab.claims.store import Store
from trainlab.tasks.task import Task
from trainlab.training.result import RunResult


def _claims(name_or_claim: str | Claim) -> list[Claim]:
    return [name_or_claim] if isinstance(name_or_claim, Claim) else resolve(name_or_claim)


def check(name_or_claim: str | Claim, task: Task | str | None = None, seeds: int | None = None,
          executor: str = "local", workers: int | None = None, store: Store | str | Path | None = None,
          overhead: bool = True, progress: bool = False, device: str = "cpu", address: str | None = None) -> ClaimResult:
    """Check one claim: a claim id, a Claim, or a technique name (its first, headline claim).

    task: run the claim on another task (a Task object, a named task, or "file.py:name") —
    e.g. your own model and data. Returns a ClaimResult (verdict, CI, per-seed values, overhead).
    """
    claim = _claims(name_or_claim)[0]
    return check_claims([claim], task, seeds, executor, workers, store, overhead, progress, device, address)[0]


def check_all(name: str | Claim, **kwargs: Any) -> list[ClaimResult]:
    """Check every claim of a technique (or the one claim with that id)."""
    return check_claims(_claims(name), **kwargs)


def run_suite(suite: str, **kwargs: Any) -> list[ClaimResult]:
    return check_claims(suite_claims(suite), **kwargs)


def check_claims(claims: Sequence[Claim], task: Task | str | None = None, seeds: int | None = None,
                 executor: str = "local", workers: int | None = None, store: Store | str | Path | None = None,
                 overhead: bool = True, progress: bool = False, device: str = "cpu",
                 address: str | None = None, console: Any = None) -> list[ClaimResult]:
    """Plan every claim's runs, execute all of them in one pool (skipping finished ones), then
    measure overhead and analyze each claim."""
    specs = {c.id: plan(c, seeds, task, device) for c in claims}
    all_specs = [s for c in claims for s in specs[c.id]]
    with _open_store(store) as st, _RunProgress(progress, console) as prog:
        prog.start(all_specs, st)
        execute(all_specs, st, executor=executor, workers=workers, address=address, on_result=prog.on_result)
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
    return results


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

    def __init__(self, enabled: bool, console: Any = None) -> None:
        self.enabled = enabled
        self.console = console
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
            self.console.print(f"{skipped} runs already in the store {store.path}: skipped")
        self.progress.start()
        self.bar = self.progress.add_task("runs", total=todo)

    def on_result(self, spec: RunSpec, result: RunResult, count: int, total: int) -> None:
        if not self.enabled:
            return
        acc = result.final.get("test_acc")
        scale, unit = metric_scale("test_acc")
        detail = f"test_acc {acc * scale:.2f}{unit}" if acc is not None else ""
        if result.status == "failed":
            detail = (result.error or "").splitlines()[0][:120] if result.error else ""
        self.console.print(f"[{count}/{total}] {spec.claim_id} {spec.arm} seed {spec.seed}: {result.status} {detail} "
                           f"({result.train_seconds:.1f} s training)")
        self.progress.update(self.bar, completed=count)

    def note(self, text: str, style: str | None = None) -> None:
        if self.enabled:
            self.console.print(text, style=style, highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
