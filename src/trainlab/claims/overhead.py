"""Overhead of a technique against its baseline, measured in one process.

Time per training step: both arms are set up side by side (same seed, same batches), warmed up,
then timed in alternating blocks of steps (baseline, treatment, treatment, baseline, ...) so that
drifts in machine load hit both alike; the ratio of medians over blocks is reported.

A time ratio is only as good as the machine is quiet. The 1-minute load average is read after the
timing; above the core count the ratio is marked unreliable, and the timing is repeated once after
waiting for the load to fall to the core count (30 s at most; after a wait that ended busy, later
measurements in the next half hour do not wait again). The result records whether the ratio is
reliable (`time_ratio_reliable`), the load it was timed under, and whether it was re-timed.

Peak memory per step: on CUDA, torch.cuda.max_memory_allocated over one step. On CPU, PyTorch
has no allocator statistics, so the peak is taken as the tensor bytes a step must hold at once:
parameters + gradients + optimizer state + the tensors autograd saves for backward (counted with
torch.autograd.graph.saved_tensors_hooks, each storage once). Both arms are measured the same way.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from trainlab.tasks.augment import augment
from trainlab.training.technique import Batch
from trainlab.training.trainer import RunSetup, setup_run, train_step


#: seconds to wait at most for a quiet machine before re-timing ($TRAINLAB_QUIET_WAIT to change)
QUIET_WAIT = float(os.environ.get("TRAINLAB_QUIET_WAIT", "30"))
_BUSY_MEMORY = 1800.0    # after a wait that ended busy, later measurements skip waiting this long
_last_busy_wait: float = -float("inf")


def _batches(run: RunSetup, count: int, seed: int) -> list[Batch]:
    task, data = run.task, run.data
    g = torch.Generator().manual_seed(seed)
    out = []
    n = len(data.train_y)
    bs = min(task.batch_size, n)
    for _ in range(count):
        idx = torch.randperm(n, generator=g)[:bs]
        x = augment(task.augment, data.train_x[idx], g).to(run.state.device)
        out.append(Batch(inputs=x, targets=data.train_y[idx].to(run.state.device), indices=idx.to(run.state.device)))
    return out


def _step(run: RunSetup, batch: Batch) -> None:
    train_step(run.model, run.train_model, run.techniques, run.optimizer, run.scheduler, run.state, batch, run.params)
    run.state.step += 1
    if run.state.device.type == "cuda":
        torch.cuda.synchronize(run.state.device)


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t):
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _step_memory(run: RunSetup, batch: Batch) -> int:
    device = run.state.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        _step(run, batch)
        return int(torch.cuda.max_memory_allocated(device))
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(run, batch)
    params = list(run.model.parameters())
    opt_state = [v for s in run.optimizer.state.values() for v in s.values()]
    grads = [p.grad for p in params]
    return _tensor_bytes(params) + _tensor_bytes(grads) + _tensor_bytes(opt_state) + _tensor_bytes(saved)


def _optimizer_state_bytes(run: RunSetup) -> int:
    return _tensor_bytes(v for s in run.optimizer.state.values() for v in s.values())


def measure_overhead(baseline_task, baseline_techniques, treatment_task, treatment_techniques, seed: int = 0,
                     device: str = "cpu", block_seconds: float = 0.2, blocks: int = 8, warmup: int = 5,
                     max_steps_per_block: int = 50, quiet_wait: float | None = None) -> dict[str, Any]:
    """Time, memory, parameter and optimizer-state ratios treatment / baseline.

    Each timed block lasts about `block_seconds` (at least 3 steps), so that fast steps are not
    drowned in timer and scheduler noise. Timed on a busy machine (1-minute load average above
    the core count), the timing is repeated once if the load falls to the core count within
    `quiet_wait` seconds; `time_ratio_reliable` says whether the reported ratio was timed quiet."""
    runs = {
        "baseline": setup_run(baseline_task, baseline_techniques, seed, device),
        "treatment": setup_run(treatment_task, treatment_techniques, seed, device),
    }
    for run in runs.values():
        for t in run.techniques:
            t.on_train_start(run.model, run.optimizer, run.state)
    batches = {k: _batches(r, 32, seed + 1) for k, r in runs.items()}
    memory = {k: _step_memory(r, batches[k][0]) for k, r in runs.items()}
    warm_time = 0.0
    for k, r in runs.items():
        for i in range(warmup):
            _step(r, batches[k][i % len(batches[k])])
        t0 = time.perf_counter()
        _step(r, batches[k][0])
        warm_time = max(warm_time, time.perf_counter() - t0)
    steps_per_block = int(min(max_steps_per_block, max(3, block_seconds / max(warm_time, 1e-6))))

    def timed() -> tuple[dict[str, float], float | None]:
        times: dict[str, list[float]] = {"baseline": [], "treatment": []}
        for block in range(blocks):
            order = ("baseline", "treatment") if block % 2 == 0 else ("treatment", "baseline")
            for k in order:
                t0 = time.perf_counter()
                for i in range(steps_per_block):
                    _step(runs[k], batches[k][i % len(batches[k])])
                times[k].append((time.perf_counter() - t0) / steps_per_block)
        return {k: statistics.median(v) for k, v in times.items()}, _load()

    med, load = timed()
    cores = os.cpu_count()
    timing = {"time_ratio_reliable": _quiet(load, cores), "time_remeasured": False}
    if not timing["time_ratio_reliable"]:
        waited, quiet = _wait_for_quiet(cores, QUIET_WAIT if quiet_wait is None else quiet_wait)
        timing.update(first_time_ratio=med["treatment"] / med["baseline"], first_load_average_1min=load,
                      quiet_wait_seconds=round(waited, 1))
        if quiet:
            med, load = timed()
            timing["time_remeasured"] = True
            timing["time_ratio_reliable"] = _quiet(load, cores)
    timing["time_ratio_note"] = _timing_note(timing, load, cores)
    params = {k: sum(p.numel() for p in r.model.parameters()) for k, r in runs.items()}
    opt_bytes = {k: _optimizer_state_bytes(r) for k, r in runs.items()}
    return {
        "time_per_step": med, "time_ratio": med["treatment"] / med["baseline"],
        "peak_memory": memory, "memory_ratio": memory["treatment"] / max(1, memory["baseline"]),
        "params": params, "params_ratio": params["treatment"] / max(1, params["baseline"]),
        "optimizer_state_bytes": opt_bytes,
        "memory_method": "cuda max_memory_allocated" if torch.device(device).type == "cuda"
        else "params + grads + optimizer state + saved activations",
        "steps_timed": steps_per_block * blocks,
        # time ratios are only as good as the machine is quiet: record how busy it was
        "load_average_1min": load,
        "cpu_count": cores,
        **timing,
    }



def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _quiet(load: float | None, cores: int | None) -> bool:
    """Unknown load (no getloadavg) counts as quiet: there is nothing to say otherwise."""
    return load is None or not cores or load <= cores


def _wait_for_quiet(cores: int | None, bound: float, poll: float = 2.0) -> tuple[float, bool]:
    """Wait until the 1-minute load average is at most the core count, for `bound` seconds at most.
    Returns (seconds waited, quiet). Right after a wait that ended busy, does not wait again."""
    global _last_busy_wait
    t0 = time.monotonic()
    if t0 - _last_busy_wait < _BUSY_MEMORY:
        return 0.0, _quiet(_load(), cores)
    while True:
        if _quiet(_load(), cores):
            return time.monotonic() - t0, True
        if time.monotonic() - t0 >= bound:
            _last_busy_wait = time.monotonic()
            return time.monotonic() - t0, False
        time.sleep(min(poll, max(0.0, bound - (time.monotonic() - t0))))


def _timing_note(timing: dict[str, Any], load: float | None, cores: int | None) -> str:
    """One sentence on how far the time ratio can be trusted (for the report)."""
    busy = f"load {load:.1f} on {cores} cores" if load is not None else ""
    if timing["time_ratio_reliable"]:
        if timing["time_remeasured"]:
            return (f"re-timed after {timing['quiet_wait_seconds']:.1f} s on a quiet machine ({busy}); the first "
                    f"timing ({timing['first_time_ratio']:.2f}x at load {timing['first_load_average_1min']:.1f}) "
                    "was discarded")
        return f"timed on a quiet machine ({busy})" if busy else "timed (load average unknown)"
    if timing["time_remeasured"]:
        return f"unreliable: re-timed once when the load fell, but the load rose again ({busy})"
    return (f"unreliable: timed on a busy machine ({busy}) and not re-timed: the load stayed above "
            f"{cores} after waiting {timing['quiet_wait_seconds']:.1f} s")
