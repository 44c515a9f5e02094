"""The run store: WAL mode, one row per run, skip-if-done, schema version."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainlab.claims.store import SCHEMA_VERSION, Store, run_key
from trainlab.errors import DataError
from trainlab.training.result import RunResult


def _result(status="finished", acc=0.9):
    return RunResult(status=status, epochs=[{"epoch": 1, "test_acc": acc}], final={"test_acc": acc},
                     provenance={"code_version": "x", "torch_version": "y", "device": "cpu", "threads": 1})


def test_wal_mode_and_schema_version(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    assert st.conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert st.conn.execute("select value from meta where key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_run_stored_once_and_failed_runs_replaced(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    cfg = {"task": {"name": "t"}, "techniques": [], "seed": 0}
    key = run_key(cfg)
    st.add_run(key, cfg, _result("failed"))
    assert key not in st.done_keys()
    st.add_run(key, cfg, _result("finished", 0.5))
    st.add_run(key, cfg, _result("finished", 0.7))  # already finished: kept as it was
    rows = st.runs()
    assert len(rows) == 1 and rows[0]["status"] == "finished" and rows[0]["final"]["test_acc"] == 0.5
    assert rows[0]["epochs"] == [{"epoch": 1, "test_acc": 0.5}]
    assert key in st.done_keys()


def test_readable_with_plain_sqlite(tmp_path):
    path = tmp_path / "s.sqlite"
    st = Store(path)
    cfg = {"task": {"name": "t"}, "techniques": [["mixup", {}]], "seed": 3}
    st.add_run(run_key(cfg), cfg, _result(), claim_id="c1", arm="treatment")
    st.close()
    row = sqlite3.connect(path).execute("select claim_id, arm, seed, status, torch_version from runs").fetchone()
    assert row == ("c1", "treatment", 3, "finished", "y")


def test_run_key_is_order_independent_and_sensitive():
    a = run_key({"seed": 1, "task": {"lr": 0.1, "name": "t"}})
    assert a == run_key({"task": {"name": "t", "lr": 0.1}, "seed": 1})
    assert a != run_key({"task": {"name": "t", "lr": 0.2}, "seed": 1})


def test_newer_schema_or_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).conn.execute("update meta set value='99' where key='schema_version'")
    with pytest.raises(DataError, match="schema version 99"):
        Store(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="not a readable SQLite database"):
        Store(junk)


# ---- where the store lives --------------------------------------------------------------------
def test_default_store_is_in_the_user_data_folder_and_env_overrides(tmp_path, monkeypatch):
    import platformdirs

    from trainlab.claims.store import default_store_path

    monkeypatch.delenv("TRAINLAB_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "trainlab" / "runs.sqlite"
    assert default_store_path() == expected == Path(platformdirs.user_data_dir("trainlab")) / "runs.sqlite"
    monkeypatch.chdir(tmp_path)
    assert Store().path == expected and expected.is_file()
    assert not (tmp_path / "trainlab-runs").exists()  # nothing in the current folder
    monkeypatch.setenv("TRAINLAB_STORE", str(tmp_path / "mine.sqlite"))
    assert default_store_path() == tmp_path / "mine.sqlite"


def test_list_shows_the_same_verdicts_from_any_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRAINLAB_STORE"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    Store(tmp_path / "xdg" / "trainlab" / "runs.sqlite").add_verdict(
        "sanity-placebo", "inconclusive", "sanity-placebo: inconclusive", {})
    outputs = []
    for folder in (tmp_path / "a", tmp_path / "b" / "c"):
        folder.mkdir(parents=True)
        proc = subprocess.run([sys.executable, "-m", "trainlab.cli", "list"], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
        assert "sanity-placebo: inconclusive" in proc.stdout
        assert not (folder / "trainlab-runs").exists()
    assert outputs[0] == outputs[1]


def test_store_path_under_a_file_or_a_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="'.*plain-file' is a file, not a folder"):
        Store(blocker / "deeper" / "runs.sqlite")
    with pytest.raises(DataError, match="is a folder; give a file name"):
        Store(tmp_path)


# ---- leases: one process trains each run ------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_lease_is_exclusive_until_the_result_is_stored(tmp_path):
    path = tmp_path / "s.sqlite"
    a, b = Store(path), Store(path)  # two holders (as two processes would be)
    cfg = {"task": {"name": "t"}, "techniques": [], "seed": 0}
    key = run_key(cfg)
    assert a.lease(key) == "claimed"
    assert a.lease(key) == "claimed"  # a holder may ask again
    assert b.lease(key) == "busy"
    holder = b.lease_holder(key)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    a.add_run(key, cfg, _result())  # storing the result releases the lease in the same transaction
    assert b.lease_holder(key) is None
    assert b.lease(key) == "done"
    assert [x["owner"] for x in a.attempts(key)] == [a.owner]  # trained once


def test_released_lease_can_be_taken(tmp_path):
    path = tmp_path / "s.sqlite"
    a, b = Store(path), Store(path)
    assert a.lease("k1") == "claimed" and a.lease("k2") == "claimed"
    a.release(["k1"])
    assert b.lease("k1") == "claimed" and b.lease("k2") == "busy"
    a.release()
    assert b.lease("k2") == "claimed"


def test_lease_of_a_killed_process_is_taken_over(tmp_path):
    path = tmp_path / "s.sqlite"
    st = Store(path)
    dead = _dead_pid()
    now = time.time()
    st.conn.execute("insert into leases values (?,?,?,?,?,?)", ("k", f"{socket.gethostname()}:{dead}:x", dead,
                                                              socket.gethostname(), now, now))
    assert st.lease("k") == "claimed"  # fresh heartbeat, but its process is gone from this host
    took = st.attempts("k")[-1]["took_over"]
    assert took.startswith(f"pid {dead} on {socket.gethostname()}")


def test_lease_of_another_host_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    st.lease_ttl = 60.0
    now = time.time()
    st.conn.execute("insert into leases values ('fresh', 'elsewhere:1:x', 1, 'elsewhere', ?, ?)", (now - 30, now))
    st.conn.execute("insert into leases values ('stale', 'elsewhere:1:x', 1, 'elsewhere', ?, ?)", (now - 90, now))
    assert st.lease("fresh") == "busy"
    assert st.lease("stale") == "claimed"


def test_failed_run_is_retried_unless_it_failed_alongside(tmp_path):
    path = tmp_path / "s.sqlite"
    st = Store(path)
    cfg = {"task": {"name": "t"}, "techniques": [], "seed": 1}
    key = run_key(cfg)
    st.add_run(key, cfg, _result("failed"))
    later = time.time() + 1
    assert st.lease(key, since=later) == "claimed"  # failed before this check started: train again
    st.release()
    assert st.lease(key, since=later - 10) == "done"  # failed after it started: another process's result


def test_heartbeat_thread_renews_and_releases(tmp_path):
    path = tmp_path / "s.sqlite"
    st, other = Store(path), Store(path)
    with st.holding_leases(every=0.05):
        assert st.lease("k") == "claimed"
        first = other.lease_holder("k")["heartbeat"]
        deadline = time.time() + 10
        while other.lease_holder("k")["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert other.lease_holder("k")["heartbeat"] > first
        assert other.lease("k") == "busy"
    assert other.lease_holder("k") is None  # released at the end of the block
    assert other.lease("k") == "claimed"
