"""DANN: the gradient reversal layer, the schedules, the domain loss and the technique in the Trainer."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from trainlab import Task
from trainlab.errors import ConfigError
from trainlab.tasks.domains import DomainCNN, make_domain_bundle
from trainlab.techniques.domain.dann import (
    DANN, DomainClassifier, GradientReversal, dann_lambda, dann_lr_factor, domain_adversarial_loss, domain_logits,
    reverse_gradient)
from trainlab.training.trainer import run_training


# --------------------------------------------------------------------------- reversal layer

def test_reversal_is_the_identity_forward_and_minus_lambda_backward() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * w, rtol=0, atol=0)


def test_reversal_flips_only_below_the_layer() -> None:
    """The domain classifier's own gradients equal the plain ones; the featurizer's gradient from
    the domain loss is -lambda times the plain one."""
    torch.manual_seed(0)
    feat = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
    disc = DomainClassifier(8, width=16, depth=2)
    xs, xt = torch.randn(7, 6), torch.randn(7, 6) + 0.5
    lam = 0.37

    def grads(reverse: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feat.zero_grad(set_to_none=True)
        disc.zero_grad(set_to_none=True)
        fs, ft = feat(xs), feat(xt)
        if reverse:
            grl = GradientReversal(lam)
            fs, ft = grl(fs), grl(ft)
        domain_adversarial_loss(disc, fs, ft).backward()
        return [p.grad.clone() for p in feat.parameters()], [p.grad.clone() for p in disc.parameters()]

    plain_f, plain_d = grads(False)
    rev_f, rev_d = grads(True)
    for a, b in zip(rev_d, plain_d):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(rev_f, plain_f):
        torch.testing.assert_close(a, -lam * b, rtol=1e-6, atol=1e-7)
        assert b.abs().max() > 0


def test_docstring_example_runs() -> None:
    import re

    import trainlab.techniques.domain.dann as mod

    code = re.search(r"plain PyTorch: .*?::\n\n(.*?)\n\n\*", mod.__doc__, re.S).group(1)
    exec(compile("\n".join(line[6:] for line in code.splitlines()), "dann-example", "exec"), {})


def test_reversal_module_reads_lambda_at_call_time() -> None:
    grl = GradientReversal(1.0)
    grl.lambda_ = 2.5
    x = torch.ones(3, requires_grad=True)
    grl(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -2.5))
    with pytest.raises(ConfigError):
        reverse_gradient(x, math.nan)


# --------------------------------------------------------------------------- schedules and loss

@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_lambda_schedule_matches_the_formula(p: float) -> None:
    # 2 / (1 + e^{-10 p}) - 1 = tanh(5 p)
    assert dann_lambda(p) == pytest.approx(2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0, abs=1e-15)
    assert dann_lambda(p) == pytest.approx(math.tanh(5.0 * p), abs=1e-12)
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(0.9999092, abs=1e-7)


@pytest.mark.parametrize("p,want", [(0.0, 1.0), (0.5, 6.0 ** -0.75), (1.0, 11.0 ** -0.75)])
def test_lr_annealing_matches_the_formula(p: float, want: float) -> None:
    assert dann_lr_factor(p) == pytest.approx(want, rel=1e-12)


def test_domain_loss_is_logistic_loss_with_source_0_and_target_1() -> None:
    disc = DomainClassifier(2, depth=0)
    with torch.no_grad():
        disc.net[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        disc.net[0].bias.fill_(0.5)
    fs, ft = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, -1.0], [2.0, 0.0]])
    z = [1 - 2 + 0.5, 0 + 2 + 0.5, 2 + 0.5]        # logits, by hand
    want = (math.log1p(math.exp(z[0])) + math.log1p(math.exp(-z[1])) + math.log1p(math.exp(-z[2]))) / 3
    assert float(domain_adversarial_loss(disc, fs, ft).detach()) == pytest.approx(want, rel=1e-6)
    logits, labels = domain_logits(disc, fs, ft)
    assert labels.tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ConfigError):
        domain_adversarial_loss(disc, fs, torch.zeros(1, 3))


# --------------------------------------------------------------------------- the technique

def _blobs(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def domain(shift: float) -> dict[str, torch.Tensor]:
        y = torch.randint(0, 3, (n,), generator=g)
        x = torch.randn(n, 1, 4, 4, generator=g) * 0.5 + y.float().view(-1, 1, 1, 1) + shift
        return {"train_x": x[:64], "train_y": y[:64], "test_x": x[64:], "test_y": y[64:]}

    return make_domain_bundle({"a": domain(0.0), "b": domain(0.3), "t": domain(1.5)}, ["a", "b"], ["t"],
                              num_classes=3, name="dann-blobs", val_fraction=0.25, seed=seed)


def _cnn(shape, classes):
    return DomainCNN(shape, classes, channels=(4,), hidden=16)


class _PlainNet(nn.Module):   # no `features` submodule: the classifier layer's input is read
    def __init__(self, shape, classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), 12), nn.ReLU())
        self.out = nn.Linear(12, classes)

    def forward(self, x):
        return self.out(self.body(x))


TASK = Task("dann-blobs", make_data=_blobs, make_model=_cnn, epochs=3, lr=1e-2, optimizer="adam",
            weight_decay=0.0, schedule="constant", batch_size=16)


@pytest.mark.parametrize("make_model", [_cnn, _PlainNet])
def test_lambda_zero_leaves_source_only_training_unchanged(make_model) -> None:
    """With lambda forced to 0 the featurizer receives exactly zero from the domain loss, the domain
    classifier has its own optimizer and seed, and target draws use state.generator: the model's
    final weights equal source-only training bit for bit (train_loss differs: it includes the
    domain loss)."""
    task = dataclasses.replace(TASK, make_model=make_model)
    base = run_training(task, [], seed=3, keep_state=True)
    zero = run_training(task, [("dann", {"lam": 0.0})], seed=3, keep_state=True)
    assert base.state.keys() == zero.state.keys()
    for k in base.state:
        assert torch.equal(base.state[k], zero.state[k]), k
    assert zero.final["test_acc"] == base.final["test_acc"]
    assert zero.final["train_loss"] > base.final["train_loss"]      # the domain loss is in it
    assert 0.0 < zero.final["dann_domain_loss"] and zero.final["dann_lambda"] == 0.0
    # and the scheduled lambda does change the model
    adv = run_training(task, [("dann", {})], seed=3, keep_state=True)
    assert any(not torch.equal(base.state[k], adv.state[k]) for k in base.state)
    # 96 training rows / batch 16 = 6 steps an epoch; the last step's lambda is reported
    assert adv.final["dann_lambda"] == pytest.approx(dann_lambda((3 * 6 - 1) / 18), rel=1e-9)


def test_domain_classifier_is_trained() -> None:
    """Its parameters move (own optimizer, same class as the model's), and with lambda 0 (features
    trained on the source only) it learns to tell the shifted target from the sources."""
    tech = DANN(lam=0.0)
    run = run_training(TASK, [tech], seed=0)
    assert tech.classifier is not None and type(tech.optimizer).__name__ == "Adam"
    torch.manual_seed(0 * 7_919 + 31)       # its initial weights (own seed, see on_train_start)
    init = DomainClassifier(tech.classifier.net[0].in_features, tech.width, tech.depth)
    assert all(not torch.equal(a, b) for a, b in zip(init.parameters(), tech.classifier.parameters()))
    assert run.epochs[-1]["dann_domain_acc"] > 0.6      # chance: 0.5 (equal source and target rows)
    assert run.epochs[-1]["dann_domain_loss"] < run.epochs[0]["dann_domain_loss"]


def test_target_labels_are_never_read(monkeypatch) -> None:
    """Target inputs enter, target labels do not: replacing every target label by garbage changes
    nothing in a DANN run's weights."""
    def scrambled(seed: int = 0):
        data = _blobs(seed=seed)
        t = data.info["domains"]["t"]
        t["train_y"] = torch.full_like(t["train_y"], 2)      # garbage labels on the target's training rows
        t["val_y"] = torch.full_like(t["val_y"], 1)
        return data

    a = run_training(TASK, [("dann", {})], seed=1, keep_state=True)
    b = run_training(dataclasses.replace(TASK, make_data=scrambled), [("dann", {})], seed=1, keep_state=True)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k


