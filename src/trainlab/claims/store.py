"""The run store: SQLite in WAL mode, append-only, one row per finished run.

A run's row (and its per-epoch rows) are written in one transaction when the run ends, so a killed
process loses at most the runs in flight. Each run has a `run_key` (a hash of everything that
determines it: task budget, arm, techniques and settings, seed, device); re-running the same
command skips keys already finished, and a UNIQUE constraint keeps a run from being stored twice.
Read it with any SQLite client or pandas:

    pandas.read_sql("select * from runs", sqlite3.connect("trainlab-runs/runs.sqlite"))
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from trainlab.errors import DataError
from trainlab.training.result import RunResult

SCHEMA_VERSION = 1
DEFAULT_STORE = "trainlab-runs/runs.sqlite"

_SCHEMA = """
create table if not exists meta (key text primary key, value text not null);
create table if not exists runs (
    id integer primary key,
    run_key text not null unique,
    claim_id text,
    arm text,
    task text not null,
    techniques text not null,
    config text not null,
    seed integer not null,
    status text not null,
    final text not null,
    time_per_step real,
    train_seconds real,
    peak_memory integer,
    params integer,
    trainable_params integer,
    optimizer_state_bytes integer,
    diverged_step integer,
    error text,
    data_fingerprint text,
    code_version text,
    torch_version text,
    device text,
    threads integer,
    provenance text,
    finished_at real not null
);
create table if not exists epochs (
    run_key text not null,
    epoch integer not null,
    metrics text not null,
    primary key (run_key, epoch)
);
create table if not exists overhead (
    claim_id text not null,
    measured_at real not null,
    result text not null
);
create table if not exists verdicts (
    claim_id text not null,
    checked_at real not null,
    verdict text not null,
    line text not null,
    result text not null
);
create index if not exists runs_claim on runs (claim_id);
"""


def default_store_path() -> Path:
    return Path(os.environ.get("TRAINLAB_STORE", DEFAULT_STORE))


def run_key(config: dict[str, Any]) -> str:
    """A stable hash of a run's full configuration."""
    blob = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _json(v: Any) -> str:
    return json.dumps(v, default=_encode_float, allow_nan=True)


def _encode_float(v: Any) -> Any:
    return repr(v)


class Store:
    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.execute("pragma journal_mode=wal")
            self.conn.execute("pragma synchronous=normal")
            self.conn.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as e:
            raise DataError(f"run store '{self.path}' is not a readable SQLite database ({e})") from None

    def _check_version(self) -> None:
        row = self.conn.execute("select value from meta where key='schema_version'").fetchone()
        if row is None:
            self.conn.execute("insert into meta values ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise DataError(f"run store '{self.path}' has schema version {row[0]}; this trainlab reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- writing --------------------------------------------------------------------------
    def add_run(self, key: str, config: dict[str, Any], result: RunResult, claim_id: str | None = None,
                arm: str | None = None) -> None:
        """Store a finished, diverged or failed run with its epochs, in one transaction.
        A key already stored as finished/diverged is left alone; a failed one is replaced."""
        p = result.provenance
        with self._transaction():
            old = self.conn.execute("select status from runs where run_key=?", (key,)).fetchone()
            if old is not None:
                if old[0] != "failed":
                    return
                self.conn.execute("delete from runs where run_key=?", (key,))
                self.conn.execute("delete from epochs where run_key=?", (key,))
            self.conn.execute(
                "insert into runs (run_key, claim_id, arm, task, techniques, config, seed, status, final, time_per_step,"
                " train_seconds, peak_memory, params, trainable_params, optimizer_state_bytes, diverged_step, error,"
                " data_fingerprint, code_version, torch_version, device, threads, provenance, finished_at)"
                " values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, claim_id, arm, config.get("task", {}).get("name", ""), _json(config.get("techniques", [])),
                 _json(config), int(config.get("seed", 0)), result.status, _json(result.final),
                 _num(result.time_per_step), result.train_seconds, result.peak_memory, result.params,
                 result.trainable_params, result.optimizer_state_bytes, result.diverged_step, result.error,
                 result.data_fingerprint, p.get("code_version"), p.get("torch_version"), p.get("device"),
                 p.get("threads"), _json(p), time.time()),
            )
            self.conn.executemany(
                "insert or replace into epochs values (?,?,?)",
                [(key, int(row.get("epoch", i + 1)), _json(row)) for i, row in enumerate(result.epochs)],
            )

    def add_epoch(self, key: str, row: dict[str, float]) -> None:
        """Per-epoch metrics of a run in progress (the `train` command writes them as they come)."""
        with self._transaction():
            self.conn.execute("insert or replace into epochs values (?,?,?)", (key, int(row["epoch"]), _json(row)))

    def add_overhead(self, claim_id: str, result: dict[str, Any]) -> None:
        with self._transaction():
            self.conn.execute("insert into overhead values (?,?,?)", (claim_id, time.time(), _json(result)))

    def add_verdict(self, claim_id: str, verdict: str, line: str, result: dict[str, Any]) -> None:
        with self._transaction():
            self.conn.execute("insert into verdicts values (?,?,?,?,?)", (claim_id, time.time(), verdict, line, _json(result)))

    def latest_verdicts(self) -> dict[str, tuple[str, str]]:
        """claim id -> (verdict, verdict line) of its latest check."""
        rows = self.conn.execute("select claim_id, verdict, line from verdicts order by checked_at")
        return {cid: (v, line) for cid, v, line in rows}

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> None:
            self.conn.execute("begin immediate")

        def __exit__(self, exc_type, *_: Any) -> None:
            self.conn.execute("rollback" if exc_type else "commit")

    def _transaction(self) -> "Store._Tx":
        return Store._Tx(self.conn)

    # ---- reading --------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        return {r[0] for r in self.conn.execute("select run_key from runs where status != 'failed'")}

    def get_run(self, key: str) -> dict[str, Any] | None:
        rows = list(self._runs("where run_key=?", (key,)))
        return rows[0] if rows else None

    def runs(self, claim_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, args = ("where claim_id=?", (claim_id,)) if claim_id else ("", ())
        order = " order by id desc" + (f" limit {int(limit)}" if limit else "")
        return list(self._runs(where + order, args))

    def _runs(self, where: str, args: tuple) -> Iterator[dict[str, Any]]:
        cur = self.conn.execute(f"select * from runs {where}", args)
        cols = [c[0] for c in cur.description]
        for values in cur.fetchall():
            row = dict(zip(cols, values))
            for k in ("techniques", "config", "final", "provenance"):
                row[k] = json.loads(row[k]) if row[k] else None
            row["epochs"] = self.epochs(row["run_key"])
            yield row

    def epochs(self, key: str) -> list[dict[str, float]]:
        return [json.loads(m) for (m,) in self.conn.execute(
            "select metrics from epochs where run_key=? order by epoch", (key,))]

    def latest_overhead(self, claim_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("select result from overhead where claim_id=? order by measured_at desc limit 1",
                                (claim_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def claim_ids(self) -> list[str]:
        return [r[0] for r in self.conn.execute("select distinct claim_id from runs where claim_id is not null")]


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
