"""Unlearning methods, metrics (UA, RA, TA, MIA-efficacy, gap), magnitude pruning and the
sparse-unlearning technique, tested against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.compression.unlearning import (
    SparseUnlearning, accuracy, apply_masks, finetune_unlearn, forget_split, gradient_ascent_unlearn,
    l1_sparse_unlearn, magnitude_prune, make_permanent, masks, mia_attack_efficacy, mia_efficacy, mia_features,
    parse_forget, prunable_layers, sparsity_of, unlearn_gap, unlearn_metrics, unlearning_accuracy)


def _identity_model(dim: int = 2) -> nn.Module:
    # logits = inputs: predictions and confidences are set by the data
    lin = nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
        lin.bias.zero_()
    return lin


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


# ---- metrics -----------------------------------------------------------------------------------
def test_accuracy_ua_ra_ta_by_hand() -> None:
    model = _identity_model()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])  # predictions 0, 1, 0, 1
    y = torch.tensor([0, 1, 1, 1])
    assert accuracy(model, x, y) == pytest.approx(0.75)
    assert unlearning_accuracy(model, x[2:], y[2:]) == pytest.approx(0.5)   # 1 - 1/2
    assert math.isnan(accuracy(model, x[:0], y[:0]))
    retain, forget, test = (x[:2], y[:2]), (x[2:], y[2:]), (x[:3], y[:3])
    m = unlearn_metrics(model, retain, forget, test)
    assert m["ua"] == pytest.approx(0.5) and m["ra"] == pytest.approx(1.0) and m["ta"] == pytest.approx(2 / 3)
    assert 0.0 <= m["mia_efficacy"] <= 1.0


def test_unlearn_gap_is_the_mean_absolute_gap() -> None:
    a = {"ua": 0.1, "mia_efficacy": 0.2, "ra": 0.9, "ta": 0.8}
    b = {"ua": 0.5, "mia_efficacy": 0.1, "ra": 1.0, "ta": 0.8}
    assert unlearn_gap(a, b) == pytest.approx((0.4 + 0.1 + 0.1 + 0.0) / 4)
    assert unlearn_gap(a, a) == 0.0
    with pytest.raises(ConfigError):
        unlearn_gap({"ua": 0.1}, b)


def test_mia_features_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0, 0])
    assert torch.allclose(mia_features(probs, labels, "confidence").flatten(), torch.tensor([0.2, 1 / 3, 1.0]))
    ent = mia_features(probs, labels, "entropy").flatten()
    assert ent[0] == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)), rel=1e-5)
    assert ent[1] == pytest.approx(math.log(3), rel=1e-5) and ent[2] == 0.0    # 0 log 0 = 0
    assert torch.equal(mia_features(probs, labels, "prob"), probs)
    with pytest.raises(ConfigError):
        mia_features(probs, labels, "loss")


def test_mia_attack_on_separable_confidences() -> None:
    g = torch.Generator().manual_seed(0)
    member = 0.9 + 0.1 * torch.rand(200, 1, generator=g)       # members: confidence in [0.9, 1]
    non_member = 0.6 * torch.rand(200, 1, generator=g)         # non-members: confidence in [0, 0.6]
    like_members = 0.9 + 0.1 * torch.rand(100, 1, generator=g)
    like_non = 0.6 * torch.rand(100, 1, generator=g)
    assert mia_attack_efficacy(member, non_member, like_members) <= 0.02   # still remembered
    assert mia_attack_efficacy(member, non_member, like_non) >= 0.98      # forgotten
    half = mia_attack_efficacy(member, non_member, torch.cat([like_members[:50], like_non[:50]]))
    assert half == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ConfigError):
        mia_attack_efficacy(member, non_member[:0], like_non)


def test_mia_efficacy_through_a_model() -> None:
    # identity logits: [4, 0] with label 0 is confident (p = 0.982), [0, 0] is not (p = 0.5)
    model = _identity_model()
    confident = torch.tensor([[4.0, 0.0]]).repeat(60, 1)
    unsure = torch.zeros(60, 2)
    label = torch.zeros(60, dtype=torch.long)
    retain, test = (confident, label), (unsure, label)
    forget_remembered = (confident[:20], label[:20])
    forget_forgotten = (unsure[:20], label[:20])
    assert mia_efficacy(model, retain, test, forget_remembered) == pytest.approx(0.0)
    assert mia_efficacy(model, retain, test, forget_forgotten) == pytest.approx(1.0)
    mixed = (torch.cat([confident[:10], unsure[:30]]), torch.zeros(40, dtype=torch.long))
    assert mia_efficacy(model, retain, test, mixed) == pytest.approx(0.75)
    # the members are the first |test| retained examples: a retain set twice as long uses its head only
    longer = (torch.cat([confident, unsure]), torch.zeros(120, dtype=torch.long))
    assert mia_efficacy(model, longer, test, forget_forgotten) == pytest.approx(1.0)


# ---- forget sets -------------------------------------------------------------------------------
def test_forget_split_class_and_random() -> None:
    labels = torch.arange(100) % 5
    f, r = forget_split(labels, "class:2", seed=0)
    assert torch.equal(f, torch.nonzero(labels == 2).flatten())
    assert set(f.tolist()).isdisjoint(r.tolist()) and len(f) + len(r) == 100
    f0, r0 = forget_split(labels, "random:0.1", seed=3)
    f1, _ = forget_split(labels, "random:0.1", seed=3)
    f2, _ = forget_split(labels, "random:0.1", seed=4)
    assert len(f0) == 10 and torch.equal(f0, f1) and not torch.equal(f0, f2)
    assert set(f0.tolist()).isdisjoint(r0.tolist()) and sorted(f0.tolist() + r0.tolist()) == list(range(100))
    # the class split does not depend on the seed
    assert torch.equal(forget_split(labels, "class:2", seed=9)[0], f)


@pytest.mark.parametrize("spec", ["class:x", "class:-1", "class:1.5", "random:0", "random:1.0", "all", "random:"])
def test_bad_forget_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_forget(spec)


def test_forget_class_must_exist() -> None:
    with pytest.raises(ConfigError):
        forget_split(torch.arange(10) % 3, "class:5", num_classes=3)
    with pytest.raises(ConfigError):  # a class with no training example
        forget_split(torch.zeros(10, dtype=torch.long), "class:2", num_classes=10)


# ---- pruning -----------------------------------------------------------------------------------
def test_global_magnitude_pruning_reaches_the_exact_sparsity() -> None:
    model = _mlp()
    head_before = model[4].weight.detach().clone()
    before = [m.weight.detach().clone() for m, _ in prunable_layers(model)]
    layers = magnitude_prune(model, 0.9)
    total = sum(w.numel() for w in before)                     # 6*16 + 16*16 = 352
    assert total == 352 and len(layers) == 2
    zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
    assert zeros == round(0.9 * total)
    assert sparsity_of(layers) == pytest.approx(round(0.9 * total) / total)
    # global: the kept weights are the largest magnitudes across both layers
    mags = torch.cat([w.abs().flatten() for w in before])
    kept = torch.cat([(w.abs() * m.weight_mask).flatten() for w, (m, _) in zip(before, layers)])
    pruned = torch.cat([(w.abs() * (1 - m.weight_mask)).flatten() for w, (m, _) in zip(before, layers)])
    assert kept[kept > 0].min() >= pruned.max()
    assert mags.sort().values[-(total - zeros):].sum() == pytest.approx(float(kept.sum()), rel=1e-6)
    assert torch.equal(model[4].weight, head_before)            # the classifier stays dense


def test_the_mask_holds_during_unlearning_and_permanence() -> None:
    model = _mlp()
    magnitude_prune(model, 0.8)
    mask = masks(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    finetune_unlearn(model, x, y, epochs=3, lr=0.1, weight_decay=5e-4)
    gradient_ascent_unlearn(model, x[:16], y[:16], epochs=2, lr=0.05)
    l1_sparse_unlearn(model, x, y, epochs=2, lr=0.05, alpha=1e-3)
    for name, m in masks(model).items():
        assert torch.equal(m, mask[name])
    for name, module in model.named_modules():
        if name in mask:
            assert bool((module.weight[mask[name] == 0] == 0).all())
            assert not torch.equal(module.weight_orig, before[f"{name}.weight_orig"])   # it did train
    make_permanent(model)
    for name, module in model.named_modules():
        if name in mask:
            assert not hasattr(module, "weight_mask") and isinstance(module.weight, nn.Parameter)
            assert bool((module.weight[mask[name] == 0] == 0).all())


def test_apply_masks_copies_a_mask_to_another_model() -> None:
    a, b = _mlp(0), _mlp(1)
    magnitude_prune(a, 0.5)
    apply_masks(b, masks(a))
    for name, m in masks(a).items():
        assert torch.equal(dict(b.named_modules())[name].weight_mask, m)


def test_bad_sparsity() -> None:
    with pytest.raises(ConfigError):
        magnitude_prune(_mlp(), 1.0)


# ---- unlearning methods ------------------------------------------------------------------------
def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, extra=None) -> list[torch.Tensor]:
    """Parameters after one plain gradient step on CE (+ extra(model)), computed by hand."""
    loss = F.cross_entropy(model(x), y) + (extra(model) if extra else 0.0)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return [p.detach() - lr * g for p, g in zip(model.parameters(), grads)]


def test_gradient_ascent_is_a_step_up_the_forget_loss() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    model = _mlp()
    descent = _one_step(model, x, y, lr=0.05)
    start = [p.detach().clone() for p in model.parameters()]
    expected = [2 * s - d for s, d in zip(start, descent)]      # theta + lr * grad
    l0 = float(F.cross_entropy(model(x), y).detach())
    # one full batch, no momentum, no weight decay: exactly theta + lr * grad CE
    gradient_ascent_unlearn(model, x, y, epochs=1, lr=0.05, momentum=0.0, weight_decay=0.0, batch_size=32)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)
    l1 = float(F.cross_entropy(model(x), y).detach())
    assert l1 > l0
    gradient_ascent_unlearn(model, x, y, epochs=5, lr=0.05, weight_decay=0.0)
    assert float(F.cross_entropy(model(x), y).detach()) > l1 + 0.1


def test_ft_is_a_step_down_the_retain_loss() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    model = _mlp()
    expected = _one_step(model, x, y, lr=0.1)
    finetune_unlearn(model, x, y, epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=32)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)


def test_l1_sparse_unlearning_adds_the_l1_subgradient() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    model = _mlp()
    alpha = 0.01
    expected = _one_step(model, x, y, lr=0.05, extra=lambda m: alpha * sum(p.abs().sum() for p in m.parameters()))
    l1_sparse_unlearn(model, x, y, epochs=1, lr=0.05, alpha=alpha, momentum=0.0, weight_decay=0.0, batch_size=32)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)
    # over epochs the weight decays linearly to 0: the l1-sparse model ends with the smaller norm
    a, b = _mlp(), _mlp()
    finetune_unlearn(a, x, y, epochs=4, lr=0.05, generator=torch.Generator().manual_seed(0))
    l1_sparse_unlearn(b, x, y, epochs=4, lr=0.05, alpha=0.05, generator=torch.Generator().manual_seed(0))
    norm = lambda m: sum(float(p.detach().abs().sum()) for p in m.parameters())  # noqa: E731
    assert norm(b) < norm(a)
    with pytest.raises(ConfigError):
        l1_sparse_unlearn(b, x, y, alpha=0.0)


# ---- the technique -----------------------------------------------------------------------------
@pytest.mark.parametrize("settings", [{"sparsity": 1.0}, {"method": "fisher"}, {"forget": "class"},
                                      {"unlearn_epochs": -1}, {"unlearn_lr": 0.0}, {"mia": "loss"},
                                      {"method": "l1-sparse", "l1_alpha": 0.0}])
def test_bad_settings(settings: dict) -> None:
    with pytest.raises(ConfigError):
        SparseUnlearning(**settings)


def test_the_technique_logs_unlearned_and_retrained_metrics() -> None:
    from trainlab.training.trainer import run_training

    r = run_training("blobs-mlp", [("sparse-unlearning", {"sparsity": 0.5, "forget": "class:1",
                                                          "unlearn_epochs": 1})], seed=0, keep_state=True)
    f = r.final
    for k in ("ua", "mia_efficacy", "ra", "ta", "retrain_ua", "retrain_mia_efficacy", "retrain_ra", "retrain_ta",
              "unlearn_gap", "forget_acc_before", "ta_before", "sparsity", "unlearn_seconds", "retrain_seconds"):
        assert k in f and math.isfinite(f[k]), k
    assert f["unlearn_gap"] == pytest.approx(sum(f[f"gap_{k}"] for k in ("ua", "mia_efficacy", "ra", "ta")) / 4)
    assert f["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # only the last epoch unlearns
    assert all("ua" not in row for row in r.epochs[:-1])
    # the stored state has plain weights (the masks folded in) with the pruned zeros
    assert not any(k.endswith("weight_mask") or k.endswith("weight_orig") for k in r.state)
    hidden = [v for k, v in r.state.items() if k.endswith("weight")][:-1]
    zeros = sum(int((w == 0).sum()) for w in hidden) / sum(w.numel() for w in hidden)
    assert zeros == pytest.approx(0.5, abs=1e-3)


# ---- the compressed model ----------------------------------------------------------------------
def test_sparse_model_file_round_trip(tmp_path) -> None:
    from trainlab.techniques.compression.artifact import dense_bytes
    from trainlab.techniques.compression.unlearning import load_sparse_model, save_sparse_model

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Linear(128, 10))
    magnitude_prune(model, 0.95)
    model.eval()
    x = torch.randn(8, 64)
    with torch.no_grad():
        expected = model(x)
    size = save_sparse_model(tmp_path / "m.pt", model)
    # 8192 pruned weights: 410 float values + 1 bit each; the 10 x 128 head and the rest dense
    pruned_bytes = 4 * round(0.05 * 8192) + 8192 // 8
    dense_rest = dense_bytes(model) - 4 * 8192
    assert size < pruned_bytes + dense_rest + 4096        # + the file's header
    assert size < 0.35 * dense_bytes(model)
    fresh = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Linear(128, 10)).eval()
    load_sparse_model(tmp_path / "m.pt", fresh)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    assert int((fresh[0].weight == 0).sum()) == round(0.95 * 8192)


def test_a_dense_model_is_stored_densely(tmp_path) -> None:
    from trainlab.techniques.compression.artifact import load_artifact
    from trainlab.techniques.compression.unlearning import save_sparse_model

    model = _mlp()
    save_sparse_model(tmp_path / "d.pt", model)
    tensors, meta = load_artifact(tmp_path / "d.pt", "sparse-unlearning")
    assert meta["sparse"] == {} and set(tensors) == set(model.state_dict())


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path) -> None:
    from trainlab.training.trainer import run_training

    tech = [("sparse-unlearning", {"sparsity": 0.5, "forget": "random:0.2"})]
    full = run_training("blobs-mlp", tech, seed=1)
    ck = tmp_path / "ck.pt"
    run_training("blobs-mlp", tech, seed=1, checkpoint=ck, stop_after_epochs=2)
    resumed = run_training("blobs-mlp", tech, seed=1, checkpoint=ck, resume=True)
    for k in ("ua", "ra", "ta", "mia_efficacy", "retrain_ua", "retrain_ra", "retrain_ta", "unlearn_gap"):
        assert resumed.final[k] == full.final[k], k
