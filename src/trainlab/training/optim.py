"""The task's default optimizer and learning-rate schedule (used when no technique replaces them)."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from trainlab.errors import ConfigError


def build_optimizer(task, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    name = task.optimizer.lower()
    if task.lr <= 0:
        raise ConfigError(f"learning rate must be positive, got {task.lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=task.lr, momentum=task.momentum, nesterov=task.nesterov and task.momentum > 0,
                               weight_decay=task.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=task.lr, betas=tuple(task.betas), weight_decay=task.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=task.lr, betas=tuple(task.betas), weight_decay=task.weight_decay)
    raise ConfigError(f"unknown optimizer '{task.optimizer}' (sgd, adam, adamw)")


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if schedule == "onecycle":  # linear up to 30%, then linear down to 0
        return t / 0.3 if t < 0.3 else max(0.0, (1 - t) / 0.7)
    if schedule == "step":  # /10 at 50% and 75%
        return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
    raise ConfigError(f"unknown schedule '{schedule}' (cosine, constant, onecycle, step)")


def build_scheduler(task, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
    lr_factor(task.schedule, 0, 1, 0)  # validate the name early
    warmup = int(round(task.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(task.schedule, s, total_steps, warmup)
    )
