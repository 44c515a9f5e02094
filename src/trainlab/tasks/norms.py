"""Normalization layers by name, so every model in trainlab.tasks.models can swap its norm.

A norm factory is `factory(num_channels, dims) -> nn.Module`, where `dims` says what the layer sees:

* ``dims=0``: channel-last features, ``[N, C]`` (MLP hidden layers) or tokens ``[N, T, C]``
  (transformers). Every leading index is treated as a separate sample, so a token is normalized
  like a feature vector.
* ``dims=1``: channel-first signals ``[N, C, L]``.
* ``dims=2``: channel-first images ``[N, C, H, W]``.

Built-in names and what they compute:

* ``"batch"``: BatchNorm (Ioffe & Szegedy, 2015, arXiv:1502.03167). ``dims=0`` normalizes each
  channel over all samples and all tokens (the input is viewed as ``[N*T, C]``); ``dims=1``/``2``
  are ``nn.BatchNorm1d``/``nn.BatchNorm2d``.
* ``"group"``: GroupNorm (Wu & He, 2018, arXiv:1803.08494), statistics per sample over a group of
  channels (and the spatial axes). With spatial axes (``dims=1``/``2``) the number of groups is the
  largest divisor of C that is at most 32 (the paper's default G=32). So C=64 -> 32 groups of 2,
  C=48 -> 24 groups of 2, C=16 -> 16 groups of 1 channel; for C <= 32 every channel is its own
  group (over its spatial positions), which makes GroupNorm the same as InstanceNorm with a
  per-channel affine. Without spatial axes (``dims=0``, and a ``[N, C]`` input to the layer that
  convert_norms puts in place of a BatchNorm1d: ``for_features_or_signals``) a group's statistics
  are over its channels alone, so one channel per group would normalize a single value to a
  constant: there the groups hold at least 16 channels (``feature_group_count``: the largest
  divisor of C that is at most min(32, C // 16), 1 when C < 32, i.e. LayerNorm over C). The paper
  defines no feature form; its Table 3 also varies a fixed number of channels per group, and 16 per
  group is our choice within that range. C=32 -> 2 groups of 16, C=64 -> 4, C=128 -> 8,
  C=1024 -> 32 groups of 32.
  A group of fewer than ``MIN_GROUP_VALUES`` (3) values is refused with a ConfigError naming the
  layer (one value normalizes to a constant, two to +-1).
* ``"layer"``: LayerNorm (Ba, Kiros & Hinton, 2016, arXiv:1607.06450). ``dims=0`` is
  ``nn.LayerNorm(C)`` over the channel axis of each token. For ``dims=1``/``2`` it is
  ``nn.GroupNorm(1, C)``: statistics over all of (C, L) or (C, H, W) of one sample, as in the
  original paper's "all hidden units in a layer" and GroupNorm paper's LN = GN with G=1; the
  affine scale and shift are per channel. (This is not the ConvNeXt-style "channel LayerNorm"
  that normalizes over C at each position separately.)
* ``"instance"``: InstanceNorm with a learned per-channel affine (Ulyanov et al., 2016,
  arXiv:1607.08022) for ``dims=1``/``2``; running statistics are not tracked, so train and eval
  compute the same function. There is no instance axis for ``dims=0`` (one value per channel per
  sample), so asking for it there is a ConfigError, and so is a ``[N, C]`` input to the layer that
  convert_norms puts in place of a BatchNorm1d that sees features.
* ``"none"``: ``nn.Identity``.

Other modules add norms (e.g. EvoNorm) by calling ``register_norm`` when they are imported::

    from trainlab.tasks.norms import register_norm
    register_norm("evonorm-b0", lambda num_channels, dims: EvoNormB0(num_channels, dims))
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError

NormFactory = Callable[[int, int], nn.Module]

_NORMS: dict[str, NormFactory] = {}


class ChannelLast(nn.Module):
    """Applies a ``[N, C]`` norm to channel-last input of any rank, one row per leading index."""

    def __init__(self, inner: nn.Module, num_channels: int) -> None:
        super().__init__()
        self.inner = inner
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reshape keeps the channel axis last, so [N, C] passes through unchanged
        return self.inner(x.reshape(-1, self.num_channels)).reshape(x.shape)


def register_norm(name: str, factory: NormFactory, *, overwrite: bool = False) -> None:
    """Make `factory(num_channels, dims) -> nn.Module` available as `make_norm(name, ...)`.

    Registering the same name twice is an error unless `overwrite=True` or it is the same function
    again (e.g. its module was re-imported).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("a norm name must be a non-empty string")
    if not callable(factory):
        raise ConfigError(f"norm '{name}': factory must be callable as factory(num_channels, dims)")
    existing = _NORMS.get(name)
    if existing is not None and existing is not factory and not overwrite and not _same_function(existing, factory):
        raise ConfigError(f"norm '{name}' is already registered (pass overwrite=True to replace it)")
    _NORMS[name] = factory


