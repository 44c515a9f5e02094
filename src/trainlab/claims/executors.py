"""Executors run training runs and hand each result back to the driver as soon as it finishes.
Only the driver writes the store.

- "local": a pool of worker processes (one run per core by default), torch threads per process set
  so the cores are not oversubscribed. With one worker the runs happen in the driver process.
- "ray": each run is a Ray task; `address` joins an existing cluster, otherwise a local Ray
  instance is started. Needs the `ray` extra (pip install "trainlab[ray]").
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import traceback
from typing import Any, Callable, Iterator, Sequence

import cloudpickle

from trainlab.errors import ConfigError, UserError
from trainlab.training.result import RunResult

Payload = bytes  # a cloudpickled RunSpec


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


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_local(payloads: Sequence[Payload], workers: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (index, result dict) as runs finish."""
    workers = workers or default_workers()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers == 1 or len(payloads) <= 1:
        for i, p in enumerate(payloads):
            yield i, execute_payload(p)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(execute_payload, p): i for i, p in enumerate(payloads)}
        try:
            for fut in cf.as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def run_ray(payloads: Sequence[Payload], workers: int | None = None,
            address: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
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
        refs = {remote.remote(p): i for i, p in enumerate(payloads)}
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
