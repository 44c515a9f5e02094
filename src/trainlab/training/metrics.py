"""Evaluation metrics: loss, accuracy, expected calibration error."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al., 2017): sum_b |B|/n * |acc(B) - conf(B)|."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    # bin b holds confidences in (edges[b], edges[b+1]]; confidence 0 cannot occur for a softmax
    idx = torch.clamp(torch.bucketize(conf, edges[1:-1], right=False), 0, bins - 1)
    n = conf.numel()
    ece = torch.zeros((), device=probs.device)
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.sum() / n * (correct[m].mean() - conf[m].mean()).abs()
    return float(ece)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    logits = []
    for i in range(0, len(x), batch_size):
        logits.append(model(x[i:i + batch_size].to(device)).float())
    model.train(was_training)
    out = torch.cat(logits)
    y = y.to(out.device)
    probs = out.softmax(dim=1)
    finite = bool(torch.isfinite(out).all())
    pred = out.argmax(dim=1)
    return {
        "loss": float(F.cross_entropy(out, y)) if finite else float("nan"),
        "acc": float((pred == y).float().mean()),
        "ece": expected_calibration_error(probs, y) if finite else float("nan"),
        # share of the most frequent predicted class: 1.0 means constant predictions (a collapsed model)
        "top_class_frac": float(torch.bincount(pred).max() / max(len(pred), 1)) if len(pred) else float("nan"),
    }


@torch.no_grad()
def noisy_label_fit(model: torch.nn.Module, x: torch.Tensor, noisy_y: torch.Tensor, clean_y: torch.Tensor,
                    batch_size: int, device: torch.device) -> dict[str, float]:
    """How far a model has memorized noisy training labels (eval mode, no augmentation).

    train_noisy_acc: accuracy against the labels it was trained on (noisy); train_clean_acc: against
    the true labels; train_memorized: among the flipped examples, the share predicted as their
    (wrong) training label. Early learning fits the clean labels (train_memorized near 0);
    memorization drives train_memorized toward 1 and train_noisy_acc above the clean fraction."""
    was_training = model.training
    model.eval()
    pred = torch.cat([model(x[i:i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    flipped = noisy_y != clean_y
    return {
        "train_noisy_acc": float((pred == noisy_y).float().mean()),
        "train_clean_acc": float((pred == clean_y).float().mean()),
        "train_memorized": float((pred[flipped] == noisy_y[flipped]).float().mean()) if flipped.any() else 0.0,
    }


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def batched_outputs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 1024):
    """Yield (outputs, targets) batch by batch, inputs and targets moved to the model's device:
    the building block of a task's own `evaluate(model, x, y)`. Call it under torch.no_grad()."""
    device = model_device(model)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size].to(device))
        yield out, (y[i:i + batch_size].to(device) if y is not None else None)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, batch_size: int) -> float:
    """The mean of loss_fn over the examples (each batch's mean loss weighted by its size)."""
    total, n = 0.0, 0
    for out, target in batched_outputs(model, x, y, batch_size):
        total += float(loss_fn(out, target)) * len(target)
        n += len(target)
    return total / max(n, 1)


def evaluate_task(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task, device: torch.device,
                  classification: bool) -> dict[str, float]:
    """The test metrics of a task (without the "test_" prefix): the task's own `evaluate` when it
    gives one; else loss, accuracy, calibration and the top-class share for classification; else
    the mean of the task's loss_fn as "loss"."""
    from trainlab.errors import ConfigError

    if task.evaluate is None:
        if classification:
            return evaluate(model, x, y, task.eval_batch_size, device)
        was_training = model.training
        model.eval()
        try:
            return {"loss": mean_loss(model, x, y, task.loss_fn, task.eval_batch_size)}
        finally:
            model.train(was_training)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = task.evaluate(model, x, y)
    finally:
        model.train(was_training)
    if not isinstance(out, dict) or not out:
        raise ConfigError(f"task '{task.name}': evaluate must return a dict of metric name -> number, got {out!r:.80}")
    metrics: dict[str, float] = {}
    for k, v in out.items():
        try:
            metrics[str(k)] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"task '{task.name}': evaluate returned a non-number for '{k}': {v!r:.60}") from None
    return metrics
