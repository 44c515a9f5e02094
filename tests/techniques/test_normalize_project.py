"""Normalize-and-Project: norm insertion, projection onto initial norms, the restarted schedule,
and the label-sequence diagnostic."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.normalization.normalize_project import (NormalizeAndProject, PermutedLabelSequence,
                                                                  WeightNormProjector,
                                                                  insert_norm_before_nonlinearities,
                                                                  nap_lr_factor, segment_labels)
from trainlab.training.technique import Batch, TrainState


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Identity(), nn.ReLU(), nn.Linear(8, 8), nn.GELU(),
                         nn.Linear(8, 3))


def test_insert_norm_before_nonlinearities():
    model = _mlp()
    assert insert_norm_before_nonlinearities(model) == 2
    assert isinstance(model[2], nn.LayerNorm) and model[2].normalized_shape == (8,)  # Identity slot reused
    assert isinstance(model[5], nn.Sequential) and isinstance(model[5][0], nn.LayerNorm)
    assert model[1].bias is None and model[4].bias is None and model[6].bias is not None
    assert insert_norm_before_nonlinearities(model) == 0  # idempotent: norms are there now
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    assert insert_norm_before_nonlinearities(cnn) == 1
    assert isinstance(cnn[4][0], nn.GroupNorm) and cnn[4][0].num_groups == 1
    assert cnn(torch.randn(2, 1, 7, 7)).shape == (2, 4, 3, 3)


def test_projection_keeps_each_weight_norm_at_its_initial_value():
    model = _mlp()
    insert_norm_before_nonlinearities(model)
    with torch.no_grad():  # make the norm layers' affine parameters non-trivial
        model[2].weight.mul_(1.5)
        model[2].bias.add_(0.2)
    projector = WeightNormProjector(model)
    w_init = [model[1].weight.norm().item(), model[4].weight.norm().item()]
    affine_init = math.sqrt(model[2].weight.detach().pow(2).sum() + model[2].bias.detach().pow(2).sum())
    head_before = model[6].weight.clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        projector.project()
        assert model[1].weight.norm().item() == pytest.approx(w_init[0], rel=1e-5)
        assert model[4].weight.norm().item() == pytest.approx(w_init[1], rel=1e-5)
        joint = math.sqrt(model[2].weight.detach().pow(2).sum() + model[2].bias.detach().pow(2).sum())
        assert joint == pytest.approx(affine_init, rel=1e-5)
    # the output layer is not projected (it is not scale-invariant)
    assert not torch.equal(model[6].weight, head_before)
    assert model[6].weight.norm().item() != pytest.approx(head_before.norm().item(), rel=1e-4)
    # projection is a pure rescaling: the direction of each weight is unchanged by it
    w = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.mul_(3.0)
    projector.project()
    torch.testing.assert_close(model[1].weight, w)


def test_projector_state_round_trip():
    model = _mlp()
    insert_norm_before_nonlinearities(model)
    p = WeightNormProjector(model, project_output=True)
    assert len(p.weights) == 3
    q = WeightNormProjector(model, project_output=True)
    q.load_state_dict({k: v * 2 for k, v in p.state_dict().items()})
    q.project()
    assert model[6].weight.norm().item() == pytest.approx(2 * p.weight_norms[2].item(), rel=1e-5)
    with pytest.raises(ConfigError):
        WeightNormProjector(model).load_state_dict(p.state_dict())  # 2 weights vs 3


def test_schedule_formula():
    S, W = 100, 5  # warmup_fraction 0.05 of 100 steps
    init, end = 1e-3, 1e-2
    f = lambda s: nap_lr_factor(s, S, 0.05, init, end)  # noqa: E731
    assert f(0) == pytest.approx(init)
    assert f(2) == pytest.approx(init + (1 - init) * 2 / W)
    assert f(W) == pytest.approx(1.0)
    mid = W + (S - W) // 2
    assert f(mid) == pytest.approx(end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (mid - W) / (S - W))))
    assert f(S - 1) == pytest.approx(end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (S - 1 - W) / (S - W))))
    assert f(S) == f(0) and f(S + 37) == f(37)  # restarted at every task change


def test_technique_schedule_uses_segment_length():
    from trainlab.tasks.task import Task

    task = Task("t", make_data=lambda: None, make_model=lambda *a: None, epochs=6)
    nap = NormalizeAndProject(lr_schedule="cosine-restarts", segment_epochs=2, warmup_fraction=0.0, end_factor=0.0)
    assert "schedule" in nap.modifies and "schedule" not in NormalizeAndProject().modifies
    model = nap.prepare(_mlp(), task)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = nap.make_scheduler(opt, task, total_steps=60)  # 10 steps/epoch -> 20 steps per task
    lrs = []
    for _ in range(41):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0) and lrs[20] == pytest.approx(1.0) and lrs[40] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.5) and lrs[19] < 0.01
    with pytest.raises(ConfigError):
        NormalizeAndProject(lr_schedule="cosine-restarts")
    with pytest.raises(ConfigError):
        NormalizeAndProject().prepare(nn.Sequential(nn.Linear(3, 3)), task)


def test_segment_labels():
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.equal(segment_labels(y, 0, 4, "permute", seed=0), y)
    p1 = segment_labels(y, 1, 4, "permute", seed=0)
    assert torch.equal(p1, segment_labels(y, 1, 4, "permute", seed=0))  # deterministic
    assert p1[0] == p1[4] and p1[1] == p1[5] and sorted(p1[:4].tolist()) == [0, 1, 2, 3]  # a class permutation
    r = segment_labels(y, 0, 4, "random", seed=0)
    assert r.shape == y.shape and not torch.equal(r, segment_labels(y, 1, 4, "random", seed=0))


def test_label_sequence_technique_on_a_tiny_run():
    from trainlab.tasks.task import DataBundle, Task
    from trainlab.training.trainer import run_training

    def data() -> DataBundle:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 5, generator=g)
        y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
        return DataBundle(x, y, x[:32], y[:32], num_classes=4, name="quad")

    def model(input_shape, num_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))

    task = Task("quad", make_data=data, make_model=model, epochs=4, batch_size=16, lr=0.1, weight_decay=0.0)
    seq = ("permuted-label-sequence", {"segment_epochs": 2})
    result = run_training(task, [seq, ("normalize-and-project", {})], seed=0)
    rows = result.epochs
    assert [r["seq_segment"] for r in rows] == [0, 0, 1, 1]
    assert "seq_end_acc" not in rows[0] and rows[1]["seq_end_acc"] == rows[1]["seq_acc"]
    assert all(0.0 <= r["seq_acc"] <= 1.0 and "seq_test_acc" in r for r in rows)


def test_permute_transform_changes_targets_and_labels():
    tech = PermutedLabelSequence(segment_epochs=1)
    state = TrainState(epoch=1, num_classes=4, seed=3)
    y = torch.tensor([0, 1, 2, 3])
    out = tech.transform_batch(Batch(inputs=torch.zeros(4, 2), targets=y, indices=torch.arange(4)), state)
    assert torch.equal(out.targets, segment_labels(y, 1, 4, "permute", 3)) and out.labels is out.targets
    with pytest.raises(ConfigError):
        PermutedLabelSequence(mode="shuffle")


def test_control_without_projection_inserts_the_same_norms_and_leaves_weights_free():
    from trainlab.tasks.task import Task

    task = Task("t", make_data=lambda: None, make_model=lambda *a: None, epochs=2)
    nap, control = NormalizeAndProject(), NormalizeAndProject(project=False)
    assert "weights" in nap.modifies and "weights" not in control.modifies and "model" in control.modifies
    a, b = nap.prepare(_mlp(), task), control.prepare(_mlp(), task)
    assert control.projector is None and control.state_dict() == {}
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]  # same architecture, same init
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    w0 = b[1].weight.norm().item()
    opt = torch.optim.SGD(b.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(b(torch.randn(16, 6)), torch.randint(0, 3, (16,))).backward()
        opt.step()
        control.after_step(b, opt, TrainState())  # a no-op: nothing is projected
    # scale-invariant weights grow under plain gradient steps (the ELR decay the projection removes)
    assert b[1].weight.norm().item() > w0 * 1.001
    with pytest.raises(ConfigError):
        NormalizeAndProject(project="no")
