"""Overhead timing on a busy machine: marked unreliable, re-timed once when the machine is quiet
(within a bounded wait), and the outcome recorded in the overhead dict."""
from __future__ import annotations

import os

import pytest

import trainlab.claims.overhead as overhead

CORES = os.cpu_count() or 1
BUSY, QUIET = 4.0 * CORES + 1, 0.5 * CORES
# three steps per block, two blocks: the number of timed steps does not depend on the machine
FAST = dict(block_seconds=1e-9, blocks=2, warmup=1, max_steps_per_block=3)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def counted_steps(monkeypatch):
    """Count training steps, and forget any earlier busy wait."""
    monkeypatch.setattr(overhead, "_last_busy_wait", -float("inf"))
    calls = {"n": 0}
    step = overhead._step

    def counting(run, batch):
        calls["n"] += 1
        step(run, batch)

    monkeypatch.setattr(overhead, "_step", counting)
    return calls


def _loads(monkeypatch, *values: float) -> list[float]:
    """os.getloadavg as seen by the module: the given values in turn, then the last one forever."""
    seen: list[float] = []

    def load() -> float:
        value = values[min(len(seen), len(values) - 1)]
        seen.append(value)
        return value

    monkeypatch.setattr(overhead, "_load", load)
    return seen


def _measure(**kw):
    return overhead.measure_overhead("blobs-mlp", [], "blobs-mlp", [("placebo", {})], **FAST, **kw)


def test_quiet_machine_is_timed_once_and_reliable(monkeypatch, counted_steps):
    _loads(monkeypatch, QUIET)
    r = _measure()
    assert r["time_ratio_reliable"] is True and r["time_remeasured"] is False
    assert r["load_average_1min"] == QUIET and r["cpu_count"] == CORES
    assert "first_time_ratio" not in r
    assert r["time_ratio_note"].startswith("timed on a quiet machine")
    # 2 memory steps + 2 x (1 warm-up + 1 warm timing) + 2 arms x 2 blocks x 3 steps
    assert counted_steps["n"] == 2 + 4 + 12 == 2 + 4 + 2 * r["steps_timed"]


def test_busy_then_quiet_is_retimed_once(monkeypatch, counted_steps):
    seen = _loads(monkeypatch, BUSY, QUIET)  # busy after the first timing, quiet from then on
    r = _measure(quiet_wait=30)
    assert r["time_remeasured"] is True and r["time_ratio_reliable"] is True
    assert r["first_load_average_1min"] == BUSY and r["load_average_1min"] == QUIET
    assert r["first_time_ratio"] > 0 and r["quiet_wait_seconds"] < 30
    assert counted_steps["n"] == 2 + 4 + 2 * 2 * r["steps_timed"]  # the timed blocks ran twice
    assert r["time_ratio_note"].startswith("re-timed after") and f"{BUSY:.1f}" in r["time_ratio_note"]
    assert len(seen) == 3  # after the first timing, once while waiting, after the second timing


def test_busy_machine_that_stays_busy_is_marked_unreliable_and_not_retimed(monkeypatch, counted_steps):
    _loads(monkeypatch, BUSY)
    r = _measure(quiet_wait=0.3)
    assert r["time_ratio_reliable"] is False and r["time_remeasured"] is False
    assert r["load_average_1min"] == BUSY and r["quiet_wait_seconds"] >= 0.3
    assert counted_steps["n"] == 2 + 4 + 2 * r["steps_timed"]
    assert r["time_ratio_note"] == (f"unreliable: timed on a busy machine (load {BUSY:.1f} on {CORES} cores) and "
                                    f"not re-timed: the load stayed above {CORES} after waiting {r['quiet_wait_seconds']:.1f} s")
    # right after a wait that ended busy, the next measurement does not wait again
    again = _measure(quiet_wait=60)
    assert again["quiet_wait_seconds"] == 0.0 and again["time_ratio_reliable"] is False


def test_load_that_rises_again_during_the_retiming_stays_unreliable(monkeypatch):
    _loads(monkeypatch, BUSY, QUIET, BUSY)
    r = _measure(quiet_wait=30)
    assert r["time_remeasured"] is True and r["time_ratio_reliable"] is False
    assert r["time_ratio_note"].startswith("unreliable: re-timed once when the load fell")


def test_unknown_load_counts_as_quiet():
    assert overhead._quiet(None, 2) and overhead._quiet(2.0, 2) and not overhead._quiet(2.01, 2)
