"""Low-rank factorization (Maestro): file size and CPU latency of U V^T layers against dense ones.

    python benchmarks/low_rank.py                 # about a minute on one core
    python benchmarks/low_rank.py --rounds 15 --threads 1

1. Learned ranks: Maestro (lambda_gp 1e-3, the mnist1d-budget claim's setting) trains the MNIST-1D MLP
   (40-256-256-10, hidden layers factorized) for one seed; the trained model is rebuilt at its learned
   ranks and also cut to the claim's budget (fixed-rank 0.125 weights) by importance. Reported against
   the dense MLP of the same task: factor weights, file size (the low-rank factors file against the
   dense state_dict saved the same way) and CPU latency of the forward pass at batch 1 and 256.
2. Break-even of the two smaller matmuls: one Linear 1024 -> 1024 against its factorization at ranks
   32..1024 (batch 64). x V^T then (.) U^T costs r (in + out) multiply-adds per row against in * out,
   so the factorization can only be faster below r = in * out / (in + out) = 512.

Latency: median over interleaved rounds (the models alternate, so load from other processes hits
both alike) of eval-mode forward passes under torch.inference_mode, after warm-up; ratios are
factorized / dense, measured in this run. The speed-up path is real (two dense matmuls of smaller
sizes), no custom kernel.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch
from torch import nn


def _ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(samples[a], samples[b]))


def learned_model(seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor]:
    """(dense MLP, Maestro at its learned ranks, Maestro cut to the claim's budget, example inputs)."""
    from trainlab.tasks.loading import load_task_data
    from trainlab.tasks.registry import get_task
    from trainlab.techniques.compression import maestro as M
    from trainlab.training.trainer import run_training

    task = get_task("mnist1d-mlp")
    settings = {"gp_lambda": 1e-3, "skip_last": True, "budget_rank_ratio": 0.125}
    result = run_training(task, [("maestro", settings)], seed=seed, keep_state=True)
    data = load_task_data(task, seed)
    dense = task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs))
    model = M.maestro_decompose(task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs)),
                                skip_last=True)
    for i, (_, layer) in enumerate(M.low_rank_layers(model)):
        layer.truncate(int(result.final[f"rank_l{i}"]))
    model.load_state_dict(result.state)
    budget = M._budget(M.maestro_decompose(
        task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs)), skip_last=True), 0.125)
    cut = M.maestro_decompose(task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs)),
                              skip_last=True)
    for i, (_, layer) in enumerate(M.low_rank_layers(cut)):
        layer.truncate(int(result.final[f"rank_l{i}"]))
    cut.load_state_dict(result.state)
    M.truncate_to_budget(cut, budget)
    print(f"Maestro run: test_acc {result.final['test_acc']:.3f}, at the budget {result.final['budget_test_acc']:.3f}; "
          f"ranks {[m.rank for _, m in M.low_rank_layers(model)]} learned, "
          f"{[m.rank for _, m in M.low_rank_layers(cut)]} at the budget")
    return dense.eval(), model.eval(), cut.eval(), data.test_x


def file_bytes(model: nn.Module, low_rank: bool) -> int:
    from trainlab.techniques.compression import maestro as M
    from trainlab.techniques.compression.artifact import save_artifact

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt")
        if low_rank:
            return M.save_factors(path, model)
        return save_artifact(path, "dense", dict(model.state_dict()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from trainlab.techniques.compression import maestro as M
    from trainlab.techniques.pruning.accounting import count_params, latency_samples

    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time per forward, "
          f"{args.rounds} interleaved rounds")
    dense, learned, cut, x = learned_model(args.seed)
    dense_w = sum(m.weight.numel() for m in [m for m in dense.modules() if isinstance(m, nn.Linear)][:-1])
    print("\n1. MNIST-1D MLP (hidden layers factorized; classifier dense)")
    print(f"{'model':<22}{'hidden weights':>16}{'params':>10}{'file bytes':>12}{'file ratio':>12}"
          f"{'lat b1 ratio':>14}{'lat b256 ratio':>16}")
    dense_file = file_bytes(dense, False)
    lat = {}
    for batch in (1, 256):
        lat[batch] = latency_samples({"dense": dense, "learned": learned, "budget": cut}, x[:batch],
                                     rounds=args.rounds, repeats=args.repeats, clock="cpu")
    for name, model in (("dense", dense), ("maestro learned ranks", learned), ("maestro at budget", cut)):
        low = name != "dense"
        weights = M.factor_params(model) if low else dense_w
        fb = file_bytes(model, low) if low else dense_file
        key = {"dense": "dense", "maestro learned ranks": "learned", "maestro at budget": "budget"}[name]
        print(f"{name:<22}{weights:>16,}{count_params(model):>10,}{fb:>12,}{fb / dense_file:>12.3f}"
              f"{_ratio(lat[1], key, 'dense'):>14.3f}{_ratio(lat[256], key, 'dense'):>16.3f}")
    print(f"  dense latency: batch 1 {statistics.median(lat[1]['dense']) * 1e6:.1f} us, "
          f"batch 256 {statistics.median(lat[256]['dense']) * 1e6:.1f} us")

    print("\n2. Linear 1024 -> 1024, batch 64: factorized at rank r vs dense (break-even r = 512 by FLOPs)")
    print(f"{'rank':>6}{'weights ratio':>15}{'file ratio':>12}{'latency ratio':>15}")
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(1024, 1024)).eval()
    xb = torch.randn(64, 1024)
    big_file = file_bytes(big, False)
    for r in (32, 64, 128, 256, 512, 1024):
        low = M.maestro_decompose(nn.Sequential(nn.Linear(1024, 1024)), rank_ratio=r / 1024).eval()
        samples = latency_samples({"dense": big, "low": low}, xb, rounds=args.rounds, repeats=args.repeats,
                                  clock="cpu")
        print(f"{r:>6}{M.factor_params(low) / (1024 * 1024):>15.3f}{file_bytes(low, True) / big_file:>12.3f}"
              f"{_ratio(samples, 'low', 'dense'):>15.3f}")


if __name__ == "__main__":
    main()
