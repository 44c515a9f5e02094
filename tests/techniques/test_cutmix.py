"""CutMix: the pasted box and the label weights agree, targets are distributions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError
from trainlab.techniques.regularization.cutmix import CutMix, cut_and_paste, cutmix_batch, random_box
from trainlab.training.technique import Batch, TrainState


def test_lam_equals_the_fraction_of_own_pixels():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        # each image is constant and unique, so every pixel tells where it came from
        x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, 10, 12).clone()
        y = torch.arange(6)
        mixed, (y_a, y_b, lam), soft = cutmix_batch(x, y, alpha=1.0, generator=g, num_classes=6)
        own = (mixed == x).float().mean(dim=(1, 2, 3))
        for i in range(6):
            if y_b[i] != y_a[i]:
                assert float(own[i]) == pytest.approx(lam)
        torch.testing.assert_close(soft.sum(1), torch.ones(6))
        torch.testing.assert_close(soft, lam * F.one_hot(y_a, 6).float() + (1 - lam) * F.one_hot(y_b, 6).float())


def test_box_is_one_rectangle_from_the_partner():
    g = torch.Generator().manual_seed(5)
    x = torch.zeros(2, 1, 16, 16)
    x[1] = 1.0
    mixed, lam = cut_and_paste(x, torch.tensor([1, 0]), 0.6, g)
    rows = mixed[0, 0].any(dim=1).nonzero().flatten()
    cols = mixed[0, 0].any(dim=0).nonzero().flatten()
    area = int(mixed[0].sum())
    assert area == len(rows) * len(cols)  # a full rectangle
    assert lam == pytest.approx(1 - area / 256)


def test_signals_get_a_segment():
    g = torch.Generator().manual_seed(2)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 3, 40).clone()
    mixed, (_, _, lam), _ = cutmix_batch(x, torch.arange(4), generator=g, num_classes=4)
    changed = (mixed != x).any(dim=1)  # [4, 40]
    assert changed.any()
    for row in changed:
        idx = row.nonzero().flatten()
        if len(idx):
            assert int(idx[-1] - idx[0]) + 1 == len(idx)  # contiguous


def test_technique_and_errors():
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    state = TrainState(num_classes=3, generator=torch.Generator().manual_seed(0))
    out = CutMix().transform_batch(Batch(inputs=x, targets=y, indices=torch.arange(8)), state)
    assert "mix" in out.meta and out.targets.shape == (8, 3)
    torch.testing.assert_close(out.targets.sum(1), torch.ones(8))
    with pytest.raises(ConfigError, match="images"):
        CutMix().transform_batch(Batch(inputs=torch.randn(8, 5), targets=y, indices=torch.arange(8)), state)
    # prob=0 never mixes
    same = CutMix(prob=0.0).transform_batch(Batch(inputs=x, targets=y, indices=torch.arange(8)), state)
    assert torch.equal(same.inputs, x) and "mix" not in same.meta


def test_box_follows_the_official_rand_bbox():
    # clovaai/CutMix-PyTorch rand_bbox: cut = int(side * sqrt(1 - lam)), centre uniform in [0, side),
    # corners clip(centre - cut // 2, 0, side) and clip(centre + cut // 2, 0, side), per spatial dim
    for seed, lam, (h, w) in [(0, 0.3, (32, 32)), (1, 0.75, (10, 14)), (2, 0.01, (9, 9))]:
        box = random_box((h, w), lam, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)   # the same draws, in the same order
        for size, got in zip((h, w), box):
            cut = int(size * math.sqrt(1.0 - lam))
            centre = int(torch.randint(0, size, (1,), generator=g))
            assert (got.start, got.stop) == (min(max(centre - cut // 2, 0), size), min(max(centre + cut // 2, 0), size))
