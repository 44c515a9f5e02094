"""Data wrappers applied after a task's make_data: a training subset, class imbalance, label noise,
and a shifted test domain. They work on any DataBundle.

Each wrapper returns a new DataBundle (tensors are never changed in place, so cached data stays
intact), is reproducible from its seed, appends what it did to info["wrappers"] and, because it
changes the tensors, changes DataBundle.fingerprint().

Conventions:
- Symmetric label noise ("symmetric", the default): with probability `rate` a training label is
  replaced by a class drawn uniformly from the OTHER C - 1 classes, so a noisy label is always
  wrong and the expected fraction of wrong labels is `rate` (the convention of e.g. the nested
  dropout paper's official noise script, yingyichen-cyy/Nested-Co-teaching).
  "symmetric-all": with probability `rate` the label is redrawn uniformly from ALL C classes, its
  own included, so the expected fraction of wrong labels is rate * (C - 1) / C (0.36 at rate 0.4
  and C = 10). This is the convention of ELR's official code (shengliu66/ELR, data_loader/cifar10.py,
  which redraws exactly ceil(rate * N) labels with np.random.randint(num_classes); here each label
  is redrawn with probability `rate`, the same expectation).
  Pairwise ("pair flipping", as in Han et al., "Co-teaching", 2018, arXiv:1804.06872): class c
  becomes (c + 1) mod C with probability `rate`. The clean labels are kept in `clean_train_y`.
- Imbalance: the exponential long-tailed profile of Cao et al., "Learning Imbalanced Datasets with
  Label-Distribution-Aware Margin Loss", NeurIPS 2019, arXiv:1906.07413: class c keeps
  floor(n_max * ratio ** (c / (C - 1))) examples, n_max being the smallest class count before,
  so class 0 is the most frequent and class C - 1 has `ratio` times as many.
- Shift: the test inputs are replaced by a shifted domain; info["source_test_x"] keeps the
  unshifted ones. "rotate" turns images [N, C, H, W] by 90 degrees (counter-clockwise in the H, W
  plane) and reverses 1-D signals [N, C, L] or [N, L]; "invert" maps x -> lo + hi - x per channel,
  where lo and hi are where 0 and 1 of the underlying image land after normalization
  (info["value_range"]), or the training inputs' per-channel min and max when that is unknown.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from trainlab.errors import ConfigError
from trainlab.tasks.task import DataBundle

NOISE_KINDS = ("symmetric", "symmetric-all", "pairwise")
SHIFT_KINDS = ("rotate", "invert")
# Distinct random streams per wrapper, so e.g. the subset does not depend on whether noise follows.
_STREAM = {"subset": 1, "imbalance": 2, "noise": 3, "holdout": 4}
_NOISE_TAGS = {"symmetric": "sym", "symmetric-all": "symall", "pairwise": "pair"}


def apply_wrappers(bundle: DataBundle, *, train_subset: int | None = None, label_noise: float = 0.0,
                   noise_kind: str = "symmetric", imbalance: float | None = None, shift: str | None = None,
                   seed: int = 0) -> DataBundle:
    """Apply the wrappers in this order: subset, imbalance, label noise, shift."""
    if noise_kind not in NOISE_KINDS:
        raise ConfigError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}, got {noise_kind!r}")
    if train_subset is not None:
        bundle = subset(bundle, train_subset, seed)
    if imbalance is not None:
        bundle = with_imbalance(bundle, imbalance, seed)
    if label_noise:
        bundle = with_label_noise(bundle, label_noise, noise_kind, seed)
    if shift is not None:
        bundle = with_shift(bundle, shift)
    return bundle


# --------------------------------------------------------------------------- training-set selection

def subset(bundle: DataBundle, n: int, seed: int = 0) -> DataBundle:
    """A stratified random subset of n training examples (class shares kept up to rounding);
    the test set is untouched. n at least the training size returns the bundle as it is."""
    if n < 1:
        raise ConfigError(f"train_subset must be at least 1, got {n}")
    labels = _true_labels(bundle)
    if n >= len(labels):
        return bundle
    if bundle.num_classes is None:  # no classes to stratify by (regression, language modelling): plain random
        idx = torch.from_numpy(np.sort(_rng(seed, "subset").permutation(len(labels))[:n]))
        return _keep_train(bundle, idx, f"subset{n}", {"subset": n, "seed": seed})
    counts = np.bincount(labels, minlength=bundle.num_classes)
    quotas = _proportional(counts, n)
    idx = _pick_per_class(labels, quotas, _rng(seed, "subset"))
    return _keep_train(bundle, idx, f"subset{n}", {"subset": n, "seed": seed})


def with_imbalance(bundle: DataBundle, ratio: float, seed: int = 0) -> DataBundle:
    """Long-tailed training set: class c keeps floor(n_max * ratio ** (c / (C - 1))) examples
    (at least 1), n_max = the smallest class count. The test set is untouched."""
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"imbalance ratio (rarest / most frequent class) must be in (0, 1], got {ratio}")
    labels = _true_labels(bundle)
    counts = np.bincount(labels, minlength=bundle.num_classes)
    if counts.min() == 0:
        raise ConfigError(f"data '{bundle.name}': class {int(counts.argmin())} has no training examples to imbalance")
    quotas = long_tail_counts(int(counts.min()), bundle.num_classes, ratio)
    idx = _pick_per_class(labels, quotas, _rng(seed, "imbalance"))
    return _keep_train(bundle, idx, f"imb{ratio:g}", {"imbalance": ratio, "seed": seed, "counts": quotas.tolist()})


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> np.ndarray:
    """The exponential profile: floor(n_max * ratio ** (c / (C - 1))) for c = 0..C-1, at least 1."""
    c = np.arange(num_classes)
    exponent = c / max(num_classes - 1, 1)
    return np.maximum(1, np.floor(n_max * ratio ** exponent + 1e-9)).astype(np.int64)


def _proportional(counts: np.ndarray, n: int) -> np.ndarray:
    """Split n across classes in proportion to counts (largest remainders get the leftovers)."""
    exact = counts * n / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    leftover = n - int(quotas.sum())
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:leftover]] += 1
    return quotas


def _pick_per_class(labels: np.ndarray, quotas: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """quotas[c] random examples of each class c, returned in their original order."""
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in enumerate(quotas)]
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def _keep_train(bundle: DataBundle, idx: torch.Tensor, tag: str, record: dict[str, Any]) -> DataBundle:
    clean = bundle.clean_train_y[idx] if bundle.clean_train_y is not None else None
    return _derived(bundle, tag, record, train_x=bundle.train_x[idx], train_y=bundle.train_y[idx],
                    clean_train_y=clean)


def holdout_split(bundle: DataBundle, fraction: float, seed: int = 0) -> DataBundle:
    """A validation split of the training data for hyper-parameter tuning: the training examples
    are permuted by a generator fixed by `seed`; the last round(fraction * N) of the permutation
    become the "test" split (inputs and the training labels, noisy ones included, as a tuner would
    see them) and the rest, in their original order, the training split. The real test set is
    dropped, so a tuning run cannot see it. info["holdout"] records the held-out indices."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"holdout_validation must be a fraction in (0, 1), got {fraction!r}")
    if "domains" in bundle.info:
        raise ConfigError(f"data '{bundle.name}': multi-domain data carry their own validation split "
                          "(info['val_x']); holdout_validation would misalign the per-row domain indices")
    n = len(bundle.train_y)
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise ConfigError(f"holdout_validation={fraction:g} of {n} training examples leaves an empty split")
    order = torch.from_numpy(_rng(seed, "holdout").permutation(n))
    keep, held = order[:n - n_val].sort().values, order[n - n_val:].sort().values
    clean = bundle.clean_train_y[keep] if bundle.clean_train_y is not None else None
    derived = _derived(bundle, f"holdout{fraction:g}", {"holdout_validation": fraction, "seed": seed},
                       train_x=bundle.train_x[keep], train_y=bundle.train_y[keep], clean_train_y=clean,
                       test_x=bundle.train_x[held], test_y=bundle.train_y[held])
    for key in ("source_test_x", "shift"):  # the shifted test domain is gone with the test set
        derived.info.pop(key, None)
    derived.info["holdout"] = {"train_index": keep, "val_index": held}
    return derived


