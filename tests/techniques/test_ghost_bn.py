"""Ghost Batch Normalization: per-virtual-batch statistics, running-stat updates, eval, regime helper."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.task import Task
from trainlab.techniques.normalization.ghost_bn import (GhostBatchNorm, GhostBN, convert_to_ghost_bn,
                                                         regime_adaptation)


def _reference(x: torch.Tensor, vbs: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """BatchNorm by hand on each virtual batch: (x - mean) / sqrt(biased var + eps) * w + b per channel."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    out = []
    for chunk in x.split(vbs):
        mean = chunk.mean(dim=dims, keepdim=True)
        var = chunk.var(dim=dims, unbiased=False, keepdim=True)
        out.append((chunk - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape))
    return torch.cat(out)


@pytest.mark.parametrize("shape", [(24, 3), (24, 3, 5), (24, 3, 4, 4), (26, 3, 4, 4)])
def test_training_output_is_batchnorm_per_virtual_batch(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    gbn = GhostBatchNorm(3, virtual_batch_size=8)
    with torch.no_grad():
        gbn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        gbn.bias.copy_(torch.tensor([0.1, 0.0, 0.3]))
    y = gbn.train()(x)
    torch.testing.assert_close(y, _reference(x, 8, gbn.weight, gbn.bias, gbn.eps), rtol=1e-5, atol=1e-5)
    # statistics really are per ghost batch: different from whole-batch BatchNorm
    whole = _reference(x, shape[0], gbn.weight, gbn.bias, gbn.eps)
    assert not torch.allclose(y, whole, atol=1e-3)


def test_running_stats_are_sequential_ema_over_ghost_batches():
    torch.manual_seed(1)
    x = torch.randn(32, 4, 3, 3) * 2 + 5
    m = 0.1
    gbn = GhostBatchNorm(4, virtual_batch_size=8, momentum=m).train()
    gbn(x)
    mean, var = torch.zeros(4), torch.ones(4)
    for chunk in x.split(8):
        n = chunk.numel() // 4
        cmean = chunk.mean(dim=(0, 2, 3))
        cvar = chunk.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)  # unbiased, as nn.BatchNorm
        mean, var = (1 - m) * mean + m * cmean, (1 - m) * var + m * cvar
    torch.testing.assert_close(gbn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gbn.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(gbn.num_batches_tracked) == 4
    # closed form of Algorithm 1 for the mean: (1-m)^k mu0 + sum_l m (1-m)^(k-l) mu_l
    mus = [c.mean(dim=(0, 2, 3)) for c in x.split(8)]
    closed = sum(m * (1 - m) ** (4 - 1 - i) * mu for i, mu in enumerate(mus))
    torch.testing.assert_close(gbn.running_mean, closed, rtol=1e-5, atol=1e-6)


def test_cumulative_average_when_momentum_is_none():
    torch.manual_seed(2)
    x = torch.randn(12, 2)
    gbn = GhostBatchNorm(2, virtual_batch_size=4, momentum=None).train()
    gbn(x)
    torch.testing.assert_close(gbn.running_mean, torch.stack([c.mean(0) for c in x.split(4)]).mean(0))


def test_eval_uses_running_stats_and_does_not_update_them():
    torch.manual_seed(3)
    gbn = GhostBatchNorm(3, virtual_batch_size=4)
    gbn.train()(torch.randn(16, 3) * 2 + 1)
    saved = {k: v.clone() for k, v in gbn.state_dict().items()}
    x = torch.randn(5, 3)
    y = gbn.eval()(x)
    expected = (x - gbn.running_mean) / torch.sqrt(gbn.running_var + gbn.eps) * gbn.weight + gbn.bias
    torch.testing.assert_close(y, expected)
    for k, v in gbn.state_dict().items():
        assert torch.equal(v, saved[k])


def test_equals_batchnorm_when_virtual_batch_covers_the_batch():
    torch.manual_seed(4)
    bn = nn.BatchNorm2d(3)
    gbn = GhostBatchNorm.from_batchnorm(bn, virtual_batch_size=64)
    x = torch.randn(16, 3, 4, 4)
    torch.testing.assert_close(gbn.train()(x), bn.train()(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(gbn, name), getattr(bn, name))


def test_gradients_match_reference():
    torch.manual_seed(5)
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    gbn = GhostBatchNorm(3, virtual_batch_size=4).double().train()
    torch.autograd.gradcheck(lambda t: gbn(t), (x,))


def test_convert_and_state_dict_round_trip():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3),
                          nn.BatchNorm1d(3))
    model.train()(torch.randn(8, 1, 8, 8))  # non-trivial running stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_to_ghost_bn(model, 4) == 2
    assert isinstance(model[1], GhostBatchNorm) and isinstance(model[5], GhostBatchNorm)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k])
    fresh = GhostBatchNorm(4, 4)
    fresh.load_state_dict(model[1].state_dict())
    x = torch.randn(3, 4, 6, 6)
    torch.testing.assert_close(fresh.eval()(x), model[1].eval()(x))


def test_technique_refuses_model_without_batchnorm():
    with pytest.raises(ConfigError):
        GhostBN(virtual_batch_size=8).prepare(nn.Sequential(nn.Linear(3, 3)), None)
    with pytest.raises(ConfigError):
        GhostBN(virtual_batch_size=1)


def test_regime_adaptation_hand_case():
    task = Task("t", make_data=lambda: None, make_model=lambda *a: None, epochs=10, batch_size=64, lr=0.1,
                warmup_epochs=1.0)
    o = regime_adaptation(task, 1024, 64)
    assert o["batch_size"] == 1024
    assert o["lr"] == pytest.approx(0.1 * 4.0)         # sqrt(1024 / 64) = 4
    assert o["epochs"] == 10 * 16                       # ceil(1024 / 64) = 16
    assert o["warmup_epochs"] == pytest.approx(16.0)
    o = regime_adaptation(task, 200, 64, adapt_epochs=False)
    assert o == {"batch_size": 200, "lr": pytest.approx(0.1 * math.sqrt(200 / 64))}
    assert regime_adaptation(task, 200, 64)["epochs"] == 10 * 4  # ceil(3.125) = 4, as the official code
    with pytest.raises(ConfigError):
        regime_adaptation(task, 32, 64)


def test_matches_the_official_chunked_training_step():
    """The official code (eladhoffer/bigBatch, main_gbn.py) realizes GBN by running the whole model on
    each of batch_size // mini_batch_size chunks of the batch, back-propagating each chunk's mean loss
    and dividing the summed gradients by the number of chunks. A model whose BatchNorms are converted
    must give the same outputs, gradients and running statistics from one pass over the whole batch."""
    import copy

    torch.manual_seed(7)
    ref = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 6),
                        nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().train()
    gbn = copy.deepcopy(ref)
    assert convert_to_ghost_bn(gbn, 4) == 2
    x, y = torch.randn(16, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (16,))

    chunks = list(zip(x.chunk(16 // 4), y.chunk(16 // 4)))
    ref_out = []
    for cx, cy in chunks:  # the official procedure
        out = ref(cx)
        ref_out.append(out.detach())
        nn.functional.cross_entropy(out, cy).backward()
    for p in ref.parameters():
        p.grad.div_(len(chunks))

    out = gbn(x)
    nn.functional.cross_entropy(out, y).backward()
    torch.testing.assert_close(out.detach(), torch.cat(ref_out))
    for (name, p), q in zip(ref.named_parameters(), gbn.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(gbn.state_dict()[key], value, msg=key)
