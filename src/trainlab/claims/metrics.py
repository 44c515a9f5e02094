"""Reading a claim's metric out of a run.

"test_acc"                       final value of a per-epoch key (any key a technique logs, too)
"best:test_acc" / "max:key" / "min:test_loss"  largest (best:, max:) or smallest (min:) value over epochs
"mean:key"                       mean over epochs
"epochs_to:test_acc>=0.95"       first epoch (1-based) reaching the threshold; a run that never
                                 reaches it gets epochs+1 and is counted as censored
"diverged"                       1.0 if the run diverged, else 0.0
"time_per_step", "peak_memory", "params", "trainable_params", "optimizer_state_bytes"
"""
from __future__ import annotations

import math
import operator
import re
from typing import Any

from trainlab.errors import ConfigError

_RUN_FIELDS = ("time_per_step", "peak_memory", "params", "trainable_params", "optimizer_state_bytes")
_EPOCHS_TO = re.compile(r"^epochs_to:([\w.]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def validate(metric: str) -> None:
    if metric.startswith("epochs_to:") and not _EPOCHS_TO.match(metric):
        raise ConfigError(f"bad metric '{metric}': use epochs_to:<key><op><number>, e.g. epochs_to:test_acc>=0.95")
    prefix = metric.split(":", 1)[0] if ":" in metric else None
    if prefix not in (None, "best", "max", "min", "mean", "epochs_to"):
        raise ConfigError(f"bad metric '{metric}': unknown prefix '{prefix}'")


def curve_key(metric: str) -> str:
    """The per-epoch key a metric is computed from (for learning-curve plots)."""
    if metric.startswith("epochs_to:"):
        return _EPOCHS_TO.match(metric).group(1)
    if ":" in metric:
        return metric.split(":", 1)[1]
    return metric if metric not in _RUN_FIELDS + ("diverged",) else "test_acc"


def metric_value(metric: str, run: dict[str, Any], planned_epochs: int) -> tuple[float, bool]:
    """(value, censored) of `metric` for one run given as RunResult.to_dict() or a store row."""
    validate(metric)
    epochs: list[dict[str, float]] = run.get("epochs") or []
    if metric == "diverged":
        return (1.0 if run["status"] == "diverged" else 0.0), False
    if metric in _RUN_FIELDS:
        v = run.get(metric)
        return (float(v) if v is not None else math.nan), False
    m = _EPOCHS_TO.match(metric)
    if m:
        key, op, threshold = m.group(1), _OPS[m.group(2)], float(m.group(3))
        for row in epochs:
            if key in row and op(row[key], threshold):
                return float(row["epoch"]), False
        return float(planned_epochs + 1), True
    if ":" in metric:
        how, key = metric.split(":", 1)
        values = [row[key] for row in epochs if key in row and not math.isnan(row[key])]
        if not values:
            return math.nan, False
        if how in ("best", "max"):
            return float(max(values)), False
        if how == "min":
            return float(min(values)), False
        return float(sum(values) / len(values)), False
    final = run.get("final") or {}
    return float(final.get(metric, math.nan)), False
