"""Size and cost of a model: parameters, FLOPs (torch.utils.flop_counter) and CPU latency."""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _inputs(example_inputs: Any) -> tuple[Any, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """Floating-point operations of one eval-mode forward pass (a multiply-add counts as 2), as
    counted by PyTorch's FlopCounterMode (matmuls, convolutions, attention)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*_inputs(example_inputs))
        return int(counter.get_total_flops())
    finally:
        model.train(was)


def cpu_latency(model: nn.Module, example_inputs: Any, repeats: int = 30, warmup: int = 5,
                min_seconds: float = 0.0, clock: str = "wall") -> float:
    """Median seconds of one eval-mode forward pass on CPU (after `warmup` passes).

    clock: "wall" (time.perf_counter) or "cpu" (time.process_time: CPU time of this process,
    which other processes' load disturbs far less; equal to latency when torch runs one thread).
    """
    timer = {"wall": time.perf_counter, "cpu": time.process_time}[clock]
    was = model.training
    model.eval()
    inputs = _inputs(example_inputs)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(*inputs)
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < repeats or time.perf_counter() - start < min_seconds:
                t0 = timer()
                model(*inputs)
                times.append(timer() - t0)
        return statistics.median(times)
    finally:
        model.train(was)


def latency_samples(models: dict[str, nn.Module], example_inputs: Any, rounds: int = 7,
                    repeats: int = 10, clock: str = "wall") -> dict[str, list[float]]:
    """Per model, the median latency of each of `rounds` alternating rounds (so that load from
    other processes affects all models alike)."""
    samples: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        cpu_latency(m, example_inputs, repeats=2, warmup=3)
    for _ in range(rounds):
        for k, m in models.items():
            samples[k].append(cpu_latency(m, example_inputs, repeats=repeats, warmup=1, clock=clock))
    return samples


def interleaved_latency(models: dict[str, nn.Module], example_inputs: Any, rounds: int = 7,
                        repeats: int = 10) -> dict[str, float]:
    """Median latency of several models measured in alternating rounds."""
    return {k: statistics.median(v) for k, v in latency_samples(models, example_inputs, rounds, repeats).items()}


def compare(full: nn.Module, subnet: nn.Module, example_inputs: Any, latency: bool = True) -> dict[str, float]:
    """Parameters, FLOPs and (optionally) CPU latency of a model and its subnet, with ratios."""
    out: dict[str, float] = {
        "params_full": count_params(full), "params_subnet": count_params(subnet),
        "flops_full": count_flops(full, example_inputs), "flops_subnet": count_flops(subnet, example_inputs),
    }
    out["params_ratio"] = out["params_subnet"] / max(1, out["params_full"])
    out["flops_ratio"] = out["flops_subnet"] / max(1, out["flops_full"])
    if latency:
        lat = interleaved_latency({"full": full, "subnet": subnet}, example_inputs)
        out["latency_full_s"], out["latency_subnet_s"] = lat["full"], lat["subnet"]
        out["latency_ratio"] = lat["subnet"] / lat["full"]
    return out
