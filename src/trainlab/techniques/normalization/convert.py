"""Model surgery: replace the normalization layers of any ``nn.Module`` by another norm.

Not a paper's technique; it is how the normalization techniques of this family (BCN, EvoNorm,
PowerNorm, Unified Normalization, ...) get into models that were built with BatchNorm, GroupNorm
or LayerNorm, whether trainlab built them or not.

``convert_norms(model, to, **settings)`` walks the model and replaces, in place,

* ``nn.BatchNorm1d/2d/3d`` (not SyncBatchNorm) and ``nn.GroupNorm``: channel-first layers that see
  ``[N, C, ...]``; the new layer is built for channel-first input (``dims`` 1 for BatchNorm1d, 2
  otherwise: the layers here accept any number of trailing axes);
* ``nn.LayerNorm`` over one axis: channel-last ``[..., C]``, ``dims=0``;
* trainlab's ``ChannelLast`` wrapper (a ``[N, C]`` norm applied to channel-last tokens, e.g.
  ``norm="batch"`` in a transformer): replaced as a whole, ``dims=0``;

with a layer of the chosen kind for the same number of channels.

Layouts. A ``BatchNorm1d`` sees either ``[N, C]`` features (an MLP) or ``[N, C, L]`` (a 1-D signal, or
tokens ``[N, L, C]`` transposed for it); which one is known only when data flows, so the layer
built for it (``dims=1``) handles both by the input's rank: on ``[N, C, L]`` it is the norm's usual
channel-first form (statistics over channel groups *and* the L positions), on ``[N, C]`` the
statistics of a group norm (GroupNorm, BCN's channel part, EvoNorm-S0's group variance) are over its
channels alone, so there the groups hold at least 16 channels (trainlab.tasks.norms.
feature_group_count; ``GroupNorm(32, 32)`` on ``[N, 32]`` would normalize single values to constants).
Channel-last tokens ``[N, L, C]`` behind ``LayerNorm`` or ``ChannelLast`` are normalized token by token
(``dims=0``) with the same feature groups. A conversion that cannot compute a normalization over a
meaningful set of values is refused with a ConfigError naming the layer (its path in the model and
old type) and why: at conversion time for ``dims=0`` ("instance", "evonorm-b0": no spatial axis), at
the first forward for a ``[N, C]`` input ("instance", "evonorm-b0", or any group of fewer than 3
values, e.g. "layer" or "group" on ``BatchNorm1d(2)``). ``to`` is a name from
trainlab.tasks.norms (built-in: "batch", "group", "layer", "instance", "none"; added by this family:
"bcn", "bcn-micro", "evonorm-b0", "evonorm-s0", "power", "unified"), or a callable
``factory(num_channels, dims) -> nn.Module``. Settings (``**settings``) are passed to the layer's
builder, for the names of this family that take settings (e.g. ``convert_norms(m, "bcn",
estimate=True, rate=0.01)``). The new layer is moved to the old layer's device and dtype; its
parameters are freshly initialized (statistics of one kind of norm mean nothing to another).

``absorb_activation=True`` also replaces the activation that directly follows each converted norm
inside an ``nn.Sequential`` by ``nn.Identity`` (for layers that are a norm *and* an activation,
such as EvoNorm). Activations that are attributes called from a custom ``forward`` cannot be seen
and stay.

The returned ``ConversionReport`` lists each change as (module path, old type, new type).

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.convert import convert_norms

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
    report = convert_norms(model, "group")     # BatchNorm2d(16) -> GroupNorm(16, 16) (ChannelGroupNorm)
    print(report)                              # 1: BatchNorm2d -> ChannelGroupNorm
    y = model(torch.randn(2, 3, 8, 8))
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainlab.claims.claim import Claim
from trainlab.errors import ConfigError
from trainlab.tasks.norms import (
    ChannelLast,
    for_features_or_signals,
    make_norm,
    norm_names,
    register_norm,
)
from trainlab.techniques.registry import register
from trainlab.training.technique import Technique

#: builders that take settings: name -> builder(num_channels, dims, **settings) -> nn.Module
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
#: modules of this family that add norms when imported
_LAYER_MODULES = (
    "trainlab.techniques.normalization.batch_channel_norm",
    "trainlab.techniques.normalization.evonorm",
    "trainlab.techniques.normalization.power_norm",
    "trainlab.techniques.normalization.unified_norm",
)

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.ELU, nn.Mish, nn.Hardswish, nn.Tanh, nn.Sigmoid,
)
CHANNEL_FIRST_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)


def register_builder(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make `name` a norm: `make_norm(name, ...)` calls `builder(num_channels, dims)` with its default
    settings, and `convert_norms(model, name, **settings)` passes settings to it."""
    register_norm(name, builder)
    _BUILDERS[name] = builder


