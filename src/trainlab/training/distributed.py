"""Running under torchrun: DDP with gloo on CPU, nccl on GPU.

Each process takes an equal contiguous share of every global batch; DDP averages the gradients,
so with a mean loss the update equals one process training on the whole global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    world_size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """Initialize the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    return DistContext(world_size=torch_dist.get_world_size(), rank=torch_dist.get_rank())


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Under torchrun, 'cuda' means this process's GPU (LOCAL_RANK)."""
    if ctx.world_size > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    if ctx.world_size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.world_size == 1:
        return indices
    per = len(indices) // ctx.world_size
    return indices[ctx.rank * per:(ctx.rank + 1) * per]
