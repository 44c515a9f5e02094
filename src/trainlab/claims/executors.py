"""Executors run training runs and hand each result back to the driver as soon as it finishes.
Only the driver writes the store.

- "local": a pool of worker processes (one run per core by default), torch threads per process set
  so the cores are not oversubscribed. With one worker the runs happen in the driver process.
- "ray": each run is a Ray task; `address` joins an existing cluster, otherwise a local Ray
  instance is started. Needs the `ray` extra (pip install "trainlab[ray]").

`acquire(i)`, when given, is asked right before run i starts (the local executor) or before
submitting (Ray); a run it refuses (another process is training it) is not run and not yielded.
"""
from __future__ import annotations

import os
import pickle
import selectors
import subprocess
import sys
import traceback
from typing import Any, Callable, Iterator, Sequence

import cloudpickle

from trainlab.errors import ConfigError, UserError
from trainlab.training.result import RunResult

Payload = bytes  # a cloudpickled RunSpec
Acquire = Callable[[int], bool]


def execute_payload(payload: Payload) -> dict[str, Any]:
    """Run one pickled RunSpec; never raises: a failure becomes a 'failed' result."""
    spec = cloudpickle.loads(payload)
    try:
        from trainlab.training.trainer import run_training

        result = run_training(spec.task, spec.techniques, seed=spec.seed, device=spec.device)
    except UserError as e:
        result = RunResult(status="failed", error=str(e))
    except Exception as e:  # report, do not crash the suite
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        result = RunResult(status="failed", error=f"{type(e).__name__}: {e}\n{''.join(tb[-4:])}")
    return result.to_dict()


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class _Worker:
    def __init__(self, threads: int) -> None:
        # the worker sees the driver's import path, so functions pickled by reference resolve
        path = os.pathsep.join(p for p in sys.path if p)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
        self.proc = subprocess.Popen([sys.executable, "-m", "trainlab.claims.worker", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.job: int | None = None

    def send(self, job: int, payload: Payload) -> None:
        self.job = job
        pickle.dump((job, payload), self.proc.stdin)
        self.proc.stdin.flush()

    def receive(self) -> tuple[int, dict[str, Any]] | None:
        try:
            job, result = pickle.load(self.proc.stdout)
        except (EOFError, pickle.UnpicklingError):
            return None  # the worker died
        self.job = None
        return job, result

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def run_local(payloads: Sequence[Payload], workers: int | None = None,
              acquire: Acquire | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (index, result dict) as runs finish. With one worker, runs happen in this process."""
    workers = workers or default_workers()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    acquire = acquire or (lambda i: True)
    if workers == 1 or len(payloads) <= 1:
        for i, p in enumerate(payloads):
            if acquire(i):
                yield i, execute_payload(p)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = list(range(len(payloads)))[::-1]

    def next_job() -> int | None:
        while queue:
            job = queue.pop()
            if acquire(job):
                return job
        return None

    first = [j for j in (next_job() for _ in range(min(workers, len(payloads)))) if j is not None]
    pool = [_Worker(threads) for _ in first]
    selector = selectors.DefaultSelector()
    try:
        for w, job in zip(pool, first):
            w.send(job, payloads[job])
            selector.register(w.proc.stdout, selectors.EVENT_READ, w)
        while selector.get_map():
            for key, _ in selector.select():
                w: _Worker = key.data
                job = w.job
                got = w.receive()
                if got is None:  # crashed (e.g. killed for memory): report the run, replace the worker
                    selector.unregister(w.proc.stdout)
                    w.close()
                    yield job, RunResult(status="failed", error=f"worker process died (exit code {w.proc.poll()})").to_dict()
                    nxt = next_job()
                    if nxt is not None:
                        w = _Worker(threads)
                        pool.append(w)
                        w.send(nxt, payloads[nxt])
                        selector.register(w.proc.stdout, selectors.EVENT_READ, w)
                    continue
                yield got
                nxt = next_job()
                if nxt is not None:
                    w.send(nxt, payloads[nxt])
                else:
                    selector.unregister(w.proc.stdout)
                    w.close()
    finally:
        selector.close()
        for w in pool:
            if w.proc.poll() is None:
                w.proc.kill()


def run_ray(payloads: Sequence[Payload], workers: int | None = None, address: str | None = None,
            acquire: Acquire | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise ConfigError('the ray executor needs Ray: pip install "trainlab[ray]"') from None
    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if address is None:
            kwargs["num_cpus"] = workers or default_workers()
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
        started_here = True
    try:
        remote = ray.remote(num_cpus=1)(execute_payload)
        refs = {remote.remote(p): i for i, p in enumerate(payloads) if acquire is None or acquire(i)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()


def get_executor(name: str) -> Callable[..., Iterator[tuple[int, dict[str, Any]]]]:
    if name == "local":
        return run_local
    if name == "ray":
        return run_ray
    raise ConfigError(f"unknown executor '{name}' (local or ray)")
