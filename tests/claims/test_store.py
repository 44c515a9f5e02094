"""The run store: WAL mode, one row per run, skip-if-done, schema version."""
from __future__ import annotations

import sqlite3

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
