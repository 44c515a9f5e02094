"""Adapters (LoRA, LoRA-XS, LoRA-SB, FLoRA): parameter counts, init, merge, frozen base, LoRA-SB's
init against a hand-computed SVD, FLoRA against the explicit Tucker product, adapter files."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import CheckpointError, ConfigError
from trainlab.techniques.compression.adapters import (
    Adapted, apply_adapters, digits_split, load_adapters, merge_adapters, save_adapters, trainable_count,
    unmerged_base,
)
from trainlab.techniques.compression.artifact import dense_bytes
from trainlab.techniques.compression.flora import (
    CNN_KERNELS, FLoRADelta, flora_param_count, matched_flora_rank, tucker_product,
)
from trainlab.techniques.compression.lora import LoRADelta, lora_param_count
from trainlab.techniques.compression.lora_sb import LoRASBDelta, approximate_first_update, lora_sb_initialize
from trainlab.techniques.compression.lora_xs import R_INIT_STD, LoRAXSDelta


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2), nn.ReLU(),
                         nn.Conv2d(5, 4, 1))


BUILDERS = {
    "lora": lambda layer: LoRADelta.build(layer, rank=3, alpha=6.0),
    "lora-xs": lambda layer: LoRAXSDelta.build(layer, rank=3),
    "lora-sb": lambda layer: LoRASBDelta.build(layer, rank=3),
    "flora": lambda layer: FLoRADelta.build(layer, rank=2),
}


def randomize(model: nn.Module) -> None:
    """Give every adapter parameter a nonzero value (the inits make some updates zero)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, Adapted):
                for t in list(layer.delta.parameters()) + list(layer.delta.buffers()):
                    t.copy_(0.3 * torch.randn(t.shape, generator=g))


# --------------------------------------------------------------------------- parameter counts

def test_lora_count_is_r_times_din_plus_dout() -> None:
    model = mlp()
    apply_adapters(model, BUILDERS["lora"])
    assert trainable_count(model) == 3 * (12 + 10) + 3 * (10 + 7) + 3 * (7 + 3)
    assert lora_param_count(10, 12, 3) == 3 * 22


def test_lora_xs_and_sb_train_r_squared_per_layer() -> None:
    for name in ("lora-xs", "lora-sb"):
        model = mlp()
        apply_adapters(model, BUILDERS[name])
        assert trainable_count(model) == 3 * 3 ** 2, name


def test_rank_is_capped_at_the_smaller_side() -> None:
    model = mlp()
    apply_adapters(model, lambda layer: LoRAXSDelta.build(layer, rank=5))
    assert trainable_count(model) == 25 + 25 + 3 ** 2   # the 7 -> 3 head: rank 3


def test_flora_count_is_core_plus_factors() -> None:
    model = cnn()
    apply_adapters(model, BUILDERS["flora"], targets="conv")
    # modes (in, out, kh, kw), ranks (min(2,in), min(2,out), kh, kw)
    expected = (2 * 2 * 3 * 3 + 2 * 2 + 6 * 2 + 3 * 3 + 3 * 3) \
        + (2 * 2 * 3 * 3 + 6 * 2 + 5 * 2 + 3 * 3 + 3 * 3) + (2 * 2 * 1 * 1 + 5 * 2 + 4 * 2 + 1 * 1 + 1 * 1)
    assert trainable_count(model) == expected
    assert sum(flora_param_count(m.weight.shape, 2) for m in cnn().modules() if isinstance(m, nn.Conv2d)) == expected


def test_flora_rank_rule_matches_lora_budget() -> None:
    r = matched_flora_rank(CNN_KERNELS, 4)
    lora = sum(lora_param_count(k[0], math.prod(k[1:]), min(4, k[0])) for k in CNN_KERNELS)
    total = [sum(flora_param_count(k, rank) for k in CNN_KERNELS) for rank in (r, r + 1)]
    assert total[0] <= lora < total[1]


# --------------------------------------------------------------------------- init, merge, frozen base

@pytest.mark.parametrize("name", ["lora", "flora"])
def test_zero_update_at_init(name: str) -> None:
    model = cnn() if name == "flora" else mlp()
    x = torch.randn(4, 2, 7, 7) if name == "flora" else torch.randn(4, 12)
    before = model(x)
    apply_adapters(model, BUILDERS[name], targets="conv" if name == "flora" else "linear")
    assert torch.equal(model(x), before)   # B = 0 (LoRA), G = 0 (FLoRA): exactly the base


