"""Optimizers from papers, as ``torch.optim.Optimizer`` subclasses, and their test registry.

Every optimizer module registers an :class:`OptimizerSpec` with :func:`register_optimizer`; the
shared test suite (tests/techniques/test_optimizers.py) is parametrized over
:func:`all_optimizers`, so a registered optimizer is automatically checked for: hand-computed
first steps, convergence on Rosenbrock and a quadratic, a state_dict round trip in which resumed
training continues identically, agreement of every fast path with the single-tensor reference,
and ValueError on bad hyper-parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from trainlab.errors import ConfigError


class HyperparameterError(ConfigError, ValueError):
    """An invalid optimizer setting: a ValueError (torch.optim's convention) that the CLI also
    reports as a one-line configuration error."""


@dataclass(frozen=True)
class HandCase:
    """One step worked out by hand: parameter p0 with gradient grad goes to expected."""

    settings: Mapping[str, Any]
    p0: Sequence
    grad: Sequence
    expected: Sequence
    steps: int = 1  # the same gradient applied this many times
    note: str = ""


@dataclass(frozen=True)
class OptimizerSpec:
    """What the shared optimizer tests need to know about one optimizer.

    example: settings that converge on the test problems (Rosenbrock in 2-D, a quadratic).
    invalid: settings that must raise ValueError. fast_paths: constructor flags of each fast path
    that must match the single-tensor reference (`reference`) to float32 rounding.
    matrix_params: the optimizer treats 2-D parameters specially (tests also use a 2-D problem).
    """

    name: str
    cls: type[torch.optim.Optimizer]
    example: Mapping[str, Any]
    hand_cases: tuple[HandCase, ...] = ()
    invalid: tuple[Mapping[str, Any], ...] = ()
    fast_paths: tuple[Mapping[str, Any], ...] = ()
    reference: Mapping[str, Any] = field(default_factory=dict)
    rosenbrock_steps: int = 3000
    rosenbrock_tol: float = 5e-2
    quadratic_steps: int = 500
    quadratic_tol: float = 1e-2
    build: Callable[..., torch.optim.Optimizer] | None = None

    def make(self, params: Any, **settings: Any) -> torch.optim.Optimizer:
        return (self.build or self.cls)(params, **settings)


_OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    existing = _OPTIMIZERS.get(spec.name)
    if existing is not None and existing.cls is not spec.cls:
        raise TypeError(f"optimizer '{spec.name}' registered twice")
    _OPTIMIZERS[spec.name] = spec
    return spec


def all_optimizers() -> dict[str, OptimizerSpec]:
    """Every registered optimizer (importing all technique modules first)."""
    from trainlab.techniques.registry import load_all

    load_all()
    return dict(sorted(_OPTIMIZERS.items()))
