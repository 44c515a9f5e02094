"""What a technique needs from a task, its data and its model, checked before any training.

A technique declares its needs in its class attribute `requires` (a set of the names below) and,
for anything else, overrides the class method `check_applicable(task, data, model)`; both answer
with a reason in words, or None when the technique can run. The harness asks before it trains a
claim on a user's task, and the Trainer asks before a run, so a technique that cannot work on a
task says why in one line instead of failing (or silently doing something else) in every run.

    classification  integer class labels (the data has num_classes) and the built-in cross-entropy
                    loss: the technique mixes, smooths or rewrites class-probability targets
    spatial         inputs with a channel axis and one or two spatial axes, [N, C, L] or
                    [N, C, H, W] (signals or images): the technique cuts or moves regions
    images          image inputs [N, C, H, W]
    conv            the model has convolution layers
    norm_layers     the model has normalization layers with affine parameters
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

from trainlab.errors import ConfigError


def _describe_targets(data: Any) -> str:
    y = data.train_y
    return f"targets of shape {list(y.shape[1:]) or 'scalar'} ({str(y.dtype).replace('torch.', '')})"


def _classification(task: Any, data: Any, model: nn.Module | None) -> str | None:
    if not data.is_classification:
        return f"needs a classification task (integer class labels); '{task.name}' has {_describe_targets(data)}"
    if getattr(task, "loss_fn", None) is not None:
        return (f"needs the built-in cross-entropy loss on class labels; '{task.name}' gives its own loss_fn "
                f"({getattr(task.loss_fn, '__name__', type(task.loss_fn).__name__)})")
    return None


def _spatial(task: Any, data: Any, model: nn.Module | None) -> str | None:
    shape = list(data.input_shape)
    if len(shape) not in (2, 3) or not data.train_x.is_floating_point():
        return (f"needs image or signal inputs [N, C, H, W] or [N, C, L]; '{task.name}' has inputs "
                f"[N, {', '.join(map(str, shape))}] ({str(data.train_x.dtype).replace('torch.', '')})")
    return None


def _images(task: Any, data: Any, model: nn.Module | None) -> str | None:
    shape = list(data.input_shape)
    if len(shape) != 3 or not data.train_x.is_floating_point():
        return f"needs image inputs [N, C, H, W]; '{task.name}' has inputs [N, {', '.join(map(str, shape))}]"
    return None


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv(task: Any, data: Any, model: nn.Module | None) -> str | None:
    if model is not None and not any(isinstance(m, _CONV) for m in model.modules()):
        return f"needs convolution layers; the model of '{task.name}' ({type(model).__name__}) has none"
    return None


def _norm_layers(task: Any, data: Any, model: nn.Module | None) -> str | None:
    if model is None:
        return None
    from trainlab.techniques.normalization.bn_only import norm_parameters

    if not norm_parameters(model):
        return (f"needs normalization layers with affine parameters; the model of '{task.name}' "
                f"({type(model).__name__}) has none")
    return None


#: requirement name -> check(task, data, model) -> reason or None
REQUIREMENTS: dict[str, Callable[[Any, Any, nn.Module | None], str | None]] = {
    "classification": _classification,
    "spatial": _spatial,
    "images": _images,
    "conv": _conv,
    "norm_layers": _norm_layers,
}


def unmet(requires: Iterable[str], task: Any, data: Any, model: nn.Module | None = None) -> str | None:
    """The first unmet requirement's reason, or None. model=None skips the model's requirements."""
    for name in sorted(requires):
        check = REQUIREMENTS.get(name)
        if check is None:
            raise ConfigError(f"unknown requirement '{name}' (known: {', '.join(sorted(REQUIREMENTS))})")
        reason = check(task, data, model)
        if reason:
            return reason
    return None


def technique_unmet(technique: Any, task: Any, data: Any, model: nn.Module | None = None) -> str | None:
    """Why a technique (class or instance) cannot run on this task, data and model, or None.
    The reason starts with the technique's name, e.g. "mixup needs a classification task ..."."""
    cls = technique if isinstance(technique, type) else type(technique)
    reason = cls.check_applicable(task, data, model)
    return f"{cls.name} {reason}" if reason else None


def data_unmet(task: Any, data: Any) -> str | None:
    """Why the task's own data settings cannot apply to this data (label noise and class
    imbalance need class labels; a shifted domain needs images or signals), or None."""
    if not data.is_classification:
        for field, value in (("label_noise", task.label_noise), ("imbalance", task.imbalance)):
            if value:
                return (f"{field}={value:g} needs class labels; '{task.name}' has {_describe_targets(data)}")
    if task.shift:
        return None if data.train_x.is_floating_point() and len(data.input_shape) in (1, 2, 3) else (
            f"shift={task.shift} needs image or signal inputs; '{task.name}' has inputs "
            f"[N, {', '.join(map(str, data.input_shape))}]")
    return None
