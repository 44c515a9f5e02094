"""Normalization layers of trainlab's normalization family against nn.BatchNorm2d / nn.LayerNorm.

For each layer: time of one forward + backward pass (training mode) and peak memory of that pass,
as ratios to the baseline on the same input, all measured in one process:

* images [N, C, H, W] against nn.BatchNorm2d(C): BCN (large-batch and micro-batch modes), EvoNorm-B0,
  EvoNorm-S0, RegionNorm-B (random hole mask), GroupNorm for reference; and a Conv2d with Weight
  Standardization against the same plain Conv2d;
* tokens [N, T, C] against nn.LayerNorm(C): PowerNorm, Unified Normalization (training), the folded
  UN at inference against LayerNorm at inference, BatchNorm over tokens for reference.

Time: after warm-up, rounds alternate over all layers of a group (the order rotates each round);
in a round each layer runs `--iters` passes and the per-pass time is recorded; the median over
rounds is reported. Memory: one pass under ``torch.profiler.profile(profile_memory=True)``; the
allocations and frees the profiler records (each op's self memory, in time order) are summed and the
running maximum is the pass's peak above what was allocated before it (output, gradients and
saved activations; parameters and the input are allocated beforehand and not counted).

    python benchmarks/norm_layers.py
    python benchmarks/norm_layers.py --batch 16 --rounds 10 --iters 20
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from trainlab.tasks.norms import ChannelLast, group_count
from trainlab.techniques.normalization.batch_channel_norm import BatchChannelNorm
from trainlab.techniques.normalization.evonorm import EvoNormB0, EvoNormS0
from trainlab.techniques.normalization.power_norm import PowerNorm
from trainlab.techniques.normalization.region_norm import RegionNormB
from trainlab.techniques.normalization.unified_norm import (
    UnifiedNorm,
    fold_unified_norm,
)
from trainlab.techniques.normalization.weight_standardization import (
    apply_weight_standardization,
)


class Step:
    """One pass to time and measure; `reset` frees what the previous pass left (gradients)."""

    def __init__(self, run: Callable[[], None], reset: Callable[[], None] = lambda: None) -> None:
        self.run, self.reset = run, reset

    def __call__(self) -> None:
        self.reset()
        self.run()


def train_step(module: nn.Module, x: torch.Tensor, *extra: torch.Tensor) -> Step:
    module.train()

    def reset() -> None:
        x.grad = None
        for p in module.parameters():
            p.grad = None
    return Step(lambda: module(x, *extra).sum().backward(), reset)


def eval_step(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Step:
    def run() -> None:
        with torch.no_grad():
            fn(x)
    return Step(run)


def peak_bytes(step: Step) -> int:
    step.reset()  # frees of memory allocated before profiling would count as negative
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step.run()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def time_group(steps: dict[str, Step], rounds: int, iters: int, warmup: int = 3) -> dict[str, float]:
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            for _ in range(iters):
                steps[name]()
            times[name].append((time.perf_counter() - t0) / iters)
    return {n: statistics.median(v) for n, v in times.items()}


def report(title: str, baseline: str, steps: dict[str, Step], rounds: int, iters: int) -> None:
    times = time_group(steps, rounds, iters)
    mems = {n: peak_bytes(s) for n, s in steps.items()}
    print(f"\n{title}  (baseline: {baseline})")
    print(f"{'layer':<34}{'ms/pass':>9}{'time x':>8}{'peak MB':>9}{'mem x':>8}")
    for name in steps:
        t, m = times[name], mems[name]
        print(f"{name:<34}{t * 1e3:>9.3f}{t / times[baseline]:>8.2f}{m / 1e6:>9.2f}{m / max(1, mems[baseline]):>8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=16, help="image height and width")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} interleaved "
          f"rounds x {args.iters} passes")

    n, c, s = args.batch, args.channels, args.size
    x = torch.randn(n, c, s, s, requires_grad=True)
    mask = (torch.rand(n, 1, s, s) > 0.7).float()
    g = group_count(c)
    image_layers = {
        "BatchNorm2d": train_step(nn.BatchNorm2d(c), x),
        "GroupNorm (reference)": train_step(nn.GroupNorm(g, c), x),
        "BCN (batch statistics)": train_step(BatchChannelNorm(c), x),
        "BCN (micro-batch estimates)": train_step(BatchChannelNorm(c, estimate=True), x),
        "EvoNorm-B0": train_step(EvoNormB0(c), x),
        "EvoNorm-S0": train_step(EvoNormS0(c), x),
        "RegionNorm-B (30% holes)": train_step(RegionNormB(c), x, mask),
    }
    report(f"images [{n}, {c}, {s}, {s}]", "BatchNorm2d", image_layers, args.rounds, args.iters)

    conv, ws_conv = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
    apply_weight_standardization(ws_conv)
    conv_layers = {"Conv2d": train_step(conv, x), "Conv2d + WS": train_step(ws_conv, x)}
    report(f"conv 3x3 on [{n}, {c}, {s}, {s}]", "Conv2d", conv_layers, args.rounds, args.iters)

    t, d = args.tokens, args.dim
    h = torch.randn(n, t, d, requires_grad=True)
    un = UnifiedNorm(d, warmup_iters=0, compensation_start=0)
    token_layers = {
        "LayerNorm": train_step(nn.LayerNorm(d), h),
        "BatchNorm over tokens (ref.)": train_step(ChannelLast(nn.BatchNorm1d(d), d), h),
        "PowerNorm": train_step(PowerNorm(d), h),
        "PowerNorm (no group scaling)": train_step(PowerNorm(d, group_num=0), h),
        "UnifiedNorm": train_step(un, h),
    }
    report(f"tokens [{n}, {t}, {d}]", "LayerNorm", token_layers, args.rounds, args.iters)

    # inference: Linear -> LayerNorm against Linear with a folded UN (one layer)
    linear, ln = nn.Linear(d, d), nn.LayerNorm(d)
    un_eval = UnifiedNorm(d).eval()
    folded = fold_unified_norm(un_eval, linear)
    hx = h.detach()
    infer = {
        "Linear + LayerNorm": eval_step(lambda v: ln(linear(v)), hx),
        "Linear + UnifiedNorm (eval)": eval_step(lambda v: un_eval(linear(v)), hx),
        "Linear with UN folded in": eval_step(folded, hx),
    }
    report(f"inference, tokens [{n}, {t}, {d}]", "Linear + LayerNorm", infer, args.rounds, args.iters)


if __name__ == "__main__":
    main()
