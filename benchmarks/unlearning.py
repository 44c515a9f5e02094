"""Prune first, then unlearn: run-time efficiency of unlearning against Retrain, the size of the
95%-sparse model's file, and its CPU latency as torch.sparse CSR layers against dense, in one run.

    python benchmarks/unlearning.py                  # digits-mlp, seeds 0-2, 95% sparsity, class 0
    python benchmarks/unlearning.py --seeds 0 --forget random:0.1 --threads 1

1. Run-time efficiency (the paper's RTE): seconds of FT unlearning (1 epoch on the retained data)
   against Retrain (the task's 10 epochs on the retained data), both measured inside the same run of
   the "sparse-unlearning" technique, for the dense and the 95%-sparse model.
2. Size: the unlearned sparse model written by `save_sparse_model` (kept float32 values + a 1-bit
   mask per pruned-layer entry; the classifier and biases dense) over the dense parameters' bytes.
3. Latency: the model's forward pass with its pruned hidden layers as torch.sparse CSR matrices
   (torch.sparse.mm, a real CPU kernel) against the dense model, interleaved rounds after warm-up,
   process CPU clock; the median per-round ratio sparse/dense (below 1 = faster). At digits-mlp's
   128-wide layers the dense GEMM is tiny, so the CSR path's overhead usually dominates.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from timing import time_pair
from trainlab.tasks.loading import load_task_data
from trainlab.tasks.registry import get_task
from trainlab.techniques.compression.artifact import dense_bytes
from trainlab.techniques.compression.nm_sparsity import CSRLinear
from trainlab.techniques.compression.unlearning import load_sparse_model, save_sparse_model
from trainlab.training.trainer import run_training


def to_csr(model: nn.Module, min_zero_fraction: float = 0.5) -> nn.Module:
    """A copy of `model` with every Linear that is at least `min_zero_fraction` zeros as a CSRLinear."""
    import copy

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and float((child.weight == 0).float().mean()) >= min_zero_fraction:
                setattr(module, child_name, CSRLinear(child))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits-mlp")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--forget", default="class:0")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    task = get_task(args.task)
    settings = {"method": "ft", "unlearn_epochs": 1, "unlearn_lr": 0.01, "forget": args.forget}

    print(f"{args.task}, FT unlearning, forget {args.forget}, seeds {args.seeds}, {args.threads} thread(s)")
    print("1. run-time efficiency: unlearning seconds / Retrain seconds (same run)")
    sparse_state = None
    for sparsity in (0.0, args.sparsity):
        rows = []
        for seed in args.seeds:
            r = run_training(task, [("sparse-unlearning", {**settings, "sparsity": sparsity})], seed=seed,
                             keep_state=True)
            rows.append((r.final["unlearn_seconds"], r.final["retrain_seconds"], r.final["unlearn_gap"]))
            if sparsity > 0 and sparse_state is None:
                sparse_state = r.state
        u = statistics.median(a for a, _, _ in rows)
        t = statistics.median(b for _, b, _ in rows)
        gap = statistics.mean(g for _, _, g in rows)
        print(f"   sparsity {sparsity:4.2f}: unlearn {u * 1e3:7.1f} ms, retrain {t * 1e3:7.1f} ms, "
              f"ratio {u / t:.3f}  (unlearn_gap {gap:.3f})")

    data = load_task_data(task, args.seeds[0])
    model = task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs))
    model.load_state_dict(sparse_state)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        size = save_sparse_model(Path(tmp) / "sparse.pt", model)
        reloaded = task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs)).eval()
        load_sparse_model(Path(tmp) / "sparse.pt", reloaded)
    x = data.test_x[:64]
    with torch.no_grad():
        same = torch.equal(model(x), reloaded(x))
    print(f"2. size: sparse file {size:,} bytes / dense parameters {dense_bytes(model):,} bytes = "
          f"{size / dense_bytes(model):.3f}  (reloaded outputs equal: {same})")

    csr = to_csr(model)
    print("3. CPU latency, CSR hidden layers (torch.sparse.mm) / dense model, median of per-round ratios")
    for b in args.batch:
        xb = data.test_x[:b] if b <= len(data.test_x) else data.test_x.repeat(b // len(data.test_x) + 1, 1)[:b]
        with torch.no_grad():
            assert torch.allclose(csr(xb), model(xb), atol=1e-5)
        td, ts, ratio = time_pair(model, csr, xb, args.rounds, reps=50)
        print(f"   batch {b:4d}: dense {td * 1e6:8.1f} us, csr {ts * 1e6:8.1f} us, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
