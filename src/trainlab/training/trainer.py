"""The Trainer: one training run of a Task with techniques plugged into fixed hook points.

Determinism: the model is initialized right after `torch.manual_seed(seed)`, before any technique
touches it, so both arms of a claim start from the same weights where the architecture allows.
The data order of epoch e comes from its own generator seeded by (seed, e), independent of what
techniques draw, so both arms see the same batches; techniques draw from `state.generator`.
On CPU, the same seed gives bitwise the same final weights, and a resumed run equals an
uninterrupted one (the data order and every random state are restored from the checkpoint).
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import CheckpointError, ConfigError
from trainlab.tasks.augment import augment
from trainlab.tasks.loading import load_task_data
from trainlab.tasks.task import Task
from trainlab.training import distributed
from trainlab.training.checkpoint import load_checkpoint, save_checkpoint
from trainlab.training.metrics import evaluate_task, noisy_label_fit
from trainlab.training.optim import build_optimizer, build_scheduler
from trainlab.training.provenance import provenance
from trainlab.training.result import RunResult
from trainlab.training.technique import Batch, Technique, TrainState, check_compatible
from trainlab.training.validate import call_user, check_labels, check_model, resolve_device

CHECKPOINT_FORMAT = 1
TechniqueLike = Technique | tuple[str, dict] | str
EpochCallback = Callable[[dict[str, float]], None]


def resolve_task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    from trainlab.tasks.registry import get_task

    return get_task(task)


def build_techniques(techniques: Iterable[TechniqueLike]) -> list[Technique]:
    from trainlab.techniques.registry import build_technique

    built = []
    for t in techniques:
        if isinstance(t, Technique):
            built.append(t)
        elif isinstance(t, str):
            built.append(build_technique(t))
        else:
            name, settings = t
            built.append(build_technique(name, dict(settings)))
    return check_compatible(built)


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # distinct, reproducible streams per (seed, epoch, purpose)
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63))


def _loss_fn(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task.loss_fn is not None:  # the task's own loss (regression, multi-label, language modelling, ...)
        return task.loss_fn
    smoothing = task.label_smoothing

    def base_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # integer labels or class probabilities (after mixing) are both accepted
        return F.cross_entropy(outputs, targets, label_smoothing=smoothing)

    return base_loss


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


@dataclass
class _Timing:
    step_seconds: list[float] = field(default_factory=list)

    def per_step(self) -> float:
        s = self.step_seconds
        if not s:
            return float("nan")
        warm = min(len(s) // 10, 20)  # leave out warm-up steps (allocator, caches)
        rest = s[warm:] or s
        return sum(rest) / len(rest)


@dataclass
class RunSetup:
    """Everything a run needs before its first step (shared by the trainer and overhead timing)."""

    task: Task
    techniques: list[Technique]
    model: nn.Module
    train_model: nn.Module   # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainState
    params: list[nn.Parameter]
    data: Any
    dist: distributed.DistContext


def setup_run(task: Task | str, techniques: Sequence[TechniqueLike] = (), seed: int = 0,
              device: str | torch.device = "cpu") -> RunSetup:
    """Seed, build the model, let techniques prepare it, build optimizer and schedule."""
    task = resolve_task(task)
    techs = build_techniques(techniques)
    dist = distributed.context()
    device = distributed.local_device(resolve_device(device), dist)
    if device.type == "cuda":  # set_device needs an index: plain "cuda" is the current GPU
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    data = load_task_data(task, seed)
    check_labels(task, data)
    if task.epochs < 1 or task.batch_size < 1:
        raise ConfigError(f"task '{task.name}': epochs and batch_size must be >= 1")
    if not data.is_classification and task.loss_fn is None:
        raise ConfigError(f"task '{task.name}': its data has no classes (num_classes=None); give the Task a loss_fn "
                          f"(and an evaluate for its metrics)")
    if task.loss_fn is not None and task.label_smoothing:
        raise ConfigError(f"task '{task.name}': label_smoothing applies to the built-in cross-entropy only, "
                          f"not to the task's own loss_fn")
    if task.batch_size % dist.world_size:
        raise ConfigError(f"batch size {task.batch_size} is not divisible by {dist.world_size} processes")

    torch.manual_seed(seed)
    model = check_model(task.name, call_user(task.make_model, "make_model", task.name, data.input_shape,
                                             data.num_classes, **dict(task.model_kwargs)), task.make_model)
    if isinstance(model, nn.Module):
        from trainlab.training.requirements import technique_unmet

        for t in techs:
            reason = technique_unmet(t, task, data, model)
            if reason:
                raise ConfigError(f"task '{task.name}': {reason}")
    for t in techs:
        model = t.prepare(model, task)
    model.to(device)
    train_model = distributed.wrap(model, dist, device)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    for t in techs:
        optimizer = t.make_optimizer(params, task) or optimizer
    optimizer = optimizer or build_optimizer(task, params)

    n_train = len(data.train_y)
    steps_per_epoch = max(1, n_train // task.batch_size)  # the last partial batch is dropped
    total_steps = steps_per_epoch * task.epochs
    scheduler = None
    for t in techs:
        scheduler = t.make_scheduler(optimizer, task, total_steps) or scheduler
    scheduler = scheduler or build_scheduler(task, optimizer, total_steps, steps_per_epoch)

    state = TrainState(
        epochs=task.epochs, steps_per_epoch=steps_per_epoch, num_classes=data.num_classes, num_train=n_train,
        seed=seed, device=device, model=model, optimizer=optimizer,
        generator=torch.Generator().manual_seed(seed + 12_345), task=task, loss_fn=_loss_fn(task), data=data,
    )
    return RunSetup(task, techs, model, train_model, optimizer, scheduler, state, params, data, dist)


def run_training(
    task: Task | str,
    techniques: Sequence[TechniqueLike] = (),
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    keep_state: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    stop_after_epochs: int | None = None,
) -> RunResult:
    """Train `task` with `techniques` for one seed and return its RunResult.

    checkpoint: write a checkpoint there after every epoch (atomically). resume: continue from it
    if it exists. stop_after_epochs: stop early after that many epochs (to simulate interruption).
    A non-finite loss ends the run with status "diverged" (and the step) instead of raising.
    """
    task = resolve_task(task)
    run = setup_run(task, techniques, seed, device)
    task, techs, model, train_model, optimizer, scheduler, state, params, data, dist = (
        run.task, run.techniques, run.model, run.train_model, run.optimizer, run.scheduler, run.state, run.params,
        run.data, run.dist)
    device, n_train, steps_per_epoch = state.device, state.num_train, state.steps_per_epoch
    history: list[dict[str, float]] = []
    start_epoch = 0
    identity = {"task": task.name, "seed": seed, "techniques": [t.name for t in techs]}
    if checkpoint is not None and resume and Path(checkpoint).exists():
        ck = load_checkpoint(checkpoint)
        if ck.get("identity") != identity:
            raise CheckpointError(f"checkpoint '{checkpoint}' belongs to another run ({ck.get('identity')})")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        for t, s in zip(techs, ck["techniques"]):
            t.load_state_dict(s)
        torch.set_rng_state(ck["rng"])
        state.generator.set_state(ck["generator"])
        state.step, start_epoch, history = ck["step"], ck["epoch"], list(ck["history"])

    for t in techs:
        t.on_train_start(model, optimizer, state)

    timing = _Timing()
    status, diverged_step = "finished", None
    train_x, train_y = data.train_x, data.train_y
    classification = data.is_classification  # train_acc only for class labels
    bar = _progress_bar(progress and dist.is_main, task, start_epoch)
    try:
        for epoch in range(start_epoch, task.epochs):
            state.epoch = epoch
            state.epoch_metrics = {}
            train_model.train()
            order = torch.randperm(n_train, generator=_epoch_generator(seed, epoch, 0))
            aug_gen = _epoch_generator(seed, epoch, 1)
            loss_sum, correct, seen = 0.0, 0, 0
            epoch_start = time.perf_counter()
            for b in range(steps_per_epoch):
                t0 = time.perf_counter()
                idx = order[b * task.batch_size:(b + 1) * task.batch_size]
                idx = distributed.shard(idx, dist)
                x = augment(task.augment, train_x[idx], aug_gen).to(device, non_blocking=True)
                batch = Batch(inputs=x, targets=train_y[idx].to(device), indices=idx.to(device))
                loss, outputs, batch = train_step(model, train_model, techs, optimizer, scheduler, state, batch, params)
                if loss is None:
                    status, diverged_step = "diverged", state.step
                    break
                state.step += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timing.step_seconds.append(time.perf_counter() - t0)
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
                if classification:
                    correct += int((outputs.detach().argmax(1) == batch.labels).sum())
                if bar is not None:
                    bar.advance(epoch, b + 1, steps_per_epoch, loss_sum / max(seen, 1))
            if status == "diverged":
                break
            train_seconds = time.perf_counter() - epoch_start
            for t in techs:
                t.on_epoch_end(model, state)
            row = _epoch_row(epoch, model, data, task, device, state, loss_sum, correct, seen, optimizer, train_seconds,
                             history)
            history.append(row)
            if on_epoch is not None and dist.is_main:
                on_epoch(row)
            if bar is not None:
                bar.epoch_done(row)
            if checkpoint is not None and dist.is_main:
                save_checkpoint(checkpoint, {
                    "format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch + 1, "step": state.step,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "techniques": [t.state_dict() for t in techs],
                    "rng": torch.get_rng_state(), "generator": state.generator.get_state(), "history": history,
                })
            if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs:
                break
    finally:
        if bar is not None:
            bar.close()

    final = dict(history[-1]) if history else {}
    if status == "diverged":
        final = {"epoch": len(history), "train_loss": float("nan"), "test_loss": float("nan"),
                 **({"chance_acc": 1.0 / data.num_classes} if data.is_classification else {}),
                 **{k: v for k, v in _evaluate_all(model, data, task, device).items()
                    if k.endswith("acc") or k.endswith("top_class_frac")}}
    for t in techs:
        t.on_train_end(model, state)
    return RunResult(
        status=status, epochs=history, final=final, time_per_step=timing.per_step(),
        train_seconds=sum(timing.step_seconds), peak_memory=_peak_memory(device),
        params=sum(p.numel() for p in model.parameters()), trainable_params=sum(p.numel() for p in params),
        optimizer_state_bytes=_optimizer_state_bytes(optimizer), diverged_step=diverged_step,
        data_fingerprint=data.fingerprint(), provenance={**provenance(device, dist.world_size), "train_size": n_train},
        state={k: v.detach().clone() for k, v in model.state_dict().items()} if keep_state else None,
    )


def train_step(model: nn.Module, train_model: nn.Module, techs: Sequence[Technique], optimizer: torch.optim.Optimizer,
               scheduler: Any, state: TrainState, batch: Batch, params: Sequence[nn.Parameter]):
    """One optimizer step with every technique hook. Returns (loss, outputs, batch), or
    (None, outputs, batch) when the loss is not finite (nothing is updated then)."""
    for t in techs:
        batch = t.transform_batch(batch, state)
    state.batch = batch
    outputs = train_model(batch.inputs)
    state.outputs = outputs
    loss = state.loss_fn(outputs, batch.targets)
    for t in techs:
        loss = t.loss(outputs, batch, state, loss)
    if not torch.isfinite(loss.detach()):
        return None, outputs, batch
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for t in techs:
        t.after_backward(model, state)
    if state.task.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, state.task.grad_clip)
    optimizer.step()
    scheduler.step()
    for t in techs:
        t.after_step(model, optimizer, state)
    return loss, outputs, batch


def dry_run(task: Task | str, techniques: Sequence[TechniqueLike] = (), device: str | torch.device = "cpu",
            test_examples: int = 256) -> dict[str, float]:
    """One training step on the first batch, the epoch-end hooks, and one evaluation on the first
    `test_examples` test examples: proves that a task and techniques run together before any real
    run is started, and returns the epoch row such a run reports (its keys are the metrics a claim
    can name). Raises what the run would raise."""
    run = setup_run(task, techniques, 0, device)
    task, data, state = run.task, run.data, run.state
    n = min(task.batch_size, len(data.train_y))
    idx = torch.arange(n)
    for t in run.techniques:
        t.on_train_start(run.model, run.optimizer, state)
    batch = Batch(inputs=data.train_x[idx].to(state.device), targets=data.train_y[idx].to(state.device),
                  indices=idx.to(state.device))
    loss, outputs, batch = train_step(run.model, run.train_model, run.techniques, run.optimizer, run.scheduler,
                                      state, batch, run.params)
    correct = int((outputs.detach().argmax(1) == batch.labels).sum()) if data.is_classification else 0
    for t in run.techniques:
        t.on_epoch_end(run.model, state)
    head = _head(data, n, test_examples)
    return _epoch_row(0, run.model, head, task, state.device, state, float(loss.detach()) * n if loss is not None
                      else float("nan"), correct, n, run.optimizer, 0.0)


def _head(data, n_train: int, n_test: int):
    """The data's first examples (views, nothing copied), for a dry run."""
    import dataclasses

    info = dict(data.info)
    if info.get("source_test_x") is not None:
        info["source_test_x"] = info["source_test_x"][:n_test]
    if info.get("train_domain_index") is not None:   # a multi-domain task: keep the domain of each row aligned
        info["train_domain_index"] = info["train_domain_index"][:n_train]
    clean = data.clean_train_y[:n_train] if data.clean_train_y is not None else None
    return dataclasses.replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                               test_x=data.test_x[:n_test], test_y=data.test_y[:n_test], clean_train_y=clean, info=info)


