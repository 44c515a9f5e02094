"""Curvature estimators (trainlab.diagnostics.curvature): their cost and their accuracy.

1. A ~50k-parameter MLP (64-256-128-10) on the digits training split (1,437 examples), after 30
   full-batch GD steps: seconds of the top eigenvalue by Lanczos and by power iteration, of the
   Hutch++ and Hutchinson traces and of an SLQ density, each as a ratio to one full-batch gradient
   (forward + backward) measured in the same run; Hessian-vector products used; and the products'
   own time with the cached gradient graph against recomputing it.
2. A ~3k-parameter MLP (64-40-10) on the same data, small enough for the exact Hessian: the exact
   route (torch.func.hessian + eigvalsh) against each estimator, time as a ratio to exact, and each
   estimator's relative error against the exact top eigenvalue / trace (mean and max over seeds).

Times are medians over --rounds after one warm-up call; every timed call builds a fresh operator,
so graph building is included. Run with one thread for comparable numbers:

    OMP_NUM_THREADS=1 python benchmarks/curvature.py
    python benchmarks/curvature.py --rounds 5 --seeds 10
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.diagnostics.curvature import (
    HessianOperator,
    hutchinson_trace,
    hutchpp_trace,
    spectral_density,
    top_eigenvalues,
)
from trainlab.tasks.datasets import digits


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median seconds of fn over `rounds` calls after a warm-up call, and its last result."""
    result = fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def trained_mlp(widths: list[int], x: torch.Tensor, y: torch.Tensor, steps: int = 30, lr: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):  # full-batch GD: a trained, non-random point
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(header)]
    print("".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in rows:
        print("".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def large(x: torch.Tensor, y: torch.Tensor, rounds: int, matvecs: int) -> None:
    model = trained_mlp([64, 256, 128, 10], x, y)
    dim = sum(p.numel() for p in model.parameters())

    def gradient() -> None:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    base, _ = timed(gradient, rounds)
    model.zero_grad(set_to_none=True)
    v = torch.randn(dim)
    op = HessianOperator(model, x, y)
    op(v)
    hvp_cached, _ = timed(lambda: op(v), rounds)
    fresh = HessianOperator(model, x, y, cache=False)
    hvp_fresh, _ = timed(lambda: fresh(v), rounds)
    jobs: list[tuple[str, Callable[[], Any]]] = [
        ("top eigenvalue, Lanczos (tol 1e-3)", lambda: top_eigenvalues(HessianOperator(model, x, y), tol=1e-3)),
        ("top eigenvalue, power (tol 1e-3)", lambda: top_eigenvalues(HessianOperator(model, x, y), method="power",
                                                                     tol=1e-3)),
        (f"trace, Hutch++ ({matvecs} matvecs)", lambda: hutchpp_trace(HessianOperator(model, x, y), matvecs)),
        (f"trace, Hutchinson ({matvecs} matvecs)", lambda: hutchinson_trace(HessianOperator(model, x, y), matvecs)),
        ("density, SLQ (5 runs x 30 steps)", lambda: spectral_density(HessianOperator(model, x, y), 5, 30)),
    ]
    rows = [["one gradient (baseline)", f"{base * 1e3:.1f}", "1.0", "", ""],
            ["one HVP, cached graph", f"{hvp_cached * 1e3:.1f}", f"{hvp_cached / base:.1f}", "1", ""],
            ["one HVP, recomputed graph", f"{hvp_fresh * 1e3:.1f}", f"{hvp_fresh / base:.1f}", "1", ""]]
    for label, job in jobs:
        t, out = timed(job, rounds)
        if hasattr(out, "values"):
            value = f"{float(out.values[0]):.4f}"
            count = str(out.matvecs)
        elif hasattr(out, "estimate"):
            value = f"{out.estimate:.2f} +- {out.stderr:.2f}"
            count = str(out.matvecs)
        else:
            value, count = f"mean {float((out.density * out.grid).sum() * (out.grid[1] - out.grid[0])):.2e}", "150"
        rows.append([label, f"{t * 1e3:.1f}", f"{t / base:.1f}", count, value])
    table(f"1. MLP 64-256-128-10 ({dim:,} parameters), digits train split ({len(x)} examples); "
          "time x = seconds / one full-batch gradient",
          ["measurement", "ms", "time x", "HVPs", "value"], rows)


def small(x: torch.Tensor, y: torch.Tensor, rounds: int, seeds: int, matvecs: int) -> None:
    model = trained_mlp([64, 40, 10], x, y)
    dim = sum(p.numel() for p in model.parameters())

    def exact() -> tuple[float, float]:
        M = HessianOperator(model, x, y, chunk_size=256).matrix()  # chunks bound the vmapped memory
        return float(torch.linalg.eigvalsh(M)[-1]), float(M.trace())

    t_exact, (lam, tr) = timed(exact, max(1, rounds // 2))

    def op() -> HessianOperator:
        return HessianOperator(model, x, y)

    estimators: list[tuple[str, Callable[[int], Any], str]] = [
        ("top eigenvalue, Lanczos (tol 1e-3)", lambda s: top_eigenvalues(op(), tol=1e-3, seed=s), "eig"),
        ("top eigenvalue, Lanczos (tol 1e-6)", lambda s: top_eigenvalues(op(), tol=1e-6, seed=s), "eig"),
        ("top eigenvalue, power (tol 1e-3)", lambda s: top_eigenvalues(op(), method="power", tol=1e-3, seed=s), "eig"),
        ("top eigenvalue, power (tol 1e-6)", lambda s: top_eigenvalues(op(), method="power", tol=1e-6, max_iter=1000,
                                                                       seed=s), "eig"),
        (f"trace, Hutch++ ({matvecs} matvecs)", lambda s: hutchpp_trace(op(), matvecs, seed=s), "trace"),
        (f"trace, Hutch++ ({3 * matvecs} matvecs)", lambda s: hutchpp_trace(op(), 3 * matvecs, seed=s), "trace"),
        (f"trace, Hutchinson ({matvecs} matvecs)", lambda s: hutchinson_trace(op(), matvecs, seed=s), "trace"),
        (f"trace, Hutchinson ({3 * matvecs} matvecs)", lambda s: hutchinson_trace(op(), 3 * matvecs, seed=s), "trace"),
        ("trace / n, SLQ mean (10 runs x 30 steps)", lambda s: spectral_density(op(), 10, 30, seed=s), "slq"),
    ]
    rows = [["exact: torch.func.hessian + eigvalsh", f"{t_exact * 1e3:.0f}", "1.000", str(dim), "0", "0"]]
    for label, job, kind in estimators:
        t, _ = timed(lambda: job(0), rounds)
        errors, count = [], 0
        for s in range(seeds):
            out = job(s)
            if kind == "eig":
                errors.append(abs(float(out.values[0]) - lam) / abs(lam))
                count = out.matvecs
            elif kind == "trace":
                errors.append(abs(out.estimate - tr) / abs(tr))
                count = out.matvecs
            else:
                dx = float(out.grid[1] - out.grid[0])
                errors.append(abs(float((out.density * out.grid).sum()) * dx * dim - tr) / abs(tr))
                count = 300
        rows.append([label, f"{t * 1e3:.0f}", f"{t / t_exact:.3f}", str(count),
                     f"{statistics.mean(errors):.2e}", f"{max(errors):.2e}"])
    table(f"2. MLP 64-40-10 ({dim:,} parameters), digits train split: exact top eigenvalue {lam:.4f}, "
          f"trace {tr:.3f}; time x = seconds / exact; relative error over {seeds} seeds",
          ["measurement", "ms", "time x", "HVPs", "mean err", "max err"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--matvecs", type=int, default=60)
    args = p.parse_args()
    data = digits()
    x, y = data.train_x.flatten(1), data.train_y
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} calls after warm-up")
    start = time.perf_counter()
    large(x, y, args.rounds, args.matvecs)
    small(x, y, args.rounds, args.seeds, args.matvecs)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
