"""The technique registry.

Each technique module is listed once in TECHNIQUE_MODULES. Importing a module registers its
Technique subclasses (decorated with @register) and its claims (module-level `CLAIMS` list,
collected by trainlab.claims.registry). Modules are imported lazily, on first lookup, so the CLI
starts fast.
"""
from __future__ import annotations

import importlib
from typing import Any, TypeVar

from trainlab.errors import ConfigError
from trainlab.training.technique import Technique

#: One line per technique module. Adding a technique = its file, its test, and one line here.
TECHNIQUE_MODULES: list[str] = [
    "trainlab.techniques.sanity",
    "trainlab.techniques.normalization.peri_ln",
    "trainlab.techniques.normalization.bn_only",
    "trainlab.techniques.normalization.ghost_bn",
    "trainlab.techniques.normalization.normalize_project",
    "trainlab.techniques.normalization.convert",
    "trainlab.techniques.normalization.weight_standardization",
    "trainlab.techniques.normalization.batch_channel_norm",
    "trainlab.techniques.normalization.evonorm",
    "trainlab.techniques.normalization.power_norm",
    "trainlab.techniques.normalization.unified_norm",
    "trainlab.techniques.normalization.region_norm",
    "trainlab.techniques.optimizers.adamp",
    "trainlab.techniques.optimizers.diffgrad",
    "trainlab.techniques.gradients.gradient_noise",
    "trainlab.techniques.gradients.tract",
    "trainlab.techniques.optimizers.sso",
    "trainlab.techniques.optimizers.noise_adaptive",
    "trainlab.techniques.regularization.mixup",
    "trainlab.techniques.regularization.cutmix",
    "trainlab.techniques.regularization.decoupled_mixup",
    "trainlab.techniques.regularization.adamixup",
    "trainlab.techniques.regularization.weight_compander",
    "trainlab.techniques.regularization.elr",
    "trainlab.techniques.regularization.ps_kd",
    "trainlab.techniques.regularization.nested_dropout",
    "trainlab.techniques.regularization.orthogonal_conv",
    "trainlab.techniques.pruning.hesso",
    "trainlab.techniques.pruning.magnitude",
    "trainlab.techniques.losses.anyloss",
    "trainlab.techniques.regularization.batchformer",
    "trainlab.techniques.layers.tversky",
    "trainlab.techniques.memory.reversible",
    "trainlab.techniques.domain.trajectory_distillation",
    "trainlab.techniques.domain.hessian_alignment",
    "trainlab.techniques.domain.dann",
    "trainlab.techniques.merging.fisher_merging",
    # compression: N:M sparsity
    "trainlab.techniques.compression.nm_sparsity",
    "trainlab.techniques.compression.progressive_nm",
    # compression: quantization
    "trainlab.techniques.compression.quantization",
    # compression: quantized distillation
    "trainlab.techniques.compression.quantized_distillation",
    # compression: low rank
    "trainlab.techniques.compression.maestro",
    # compression: adapters
    "trainlab.techniques.compression.lora",
    "trainlab.techniques.compression.lora_xs",
    "trainlab.techniques.compression.lora_sb",
    "trainlab.techniques.compression.flora",
    # compression: dynamic pruning
    "trainlab.techniques.compression.dynamic_pruning",
    # compression: unlearning
    "trainlab.techniques.compression.unlearning",
    # diagnostics: probes (techniques that measure and change nothing) and the papers' laws as claims
    "trainlab.diagnostics.curvature",
    "trainlab.diagnostics.collapse",
    "trainlab.diagnostics.similarity",
    "trainlab.diagnostics.intrinsic_dimension",
    "trainlab.diagnostics.coherence",
    "trainlab.diagnostics.stability",
]

_REGISTRY: dict[str, type[Technique]] = {}
_loaded = False

T = TypeVar("T", bound=type[Technique])


def register(cls: T) -> T:
    """Class decorator: make a Technique subclass available by its `name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise TypeError(f"technique name '{cls.name}' registered twice ({existing.__name__}, {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in TECHNIQUE_MODULES:
        importlib.import_module(mod)
    _loaded = True


def all_techniques() -> dict[str, type[Technique]]:
    load_all()
    return dict(sorted(_REGISTRY.items()))


def get_technique(name: str) -> type[Technique]:
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.lower() in n or n in name.lower()]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (see `trainlab list`)"
        raise ConfigError(f"unknown technique '{name}'{hint}") from None


def build_technique(name: str, settings: dict[str, Any] | None = None) -> Technique:
    cls = get_technique(name)
    try:
        return cls(**(settings or {}))
    except TypeError as e:
        raise ConfigError(f"bad settings for technique '{name}': {e}") from None
