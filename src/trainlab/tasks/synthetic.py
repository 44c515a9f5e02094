"""Gaussian-blob classification: a tiny synthetic task for smoke checks and tests (well under a
second a run). Class c's inputs are drawn around a random centre; `spread` sets the overlap."""
from __future__ import annotations

import torch

from trainlab.tasks.task import DataBundle


def blobs(n_train: int = 512, n_test: int = 256, dim: int = 16, classes: int = 4, spread: float = 1.5,
          seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 1.5

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        return centres[y] + spread * torch.randn(n, dim, generator=g), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return DataBundle(train_x, train_y, test_x, test_y, num_classes=classes, name=f"blobs{dim}x{classes}")
