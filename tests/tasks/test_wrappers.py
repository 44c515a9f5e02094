"""Data wrappers in trainlab.tasks.wrappers: subsets, label noise, imbalance, domain shift."""
import numpy as np
import pytest
import torch

from trainlab.errors import ConfigError
from trainlab.tasks import datasets, wrappers
from trainlab.tasks.task import DataBundle
from trainlab.tasks.wrappers import (apply_wrappers, long_tail_counts, shifted_copy, subset, with_imbalance,
                                     with_label_noise, with_shift)

C = 10


def _bundle(per_class: int = 1000, shape=(1, 4, 4), seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    train_y = torch.arange(C).repeat_interleave(per_class)
    test_y = torch.arange(C).repeat(20)
    return DataBundle(torch.randn(len(train_y), *shape, generator=g), train_y,
                      torch.randn(len(test_y), *shape, generator=g), test_y, num_classes=C, name="toy")


def _rows_of(sub: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Index in `full` of each row of `sub` (rows are distinct random vectors)."""
    flat_sub, flat_full = sub.flatten(1), full.flatten(1)
    return torch.cdist(flat_sub, flat_full).argmin(dim=1)


# --------------------------------------------------------------------------- subset

def test_subset_is_stratified_deterministic_and_real_rows():
    b = _bundle(per_class=100)
    s = subset(b, 250, seed=1)
    assert len(s.train_y) == 250 and torch.bincount(s.train_y).tolist() == [25] * C
    rows = _rows_of(s.train_x, b.train_x)
    assert torch.equal(b.train_x[rows], s.train_x) and torch.equal(b.train_y[rows], s.train_y)
    assert s.test_x is b.test_x and s.test_y is b.test_y
    assert subset(b, 250, seed=1).fingerprint() == s.fingerprint()
    assert subset(b, 250, seed=2).fingerprint() != s.fingerprint()
    assert subset(b, 10**6) is b
    with pytest.raises(ConfigError):
        subset(b, 0)


def test_subset_keeps_class_shares_with_largest_remainders():
    assert wrappers._proportional(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert wrappers._proportional(np.array([5, 3, 3]), 4).tolist() == [2, 1, 1]
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    b = DataBundle(torch.randn(100, 3), y, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), num_classes=3)
    assert torch.bincount(subset(b, 20).train_y).tolist() == [12, 6, 2]


# --------------------------------------------------------------------------- label noise

def test_symmetric_noise_rate_and_uniform_other_classes():
    b = _bundle()
    n = with_label_noise(b, 0.3, "symmetric", seed=0)
    flipped = n.train_y != b.train_y
    assert abs(flipped.float().mean().item() - 0.3) < 0.02   # binomial sd is 0.0046 at N = 10,000
    assert torch.equal(n.clean_train_y, b.train_y) and n.test_y is b.test_y
    assert n.info["wrappers"][-1]["realized"] == pytest.approx(flipped.float().mean().item())
    # a flipped label goes to each of the C - 1 other classes equally often
    offsets = (n.train_y[flipped] - b.train_y[flipped]) % C
    shares = torch.bincount(offsets, minlength=C)[1:].double() / flipped.sum()
    assert offsets.min() >= 1 and (shares - 1 / (C - 1)).abs().max() < 0.025


def test_symmetric_all_noise_redraws_from_all_classes():
    # ELR's official convention: a redrawn label is uniform over all C classes, its own included,
    # so the wrong fraction is rate * (C - 1) / C and a redraw keeps its label 1 / C of the time
    b = _bundle()
    n = with_label_noise(b, 0.4, "symmetric-all", seed=0)
    wrong = n.train_y != b.train_y
    assert abs(wrong.float().mean().item() - 0.4 * (C - 1) / C) < 0.02
    assert n.info["wrappers"][-1]["realized"] == pytest.approx(wrong.float().mean().item())
    assert n.info["wrappers"][-1]["kind"] == "symmetric-all" and n.name == "toy+noise0.4symall"
    offsets = (n.train_y[wrong] - b.train_y[wrong]) % C
    shares = torch.bincount(offsets, minlength=C)[1:].double() / wrong.sum()
    assert (shares - 1 / (C - 1)).abs().max() < 0.025
    # rate 1: every label is redrawn, so about 1 / C keep their class (the "symmetric" kind keeps none)
    every = with_label_noise(b, 1.0, "symmetric-all", seed=1)
    assert abs((every.train_y == b.train_y).float().mean().item() - 1 / C) < 0.015
    assert (with_label_noise(b, 1.0, "symmetric", seed=1).train_y != b.train_y).all()
    # the same draws decide which labels are redrawn under both kinds
    sym = with_label_noise(b, 0.4, "symmetric", seed=0)
    assert ((sym.train_y != b.train_y) | ~wrong).all()


def test_pairwise_noise_maps_c_to_c_plus_one():
    b = _bundle()
    n = with_label_noise(b, 0.2, "pairwise", seed=5)
    flipped = n.train_y != b.train_y
    assert torch.equal(n.train_y[flipped], (b.train_y[flipped] + 1) % C)
    assert abs(flipped.float().mean().item() - 0.2) < 0.02
    per_class = torch.stack([flipped[b.train_y == c].float().mean() for c in range(C)])
    assert (per_class - 0.2).abs().max() < 0.06


def test_noise_is_reproducible_and_validated():
    b = _bundle(per_class=50)
    a = with_label_noise(b, 0.4, seed=3)
    assert torch.equal(a.train_y, with_label_noise(b, 0.4, seed=3).train_y)
    assert not torch.equal(a.train_y, with_label_noise(b, 0.4, seed=4).train_y)
    assert with_label_noise(b, 0.0) is b
    # noise on noisy data keeps the original clean labels
    assert torch.equal(with_label_noise(a, 0.4, seed=9).clean_train_y, b.train_y)
    with pytest.raises(ConfigError):
        with_label_noise(b, 1.5)
    with pytest.raises(ConfigError, match="noise_kind"):
        with_label_noise(b, 0.1, "asymmetric")


# --------------------------------------------------------------------------- imbalance

def test_long_tail_profile_hand_values():
    assert long_tail_counts(100, 3, 0.01).tolist() == [100, 10, 1]
    assert long_tail_counts(5000, 10, 0.1).tolist() == [int(5000 * 0.1 ** (c / 9) + 1e-9) for c in range(10)]
    assert long_tail_counts(10, 4, 0.001).tolist()[-1] == 1   # never empties a class


def test_imbalance_follows_exponential_profile():
    b = _bundle()
    imb = with_imbalance(b, 0.1, seed=0)
    counts = torch.bincount(imb.train_y).tolist()
    assert counts == [int(1000 * 0.1 ** (c / 9) + 1e-9) for c in range(C)]
    assert counts[0] == 1000 and counts[-1] == 100
    assert imb.test_x is b.test_x and imb.test_y is b.test_y
    rows = _rows_of(imb.train_x, b.train_x)
    assert torch.equal(b.train_y[rows], imb.train_y)
    assert with_imbalance(b, 0.1, seed=0).fingerprint() == imb.fingerprint()
    assert with_imbalance(b, 0.1, seed=1).fingerprint() != imb.fingerprint()
    with pytest.raises(ConfigError):
        with_imbalance(b, 2.0)


# --------------------------------------------------------------------------- shift

def test_rotate_is_an_exact_quarter_turn():
    b = _bundle(per_class=5, shape=(3, 6, 6))
    s = with_shift(b, "rotate")
    x, r = b.test_x, s.test_x
    width = x.shape[-1]
    for i in range(width):
        for j in range(width):
            assert torch.equal(r[:, :, i, j], x[:, :, j, width - 1 - i])
    turned = x
    for _ in range(4):
        turned = shifted_copy(turned, "rotate")
    assert torch.equal(turned, x)
    assert s.info["source_test_x"] is b.test_x and s.train_x is b.train_x and s.test_y is b.test_y


def test_rotate_reverses_signals():
    x = torch.randn(4, 2, 9)
    assert torch.equal(shifted_copy(x, "rotate"), x[..., torch.arange(8, -1, -1)])
    with pytest.raises(ConfigError, match="square"):
        shifted_copy(torch.randn(2, 1, 4, 5), "rotate")
    with pytest.raises(ConfigError, match="float"):
        shifted_copy(torch.zeros(2, 4, dtype=torch.long), "rotate")


def test_invert_inverts_the_underlying_image():
    g = torch.Generator().manual_seed(0)
    mean, std = [0.2, 0.5, 0.7], [0.3, 0.25, 0.1]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    v = torch.rand(20, 3, 5, 5, generator=g)   # images in [0, 1]
    b = DataBundle((v - m) / s, torch.zeros(20, dtype=torch.long), (v - m) / s, torch.zeros(20, dtype=torch.long),
                   num_classes=1, info={"value_range": datasets._value_range(mean, std)})
    inverted = with_shift(b, "invert").test_x
    assert torch.allclose(inverted * s + m, 1 - v, atol=1e-5)
    assert torch.allclose(shifted_copy(inverted, "invert", b.info["value_range"]), b.test_x, atol=1e-5)


def test_invert_without_known_range_uses_train_channel_range():
    b = _bundle(per_class=5, shape=(2, 7))
    lo, hi = b.train_x.amin(dim=(0, 2)).view(1, 2, 1), b.train_x.amax(dim=(0, 2)).view(1, 2, 1)
    assert torch.allclose(with_shift(b, "invert").test_x, lo + hi - b.test_x)
    x = torch.randn(6, 5)
    assert torch.allclose(shifted_copy(x, "invert"), x.min() + x.max() - x)
    with pytest.raises(ConfigError):
        with_shift(b, "blur")


def test_shift_on_real_digits():
    b = datasets.digits()
    inverted = with_shift(b, "invert")
    raw, raw_inverted = (_digits_pixels(t, b) for t in (b.test_x, inverted.test_x))
    assert torch.allclose(raw_inverted, 1 - raw, atol=1e-5)
    assert torch.equal(with_shift(b, "rotate").test_x, torch.rot90(b.test_x, 1, dims=(2, 3)))


def _digits_pixels(x, b):
    return x * b.info["channel_std"][0] + b.info["channel_mean"][0]


# --------------------------------------------------------------------------- composition and fingerprints

def test_every_wrapper_changes_the_fingerprint_and_none_mutates_input():
    b = _bundle(per_class=100)
    before = [t.clone() for t in (b.train_x, b.train_y, b.test_x, b.test_y)]
    base = b.fingerprint()
    variants = [apply_wrappers(b, train_subset=500), apply_wrappers(b, label_noise=0.2),
                apply_wrappers(b, label_noise=0.2, noise_kind="pairwise"), apply_wrappers(b, imbalance=0.5),
                apply_wrappers(b, shift="rotate"), apply_wrappers(b, shift="invert"),
                apply_wrappers(b, label_noise=0.2, seed=1)]
    prints = [v.fingerprint() for v in variants]
    assert base not in prints and len(set(prints)) == len(prints)
    assert apply_wrappers(b).fingerprint() == base
    assert all(torch.equal(x, y) for x, y in zip(before, (b.train_x, b.train_y, b.test_x, b.test_y)))


def test_apply_wrappers_composes_in_order():
    b = _bundle(per_class=200)
    w = apply_wrappers(b, train_subset=1000, imbalance=0.1, label_noise=0.25, noise_kind="pairwise",
                       shift="rotate", seed=7)
    assert [list(r)[0] for r in w.info["wrappers"]] == ["subset", "imbalance", "label_noise", "shift"]
    assert torch.bincount(w.clean_train_y).tolist() == long_tail_counts(100, C, 0.1).tolist()
    rows = _rows_of(w.train_x, b.train_x)
    assert torch.equal(w.clean_train_y, b.train_y[rows])
    flipped = w.train_y != w.clean_train_y
    assert torch.equal(w.train_y[flipped], (w.clean_train_y[flipped] + 1) % C)
    assert torch.equal(w.info["source_test_x"], b.test_x) and torch.equal(w.test_y, b.test_y)
    assert w.name == "toy+subset1000+imb0.1+noise0.25pair+rotate"
    with pytest.raises(ConfigError, match="noise_kind"):
        apply_wrappers(b, noise_kind="flip")