def test_lora_xs_starts_within_its_tiny_gaussian_r() -> None:
    model = mlp()
    apply_adapters(model, BUILDERS["lora-xs"])
    for layer in model.modules():
        if isinstance(layer, Adapted):
            r = layer.delta.R
            assert 0 < r.abs().max() < 10 * R_INIT_STD
            # B = U_r, A = Sigma_r V_r^T: B A is the base weight's best rank-3 approximation
            u, s, vh = torch.linalg.svd(layer.base.weight.double())
            assert torch.allclose((layer.delta.B @ layer.delta.A).double(), u[:, :3] @ torch.diag(s[:3]) @ vh[:3],
                                  atol=1e-5)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_merge_equals_unmerged_forward(name: str) -> None:
    conv = name == "flora"
    model = cnn() if conv else mlp()
    apply_adapters(model, BUILDERS[name], targets="conv" if conv else "linear")
    randomize(model)
    x = torch.randn(5, 2, 7, 7) if conv else torch.randn(5, 12)
    out = model(x)
    merged = merge_adapters(copy.deepcopy(model))
    assert not any(isinstance(m, Adapted) for m in merged.modules())
    assert torch.allclose(merged(x), out, atol=1e-5)
    assert dense_bytes(merged) == dense_bytes(cnn() if conv else mlp())   # no extra inference weights


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_frozen_base_gets_no_gradient(name: str) -> None:
    conv = name == "flora"
    model = cnn() if conv else mlp()
    apply_adapters(model, BUILDERS[name], targets="conv" if conv else "linear")
    randomize(model)
    x = torch.randn(5, 2, 7, 7) if conv else torch.randn(5, 12)
    model(x).square().sum().backward()
    for layer in model.modules():
        if isinstance(layer, Adapted):
            assert layer.base.weight.grad is None and layer.base.bias.grad is None
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.delta.parameters())
    base = unmerged_base(model)
    assert not any(isinstance(m, Adapted) for m in base.modules())


def test_lora_update_formula() -> None:
    layer = nn.Linear(4, 3)
    delta = LoRADelta.build(layer, rank=2, alpha=5.0)
    with torch.no_grad():
        delta.B.copy_(torch.arange(6.0).reshape(3, 2))
    assert torch.allclose(delta(), 2.5 * delta.B @ delta.A)


# --------------------------------------------------------------------------- LoRA-SB init

def test_lora_sb_init_is_the_svd_of_the_sign_update_hand_case() -> None:
    # one linear layer, squared loss 0.5 (w.x - y)^2 on one sample: grad = (w.x - y) x^T
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    model = nn.Sequential(layer)
    apply_adapters(model, lambda lay: LoRASBDelta.build(lay, rank=1))
    x = torch.tensor([[1.0, -2.0, 3.0]])
    y = torch.tensor([[0.0, 0.0]])
    lora_sb_initialize(model, lambda out, t: 0.5 * (out - t).square().sum(), x, y, lr=0.1)
    # residual (1, -2): grad = [[1, -2, 3], [-2, 4, -6]]; sign = [[1, -1, 1], [-1, 1, -1]] = u v^T,
    # u = (1, -1), v = (1, -1, 1): rank one, singular value sqrt(2) sqrt(3); the update -0.1 sign
    delta = model[0].delta
    update = -0.1 * torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    assert torch.allclose(delta(), update, atol=1e-6)
    assert torch.allclose(delta.R, torch.tensor([[0.1 * math.sqrt(6)]]), atol=1e-6)
    assert torch.allclose(delta.B.abs(), torch.full((2, 1), 1 / math.sqrt(2)), atol=1e-6)
    assert torch.allclose(delta.A.abs(), torch.full((1, 3), 1 / math.sqrt(3)), atol=1e-6)


def test_lora_sb_init_equals_truncated_svd_of_the_approximated_update() -> None:
    model = mlp()
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    reference = copy.deepcopy(model)
    reference.zero_grad()
    F.cross_entropy(reference(x), y).backward()
    apply_adapters(model, BUILDERS["lora-sb"])
    lora_sb_initialize(model, F.cross_entropy, x, y, lr=0.01)
    for (name, layer), ref in zip(((n, m) for n, m in model.named_modules() if isinstance(m, Adapted)),
                                  (m for m in reference.modules() if isinstance(m, nn.Linear))):
        upd = approximate_first_update(ref.weight.grad, 0.01).double()
        u, s, vh = torch.linalg.svd(upd)
        best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
        assert torch.allclose(layer.delta().double(), best, atol=1e-6), name
        assert layer.base.weight.requires_grad is False   # refrozen after the gradient


# --------------------------------------------------------------------------- FLoRA

def mode_product(t: torch.Tensor, m: torch.Tensor, mode: int) -> torch.Tensor:
    """The n-mode product t x_mode m (Kolda & Bader): unfold, multiply, fold."""
    moved = t.movedim(mode, 0)
    out = (m @ moved.reshape(moved.shape[0], -1)).reshape(m.shape[0], *moved.shape[1:])
    return out.movedim(0, mode)


