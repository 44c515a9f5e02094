"""The claim harness end to end: pairing, verdicts, resume after SIGKILL, overhead, Ray."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from trainlab.claims.api import check, check_claims
from trainlab.claims.claim import Claim, arm
from trainlab.claims.runner import plan, verdict_line
from trainlab.claims.store import Store

SMALL = dict(task="blobs-mlp", metric="test_acc", direction="higher", seeds=3)


def test_plan_pairs_arms_by_seed_and_interleaves():
    claim = Claim(id="t-plan", technique="placebo", treatment=arm("placebo", lr=0.1), **SMALL)
    specs = plan(claim, seeds=3)
    assert [(s.arm, s.seed) for s in specs] == [
        ("baseline", 0), ("treatment", 0), ("baseline", 1), ("treatment", 1), ("baseline", 2), ("treatment", 2)]
    assert specs[1].task.lr == 0.1 and specs[0].task.lr == 0.05
    assert len({s.key for s in specs}) == 6


def test_identical_arms_give_identical_values_per_seed(tmp_path):
    # both arms run the same configuration under a different label: pairing (same init, same data
    # order, same evaluation data) must make every paired difference exactly zero
    claim = Claim(id="t-pairs", technique="none", treatment=arm(label="same", epochs=3),
                  baseline=arm(label="same too", epochs=3), **SMALL)
    result = check(claim, store=tmp_path / "s.sqlite", overhead=False)
    assert result.baseline_values == result.treatment_values
    assert len(set(result.baseline_values)) > 1  # different seeds do differ
    assert result.verdict == "inconclusive"


def test_strong_effect_is_reproduced_with_overhead(tmp_path):
    claim = Claim(id="t-epochs", technique="none", treatment=arm(epochs=4), baseline=arm(epochs=1, lr=0.001),
                  **{**SMALL, "seeds": 4})
    result = check(claim, store=tmp_path / "s.sqlite")
    assert result.verdict == "reproduced"
    assert result.analysis.ci_low > 0
    line = verdict_line(result)
    assert line.startswith("t-epochs: reproduced  +") and "pt test_acc [95% CI" in line and "4 seeds" in line
    # the same model in both arms: about 1, but a loaded machine makes it noisy
    assert 0 < result.overhead["time_ratio"] < float("inf")
    assert result.overhead["memory_ratio"] == pytest.approx(1.0)
    assert result.overhead["params_ratio"] == 1.0


def test_rerun_skips_finished_runs(tmp_path):
    claim = Claim(id="t-skip", technique="placebo", treatment=arm("placebo"), **SMALL)
    store = tmp_path / "s.sqlite"
    first = check(claim, store=store, overhead=False)
    n = len(Store(store).runs())
    again = check(claim, store=store, overhead=False)
    assert len(Store(store).runs()) == n == 6
    assert first.treatment_values == again.treatment_values


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from trainlab.claims.api import check
    from trainlab.claims.claim import Claim, arm
    claim = Claim(id="t-kill", technique="placebo", task="blobs-mlp", metric="test_acc", direction="higher",
                  treatment=arm("placebo", epochs=6), baseline=arm(epochs=6), seeds=8)
    r = check(claim, store=sys.argv[1], overhead=False, workers=1)
    print("VERDICT", r.verdict, len(r.seeds))
""")


@pytest.mark.slow
def test_sigkill_then_rerun_stores_each_run_exactly_once(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    store = tmp_path / "s.sqlite"
    proc = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some, but not all, runs are stored
        time.sleep(0.2)
        if store.exists() and 3 <= len(Store(store).runs()) < 16:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(Store(store).runs())
    assert 3 <= partial < 16
    done = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VERDICT" in done.stdout and done.stdout.strip().endswith(" 8")
    st = Store(store)
    keys = [r["run_key"] for r in st.runs()]
    assert len(keys) == len(set(keys)) == 16
    assert all(r["status"] == "finished" for r in st.runs())


@pytest.mark.slow
def test_local_process_pool_gives_the_same_results_as_in_process(tmp_path):
    claim = Claim(id="t-pool", technique="placebo", treatment=arm("placebo"), **SMALL)
    serial = check(claim, store=tmp_path / "a.sqlite", overhead=False, workers=1)
    pooled = check(claim, store=tmp_path / "b.sqlite", overhead=False, workers=2)
    assert serial.treatment_values == pooled.treatment_values
    assert serial.baseline_values == pooled.baseline_values


@pytest.mark.slow
@pytest.mark.ray
def test_ray_executor_end_to_end(tmp_path):
    pytest.importorskip("ray")
    claim = Claim(id="t-ray", technique="placebo", treatment=arm("placebo"), **SMALL)
    local = check(claim, store=tmp_path / "a.sqlite", overhead=False, workers=1)
    remote = check_claims([claim], executor="ray", workers=2, store=tmp_path / "b.sqlite", overhead=False)[0]
    assert remote.seeds == [0, 1, 2]
    assert remote.treatment_values == local.treatment_values  # same runs, same numbers
    assert len(Store(tmp_path / "b.sqlite").runs()) == 6


def test_a_technique_version_past_1_enters_the_run_key(monkeypatch):
    """Runs stored by an older version of a technique are not reused for a changed one."""
    from trainlab.claims.runner import RunSpec
    from trainlab.tasks.registry import get_task
    from trainlab.techniques.registry import get_technique

    spec = lambda: RunSpec("c", "treatment", get_task("digits-mlp"), [("mixup", {})], 0)  # noqa: E731
    assert "technique_versions" not in spec().config()  # version 1: keys as before versions existed
    key_v1 = spec().key
    monkeypatch.setattr(get_technique("mixup"), "version", 2)
    assert spec().config()["technique_versions"] == {"mixup": 2}
    assert spec().key != key_v1
    assert RunSpec("c", "treatment", get_task("digits-mlp"), [("sso", {})], 0).config()["technique_versions"] == {"sso": 2}
