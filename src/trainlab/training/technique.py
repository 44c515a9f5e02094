"""The technique protocol: fixed hook points through which a technique plugs into the Trainer.

A technique is a small object with metadata (name, family, paper, what it modifies) and hooks.
Every hook has a do-nothing default, so a technique overrides only the hooks it needs.
Hooks are called in this order each step, for every technique in the run's composed order:

    prepare(model, task)                  once, after the model is built and seeded
    make_optimizer(params, task)          once; at most one technique may return an optimizer
    on_train_start(model, optimizer, state)
    per step:
        transform_batch(batch, state)     e.g. mixup; returns a (new) Batch
        loss(outputs, batch, state, base_loss)   returns the loss to backpropagate
        after_backward(model, state)      e.g. gradient noise, TrAct's first-layer fix
        after_step(model, optimizer, state)      e.g. projections
    on_epoch_end(model, state)            after the epoch's steps, BEFORE its evaluation;
                                          may change the model (e.g. prune) and put
                                          metrics into state.epoch_metrics
    on_train_end(model, state)            once, after the last evaluation

`modifies` declares what a technique touches. Resources in EXCLUSIVE (the optimizer, the model
architecture's normalization layers, the base loss) may be claimed by one technique only;
two techniques claiming the same exclusive resource are refused with a message naming both.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

from trainlab.errors import ConfigError

#: What a technique may declare in `modifies`.
RESOURCES = frozenset(
    {"model", "norm_layers", "batch", "loss", "loss_objective", "gradients", "optimizer", "schedule", "weights"}
)
#: Resources only one technique of a run may claim.
#:  - optimizer: the technique builds the optimizer (make_optimizer)
#:  - loss_objective: the technique replaces the training objective (e.g. ELR, PS-KD, SSO)
#:  - norm_layers: the technique replaces the model's normalization layers
#:  - schedule: the technique sets the learning-rate schedule
EXCLUSIVE = frozenset({"optimizer", "loss_objective", "norm_layers", "schedule"})


#: How close a technique is to its paper (shown beside every verdict):
#:  exact     matches the official code; a test compares against values or formulas taken from it
#:  faithful  follows the paper's text; no official code was found
#:  variant   a core part is this project's own choice (listed in `deviations`)
#:  stand-in  the paper's method could not be read; a placeholder with the same intent
#:  control   not a paper's method: a harness control (sanity checks)
FIDELITY_LEVELS = ("exact", "faithful", "variant", "stand-in", "control")


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    arxiv: str | None = None
    url: str | None = None

    def cite(self) -> str:
        ref = f"arXiv:{self.arxiv}" if self.arxiv else (self.url or "")
        return f"{self.authors} ({self.year}). {self.title}. {ref}".strip()


@dataclass
class Batch:
    """One training batch.

    inputs: model input tensor. targets: class indices (long, shape [B]) or, after mixing,
    class probabilities (float, shape [B, C]). indices: positions of the samples in the
    training set (always provided by the Trainer; used by per-sample methods such as ELR).
    labels: the original integer labels, kept when targets become soft. meta: free-form
    values a technique passes to a later hook (e.g. mixup's lambda and permutation).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = self.targets

    def replace(self, **changes: Any) -> "Batch":
        return dataclasses.replace(self, **changes)


@dataclass
class TrainState:
    """What the Trainer knows during a run, shared with the techniques' hooks."""

    epoch: int = 0            # 0-based, current epoch
    epochs: int = 0           # planned number of epochs
    step: int = 0             # global optimizer step count so far
    steps_per_epoch: int = 0
    num_classes: int = 0
    num_train: int = 0
    seed: int = 0
    device: torch.device = torch.device("cpu")
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    outputs: torch.Tensor | None = None     # outputs of the current step's forward pass
    batch: Batch | None = None               # the current step's (transformed) batch
    task: Any = None                         # the Task being trained
    data: Any = None                         # the run's DataBundle (train and test tensors)
    loss_fn: Any = None                      # base loss: loss_fn(outputs, targets) -> scalar
    #: generator for a technique's own randomness; seeded per run, separate from data order
    generator: torch.Generator | None = None
    #: metrics a technique reports for the current epoch (merged into the epoch's row)
    epoch_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return self.step / max(1, self.total_steps)


class Technique:
    """Base class of every technique. Subclasses set the class attributes and override hooks.

    Settings are keyword arguments of the constructor; `settings()` returns them for provenance.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[Paper | None] = None
    #: one of FIDELITY_LEVELS; variant and stand-in list their `deviations` from the paper
    fidelity: ClassVar[str] = ""
    deviations: ClassVar[tuple[str, ...]] = ()
    #: for "exact": what the comparison with the official code is (the test, the reference)
    fidelity_evidence: ClassVar[str] = ""
    #: raised when the technique's behaviour changes for the same settings, so that runs stored
    #: by an older version are not reused as if they were runs of this one (it enters run keys)
    version: ClassVar[int] = 1
    modifies: ClassVar[frozenset[str]] = frozenset()
    #: lower runs first in the composed order (batch transforms, loss wrapping, gradient hooks)
    order: ClassVar[int] = 50
    #: names of techniques this one cannot be combined with, beyond the exclusive resources
    incompatible_with: ClassVar[frozenset[str]] = frozenset()
    #: True if the technique needs sample indices or other Trainer features; informational
    summary: ClassVar[str] = ""
    #: what the task must offer (trainlab.training.requirements): "classification", "spatial",
    #: "images", "conv", "norm_layers"; checked before training, so a misfit is refused in one line
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **settings: Any) -> None:
        self._settings = dict(settings)

    @classmethod
    def check_applicable(cls, task: Any, data: Any, model: nn.Module | None) -> str | None:
        """Why this technique cannot run on this task (its DataBundle and freshly built model; model
        None = not built yet), or None when it can. The default checks `requires`; override it for
        other needs. The reason follows the technique's name: "needs image inputs ..."."""
        from trainlab.training.requirements import unmet

        return unmet(cls.requires, task, data, model)

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    # ---- hooks -------------------------------------------------------------------------
    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        return model

    def make_optimizer(self, params: Iterable[nn.Parameter] | Sequence[dict], task: Any) -> torch.optim.Optimizer | None:
        return None

    def make_scheduler(self, optimizer: torch.optim.Optimizer, task: Any, total_steps: int) -> Any:
        """Return a per-step LR scheduler, or None for the task's default schedule."""
        return None

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        pass

    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        return batch

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        return base_loss

    def after_backward(self, model: nn.Module, state: TrainState) -> None:
        pass

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        pass

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        pass

    # ---- checkpointing of technique state (tensors and plain values only) ---------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"{type(self).__name__}({args})"


def check_compatible(techniques: Sequence[Technique]) -> list[Technique]:
    """Refuse conflicting combinations; return the techniques in their composed order."""
    owners: dict[str, Technique] = {}
    names = [t.name for t in techniques]
    for t in techniques:
        unknown = set(t.modifies) - RESOURCES
        if unknown:
            raise ConfigError(f"technique '{t.name}' declares unknown resources {sorted(unknown)}")
        if names.count(t.name) > 1:
            raise ConfigError(f"technique '{t.name}' is given twice")
        for other in techniques:
            if other is not t and other.name in t.incompatible_with:
                raise ConfigError(f"techniques '{t.name}' and '{other.name}' cannot be combined")
        for res in t.modifies & EXCLUSIVE:
            if res in owners:
                raise ConfigError(
                    f"techniques '{owners[res].name}' and '{t.name}' cannot be combined: both replace the {res.replace('_', ' ')}"
                )
            owners[res] = t
    return sorted(techniques, key=lambda t: t.order)