# --------------------------------------------------------------------------- label noise

def with_label_noise(bundle: DataBundle, rate: float, kind: str = "symmetric", seed: int = 0) -> DataBundle:
    """Corrupt each training label with probability `rate` (see the module docstring for the
    "symmetric", "symmetric-all" and "pairwise" conventions). Test labels are untouched; clean labels
    go to clean_train_y; info["wrappers"][-1]["realized"] is the fraction of labels that are wrong."""
    if kind not in NOISE_KINDS:
        raise ConfigError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"label_noise must be in [0, 1], got {rate}")
    num_classes = bundle.num_classes
    if rate == 0.0:
        return bundle
    if num_classes < 2:
        raise ConfigError(f"data '{bundle.name}': label noise needs at least 2 classes")
    rng = _rng(seed, "noise")
    y = bundle.train_y
    flip = torch.from_numpy(rng.random(len(y)) < rate)
    if kind == "symmetric":
        other = (y + torch.from_numpy(rng.integers(1, num_classes, len(y)))) % num_classes
    elif kind == "symmetric-all":  # a redraw may land on the true class: not every redrawn label is wrong
        other = torch.from_numpy(rng.integers(0, num_classes, len(y))).to(y.dtype)
    else:
        other = (y + 1) % num_classes
    noisy = torch.where(flip, other, y)
    clean = bundle.clean_train_y if bundle.clean_train_y is not None else y
    realized = float((noisy != clean).float().mean()) if len(y) else 0.0
    record = {"label_noise": rate, "kind": kind, "seed": seed, "realized": realized}
    tag = f"noise{rate:g}{_NOISE_TAGS[kind]}"
    return _derived(bundle, tag, record, train_y=noisy, clean_train_y=clean)