class ChannelFirst(nn.Module):
    """Applies a channel-last layer (``[..., C]``) to channel-first input ``[N, C, ...]``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.movedim(1, -1)).movedim(-1, 1)


@dataclass(frozen=True)
class Change:
    path: str
    old_type: str
    new_type: str


@dataclass
class ConversionReport:
    """What convert_norms changed: one Change per replaced module (norms and absorbed activations)."""

    target: str
    changes: list[Change] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def __len__(self) -> int:
        return len(self.changes)

    @property
    def converted(self) -> list[Change]:
        return [c for c in self.changes if c.new_type != "Identity (absorbed activation)"]

    def __str__(self) -> str:
        lines = [f"{c.path}: {c.old_type} -> {c.new_type}" for c in self.changes]
        lines += [f"{p}: skipped ({why})" for p, why in self.skipped]
        return "\n".join(lines) if lines else f"no normalization layer converted to {self.target}"


def _type_name(m: nn.Module) -> str:
    if isinstance(m, ChannelLast):
        return f"ChannelLast({type(m.inner).__name__})"
    return type(m).__name__


def _describe(m: nn.Module) -> str:
    channels = getattr(m, "num_features", None) or getattr(m, "num_channels", None)
    if channels is None and isinstance(m, nn.LayerNorm):
        channels = m.normalized_shape[0] if len(m.normalized_shape) == 1 else list(m.normalized_shape)
    return f"{_type_name(m)}({channels})"


def _source_dims(m: nn.Module, kinds: frozenset[str]) -> tuple[int, int] | str | None:
    """(num_channels, dims) if `m` is a norm of a kind to convert; a reason string to skip; None."""
    if isinstance(m, ChannelLast):
        inner_kind = "batch" if isinstance(m.inner, nn.modules.batchnorm._BatchNorm) else "group" \
            if isinstance(m.inner, nn.GroupNorm) else None
        return (m.num_channels, 0) if inner_kind in kinds else None
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and not isinstance(m, nn.SyncBatchNorm):
        return (m.num_features, 1 if isinstance(m, nn.BatchNorm1d) else 2) if "batch" in kinds else None
    if isinstance(m, nn.GroupNorm):
        return (m.num_channels, 2) if "group" in kinds else None
    if isinstance(m, nn.LayerNorm):
        if "layer" not in kinds:
            return None
        if len(m.normalized_shape) != 1:
            return f"LayerNorm over {len(m.normalized_shape)} axes has no single channel axis"
        return (m.normalized_shape[0], 0)
    return None


def _factory(to: str | Callable[[int, int], nn.Module], settings: dict[str, Any]) -> Callable[[int, int], nn.Module]:
    if callable(to):
        if settings:
            raise ConfigError("convert_norms: settings are only for named norms; put them in your factory")
        return to
    if not isinstance(to, str):
        raise ConfigError(f"convert_norms: `to` must be a norm name or a factory, got {to!r}")
    for mod in _LAYER_MODULES:
        importlib.import_module(mod)
    if settings:
        builder = _BUILDERS.get(to)
        if builder is None:
            raise ConfigError(f"convert_norms: norm '{to}' takes no settings (with settings: {', '.join(sorted(_BUILDERS))})")
        return lambda c, dims: builder(c, dims, **settings)
    if to not in norm_names():
        raise ConfigError(f"convert_norms: unknown norm '{to}' (known: {', '.join(norm_names())})")
    return lambda c, dims: make_norm(to, c, dims)


def convert_norms(model: nn.Module, to: str | Callable[[int, int], nn.Module],
                  kinds: Iterable[str] = ("batch", "group", "layer"), absorb_activation: bool = False,
                  **settings: Any) -> ConversionReport:
    """Replace the BatchNorm/GroupNorm/LayerNorm layers of `model` in place; see the module docstring.

    kinds: which source norms to convert ("batch", "group", "layer"). A `model` that is itself a
    norm layer cannot be replaced in place (wrap it in a container).
    """
    kinds = frozenset(kinds)
    unknown = kinds - {"batch", "group", "layer"}
    if unknown:
        raise ConfigError(f"convert_norms: unknown kinds {sorted(unknown)} (batch, group, layer)")
    build = _factory(to, dict(settings))
    report = ConversionReport(target=to if isinstance(to, str) else getattr(to, "__name__", repr(to)))
    if _source_dims(model, kinds) is not None:
        raise ConfigError("convert_norms: the model is itself a norm layer; wrap it in a container to convert it")
    replaced: set[int] = set()  # modules taken out of the model: their insides are not converted
    for parent_path, parent in list(model.named_modules()):
        if id(parent) in replaced:
            replaced.update(id(m) for m in parent.children())
            continue
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            found = _source_dims(child, kinds)
            if found is None:
                continue
            path = f"{parent_path}.{name}" if parent_path else name
            if isinstance(found, str):
                report.skipped.append((path, found))
                continue
            channels, dims = found
            try:
                new = build(channels, dims)
            except TypeError as e:
                raise ConfigError(f"convert_norms: bad settings for '{to}': {e}") from None
            except ConfigError as e:
                raise ConfigError(f"convert_norms: '{path}' ({_describe(child)}) -> '{to}': {e}") from None
            if isinstance(to, str) and isinstance(child, (nn.BatchNorm1d, nn.GroupNorm)):
                new = for_features_or_signals(new)  # it may see [N, C] features as well as [N, C, L]
            where = f"'{path}' ({_describe(child)})"
            for m in new.modules():  # error messages of the new layer name where it sits
                m.converted_from = where
            ref = next(iter(child.parameters()), None)
            ref = ref if ref is not None else next(iter(child.buffers()), None)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            setattr(parent, name, new)
            replaced.add(id(child))
            report.changes.append(Change(path, _type_name(child), _type_name(new)))
            if absorb_activation and isinstance(parent, nn.Sequential) and i + 1 < len(children):
                next_name, next_child = children[i + 1]
                if isinstance(next_child, ACTIVATION_TYPES):
                    setattr(parent, next_name, nn.Identity())
                    next_path = f"{parent_path}.{next_name}" if parent_path else next_name
                    report.changes.append(Change(next_path, type(next_child).__name__, "Identity (absorbed activation)"))
    return report


@register
class ConvertNorms(Technique):
    """Replace the model's BatchNorm/GroupNorm/LayerNorm layers by a named norm."""

    name = "convert-norms"
    version = 2  # 2: correct group statistics on [N, C] features and [N, L, C] tokens (or a refusal)
    family = "normalization"
    paper = None
    fidelity = "control"  # model surgery, not a paper's method: it swaps one norm for another
    modifies = frozenset({"norm_layers"})
    summary = "model surgery: swap every norm layer for another kind (e.g. group, evonorm-s0, bcn)"

    def __init__(self, to: str = "group", kinds: tuple[str, ...] | list[str] = ("batch", "group", "layer"),
                 absorb_activation: bool = False, **settings: Any) -> None:
        super().__init__(to=to, kinds=list(kinds), absorb_activation=absorb_activation, **settings)
        self.to, self.kinds, self.absorb_activation, self.layer_settings = to, tuple(kinds), absorb_activation, settings
        self.report: ConversionReport | None = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        self.report = convert_norms(model, self.to, self.kinds, self.absorb_activation, **self.layer_settings)
        if not self.report.converted:
            raise ConfigError(f"convert-norms: the model has no {'/'.join(self.kinds)} norm layer to convert")
        return model


CLAIMS: list[Claim] = []
