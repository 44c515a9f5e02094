"""Adapters (LoRA, LoRA-XS, LoRA-SB, FLoRA): trainable parameters, adapter file sizes, latency.

    python benchmarks/adapters.py                  # a 4x1024 MLP and a 64-128-128 conv net
    python benchmarks/adapters.py --rank 8 --rounds 9   # default rounds 3

Per model and method (all Linear layers for the MLP, all conv kernels for the CNN):
1. trainable parameters (the optimizer's) and their share of the dense model's;
2. the adapter file (save_adapters: only what the method cannot recompute from the base weights;
   LoRA-XS keeps only R) against the dense model's parameter bytes (artifact.dense_bytes);
3. CPU latency (eval mode, batch --batch, interleaved rounds, process CPU time with one thread) of
   the merged model against the dense model: merging makes them the same layers, so the ratio is
   1 within noise; and of the unmerged adapted model (W + Delta W recomputed every forward), the
   cost of training-time form. No low-precision or sparse kernel is involved: adapters save
   training memory and storage per task, not inference time.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from trainlab.techniques.compression.adapters import apply_adapters, merge_adapters, save_adapters, trainable_count
from trainlab.techniques.compression.artifact import dense_bytes
from trainlab.techniques.compression.flora import FLoRADelta
from trainlab.techniques.compression.lora import LoRADelta
from trainlab.techniques.compression.lora_sb import LoRASBDelta
from trainlab.techniques.compression.lora_xs import LoRAXSDelta
from trainlab.techniques.pruning.accounting import latency_samples


def mlp(width: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(784, width), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 10, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def methods(rank: int, conv: bool) -> dict[str, object]:
    out = {
        f"lora r={rank}": lambda layer: LoRADelta.build(layer, rank=rank),
        f"lora-xs r={3 * rank}": lambda layer: LoRAXSDelta.build(layer, rank=3 * rank),
        f"lora-sb r={3 * rank}": lambda layer: LoRASBDelta.build(layer, rank=3 * rank),
    }
    if conv:
        out[f"flora r={rank}"] = lambda layer: FLoRADelta.build(layer, rank=rank)
    return out


def bench(name: str, make, x: torch.Tensor, rank: int, rounds: int, conv: bool, workdir: Path) -> None:
    torch.manual_seed(0)
    dense = make()
    dense_size = dense_bytes(dense)
    n_dense = sum(p.numel() for p in dense.parameters())
    print(f"\n{name}: {n_dense:,} parameters, {dense_size / 1024:.1f} KiB dense, input {list(x.shape)}")
    print(f"{'method':<16}{'trainable':>11}{'share':>8}{'file KiB':>10}{'file/dense':>11}"
          f"{'merged/dense':>14}{'unmerged/dense':>16}")
    for label, build in methods(rank, conv).items():
        adapted = copy.deepcopy(dense)
        apply_adapters(adapted, build, targets="conv" if conv else "linear")
        with torch.no_grad():   # nonzero updates (the inits make some of them zero)
            for p in adapted.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.01)
        n_train = trainable_count(adapted)
        size = save_adapters(workdir / f"{label.split()[0]}.pt", adapted)
        merged = merge_adapters(copy.deepcopy(adapted))
        samples = latency_samples({"dense": dense, "merged": merged, "adapted": adapted}, x, rounds=rounds,
                                  repeats=10, clock="cpu")
        ratio = {k: statistics.median(a / b for a, b in zip(samples[k], samples["dense"]))
                 for k in ("merged", "adapted")}
        print(f"{label:<16}{n_train:>11,}{n_train / n_dense:>8.2%}{size / 1024:>10.1f}{size / dense_size:>11.4f}"
              f"{ratio['merged']:>14.3f}{ratio['adapted']:>16.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bench("MLP 784-4x1024-10", lambda: mlp(1024), torch.randn(args.batch, 784), args.rank, args.rounds, False,
              Path(tmp))
        bench("CNN 3-64-128-128-10 (32x32 input)", cnn, torch.randn(args.batch // 4, 3, 32, 32), args.rank,
              args.rounds, True, Path(tmp))
    print("\nmerged/dense: latency of the merged model over the dense one (same layers: 1 within noise). "
          "unmerged/dense: the adapted model recomputing W + Delta W every forward.")


if __name__ == "__main__":
    main()
