"""Quantized model sizes and the int8 CPU latency, against the dense float32 model in the same run.

Sizes: the dense float32 file (torch.save of the state_dict) and the quantized artifact
(save_quantized: weight codes packed at 8, 4 and 2 bits + float32 steps + the float parameters
left) of the same model, for the digits CNN and an MLP.

Latency: only where a real CPU kernel exists. torch.ao's dynamic int8 Linear (fbgemm/x86 engine)
runs the 8-bit model's own integer weights (int8_dynamic); it is timed against the float32 model,
interleaved, after warm-up, on one thread. For 2-4 bits torch has no CPU kernel (its int4 paths
need torchao, which is not a dependency here; the benchmark says whether it is importable), so only
their sizes are reported: a fake-quantized model is not faster than the float one.

Run: python benchmarks/quantization.py   (about a minute)
"""
from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from trainlab.techniques.compression.artifact import dense_bytes
from trainlab.techniques.compression.quantization import int8_dynamic, ptq, save_quantized


def _dense_file_bytes(model: nn.Module, path: Path) -> int:
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def sizes(name: str, model: nn.Module, calib: torch.Tensor, tmp: Path) -> None:
    dense = _dense_file_bytes(model, tmp / f"{name}-dense.pt")
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"dense float32 tensors {dense_bytes(model):,} B, file {dense:,} B")
    for bits in (8, 4, 2):
        q = ptq(model, calib, bits, first_last_bits=None)  # every layer at `bits`, to show the packing itself
        size = save_quantized(q, tmp / f"{name}-{bits}.pt")
        print(f"  {bits}-bit artifact {size:>9,} B   ratio to dense file {size / dense:.3f}")


def _time(fn, x: torch.Tensor, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - t0) / repeats


@torch.no_grad()
def int8_latency(width: int = 1024, batch: int = 64, rounds: int = 15, repeats: int = 20) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)).eval()
    x = torch.randn(batch, 784)
    q8 = ptq(model, torch.randn(256, 784), 8, first_last_bits=8).eval()
    fast = int8_dynamic(q8)
    engine = torch.backends.quantized.engine
    for fn in (model, fast):  # warm-up
        _time(fn, x, 5)
    ratios, t_float, t_int8 = [], [], []
    for _ in range(rounds):  # interleaved
        a, b = _time(model, x, repeats), _time(fast, x, repeats)
        t_float.append(a)
        t_int8.append(b)
        ratios.append(b / a)
    err = float((fast(x) - model(x)).abs().max() / model(x).abs().max())
    print(f"\nint8 latency (MLP 784-{width}-{width}-{width}-10, batch {batch}, 1 thread, engine {engine}):")
    print(f"  float32 {statistics.median(t_float) * 1e3:.3f} ms   int8 dynamic {statistics.median(t_int8) * 1e3:.3f} ms"
          f"   ratio int8/float {statistics.median(ratios):.3f} (median of {rounds} interleaved rounds)")
    print(f"  max |int8 - float| / max |float| = {err:.4f}")


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from trainlab.tasks.models import MLP, SmallCNN

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sizes("digits CNN 32-64", SmallCNN((1, 8, 8), 10, channels=(32, 64)).eval(), torch.randn(128, 1, 8, 8), tmp)
        sizes("MLP 784-1024-1024-10", MLP((784,), 10, width=1024, depth=2).eval(), torch.randn(128, 784), tmp)
    int8_latency()
    torchao = importlib.util.find_spec("torchao") is not None
    print("\n2-4 bits: no CPU kernel in torch itself; torchao " + ("is importable (its int4 CPU path is not used here)"
                                                                 if torchao else "is not installed") +
          "; sizes only.")


if __name__ == "__main__":
    main()
