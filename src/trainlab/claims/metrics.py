"""Reading a claim's metric out of a run.

"test_acc"                       final value of a per-epoch key (any key a technique or probe logs, too)
"best:test_acc" / "max:key" / "min:test_loss"  largest (best:, max:) or smallest (min:) value over epochs
"mean:key"                       mean over epochs
"mean_last5:key"                 mean over the last 5 epochs that record the key (fewer if fewer do;
                                 a probe measuring every k epochs records it only at those epochs)
"epochs_to:test_acc>=0.95"       first epoch (1-based) reaching the threshold; a run that never
                                 reaches it gets epochs+1 and is counted as censored
"at:nc1@train_acc>=0.999"        value of nc1 at the first epoch, among those that record nc1, where
                                 train_acc >= 0.999 holds; NaN if there is none
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
_KEY = r"[\w.]+"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONDITION = rf"({_KEY})\s*(>=|<=|>|<)\s*({_NUMBER})"
_EPOCHS_TO = re.compile(rf"^epochs_to:{_CONDITION}$")
_AT = re.compile(rf"^at:({_KEY})@{_CONDITION}$")
_MEAN_LAST = re.compile(rf"^mean_last(\d+):({_KEY})$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_SIMPLE_PREFIXES = ("best", "max", "min", "mean")


def validate(metric: str) -> None:
    """Raise ConfigError with the expected form when `metric` is not a metric this module reads."""
    if not isinstance(metric, str) or not metric.strip():
        raise ConfigError(f"bad metric {metric!r}: give a metric name such as 'test_acc'")
    if metric.startswith("epochs_to:") and not _EPOCHS_TO.match(metric):
        raise ConfigError(f"bad metric '{metric}': use epochs_to:<key><op><number>, e.g. epochs_to:test_acc>=0.95")
    if metric.startswith("at:") and not _AT.match(metric):
        raise ConfigError(f"bad metric '{metric}': use at:<key>@<key2><op><number>, e.g. at:nc1@train_acc>=0.999")
    if metric.startswith("mean_last"):
        m = _MEAN_LAST.match(metric)
        if not m:
            raise ConfigError(f"bad metric '{metric}': use mean_last<k>:<key> with a whole number k >= 1, "
                              "e.g. mean_last5:sharpness")
        if int(m.group(1)) < 1:
            raise ConfigError(f"bad metric '{metric}': mean_last<k> needs k >= 1")
        return
    prefix = metric.split(":", 1)[0] if ":" in metric else None
    if prefix not in (None, *_SIMPLE_PREFIXES, "epochs_to", "at"):
        raise ConfigError(f"bad metric '{metric}': unknown prefix '{prefix}' (known: best, max, min, mean, "
                          "mean_last<k>, epochs_to, at)")
    if prefix in _SIMPLE_PREFIXES and not metric.split(":", 1)[1].strip():
        raise ConfigError(f"bad metric '{metric}': name the key after '{prefix}:', e.g. {prefix}:test_acc")


def curve_key(metric: str) -> str:
    """The per-epoch key a metric is computed from (for learning-curve plots)."""
    m = _EPOCHS_TO.match(metric)
    if m:
        return m.group(1)
    m = _AT.match(metric)
    if m:
        return m.group(1)
    m = _MEAN_LAST.match(metric)
    if m:
        return m.group(2)
    if ":" in metric:
        return metric.split(":", 1)[1]
    return metric if metric not in _RUN_FIELDS + ("diverged",) else "test_acc"


def is_accuracy(metric: str) -> bool:
    """Whether the metric's values are accuracies (printed in percentage points)."""
    if metric in _RUN_FIELDS or metric == "diverged" or metric.startswith("epochs_to:"):
        return False
    return curve_key(metric).endswith("acc")


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
    m = _AT.match(metric)
    if m:
        key, cond_key, op, threshold = m.group(1), m.group(2), _OPS[m.group(3)], float(m.group(4))
        for row in epochs:
            if key in row and cond_key in row and op(row[cond_key], threshold):
                return float(row[key]), False
        return math.nan, False
    m = _MEAN_LAST.match(metric)
    if m:
        k, key = int(m.group(1)), m.group(2)
        values = [row[key] for row in epochs if key in row and not math.isnan(row[key])][-k:]
        return (float(sum(values) / len(values)) if values else math.nan), False
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
