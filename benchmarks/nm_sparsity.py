"""N:M sparsity: artifact size and CPU latency of N:M Linear layers against dense, in one run.

    python benchmarks/nm_sparsity.py                       # 2:4, 1:8, 1:16; 512, 1024, 2048 square layers
    python benchmarks/nm_sparsity.py --sizes 1024 --batch 1 64 --rounds 30 --threads 1

1. Size: a Linear(d, d) made N:M by `apply_nm` (include_last) is written by `export_nm` (float32
   kept values + in-group indices at ceil(log2 M) bits); the file size over the dense parameters'
   bytes (`dense_bytes`). The expected ratio is (N/M)(32 + ceil(log2 M))/32 plus the file's header.
2. Latency: the dense Linear (torch's dense GEMM) and `CSRLinear` (the same N:M weight as a
   torch.sparse CSR matrix, torch.sparse.mm) timed in interleaved rounds under
   torch.inference_mode, after warm-up; reported is the median over rounds of the per-round
   ratio sparse/dense (below 1 = faster), with the process CPU clock (single-thread latency when
   --threads 1, least disturbed by other processes' load).
3. torch's 2:4 semi-structured kernels (`to_sparse_semi_structured`) are tried on CPU and their
   answer is printed: they are CUDA-only, so they have no CPU row.
A CSR matrix stores a 64-bit column index per kept value (and a row pointer), so in memory it is
larger than the artifact; the speed of CSR against dense GEMM depends on the density: at 2:4
(50% dense) a dense GEMM usually wins, at 1:8 and 1:16 CSR may be faster for larger layers.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from timing import time_pair
from trainlab.techniques.compression.nm_sparsity import CSRLinear, apply_nm, export_nm, is_nm

PATTERNS = ((2, 4), (1, 8), (1, 16))


def nm_linear(d: int, n: int, m: int, seed: int) -> tuple[nn.Module, nn.Linear]:
    """(parametrized model, plain Linear with the same N:M weight)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, d))
    apply_nm(model, n, m, include_last=True)
    plain = nn.Linear(d, d).requires_grad_(False)
    with torch.no_grad():
        plain.weight.copy_(model[0].weight)       # the effective (N:M) weight
        plain.bias.copy_(model[0].bias)
    return model, plain


def semi_structured_on_cpu() -> str:
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError:
        return "torch.sparse.to_sparse_semi_structured is not in this torch"
    w = torch.randn(64, 64) * torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(64, 16)
    try:
        to_sparse_semi_structured(w)
    except Exception as err:  # the CPU refusal is the answer we report
        return f"refused on CPU: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return "accepted on CPU (unexpected; not timed)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU clock; ratios are N:M / dense")
    print(f"to_sparse_semi_structured: {semi_structured_on_cpu()}")
    print(f"{'layer':>11} {'N:M':>5} {'file/dense':>10} {'batch':>5} {'dense ms':>9} {'CSR ms':>9} {'CSR/dense':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.sizes:
            for n, m in PATTERNS:
                model, plain = nm_linear(d, n, m, seed=d + m)
                info = export_nm(model, Path(tmp) / f"{d}_{n}_{m}.pt")
                assert is_nm(plain.weight, n, m)
                csr = CSRLinear(plain)
                for b in args.batch:
                    x = torch.randn(b, d)
                    reps = max(1, int(2e7 / (d * d * b)))      # about the same work per round
                    td, ts, ratio = time_pair(plain, csr, x, args.rounds, reps)
                    print(f"{d:>5}x{d:<5} {n}:{m:<3} {info['ratio']:>10.3f} {b:>5} {td * 1e3:>9.3f} {ts * 1e3:>9.3f} "
                          f"{ratio:>9.2f}")


if __name__ == "__main__":
    main()