def _evaluate_all(model: nn.Module, data, task: Task, device: torch.device) -> dict[str, float]:
    out = {f"test_{k}": v for k, v in evaluate_task(model, data.test_x, data.test_y, task, device,
                                                     data.is_classification).items()}
    source_x = data.info.get("source_test_x")
    if source_x is not None:  # a shifted target domain: also report the source domain
        src = evaluate_task(model, source_x, data.test_y, task, device, data.is_classification)
        out.update({f"source_test_{k}": v for k, v in src.items() if k == "acc" or not data.is_classification})
    if data.is_classification and data.info.get("domains") is not None:  # a multi-domain task: every domain
        from trainlab.tasks.domains import domain_metrics

        out.update(domain_metrics(model, data, task, device))
    return out


def _epoch_row(epoch, model, data, task, device, state, loss_sum, correct, seen, optimizer, seconds,
               history: Sequence[dict[str, float]] = ()) -> dict[str, float]:
    row: dict[str, float] = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1)}
    if data.is_classification:
        row["train_acc"] = correct / max(seen, 1)
    row.update(_evaluate_all(model, data, task, device))
    if data.is_classification:
        row["chance_acc"] = 1.0 / data.num_classes
    if "val_acc" in row and data.info.get("domains") is not None:  # training-domain validation selection
        from trainlab.tasks.domains import select_by_validation

        row.update(select_by_validation([*history, row]))
    if data.clean_train_y is not None:  # label noise: record memorization (for regime preconditions)
        row.update(noisy_label_fit(model, data.train_x, data.train_y, data.clean_train_y, task.eval_batch_size, device))
    row["lr"] = float(optimizer.param_groups[0]["lr"])
    row["train_seconds"] = seconds
    for k, v in state.epoch_metrics.items():
        row[k] = float(v)
    return row


