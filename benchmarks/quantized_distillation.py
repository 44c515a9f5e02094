"""Sizes of quantized-distillation students against the dense float32 model, in the same run.

Sizes: the dense float32 file (torch.save of the state_dict) and the compressed student
(save_quantized_student: every parameter tensor as codes packed at 2, 4 or 8 bits with float32
per-bucket alpha and beta (bucket 256); differentiable quantization: point indices packed at
ceil(log2 n) bits plus the points), for the MNIST-1D student and teacher CNNs and a 784-1024-1024-10
MLP; also the tensor payload against the dense tensors (for the 1.4k-parameter student the file's
per-tensor container overhead, three small tensors per quantized tensor, outweighs the payload).
The round trip is checked: the loaded plain model's outputs equal the quantized model's.

Latency: the paper's quantizer (min-max affine scaling per bucket of 256 values, 2-8 bits, or
learned non-uniform points) has no CPU kernel in torch: a loaded student runs as a float32 model
with dequantized weights, at the dense model's speed. No latency ratio is reported; the 8-bit
dynamic int8 path of torch.ao (per-channel symmetric scales) is the quantization module's
(benchmarks/quantization.py), not this quantizer.

Run: python benchmarks/quantized_distillation.py   (well under a minute)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from trainlab.tasks.models import build_model
from trainlab.techniques.compression.artifact import dense_bytes
from trainlab.techniques.compression.quantized_distillation import (
    PointQuantizer, UniformQuantizer, export_quantized_student, load_quantized_student, quantile_points,
    quantize_parameters, quantized_parameters, save_quantized_student)


def _models() -> dict[str, tuple[callable, torch.Tensor]]:
    def student():
        torch.manual_seed(0)
        return build_model("cnn", (1, 40), 10, channels=(8, 16, 16))

    def teacher():
        torch.manual_seed(0)
        return build_model("cnn", (1, 40), 10, channels=(32, 64, 64))

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))

    return {"mnist1d student 8-16-16": (student, torch.randn(64, 1, 40)),
            "mnist1d teacher 32-64-64": (teacher, torch.randn(64, 1, 40)),
            "MLP 784-1024-1024-10": (mlp, torch.randn(64, 784))}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, (make, x) in _models().items():
            dense_model = make().eval()
            torch.save(dense_model.state_dict(), tmp / "dense.pt")
            dense_file = (tmp / "dense.pt").stat().st_size
            print(f"\n{name}: {sum(p.numel() for p in dense_model.parameters()):,} parameters, dense float32 "
                  f"tensors {dense_bytes(dense_model):,} B, file {dense_file:,} B")
            for label, factory in [("uniform 8-bit", lambda: UniformQuantizer(8)),
                                   ("uniform 4-bit", lambda: UniformQuantizer(4)),
                                   ("uniform 2-bit", lambda: UniformQuantizer(2)),
                                   ("learned 4 points", lambda: PointQuantizer(4))]:
                q = quantize_parameters(make(), factory)
                if label.startswith("learned"):
                    for _, m, a, qz in quantized_parameters(q):
                        qz.set_points(quantile_points(m.parametrizations[a].original, 4, qz.bucket_size))
                q.eval()
                size = save_quantized_student(q, str(tmp / "q.pt"))
                back = load_quantized_student(str(tmp / "q.pt"), make()).eval()
                with torch.no_grad():
                    err = float((back(x) - q(x)).abs().max())
                payload = sum(t.numel() * t.element_size() for t in export_quantized_student(q)[0].values())
                print(f"  {label:17s} file {size:>10,} B   size ratio {size / dense_file:6.3f}  "
                      f"(x{dense_file / size:5.1f} smaller)   tensor payload {payload:>9,} B "
                      f"(ratio {payload / dense_bytes(dense_model):5.3f})   round-trip max |diff| {err:.1e}")
    print("\nlatency: no CPU kernel for bucketed min-max (2-8 bit) or learned-point weights; a loaded student runs "
          "as float32 at the dense speed, so no latency ratio is reported")


if __name__ == "__main__":
    main()
