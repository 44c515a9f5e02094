"""The run store: SQLite in WAL mode, append-only, one row per finished run.

A run's row (and its per-epoch rows) are written in one transaction when the run ends, so a killed
process loses at most the runs in flight. Each run has a `run_key` (a hash of everything that
determines it: task budget, arm, techniques and settings, seed, device); re-running the same
command skips keys already finished, and a UNIQUE constraint keeps a run from being stored twice.

The default store is `runs.sqlite` in the user's data folder (platformdirs), so every command finds
the same runs from any folder; `TRAINLAB_STORE` or `--store` name another file.

Several processes may share one store. Before a process trains a run it takes a lease on the run's
key (a row with its process id, host and a heartbeat that a background thread renews); another
process that wants the same run waits for its result instead of training it again. A lease whose
heartbeat is older than `LEASE_TTL` seconds, or whose process is gone from this host (kill -9), is
taken over. Every lease taken is also logged in `attempts`, so a duplicate training would show.
Read the store with any SQLite client or pandas:

    pandas.read_sql("select * from runs", sqlite3.connect(path))   # path: `trainlab runs` prints it
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from trainlab.errors import DataError
from trainlab.training.result import RunResult

SCHEMA_VERSION = 1
STORE_FILE = "runs.sqlite"
LEASE_TTL = 120.0        # seconds without a heartbeat after which a lease is taken over
HEARTBEAT_EVERY = 10.0   # seconds between heartbeats of a held lease

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
create table if not exists leases (
    run_key text primary key,
    owner text not null,
    pid integer not null,
    host text not null,
    heartbeat real not null,
    started_at real not null
);
create table if not exists attempts (
    run_key text not null,
    owner text not null,
    pid integer not null,
    host text not null,
    started_at real not null,
    took_over text
);
create index if not exists runs_claim on runs (claim_id);
"""


def default_store_path() -> Path:
    """$TRAINLAB_STORE, else runs.sqlite in the user's data folder (the same from every folder)."""
    env = os.environ.get("TRAINLAB_STORE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("trainlab")) / STORE_FILE


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
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        if self.path.is_dir():
            raise DataError(f"run store '{self.path}' is a folder; give a file name, e.g. '{self.path / STORE_FILE}'")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a parent is a file, or no permission
            blocker = _blocking_parent(self.path)
            why = f"'{blocker}' is a file, not a folder" if blocker.is_file() else (e.strerror or str(e))
            raise DataError(f"cannot create the run store '{self.path}': {why}") from None
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.execute("pragma journal_mode=wal")
            self.conn.execute("pragma synchronous=normal")
            self.conn.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.OperationalError as e:
            raise DataError(f"cannot open the run store '{self.path}' ({e})") from None
        except sqlite3.DatabaseError as e:
            raise DataError(f"run store '{self.path}' is not a readable SQLite database ({e})") from None

        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # who holds this Store's leases
        self.lease_ttl = LEASE_TTL

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
            self.conn.execute("delete from leases where run_key=? and owner=?", (key, self.owner))

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

    # ---- leases: one process trains each run ------------------------------------------------
    def lease(self, key: str, since: float | None = None) -> str:
        """Take the lease on run `key` for this Store's process, in one transaction.

        Returns "claimed" (train it now), "done" (stored already: finished or diverged, or failed
        at or after `since`, i.e. by a process running alongside) or "busy" (a live process holds
        it). A stale lease (no heartbeat for `lease_ttl` seconds, or its process gone from this
        host) is taken over and the takeover logged in `attempts`."""
        now = time.time()
        with self._transaction():
            row = self.conn.execute("select status, finished_at from runs where run_key=?", (key,)).fetchone()
            if row is not None and (row[0] != "failed" or (since is not None and row[1] >= since)):
                return "done"
            held = self.conn.execute("select owner, pid, host, heartbeat from leases where run_key=?",
                                     (key,)).fetchone()
            if held is not None and held[0] == self.owner:
                return "claimed"
            took_over = None
            if held is not None:
                if not _stale(held[1], held[2], held[3], now, self.lease_ttl):
                    return "busy"
                took_over = f"pid {held[1]} on {held[2]}, last heartbeat {now - held[3]:.0f} s before"
            self.conn.execute("insert or replace into leases values (?,?,?,?,?,?)",
                              (key, self.owner, os.getpid(), _HOST, now, now))
            self.conn.execute("insert into attempts values (?,?,?,?,?,?)",
                              (key, self.owner, os.getpid(), _HOST, now, took_over))
        return "claimed"

    def lease_holder(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("select owner, pid, host, heartbeat, started_at from leases where run_key=?",
                                (key,)).fetchone()
        return dict(zip(("owner", "pid", "host", "heartbeat", "started_at"), row)) if row else None

    def release(self, keys: Iterator[str] | None = None) -> None:
        """Give up this process's leases (all, or those on `keys`) without storing a result."""
        with self._transaction():
            if keys is None:
                self.conn.execute("delete from leases where owner=?", (self.owner,))
            else:
                self.conn.executemany("delete from leases where run_key=? and owner=?",
                                      [(k, self.owner) for k in keys])

    def heartbeat(self) -> None:
        with self._transaction():
            self.conn.execute("update leases set heartbeat=? where owner=?", (time.time(), self.owner))

    @contextlib.contextmanager
    def holding_leases(self, every: float = HEARTBEAT_EVERY) -> Iterator[None]:
        """Renew this process's leases from a background thread (its own connection) while the
        block runs, so that a long run keeps its lease; release every lease still held at the end
        (also on an exception or Ctrl-C, so another process can take the runs at once)."""
        stop = threading.Event()

        def beat() -> None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                while not stop.wait(every):
                    try:
                        conn.execute("update leases set heartbeat=? where owner=?", (time.time(), self.owner))
                    except sqlite3.Error:  # the store is busy: the next beat retries
                        pass
            finally:
                conn.close()

        thread = threading.Thread(target=beat, name="trainlab-lease-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.release()

    def attempts(self, key: str | None = None) -> list[dict[str, Any]]:
        """Every lease taken (one per training started), oldest first."""
        where, args = ("where run_key=?", (key,)) if key else ("", ())
        cur = self.conn.execute(f"select * from attempts {where} order by started_at", args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

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


_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running (a zombie, killed but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale(pid: int, host: str, heartbeat: float, now: float, ttl: float) -> bool:
    return now - heartbeat > ttl or (host == _HOST and not _pid_alive(pid))


def _blocking_parent(path: Path) -> Path:
    """The first ancestor of `path` that exists (the file or folder that blocks creating it)."""
    for p in path.parents:
        if p.exists():
            return p
    return path.parent


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
