"""Two `trainlab check` processes on one store: each run is trained once, the second process waits
for what the first is training and reads its stored result, and a run whose process was killed
(kill -9) is taken over."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from trainlab.claims.runner import plan
from trainlab.claims.store import Store

pytestmark = pytest.mark.slow

# digits-mlp for 1 epoch, with two test hooks: BARRIER_DIR makes the processes start their runs
# together (both must be there before either loads data), and HOLD_DIR makes the seed-1 runs wait
# in model construction (the run's lease held) until a file named "go" appears.
TASK_FILE = textwrap.dedent("""
    import os
    import time
    from pathlib import Path

    import torch

    from trainlab.tasks.registry import get_task

    base = get_task("digits-mlp")

    def data(**kwargs):
        folder = os.environ.get("BARRIER_DIR")
        if folder:
            Path(folder, str(os.getpid())).touch()
            deadline = time.time() + 300
            while len(list(Path(folder).iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.02)
        return base.make_data(**kwargs)

    def model(input_shape, num_classes, **kwargs):
        hold = os.environ.get("HOLD_DIR")
        if hold and torch.initial_seed() == 1:  # the trainer seeds right before building the model
            Path(hold, f"holding-{os.getpid()}").touch()
            while not Path(hold, "go").exists():
                time.sleep(0.02)
        return base.make_model(input_shape, num_classes, **kwargs)

    tiny = base.with_overrides({"make_data": data, "make_model": model, "epochs": 1})
""")


@pytest.fixture
def setup(tmp_path):
    task_file = tmp_path / "tiny_task.py"
    task_file.write_text(TASK_FILE)
    return task_file, tmp_path / "shared.sqlite"


def _check(task_file: Path, store: Path, seeds: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trainlab.cli", "check", "sanity-placebo", "--task", f"{task_file}:tiny",
         "--seeds", str(seeds), "--workers", "1", "--no-overhead", "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def _keys(task_file: Path, seeds: int) -> list[str]:
    from trainlab.claims.registry import resolve
    from trainlab.tasks.registry import get_task

    return [s.key for s in plan(resolve("sanity-placebo")[0], seeds, get_task(f"{task_file}:tiny"))]


def _verdict(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("sanity-placebo: "))


def _all_reported(err: str) -> bool:
    """The last progress line `[n/total]` has n == total: every run was reported."""
    counts = re.findall(r"^\[(\d+)/(\d+)\]", err, flags=re.M)
    return bool(counts) and counts[-1][0] == counts[-1][1]


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_two_concurrent_checks_train_every_run_once(setup, tmp_path):
    task_file, store = setup
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [_check(task_file, store, 4, BARRIER_DIR=str(barrier)) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    st = Store(store)
    keys = _keys(task_file, 4)
    attempts = st.attempts()
    assert sorted(a["run_key"] for a in attempts) == sorted(keys)  # every run started exactly once
    assert {a["pid"] for a in attempts} == {p.pid for p in procs}  # the two processes shared the work
    assert all(st.get_run(k)["status"] == "finished" for k in keys)
    assert len(st.runs()) == 8
    # both report all runs and the same verdict from the same stored results
    for out, err in outs:
        assert _all_reported(err), err[-2000:]
    assert _verdict(outs[0][1]) == _verdict(outs[1][1])


def test_second_check_waits_for_the_run_the_first_is_training(setup, tmp_path):
    task_file, store = setup
    hold = tmp_path / "hold"
    hold.mkdir()
    first = _check(task_file, store, 3, HOLD_DIR=str(hold))
    _wait_for(lambda: (hold / f"holding-{first.pid}").exists())  # seed-0 runs stored, seed-1 baseline leased
    second = _check(task_file, store, 3)
    lines: list[str] = []
    def read() -> None:
        for line in second.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _wait_for(lambda: any("waiting for" in line for line in lines))
    assert len(Store(store).runs()) == 5  # everything but the leased run
    (hold / "go").touch()
    out1, err1 = first.communicate(timeout=600)
    second.wait(timeout=600)
    reader.join(timeout=60)
    err2 = "".join(lines)
    assert first.returncode == 0 and second.returncode == 0, err1[-2000:] + err2[-2000:]
    note = next(line for line in lines if "waiting for" in line)
    assert f"waiting for 1 runs that another process is training (pid {first.pid} on" in note
    st = Store(store)
    keys = _keys(task_file, 3)
    by_key = {k: [a["pid"] for a in st.attempts(k)] for k in keys}
    assert all(len(pids) == 1 for pids in by_key.values()), by_key
    assert by_key[keys[2]] == [first.pid]  # the seed-1 baseline: trained by the first only
    assert {p for pids in by_key.values() for p in pids} == {first.pid, second.pid}
    assert _verdict(err1) == _verdict(err2)
    assert "[6/6]" in err1 and "[4/4]" in err2  # the second had 2 runs stored before it started


def test_run_of_a_killed_check_is_taken_over(setup, tmp_path):
    task_file, store = setup
    hold = tmp_path / "hold"
    hold.mkdir()
    first = _check(task_file, store, 2, HOLD_DIR=str(hold))
    _wait_for(lambda: (hold / f"holding-{first.pid}").exists())
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    keys = _keys(task_file, 2)
    st = Store(store)
    assert st.lease_holder(keys[2])["pid"] == first.pid  # the stale lease the kill left behind
    second = _check(task_file, store, 2)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    held = st.attempts(keys[2])
    assert [a["pid"] for a in held] == [first.pid, second.pid]
    assert held[1]["took_over"].startswith(f"pid {first.pid} on ")
    assert all(len(st.attempts(k)) == 1 for k in keys if k != keys[2])
    assert len(st.runs()) == 4 and all(r["status"] == "finished" for r in st.runs())
    assert st.lease_holder(keys[2]) is None