def test_target_batch_has_the_source_batch_size_and_comes_from_the_target() -> None:
    tech = DANN()
    data = _blobs()
    from trainlab.training.technique import TrainState

    state = TrainState(data=data, generator=torch.Generator().manual_seed(0))
    x = tech.target_batch(state, 16)
    pool = data.info["target_train_x"]
    assert x.shape == (16, *pool.shape[1:])
    assert all(any(torch.equal(row, p) for p in pool) for row in x)


def test_refuses_data_without_target_inputs() -> None:
    def plain(seed: int = 0):
        data = _blobs(seed=seed)
        del data.info["target_train_x"]
        return data

    with pytest.raises(ConfigError, match="target"):
        run_training(dataclasses.replace(TASK, make_data=plain), [("dann", {})], seed=0)


def test_settings_are_validated_and_anneal_owns_the_schedule() -> None:
    with pytest.raises(ConfigError):
        DANN(gamma=-1)
    with pytest.raises(ConfigError):
        DANN(width=0)
    with pytest.raises(ConfigError):
        DANN(lam=math.inf)
    assert "schedule" not in DANN().modifies
    assert "schedule" in DANN(anneal_lr=True).modifies
    run = run_training(TASK, [("dann", {"anneal_lr": True})], seed=0)
    steps = 3 * 6
    assert run.final["lr"] == pytest.approx(1e-2 * dann_lr_factor(steps / steps), rel=1e-9)


def test_resume_equals_an_uninterrupted_run(tmp_path) -> None:
    full = run_training(TASK, [("dann", {})], seed=2, keep_state=True)
    ck = tmp_path / "ck.pt"
    run_training(TASK, [("dann", {})], seed=2, checkpoint=ck, stop_after_epochs=1)
    resumed = run_training(TASK, [("dann", {})], seed=2, checkpoint=ck, resume=True, keep_state=True)
    for k in full.state:
        assert torch.equal(full.state[k], resumed.state[k]), k