# --------------------------------------------------------------------------- domain shift

def with_shift(bundle: DataBundle, kind: str) -> DataBundle:
    """Replace the test inputs by a shifted domain (see `shifted_copy`); the training set and all
    labels stay; info["source_test_x"] keeps the unshifted test inputs."""
    value_range = bundle.info.get("value_range")
    if kind == "invert" and value_range is None:
        value_range = _channel_range(bundle.train_x)   # the source domain's range
    shifted = shifted_copy(bundle.test_x, kind, value_range=value_range)
    derived = _derived(bundle, kind, {"shift": kind}, test_x=shifted)
    derived.info.setdefault("source_test_x", bundle.test_x)
    derived.info["shift"] = kind
    return derived


def shifted_copy(x: torch.Tensor, kind: str, value_range: Sequence[Any] | None = None) -> torch.Tensor:
    """A shifted copy of inputs x, for domain-adaptation use.

    "rotate": images [N, C, H, W] (H == W) turned 90 degrees; signals [N, C, L] or [N, L] reversed.
    "invert": x -> lo + hi - x, lo/hi per channel from `value_range` = (lo, hi) (scalars or one
    value per channel), default the per-channel min and max of x itself."""
    if kind not in SHIFT_KINDS:
        raise ConfigError(f"shift must be one of {', '.join(SHIFT_KINDS)}, got {kind!r}")
    if not torch.is_floating_point(x):
        raise ConfigError(f"shift '{kind}' needs float inputs (images or signals), got {x.dtype}")
    if kind == "rotate":
        if x.ndim == 4:
            if x.shape[2] != x.shape[3]:
                raise ConfigError(f"shift 'rotate' needs square images, got {x.shape[2]}x{x.shape[3]}")
            return torch.rot90(x, 1, dims=(2, 3)).contiguous()
        if x.ndim in (2, 3):
            return torch.flip(x, dims=(-1,))
        raise ConfigError(f"shift 'rotate' needs inputs [N, C, H, W], [N, C, L] or [N, L], got {list(x.shape)}")
    lo, hi = value_range if value_range is not None else _channel_range(x)
    return _per_channel(hi, x) + _per_channel(lo, x) - x


def _channel_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (axis 1) min and max for [N, C, ...]; one global pair for [N, D]."""
    if x.ndim >= 3:
        dims = [0, *range(2, x.ndim)]
        return x.amin(dim=dims), x.amax(dim=dims)
    return x.min(), x.max()


def _per_channel(v: Any, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.numel() == 1:
        return t.reshape(())
    if x.ndim < 3 or t.numel() != x.shape[1]:
        raise ConfigError(f"value range has {t.numel()} channels, inputs {list(x.shape)} do not match")
    return t.reshape(1, -1, *([1] * (x.ndim - 2)))


# --------------------------------------------------------------------------- helpers

def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([_STREAM[stream], int(seed) % (1 << 63)])


def _true_labels(bundle: DataBundle) -> np.ndarray:
    """Clean labels when noise was applied, so selections follow the real classes."""
    y = bundle.clean_train_y if bundle.clean_train_y is not None else bundle.train_y
    return y.cpu().numpy()


def _derived(bundle: DataBundle, tag: str, record: dict[str, Any], **changes: Any) -> DataBundle:
    info = {**bundle.info, "wrappers": [*bundle.info.get("wrappers", []), record]}
    return dataclasses.replace(bundle, name=f"{bundle.name}+{tag}", info=info, **changes)