def _same_function(a: object, b: object) -> bool:
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a)[1] is not None and "<lambda>" not in key(a)[1]


def norm_names() -> list[str]:
    """The registered norm names, sorted."""
    return sorted(_NORMS)


def make_norm(name: str | None, num_channels: int, dims: int) -> nn.Module:
    """Build the norm called `name` for `num_channels` channels; `dims` as in the module docstring.

    `None` means "none".
    """
    if name is None:
        name = "none"
    if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
        raise ConfigError(f"norm '{name}': num_channels must be a positive integer, got {num_channels!r}")
    if dims not in (0, 1, 2):
        raise ConfigError(f"norm '{name}': dims must be 0 (features/tokens), 1 ([N,C,L]) or 2 ([N,C,H,W]), got {dims!r}")
    factory = _NORMS.get(name)
    if factory is None:
        # norms from technique modules (e.g. EvoNorm) register when their module is imported
        from trainlab.techniques.registry import load_all

        load_all()
        factory = _NORMS.get(name)
    if factory is None:
        raise ConfigError(f"unknown norm '{name}' (known: {', '.join(norm_names())})")
    return factory(num_channels, dims)


def group_count(num_channels: int, max_groups: int = 32) -> int:
    """The largest divisor of `num_channels` that is at most `max_groups`."""
    return max(g for g in range(1, min(max_groups, num_channels) + 1) if num_channels % g == 0)


#: channels a group holds at least when there is no spatial axis ([N, C] features, tokens)
FEATURE_GROUP_CHANNELS = 16
#: a group normalization over fewer values is refused: one value becomes a constant, two become +-1
MIN_GROUP_VALUES = 3


