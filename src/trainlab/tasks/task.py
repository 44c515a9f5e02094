"""The Task: data + model + budget. Named tasks and users' own tasks are both Task objects.

A user's own task is a Task built in their Python file:

    from trainlab import Task, DataBundle

    def my_data(**kw) -> DataBundle:            # tensors in memory
        ...
        return DataBundle(train_x, train_y, test_x, test_y, num_classes=10, name="my-data")

    def my_model(input_shape, num_classes, **kw) -> torch.nn.Module:
        ...

    cifar_small = Task("cifar-small", make_data=my_data, make_model=my_model,
                       epochs=5, batch_size=128, optimizer="sgd", lr=0.05)

and named on the command line as `my_tasks.py:cifar_small`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from trainlab.errors import ConfigError


@dataclass
class DataBundle:
    """A dataset held in memory as tensors.

    train_x/test_x: inputs, any shape [N, ...]. train_y/test_y: targets, one per input.
    Classification (num_classes given): targets are integer class indices [N] (torch.long).
    Any other task (num_classes=None: regression, multi-label, segmentation, language modelling):
    targets are any tensors [N, ...]; the Task then gives its own `loss_fn` (and `evaluate`).
    clean_train_y: the labels before any label noise was applied (for analysis), or None.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int | None = None
    name: str = "data"
    clean_train_y: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in ("train_x", "train_y", "test_x", "test_y"):
            if not isinstance(getattr(self, part), torch.Tensor):
                raise ConfigError(f"data '{self.name}': {part} must be a torch.Tensor, got {type(getattr(self, part)).__name__}")
        if len(self.train_x) != len(self.train_y) or len(self.test_x) != len(self.test_y):
            raise ConfigError(f"data '{self.name}': inputs and labels differ in length")
        if self.num_classes is None:
            return
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, numbers.Integral) or self.num_classes < 1:
            raise ConfigError(f"data '{self.name}': num_classes must be a whole number >= 1 or None, got {self.num_classes!r}")
        self.num_classes = int(self.num_classes)
        if self.train_y.dtype != torch.long or self.test_y.dtype != torch.long:
            raise ConfigError(f"data '{self.name}': labels must be integer class indices (torch.long); for "
                              f"other targets give num_classes=None and a loss_fn on the Task")
        if self.train_y.dim() != 1 or self.test_y.dim() != 1:
            raise ConfigError(f"data '{self.name}': class labels must have shape [N] (got {list(self.train_y.shape)}); "
                              f"for other targets give num_classes=None and a loss_fn on the Task")

    @property
    def is_classification(self) -> bool:
        """True when targets are integer class indices (num_classes given)."""
        return self.num_classes is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of one target ([] for a class index)."""
        return tuple(self.train_y.shape[1:])

    def fingerprint(self) -> str:
        """A short hash of the exact tensors, so results can be tied to their data."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            t = t.contiguous().cpu()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Task:
    """Data + model + training budget.

    make_data(**data_kwargs) -> DataBundle
    make_model(input_shape, num_classes, **model_kwargs) -> nn.Module (num_classes is None for a
        task that is not classification)
    loss_fn(outputs, targets) -> scalar tensor: the training loss. None: cross-entropy on class
        indices (with label_smoothing). Required when the data is not classification.
    evaluate(model, x, y) -> {"metric": value, ...}: the test metrics, called after every epoch
        with the model in eval mode under torch.no_grad, and the test inputs and targets (CPU
        tensors; move batches to the model's device, see trainlab.training.metrics.batched_outputs).
        Keys are stored with a "test_" prefix ("ppl" -> "test_ppl"), so claims can name them.
        None: loss, accuracy, calibration error for classification; the mean of loss_fn otherwise.
    holdout_validation: a fraction f in (0, 1) turns the run into a tuning run: it trains on the
    training set minus its last f of a seed-fixed permutation and evaluates on that held-out slice
    in the test split's place (trainlab.tasks.wrappers.holdout_split); the test set is not used.
    Data wrappers (train_subset, label_noise, noise_kind, imbalance, shift) are applied by
    trainlab.tasks.wrappers after make_data, so they work for any task (label noise and
    imbalance need class labels, shift needs images or signals).
    """

    name: str
    make_data: Callable[..., DataBundle]
    make_model: Callable[..., nn.Module]
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"          # sgd | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"        # cosine | constant | onecycle | step
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    augment: str | None = None      # None | "crop-flip" (images) | "shift" (1-D signals)
    eval_batch_size: int = 1024
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # data wrappers
    train_subset: int | None = None
    label_noise: float = 0.0
    noise_kind: str = "symmetric"   # symmetric (to another class) | symmetric-all (from all classes) | pairwise
    imbalance: float | None = None  # ratio of rarest to most frequent class, e.g. 0.1
    shift: str | None = None        # None | "rotate" | "invert": evaluate on a shifted test domain
    # hyper-parameter tuning runs: train on all but a held-out fraction of the training set and
    # evaluate ("test_*" metrics) on that fraction; 0.0 = the usual train/test data
    holdout_validation: float = 0.0
    description: str = ""
    suite_seconds: float | None = None  # measured time of one run here, for planning
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    evaluate: Callable[..., Mapping[str, float]] | None = None

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> "Task":
        """A copy with some fields replaced; dict fields (data_kwargs, model_kwargs) are merged."""
        if not overrides:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in names:
                raise ConfigError(f"task '{self.name}' has no setting '{key}' (known: {', '.join(sorted(names))})")
            if key in ("data_kwargs", "model_kwargs"):
                value = {**getattr(self, key), **value}
            changes[key] = value
        return dataclasses.replace(self, **changes)

    def budget(self) -> dict[str, Any]:
        skip = {"make_data", "make_model", "description", "suite_seconds", "loss_fn", "evaluate"}
        if not self.holdout_validation:  # unset: left out, so run keys made before the field stay the same
            skip.add("holdout_validation")
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)
