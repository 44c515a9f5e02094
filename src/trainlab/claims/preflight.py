"""Before any run: can each claim run on the task it is asked to run on?

A claim written for one task (say cifar10-cnn) may be run on a user's own task. Some cannot run
there, and they should say why in one line before anything trains, instead of failing in every run
(or, worse, measuring something else). For each claim and each of its arms this checks, in order:

1. the claim's task settings apply to the task (`Task.with_overrides`);
2. the model settings the claim passes (e.g. `model_kwargs={"depth": 20}`) are parameters of the
   task's `make_model` (read from its signature; a `**kwargs` model accepts anything);
3. the data settings apply to the data (label noise and class imbalance need class labels);
4. every technique's own requirements (`Technique.requires` / `check_applicable`: class labels,
   images, convolution layers, normalization layers, ...), on the task's data and a freshly built
   model;
5. a dry run: one training step on the first batch and one evaluation on a few test examples,
   with the arm's techniques (trainlab.training.trainer.dry_run), which also tells which metrics a
   run reports, so a claim on a metric the task does not report (test_acc on a language model)
   is refused too.

The task itself is checked first, without any claim (its data loads, its model builds and trains
one step): a task that cannot train at all is the user's error, reported once (ConfigError), not
once per claim.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from trainlab.claims.claim import Claim
from trainlab.claims.metrics import _RUN_FIELDS, curve_key
from trainlab.errors import ConfigError, UserError
from trainlab.tasks.task import Task


@dataclass(frozen=True)
class Skipped:
    """A claim refused before training, and why."""

    claim_id: str
    task: str
    reason: str

    def line(self) -> str:
        return f"{self.claim_id} on {self.task}: skipped: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"claim_id": self.claim_id, "task": self.task, "reason": self.reason}


def unaccepted_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], leading: int = 2) -> list[str]:
    """The keys of `kwargs` that fn(<leading positional args>, **kwargs) would not accept
    (empty when fn takes **kwargs or its signature cannot be read)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    taken_by_position = {p.name for p in positional[:leading]}
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - taken_by_position
    return [k for k in kwargs if k not in names]


def _fn_name(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or type(inner).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _error_text(e: BaseException) -> str:
    return _first_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {_first_line(e)}"


#: keys of the task's own evaluation (present from the first epoch on); other keys are logged by
#: techniques and probes, some only at certain epochs, so a dry run's first row cannot rule them out
_TASK_KEYS = ("test_", "source_test_", "train_loss", "train_acc", "chance_acc")


def metric_reported(metric: str, row: Mapping[str, Any]) -> bool:
    """Whether a run whose first epoch row is `row` reports the claim's metric (False only for a
    metric of the task's evaluation that the row lacks, e.g. test_acc on a language model)."""
    if metric == "diverged" or metric in _RUN_FIELDS:
        return True
    key = curve_key(metric)
    return key in row or not key.startswith(_TASK_KEYS)


class Preflight:
    """Checks claims against one task; dry runs are shared between arms with the same settings."""

    def __init__(self, task: Task | str, device: str = "cpu", dry_run: bool = True) -> None:
        from trainlab.tasks.loading import load_task_data
        from trainlab.tasks.registry import get_task

        self.task = get_task(task)
        self.device = device
        self.do_dry_run = dry_run
        self._dry: dict[str, tuple[dict[str, float] | None, str | None]] = {}
        self.data = load_task_data(self.task, 0)   # the task's own data errors are the user's: raised
        if dry_run:
            row, error = self._dry_run(self.task, [])
            if error:
                raise ConfigError(f"task '{self.task.name}' does not train one step on its own data: {error}")

    def _dry_run(self, task: Task, techniques: Sequence[tuple[str, dict[str, Any]]]) -> tuple[dict[str, float] | None, str | None]:
        from trainlab.training.trainer import dry_run

        key = json.dumps([task.name, task.budget(), [[n, dict(s)] for n, s in techniques]], sort_keys=True, default=repr)
        if key not in self._dry:
            try:
                self._dry[key] = (dry_run(task, list(techniques), self.device), None)
            except Exception as e:  # any failure of the step is the reason this arm cannot run here
                self._dry[key] = (None, _error_text(e))
        return self._dry[key]

    def reason(self, claim: Claim) -> str | None:
        """Why `claim` cannot run on the task, or None."""
        from trainlab.claims.runner import arm_task
        from trainlab.techniques.registry import get_technique
        from trainlab.training.requirements import data_unmet, technique_unmet

        # the technique's own arm first; a one-arm claim (Claim.reference) runs the treatment only
        arms = {name: getattr(claim, name) for name in ("treatment", "baseline") if name in claim.arms}
        tasks: dict[str, Task] = {}
        for name, arm in arms.items():
            try:
                tasks[name] = arm_task(claim, arm, self.task)
            except ConfigError as e:
                return f"its {name} settings do not apply: {_first_line(e)}"
        for name, t in tasks.items():
            bad = unaccepted_kwargs(t.make_model, t.model_kwargs)
            if bad:
                settings = ", ".join(f"{k}={t.model_kwargs[k]!r}" for k in bad)
                return (f"the claim sets model settings ({settings}) that the task's model "
                        f"{_fn_name(t.make_model)}() does not take")
        for name, t in tasks.items():
            reason = data_unmet(t, self.data)
            if reason:
                return f"the claim's data setting {reason}"
        for name, arm in arms.items():
            t = tasks[name]
            # the claim's own technique first, so the reason names it
            classes = sorted((get_technique(n) for n, _ in arm.techniques), key=lambda c: c.name != claim.technique)
            for cls in classes:  # what can be told without a model
                reason = technique_unmet(cls, t, self.data, None)
                if reason:
                    return reason
            if classes:
                try:
                    model = t.make_model(self.data.input_shape, self.data.num_classes, **dict(t.model_kwargs))
                except Exception as e:
                    return f"the task's model cannot be built with the {name} arm's settings: {_error_text(e)}"
                for cls in classes:
                    reason = technique_unmet(cls, t, self.data, model)
                    if reason:
                        return reason
        if not self.do_dry_run:
            return None
        for name, arm in arms.items():
            row, error = self._dry_run(tasks[name], [(n, dict(s)) for n, s in arm.techniques])
            if error:
                return f"the {name} arm ({arm.describe()}) fails on one batch: {error}"
            metrics = [("metric", claim.metric)] + ([("reference", claim.reference)]
                                                    if isinstance(claim.reference, str) else [])
            for what, metric in metrics:
                if not metric_reported(metric, row):
                    shown = ", ".join(k for k in row if k.startswith("test_")) or ", ".join(row)
                    return f"its {what} '{metric}' is not reported on '{self.task.name}' (it reports {shown})"
        return None


def preflight(claims: Sequence[Claim], task: Task | str | None, device: str = "cpu",
              dry_run: bool = True) -> tuple[list[Claim], list[Skipped]]:
    """Split claims into those that can run on `task` and those refused (with reasons). With
    task=None every claim runs on its own task, which the project's tests cover: nothing is checked.
    Raises ConfigError when the task itself cannot train."""
    if task is None:
        return list(claims), []
    check = Preflight(task, device, dry_run)
    runnable, skipped = [], []
    for c in claims:
        reason = check.reason(c)
        if reason:
            skipped.append(Skipped(c.id, check.task.name, reason))
        else:
            runnable.append(c)
    return runnable, skipped