def feature_group_count(num_channels: int) -> int:
    """Groups for a group normalization of [N, C] features (no spatial axis): the largest divisor of
    C that is at most min(32, C // 16), so each group holds at least 16 channels (1 group, i.e. all C
    channels, when C < 32)."""
    return group_count(num_channels, max(1, min(32, num_channels // FEATURE_GROUP_CHANNELS)))


def layer_label(layer: nn.Module, description: str) -> str:
    """`description` (e.g. "GroupNorm(32 channels)"), plus where convert_norms put the layer, if it did."""
    where = getattr(layer, "converted_from", None)
    return f"{description} at {where}" if where else description


def _too_few_values(label: str, kind: str, num_groups: int, values: int) -> ConfigError:
    fix = "use fewer groups (or 'layer'/'batch')" if num_groups > 1 else "use 'batch' (statistics over the batch)"
    return ConfigError(
        f"{label}: on {kind} each of its {num_groups} group{'s' if num_groups != 1 else ''} normalizes "
        f"{values} value{'s' if values != 1 else ''} per sample, which makes the output "
        f"{'a constant' if values == 1 else '+-1'}; {fix}")


def check_group_values(layer: nn.Module, description: str, x: torch.Tensor, num_groups: int) -> None:
    """Refuse a group normalization of `x` ([N, C, ...]) whose groups hold fewer than MIN_GROUP_VALUES
    values per sample, with one line naming the layer and why."""
    values = x.shape[1] // num_groups * math.prod(x.shape[2:])
    if values < MIN_GROUP_VALUES:
        kind = "[N, C] features" if x.dim() == 2 else f"input {list(x.shape)}"
        raise _too_few_values(layer_label(layer, description), kind, num_groups, values)


def check_feature_groups(description: str, num_channels: int, num_groups: int) -> None:
    """The same refusal when building a layer for features/tokens (dims=0): C/G values per group."""
    values = num_channels // num_groups
    if values < MIN_GROUP_VALUES:
        raise _too_few_values(description, "features/tokens (no spatial axis)", num_groups, values)


class ChannelGroupNorm(nn.GroupNorm):
    """nn.GroupNorm that also serves [N, C] features: with spatial axes it uses `num_groups`, on a
    2-D input `feature_groups` (default feature_group_count(C)), since there a group's statistics
    are over its channels alone. Groups of fewer than MIN_GROUP_VALUES values per sample are refused
    (ConfigError). What convert_norms puts in place of a BatchNorm1d or GroupNorm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 feature_groups: int | None = None) -> None:
        super().__init__(num_groups, num_channels, eps, affine)
        feature_groups = feature_group_count(num_channels) if feature_groups is None else feature_groups
        if not isinstance(feature_groups, int) or feature_groups < 1 or num_channels % feature_groups:
            raise ConfigError(f"GroupNorm: feature_groups ({feature_groups}) must divide num_channels ({num_channels})")
        self.feature_groups = feature_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.feature_groups if x.dim() == 2 else self.num_groups
        check_group_values(self, f"GroupNorm({groups} groups, {self.num_channels} channels)", x, groups)
        return F.group_norm(x, groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_groups={self.feature_groups}"


class SignalInstanceNorm1d(nn.InstanceNorm1d):
    """nn.InstanceNorm1d that refuses [N, C] features (PyTorch would read them as one unbatched
    [C, L] signal): a feature vector has one value per channel, nothing to normalize over."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            raise ConfigError(
                f"{layer_label(self, f'InstanceNorm1d({self.num_features} channels)')}: got [N, C] features "
                f"{list(x.shape)}; instance norm needs a spatial axis, a feature vector has one value per "
                f"channel (use 'layer' or 'group')")
        return super().forward(x)


def for_features_or_signals(layer: nn.Module) -> nn.Module:
    """The same layer, made correct (or refusing) for a [N, C] input too: a plain nn.GroupNorm becomes
    a ChannelGroupNorm (its groups on [N, C]: all C channels when it has 1 group, else
    feature_group_count), a plain nn.InstanceNorm1d a SignalInstanceNorm1d; other layers are returned
    as they are. For a layer that replaces one that may see [N, C] or [N, C, L] (a BatchNorm1d)."""
    if type(layer) is nn.GroupNorm:
        feature_groups = 1 if layer.num_groups == 1 else feature_group_count(layer.num_channels)
        new: nn.Module = ChannelGroupNorm(layer.num_groups, layer.num_channels, layer.eps, layer.affine, feature_groups)
    elif type(layer) is nn.InstanceNorm1d:
        new = SignalInstanceNorm1d(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                   layer.track_running_stats)
    else:
        return layer
    new.load_state_dict(layer.state_dict())
    return new


def _batch(c: int, dims: int) -> nn.Module:
    if dims == 0:
        return ChannelLast(nn.BatchNorm1d(c), c)
    return nn.BatchNorm1d(c) if dims == 1 else nn.BatchNorm2d(c)


def _group(c: int, dims: int) -> nn.Module:
    if dims == 0:
        groups = feature_group_count(c)
        check_feature_groups(f"norm 'group' for {c} channels", c, groups)
        return ChannelLast(nn.GroupNorm(groups, c), c)
    return nn.GroupNorm(group_count(c), c)


def _layer(c: int, dims: int) -> nn.Module:
    return nn.LayerNorm(c) if dims == 0 else nn.GroupNorm(1, c)


def _instance(c: int, dims: int) -> nn.Module:
    if dims == 0:
        raise ConfigError(
            "norm 'instance' needs a spatial axis ([N,C,L] or [N,C,H,W]); "
            "features and tokens have one value per channel (use 'layer' or 'group')"
        )
    cls = nn.InstanceNorm1d if dims == 1 else nn.InstanceNorm2d
    return cls(c, affine=True)


def _none(c: int, dims: int) -> nn.Module:
    return nn.Identity()


for _name, _factory in (("batch", _batch), ("group", _group), ("layer", _layer),
                        ("instance", _instance), ("none", _none)):
    register_norm(_name, _factory)
