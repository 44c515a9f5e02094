"""FTWT dynamic pruning: per-input FLOPs against the dense network, and CPU latency where it is real.

    python benchmarks/dynamic_pruning.py                         # digits-cnn and mnist1d-cnn
    python benchmarks/dynamic_pruning.py --tasks mnist1d-cnn --inputs 300 --rounds 7

For each task, ftwt (the claims' setting: softmax off, the oracle FLOPs target of the claims) is
trained for the task's budget (seed 0), then on the first --inputs test inputs:
1. FLOPs: mean per-input FLOPs ratio of the dynamic network (predictors included) and the ratio
   of the static network (uniform L1 filter pruning) built at the same mean FLOPs; the predictors'
   share of the parameters (dynamic pruning stores every weight plus the predictors, so there is no
   smaller file).
2. Latency, batch 1 (one input at a time, eval mode, inference_mode, one thread, process CPU time,
   interleaved rounds, median over rounds of the per-round ratio to the dense network):
   - "masked": gated blocks compute every channel and zero the unselected ones (what training and
     the claims use): extra work, no saving possible;
   - "skip": each block gathers the active input channels and filters and runs a smaller
     convolution (GatedBlock.skip), then scatters into a full-width zero tensor: the real
     per-input dynamic path of this implementation;
   - "static": a physically smaller SmallCNN with the static arm's channel counts.
3. Latency, batch 256: dense vs masked (per-input masks cannot shrink a batched convolution: the
   inputs of one batch want different channels) vs the static smaller network.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainlab.tasks.loading import load_task_data
from trainlab.tasks.models import SmallCNN
from trainlab.tasks.registry import get_task
from trainlab.techniques.compression.dynamic_pruning import (
    _TARGET, FTWT, apply_ftwt, static_flops_ratio, uniform_keep_counts,
)
from trainlab.training.trainer import run_training


def _time(fn, clock=time.process_time) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def per_input(model: torch.nn.Module, xs: torch.Tensor):
    def run() -> None:
        for i in range(len(xs)):
            model(xs[i:i + 1])
    return run


def rounds(runs: dict, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():   # warm-up
        f()
    for _ in range(n):
        for k, f in runs.items():
            out[k].append(_time(f))
    return out


def bench(task_name: str, inputs: int, n_rounds: int) -> None:
    task = get_task(task_name)
    ftwt = FTWT(target_flops=_TARGET.get(task_name, 0.5), softmax=False)
    t0 = time.perf_counter()
    run_training(task, [ftwt], seed=0)
    train_s = time.perf_counter() - t0
    dp = ftwt.dp
    model = dp.model.eval()
    for b in dp.blocks:
        b.eval_targets = False   # inference needs the predictions only
    data = load_task_data(task, 0)
    xs = data.test_x[:inputs]
    m = dp.measure(xs)
    channels = tuple(task.model_kwargs["channels"])
    shape = tuple(data.train_x.shape[1:])
    dense = SmallCNN(shape, data.num_classes, channels=channels).eval()
    # static network at the dynamic one's mean FLOPs (the claims' matching rule, here on one run)
    probe = SmallCNN(shape, data.num_classes, channels=channels)
    sdp = apply_ftwt(probe, xs[:2], predictors=False)
    keep = uniform_keep_counts(sdp, m["flops_ratio"])
    for b, k in zip(sdp.blocks, keep):
        b.static_mask.zero_()
        b.static_mask[:k] = 1.0
    static = SmallCNN(shape, data.num_classes, channels=tuple(keep)).eval()
    print(f"\n{task_name}: ftwt trained in {train_s:.0f} s; channels {channels} -> static {tuple(keep)}")
    print(f"  FLOPs ratio   dynamic {m['flops_ratio']:.3f} (mean over {len(xs)} test inputs, predictors included; "
          f"active channels {m['active_fraction']:.2f})   static {static_flops_ratio(sdp):.3f}")
    print(f"  parameters    predictors add {dp.parameter_overhead():.1%} to the network (no smaller artifact)")
    with torch.inference_mode():
        def masked_run() -> None:
            for b in dp.blocks:
                b.skip = False
            per_input(model, xs)()

        def skip_run() -> None:
            for b in dp.blocks:
                b.skip = True
            per_input(model, xs)()
            for b in dp.blocks:
                b.skip = False

        # the skip path must give the masked path's outputs
        for b in dp.blocks:
            b.skip = True
        out_skip = torch.cat([model(xs[i:i + 1]) for i in range(min(50, len(xs)))])
        for b in dp.blocks:
            b.skip = False
        out_mask = torch.cat([model(xs[i:i + 1]) for i in range(min(50, len(xs)))])
        err = (out_skip - out_mask).abs().max().item()
        r = rounds({"dense": per_input(dense, xs), "masked": masked_run, "skip": skip_run,
                    "static": per_input(static, xs)}, n_rounds)
        print(f"  batch 1       dense {statistics.median(r['dense']) / len(xs) * 1e6:.0f} us/input; ratios to dense "
              f"(median of per-round ratios): " + ", ".join(
                  f"{k} {statistics.median(a / d for a, d in zip(r[k], r['dense'])):.2f}"
                  for k in ("masked", "skip", "static")) + f"   (skip vs masked outputs: max diff {err:.1e})")
        big = data.test_x[:256]
        rb = rounds({"dense": lambda: dense(big), "masked": lambda: model(big), "static": lambda: static(big)},
                    n_rounds * 3)
        print(f"  batch 256     dense {statistics.median(rb['dense']) * 1e3:.1f} ms; ratios to dense: " + ", ".join(
            f"{k} {statistics.median(a / d for a, d in zip(rb[k], rb['dense'])):.2f}" for k in ("masked", "static")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["digits-cnn", "mnist1d-cnn"])
    ap.add_argument("--inputs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU process time")
    for name in args.tasks:
        bench(name, args.inputs, args.rounds)


if __name__ == "__main__":
    main()