def test_flora_delta_is_the_explicit_tucker_product() -> None:
    layer = nn.Conv2d(4, 6, (3, 2))
    delta = FLoRADelta.build(layer, rank=3, kernel_rank=2, scale=0.5)
    with torch.no_grad():
        delta.G.normal_()
    expected = delta.G.detach()
    for k, f in enumerate(delta.factors):
        expected = mode_product(expected, f.detach(), k)
    assert expected.shape == (4, 6, 3, 2)   # modes (in, out, kh, kw)
    assert torch.allclose(delta(), 0.5 * expected.transpose(0, 1), atol=1e-5)
    # one entry by the definition's sum
    g, (u0, u1, u2, u3) = delta.G.detach(), [f.detach() for f in delta.factors]
    o, i, h, w = 5, 2, 1, 0
    entry = sum(g[a, b, c, d] * u0[i, a] * u1[o, b] * u2[h, c] * u3[w, d]
                for a in range(3) for b in range(3) for c in range(2) for d in range(2))
    assert torch.allclose(delta()[o, i, h, w], 0.5 * entry, atol=1e-5)
    assert tucker_product(g, [u0, u1, u2, u3]).shape == (4, 6, 3, 2)


# --------------------------------------------------------------------------- adapter files

@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_adapter_file_round_trip(name: str, tmp_path) -> None:
    conv = name == "flora"
    base = cnn() if conv else mlp()
    model = copy.deepcopy(base)
    apply_adapters(model, BUILDERS[name], targets="conv" if conv else "linear")
    randomize(model)
    if name == "lora-xs":   # B and A are recomputed from the base weights on load: keep them the SVD's
        fresh = copy.deepcopy(base)
        apply_adapters(fresh, BUILDERS[name])
        for a, b in zip((m for m in model.modules() if isinstance(m, Adapted)),
                        (m for m in fresh.modules() if isinstance(m, Adapted))):
            a.delta.B.copy_(b.delta.B), a.delta.A.copy_(b.delta.A)
    x = torch.randn(3, 2, 7, 7) if conv else torch.randn(3, 12)
    size = save_adapters(tmp_path / "a.pt", model)
    loaded = load_adapters(tmp_path / "a.pt", base)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert not any(isinstance(m, Adapted) for m in base.modules())   # the base is left as it was
    assert trainable_count(loaded) == 0
    tensors = [t for m in model.modules() if isinstance(m, Adapted) for t in m.delta.stored_tensors().values()]
    stored = sum(t.numel() for t in tensors)
    # the file holds the adapter tensors (plus torch.save's per-tensor records), not the base network
    assert 4 * stored <= size < 4 * stored + 400 * len(tensors) + 2048
    if name == "lora-xs":
        assert stored == 3 * 9      # R only


def test_adapter_file_errors(tmp_path) -> None:
    model = mlp()
    with pytest.raises(ConfigError):
        save_adapters(tmp_path / "none.pt", model)
    apply_adapters(model, BUILDERS["lora"])
    save_adapters(tmp_path / "a.pt", model)
    with pytest.raises(CheckpointError):
        load_adapters(tmp_path / "a.pt", nn.Sequential(nn.Linear(12, 10)))
    with pytest.raises(CheckpointError):
        load_adapters(tmp_path / "missing.pt", mlp())


def test_bad_settings_are_config_errors() -> None:
    from trainlab.techniques.registry import build_technique

    with pytest.raises(ConfigError):
        build_technique("lora", {"rank": 0})
    with pytest.raises(ConfigError):
        build_technique("flora", {"scale": -1.0})
    with pytest.raises(ConfigError):
        build_technique("lora-sb", {"num_samples": 0})
    with pytest.raises(ConfigError):
        build_technique("lora-xs", {"targets": "attention"})
    with pytest.raises(ConfigError):
        apply_adapters(mlp(), BUILDERS["lora"], targets="conv")   # no conv layers


# --------------------------------------------------------------------------- Trainer form and tasks

def test_transfer_data_are_the_target_classes_relabelled() -> None:
    d = digits_split((5, 6, 7, 8, 9))
    assert d.num_classes == 5 and set(d.train_y.tolist()) == {0, 1, 2, 3, 4}


def test_lora_sb_in_the_trainer_logs_counts_and_starts_from_the_update() -> None:
    from trainlab.tasks.task import DataBundle, Task
    from trainlab.training.trainer import run_training

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 12, generator=g), torch.randint(0, 3, (128,), generator=g)

    def data() -> DataBundle:
        return DataBundle(x, y, x[:32], y[:32], num_classes=3, name="toy")

    def model(input_shape, num_classes) -> nn.Module:
        return mlp()

    task = Task("toy", make_data=data, make_model=model, epochs=1, batch_size=32, optimizer="adam", lr=1e-2)
    res = run_training(task, [("lora-sb", {"rank": 3})], seed=0)
    final = res.final_metrics if hasattr(res, "final_metrics") else res.final
    assert final["trainable_params"] == 27
    assert 0 < final["init_norm_kept"] <= 1.0
