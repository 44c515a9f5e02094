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
* ``"group"``: GroupNorm (Wu & He, 2018, arXiv:1803.08494). The number of groups is the largest
  divisor of C that is at most 32 (the paper's default G=32). So C=64 -> 32 groups of 2,
  C=48 -> 24 groups of 2, C=16 -> 16 groups of 1 channel; for C <= 32 every channel is its own
  group, which makes GroupNorm the same as InstanceNorm with a per-channel affine. ``dims=0``
  applies it to each feature vector / token separately.
* ``"layer"``: LayerNorm (Ba, Kiros & Hinton, 2016, arXiv:1607.06450). ``dims=0`` is
  ``nn.LayerNorm(C)`` over the channel axis of each token. For ``dims=1``/``2`` it is
  ``nn.GroupNorm(1, C)``: statistics over all of (C, L) or (C, H, W) of one sample, as in the
  original paper's "all hidden units in a layer" and GroupNorm paper's LN = GN with G=1; the
  affine scale and shift are per channel. (This is not the ConvNeXt-style "channel LayerNorm"
  that normalizes over C at each position separately.)
* ``"instance"``: InstanceNorm with a learned per-channel affine (Ulyanov et al., 2016,
  arXiv:1607.08022) for ``dims=1``/``2``; running statistics are not tracked, so train and eval
  compute the same function. There is no instance axis for ``dims=0`` (one value per channel per
  sample), so asking for it there is a ConfigError.
* ``"none"``: ``nn.Identity``.

Other modules add norms (e.g. EvoNorm) by calling ``register_norm`` when they are imported::

    from trainlab.tasks.norms import register_norm
    register_norm("evonorm-b0", lambda num_channels, dims: EvoNormB0(num_channels, dims))
"""
from __future__ import annotations

from typing import Callable

import torch
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


def _batch(c: int, dims: int) -> nn.Module:
    if dims == 0:
        return ChannelLast(nn.BatchNorm1d(c), c)
    return nn.BatchNorm1d(c) if dims == 1 else nn.BatchNorm2d(c)


def _group(c: int, dims: int) -> nn.Module:
    gn = nn.GroupNorm(group_count(c), c)
    return ChannelLast(gn, c) if dims == 0 else gn


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