class _progress_bar:
    """A rich progress bar over steps, with per-epoch metric lines."""

    def __new__(cls, enabled: bool, task: Task, start_epoch: int):
        if not enabled:
            return None
        return super().__new__(cls)

    def __init__(self, enabled: bool, task: Task, start_epoch: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True, soft_wrap=True)
        self.task = task
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console, transient=True,
        )
        self.progress.start()
        self.bar = self.progress.add_task(f"epoch {start_epoch + 1}/{task.epochs}", total=None, info="")

    def advance(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.progress.update(self.bar, description=f"epoch {epoch + 1}/{self.task.epochs}", completed=step,
                             total=steps, info=f"loss {loss:.4f}")

    def epoch_done(self, row: dict[str, float]) -> None:
        main = [("train_loss", "train_loss"), ("train_acc", "train_acc"), ("test_loss", "test_loss"),
                ("test_acc", "test_acc"), ("test_ece", "ece")]
        shown = {"epoch", "lr", "train_seconds", "chance_acc", "test_top_class_frac"} | {k for k, _ in main}
        parts = [f"{label} {row[k]:.4f}" for k, label in main if k in row]
        parts += [f"{k} {v:.4g}" for k, v in row.items() if k not in shown]
        self.progress.console.print(
            f"epoch {int(row['epoch']):3d}/{self.task.epochs}  {'  '.join(parts)}  lr {row['lr']:.3g}  "
            f"{row['train_seconds']:.1f}s"
        )

    def close(self) -> None:
        self.progress.stop()
