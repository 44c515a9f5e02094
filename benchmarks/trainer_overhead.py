"""Trainer overhead: trainlab's Trainer against a hand-written PyTorch loop doing the same work.

Both train the same model on the same data, batches, augmentation, optimizer and schedule, and
evaluate after every epoch. Runs alternate (trainer, loop, loop, trainer, ...) after one warm-up
run of each, in one process, and the ratio of median wall times is printed. Target: <= 1.05.

    python benchmarks/trainer_overhead.py                       # digits-cnn and cifar10-cnn
    python benchmarks/trainer_overhead.py --tasks digits-cnn --repeats 6
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainlab.errors import UserError
from trainlab.tasks.augment import augment
from trainlab.tasks.loading import load_task_data
from trainlab.tasks.registry import get_task
from trainlab.training.metrics import evaluate
from trainlab.training.optim import build_optimizer, build_scheduler
from trainlab.training.trainer import run_training


def hand_written_loop(task, seed: int) -> float:
    """The plain loop a user would write; returns the final test accuracy."""
    data = load_task_data(task, seed)
    torch.manual_seed(seed)
    model = task.make_model(data.input_shape, data.num_classes, **dict(task.model_kwargs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(task, params)
    steps = len(data.train_y) // task.batch_size
    scheduler = build_scheduler(task, optimizer, steps * task.epochs, steps)
    acc = 0.0
    for epoch in range(task.epochs):
        model.train()
        order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        aug = torch.Generator().manual_seed(seed * 1000 + epoch + 1)
        total = 0.0
        for b in range(steps):
            idx = order[b * task.batch_size:(b + 1) * task.batch_size]
            x = augment(task.augment, data.train_x[idx], aug)
            loss = F.cross_entropy(model(x), data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        acc = evaluate(model, data.test_x, data.test_y, task.eval_batch_size, torch.device("cpu"))["acc"]
    return acc


def measure(task_name: str, epochs: int | None, repeats: int) -> dict[str, float]:
    task = get_task(task_name)
    if epochs:
        task = task.with_overrides({"epochs": epochs})
    load_task_data(task, 0)  # data loading and decoding are not part of the comparison
    arms = {"trainer": lambda: run_training(task, seed=0), "loop": lambda: hand_written_loop(task, 0)}
    for fn in arms.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(repeats):
        for name in (("trainer", "loop") if r % 2 == 0 else ("loop", "trainer")):
            t0 = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"trainer_s": med["trainer"], "loop_s": med["loop"], "ratio": med["trainer"] / med["loop"],
            "epochs": task.epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["digits-cnn", "cifar10-cnn"])
    p.add_argument("--epochs", type=int, help="override each task's epochs (default: digits 15, cifar10-cnn 1)")
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'task':<16}{'epochs':>7}{'trainer s':>11}{'loop s':>9}{'ratio':>8}")
    for name in args.tasks:
        epochs = args.epochs or (1 if name.startswith("cifar10") else None)
        try:
            m = measure(name, epochs, args.repeats)
        except UserError as e:
            print(f"{name:<16} skipped: {e}")
            continue
        print(f"{name:<16}{m['epochs']:>7}{m['trainer_s']:>11.2f}{m['loop_s']:>9.2f}{m['ratio']:>8.3f}")


if __name__ == "__main__":
    main()
