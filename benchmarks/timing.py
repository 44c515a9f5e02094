"""Timing shared by the benchmarks (imported as a sibling module when a benchmark runs as a script)."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def time_pair(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, rounds: int, reps: int) -> tuple[float, float, float]:
    """(dense seconds, sparse seconds, median ratio sparse/dense) per call, process CPU clock."""
    with torch.inference_mode():
        for _ in range(3):
            dense(x), sparse(x)
        ratios, td, ts = [], [], []
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(reps):
                dense(x)
            t1 = time.process_time()
            for _ in range(reps):
                sparse(x)
            t2 = time.process_time()
            td.append((t1 - t0) / reps)
            ts.append((t2 - t1) / reps)
            ratios.append((t2 - t1) / max(t1 - t0, 1e-9))
    return statistics.median(td), statistics.median(ts), statistics.median(ratios)
