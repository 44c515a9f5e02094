"""Checks of what a user hands to the trainer: the device, their data and model functions, the
labels. Each problem becomes one ConfigError naming what is wrong, never a traceback from deep
inside a training step."""
from __future__ import annotations

import inspect
import traceback
from typing import Any, Callable

import torch
from torch import nn

from trainlab.errors import ConfigError, UserError


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device that this machine has: 'cpu', 'cuda', 'cuda:1', 'mps', ..."""
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device '{device}' (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cpu" or dev.type == "meta":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"device '{device}': no CUDA GPU is available (torch {torch.__version__}, {build}); "
                              "use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device '{device}': this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return dev
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ConfigError(f"device '{device}' is not available on this machine (use cpu"
                          + (", cuda" if torch.cuda.is_available() else "") + ")")
    return dev


def _describe(fn: Callable[..., Any]) -> str:
    return (getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__) + "()"


def call_user(fn: Callable[..., Any], role: str, task_name: str, *args: Any, **kwargs: Any) -> Any:
    """Call a task's own function (role: "make_data" or "make_model"). Arguments it does not take
    and any exception it raises become one ConfigError that names the function and its error;
    trainlab's own errors (UserError) raised inside pass through unchanged."""
    kind = "data" if role == "make_data" else "model"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            raise ConfigError(f"task '{task_name}': bad {kind} settings ({e})") from None
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as e:  # the user's code failed: name it, and where
        where = ""
        code = getattr(fn, "__code__", None)
        frames = traceback.extract_tb(e.__traceback__)[1:]  # [0] is this call
        own = [f for f in frames if code is not None and f.filename == code.co_filename]
        if own or frames:
            f = (own or frames)[-1]
            where = f" ({f.filename}, line {f.lineno})"
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"task '{task_name}': its {role} function {_describe(fn)} raised "
                          f"{type(e).__name__}{': ' + message if message else ''}{where}") from None


def check_model(task_name: str, model: Any, make_model: Callable[..., Any]) -> nn.Module:
    if not isinstance(model, nn.Module):
        code = getattr(make_model, "__code__", None)
        where = f" ({code.co_filename})" if code is not None else ""
        raise ConfigError(f"task '{task_name}': its make_model function {_describe(make_model)}{where} returned "
                          f"{type(model).__name__}, not a torch.nn.Module")
    return model


def check_labels(task: Any, data: Any) -> None:
    """Class-index labels must lie in [0, num_classes) (cross-entropy's requirement). Tasks with
    their own loss, and labels that are not integer tensors, are left to that loss."""
    n = getattr(data, "num_classes", None)
    if getattr(task, "loss_fn", None) is not None or not isinstance(n, int) or n < 1:
        return
    for part, y in (("training", data.train_y), ("test", data.test_y)):
        if not torch.is_tensor(y) or y.numel() == 0 or y.dtype.is_floating_point or y.dtype == torch.bool \
                or y.dtype.is_complex:
            continue
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n:
            bad = hi if hi >= n else lo
            raise ConfigError(f"task '{task.name}': {part} label {bad} is outside 0..{n - 1} (num_classes={n} in "
                              f"data '{data.name}'); labels must be class indices below num_classes")
