"""AdaMixUp: the learned ratios lie in their policy region and carry gradients to the generator,
the extra networks train and round-trip through the state_dict, and mixing twice is refused."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.models import build_model
from trainlab.tasks.synthetic import blobs
from trainlab.tasks.task import DataBundle, Task
from trainlab.techniques.regularization.adamixup import AdaMixUp, PolicyGenerator
from trainlab.training.trainer import build_techniques, run_training


def _image_blobs() -> DataBundle:
    b = blobs(n_train=128, n_test=64, dim=64, classes=3)
    return DataBundle(b.train_x.view(-1, 1, 8, 8), b.train_y, b.test_x.view(-1, 1, 8, 8), b.test_y, num_classes=3)


TASK = Task("tiny-images", make_data=_image_blobs, make_model=functools.partial(build_model, "cnn"),
            model_kwargs={"channels": (4, 8)}, epochs=2, batch_size=32, lr=0.05)


def test_lam_lies_in_the_policy_region_and_is_differentiable():
    gen = PolicyGenerator(nn.Sequential(nn.Flatten(), nn.Linear(6, 5)), features=5)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(16, 6), torch.randn(16, 6)
    region = gen.region(x1, x2, torch.Generator().manual_seed(0))
    lam = gen(x1, x2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(region.sum(1), torch.ones(16))
    assert ((lam >= region[:, 0] - 1e-6) & (lam <= region[:, 0] + region[:, 1] + 1e-6)).all()
    assert ((lam > 0) & (lam < 1)).all()
    lam.sum().backward()
    assert all(p.grad is not None for p in gen.parameters())
    del g


def test_trains_and_round_trips_its_networks():
    tech = AdaMixUp()
    result = run_training(TASK, [tech], seed=0)
    assert result.status == "finished"
    assert 0.0 < result.final["adamixup_lam_mean"] < 1.0
    assert 0.0 <= result.final["adamixup_intrusion_acc"] <= 1.0
    state = tech.state_dict()
    assert {"policy", "intrusion", "optimizer", "scheduler"} <= set(state)
    # the generator was trained: its head moved away from the N(0, 1e-3) init
    fresh = AdaMixUp()
    result2 = run_training(TASK.with_overrides({"epochs": 1}), [fresh], seed=0)
    assert result2.status == "finished"
    moved = [not torch.equal(a, b) for a, b in zip(state["policy"].values(), fresh.state_dict()["policy"].values())
             if a.is_floating_point()]
    assert any(moved)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict()["policy"].items():
        torch.testing.assert_close(v, state["policy"][k])


def test_cannot_be_combined_with_another_mixing_policy_or_objective():
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_techniques(["adamixup", "mixup"])
    with pytest.raises(ConfigError, match="loss objective"):
        build_techniques(["adamixup", "elr"])


def test_resumed_run_equals_uninterrupted(tmp_path):
    full = run_training(TASK, ["adamixup"], seed=4, keep_state=True)
    ck = tmp_path / "run.ckpt"
    run_training(TASK, ["adamixup"], seed=4, checkpoint=ck, stop_after_epochs=1)
    resumed = run_training(TASK, ["adamixup"], seed=4, checkpoint=ck, resume=True, keep_state=True)
    assert full.state.keys() == resumed.state.keys()
    assert all(torch.equal(full.state[k], resumed.state[k]) for k in full.state)
