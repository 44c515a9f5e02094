"""Training only BatchNorm, and the equal-count random-parameter control."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.normalization.bn_only import (BNOnly, RandomSubset, freeze_all_but_norm,
                                                        norm_parameter_count, train_random_subset)
from trainlab.training.technique import TrainState


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 16, 4))


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 4, (8,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_freeze_all_but_norm_counts_and_only_norm_params_move():
    model = _cnn()
    n = freeze_all_but_norm(model)
    assert n == 2 * (6 + 5) == norm_parameter_count(model)
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    _step(model, opt)
    for name, p in model.named_parameters():
        is_norm = name.startswith(("1.", "4."))
        assert p.requires_grad == is_norm
        if is_norm:
            assert p.grad is not None and not torch.equal(p, before[name])
        else:
            assert p.grad is None and torch.equal(p, before[name])


def test_train_output_layer_variant():
    model = _cnn()
    assert freeze_all_but_norm(model, train_output_layer=True) == 22 + 5 * 16 * 4 + 4


def test_random_subset_trains_exactly_count_elements():
    model = _cnn()
    init = {k: v.clone() for k, v in model.named_parameters()}
    mask = train_random_subset(model, 13, torch.Generator().manual_seed(0))
    assert mask.count == 13
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        _step(model, opt)
        mask.restore()
    changed = 0
    for name, p in model.named_parameters():
        if name in mask.masks:
            m = mask.masks[name]
            assert torch.equal(p[~m], init[name][~m])          # frozen elements never move
            changed += int((p[m] != init[name][m]).sum())
            assert torch.all(p.grad[~m] == 0)                    # their gradients are masked
        else:  # normalization parameters: frozen
            assert not p.requires_grad and torch.equal(p, init[name])
    assert changed == 13


def test_random_subset_count_bounds_and_state_round_trip():
    model = _cnn()
    with pytest.raises(ConfigError):
        train_random_subset(model, 10**9)
    mask = train_random_subset(model, 7, torch.Generator().manual_seed(1))
    state = mask.state_dict()
    other = train_random_subset(_cnn(), 7, torch.Generator().manual_seed(2))
    other.load_state_dict(state)
    for n in mask.masks:
        assert torch.equal(other.masks[n], mask.masks[n]) and torch.equal(other.initial[n], mask.initial[n])


def test_techniques_in_hooks():
    model = _cnn()
    bn = BNOnly()
    bn.prepare(model, None)
    assert bn.trainable == 22
    state = TrainState(generator=torch.Generator().manual_seed(0))
    model2 = _cnn()
    rs = RandomSubset()
    rs.prepare(model2, None)
    opt = torch.optim.SGD([p for p in model2.parameters() if p.requires_grad], lr=0.1)
    rs.on_train_start(model2, opt, state)
    assert rs.mask.count == 22  # as many as bn-only trains
    rs.on_epoch_end(model2, state)
    assert state.epoch_metrics["trainable_elements"] == 22
    # a technique restored from a checkpoint before on_train_start keeps the saved masks
    saved = rs.state_dict()
    rs2 = RandomSubset()
    model3 = _cnn()
    rs2.prepare(model3, None)
    rs2.load_state_dict(saved)
    rs2.on_train_start(model3, opt, TrainState(generator=torch.Generator().manual_seed(99)))
    for n in saved["masks"]:
        assert torch.equal(rs2.mask.masks[n], saved["masks"][n])
    with pytest.raises(ConfigError):
        BNOnly().prepare(nn.Sequential(nn.Linear(2, 2)), None)
