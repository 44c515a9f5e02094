"""Optimizer step time and state memory, relative to the fastest of torch's own Adam variants.

    python benchmarks/optimizer_step.py                # all registered optimizers, this CPU
    python benchmarks/optimizer_step.py --threads 1 --repeats 7 --only adamp diffgrad

The model is ~100 parameter tensors (~2.0M parameters, several shapes: conv stacks with BatchNorm,
linear layers with biases). Every optimizer gets its own copy of the same parameters and the same
gradients; before each step the gradients are assigned as fresh tensors (as autograd produces them
after ``zero_grad(set_to_none=True)``), so an optimizer that keeps flat gradient buffers pays for
the copy. Timing is interleaved: each repeat times every optimizer once for `--steps` steps, in
turn, after warm-up (compilation of compiled paths happens in warm-up and is reported separately).
Reported: median ms/step over repeats, its ratio to the fastest torch Adam (for-loop, foreach,
fused) measured in the same run, the median of the per-repeat ratios ("paired": each repeat's time
over the baseline's time in that repeat, which cancels slow drifts of machine load), and the
optimizer-state bytes (every storage counted once,
including flat gradient buffers an optimizer owns).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn


def model_shapes() -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for _ in range(18):                       # 3x3 convs 64->64 with BatchNorm weight and bias
        shapes += [(64, 64, 3, 3), (64,), (64,)]
    for _ in range(2):                        # wider convs
        shapes += [(128, 64, 3, 3), (128,), (128,)]
    for _ in range(8):                        # MLP head layers
        shapes += [(256, 256), (256,)]
    shapes += [(512, 256), (512,), (10, 512), (10,), (64, 3, 3, 3)]
    for _ in range(6):                        # 1x1 convs
        shapes += [(128, 128, 1, 1), (128,)]
    for _ in range(4):                        # 3x3 convs 128->128
        shapes += [(128, 128, 3, 3), (128,)]
    return shapes


def make_params(seed: int, device: torch.device) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter((torch.randn(s, generator=g) * 0.05).to(device)) for s in model_shapes()]


def make_grads(seed: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return [(torch.randn(s, generator=g) * 1e-3).to(device) for s in model_shapes()]


def candidates(only: list[str] | None) -> dict[str, callable]:
    from trainlab.techniques.optimizers import all_optimizers

    c: dict[str, callable] = {
        "torch.Adam(for-loop)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
        "torch.Adam(foreach)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "torch.Adam(fused)": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
    }
    for name, spec in all_optimizers().items():
        if only and name not in only:
            continue
        if name.startswith("noise-adaptive"):
            continue  # matrix-geometry optimizer: not a drop-in comparison on conv stacks
        c[f"{name}(default)"] = lambda ps, spec=spec: spec.make(ps, **spec.example)
        c[f"{name}(single)"] = lambda ps, spec=spec: spec.make(ps, **spec.example, **spec.reference)
        for flags in spec.fast_paths:
            label = ",".join(f"{k}" for k, v in flags.items() if v)
            c[f"{name}({label})"] = lambda ps, spec=spec, flags=flags: spec.make(ps, **spec.example, **flags)
    return c


def state_bytes(opt: torch.optim.Optimizer) -> int:
    from trainlab.techniques.optimizers.fastpath import state_bytes as sb

    return sb(opt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=None, help="registered optimizer names to include")
    ap.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                    help="cpu: CPU time of this thread (robust to other load on a shared machine; only "
                         "meaningful with --threads 1); auto: cpu with one thread, else wall")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    use_cpu_clock = args.clock == "cpu" or (args.clock == "auto" and torch.get_num_threads() == 1
                                            and device.type == "cpu")
    clock = time.thread_time if use_cpu_clock else time.perf_counter
    grads = make_grads(0, device)
    n_params = sum(g.numel() for g in grads)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"clock {'thread CPU time' if use_cpu_clock else 'wall'}, load {os.getloadavg()[0]:.2f}, model: {len(grads)} tensors, {n_params / 1e6:.2f}M params")

    runs = {}
    for name, make in candidates(args.only).items():
        params = make_params(0, device)
        opt = make(params)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        runs[name] = dict(params=params, opt=opt, warm=time.perf_counter() - t0, times=[])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.repeats):
        for name, r in runs.items():
            params, opt = r["params"], r["opt"]
            fresh = [[g.clone() for g in grads] for _ in range(args.steps)]
            total = 0.0
            for k in range(args.steps):
                for p, g in zip(params, fresh[k]):
                    p.grad = g
                sync()
                t = clock()
                opt.step()
                sync()
                total += clock() - t
            r["times"].append(total / args.steps * 1e3)

    med = {name: statistics.median(r["times"]) for name, r in runs.items()}
    base_name = min((n for n in med if n.startswith("torch.Adam")), key=med.get)
    base = med[base_name]
    base_bytes = state_bytes(runs[base_name]["opt"])
    print(f"baseline: {base_name} {base:.2f} ms/step (fastest torch Adam here)\n")
    # paired ratio: each repeat's time over the baseline's time in the same repeat (robust to load drift)
    base_times = runs[base_name]["times"]
    print(f"{'optimizer':28s} {'ms/step':>9s} {'min':>7s} {'max':>7s} {'x base':>7s} {'paired':>7s} {'state MB':>9s} "
          f"{'x base':>7s} {'warm-up s':>9s}")
    for name, r in runs.items():
        sb = state_bytes(r["opt"])
        paired = statistics.median(t / b for t, b in zip(r["times"], base_times))
        print(f"{name:28s} {med[name]:9.2f} {min(r['times']):7.2f} {max(r['times']):7.2f} {med[name] / base:7.2f} "
              f"{paired:7.2f} {sb / 2**20:9.2f} {sb / base_bytes:7.2f} {r['warm']:9.2f}")


if __name__ == "__main__":
    main()
