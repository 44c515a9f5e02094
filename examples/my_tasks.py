"""Your own model and data as trainlab tasks.

A task is data + model + budget. trainlab calls `make_data()` once per process and
`make_model(input_shape, num_classes)` once per run (right after seeding, so both arms of a claim
start from the same weights). Name a task on the command line as `examples/my_tasks.py:NAME`:

    trainlab train --task examples/my_tasks.py:digits_small
    trainlab check mixup --task examples/my_tasks.py:digits_small --seeds 8

or pass the Task object in Python:

    import trainlab
    from my_tasks import digits_small
    result = trainlab.check("mixup", task=digits_small, seeds=8)
    print(result.verdict, result.analysis.mean_diff, result.analysis.ci_low, result.analysis.ci_high)
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from trainlab import DataBundle, Task


def digits_data() -> DataBundle:
    """scikit-learn's 8x8 digits, split 75/25 with a fixed permutation, scaled to [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0   # [N, 1, 8, 8]
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[order], y[order]
    cut = int(0.75 * len(y))
    return DataBundle(x[:cut], y[:cut], x[cut:], y[cut:], num_classes=10, name="my-digits")


def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (input_shape[1] // 2) * (input_shape[2] // 2), num_classes),
    )


digits_small = Task(
    "my-digits-cnn", make_data=digits_data, make_model=small_cnn,
    epochs=8, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
    description="my own small CNN on scikit-learn digits",
)
