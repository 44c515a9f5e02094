"""Activation memory of reversible stacks against the same blocks with stored activations.

Memory is counted exactly: torch.autograd.graph.saved_tensors_hooks sees every tensor autograd
saves for backward during the forward pass; the benchmark sums the bytes of the distinct storages
among them, leaving out the parameters (saved by every layer, but not activations). The same blocks
(same weights) run once with ReversibleSequence's backward (only the final output is kept) and once
with ordinary autograd, at four depths, for reversible inverted bottlenecks on conv feature maps
(Pendse et al. 2021, arXiv:2104.09648) and for MLP branches. The count is deterministic: it does
not depend on the allocator or the machine. Training step time (forward + backward, process CPU
clock, interleaved, median of rounds after warm-up) is given beside it: the recomputation's cost.

Run: OMP_NUM_THREADS=1 python benchmarks/reversible.py   (about half a minute)
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from trainlab.techniques.memory.reversible import (
    ReversibleBlock, ReversibleSequence, mlp_branch, reversible_inverted_bottleneck, saved_activation_bytes,
)

DEPTHS = (2, 4, 8, 16)


def step_seconds(stack: ReversibleSequence, x: torch.Tensor, rounds: int = 5, reps: int = 3) -> tuple[float, float]:
    """Median (stored, reversible) seconds per forward+backward, interleaved after one warm-up."""
    def run(mode: bool) -> float:
        stack.reversible = mode
        t0 = time.process_time()
        for _ in range(reps):
            stack(x.detach().requires_grad_()).square().mean().backward()
        return (time.process_time() - t0) / reps

    run(False), run(True)
    times = [(run(False), run(True)) for _ in range(rounds)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def bench(name: str, make_block, x: torch.Tensor) -> None:
    print(f"\n{name}: input {tuple(x.shape)}, float32 ({x.numel() * 4 / 2**20:.2f} MiB per activation)")
    print(f"{'depth':>5} {'stored MiB':>11} {'reversible MiB':>15} {'ratio rev/stored':>17} "
          f"{'step ms stored':>15} {'step ms rev':>12} {'time ratio':>11}")
    for depth in DEPTHS:
        torch.manual_seed(0)
        stack = ReversibleSequence([make_block() for _ in range(depth)])
        stack.reversible = False
        stored = saved_activation_bytes(stack, x.clone().requires_grad_())
        stack.reversible = True
        rev = saved_activation_bytes(stack, x.clone().requires_grad_())
        ts, tr = step_seconds(stack, x)
        print(f"{depth:>5} {stored / 2**20:>11.2f} {rev / 2**20:>15.3f} {rev / stored:>17.4f} "
              f"{ts * 1e3:>15.1f} {tr * 1e3:>12.1f} {tr / ts:>11.2f}")


def main() -> None:
    torch.set_num_threads(1)
    bench("reversible inverted bottleneck (32 channels, expansion 4, BatchNorm)",
          lambda: reversible_inverted_bottleneck(32, expansion=4), torch.randn(8, 32, 16, 16))
    bench("MLP branches (width 256, F and G: Linear 128->256->128)",
          lambda: ReversibleBlock(mlp_branch(128, 256), mlp_branch(128, 256)), torch.randn(256, 256))


if __name__ == "__main__":
    main()
