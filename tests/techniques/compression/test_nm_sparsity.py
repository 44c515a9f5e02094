"""N:M masks, SR-STE gradients, the parametrization, the artifact and CSR inference."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from trainlab.errors import CheckpointError, ConfigError
from trainlab.techniques.compression.artifact import dense_bytes, load_artifact, unpack_bits
from trainlab.techniques.compression.nm_sparsity import (CSRLinear, NMMaskFunction, NMSparse, SRSTE, apply_nm,
                                                         decode_nm, encode_nm, export_nm, from_rows, index_bits,
                                                         is_nm, load_nm, nm_mask, nm_parametrizations, nm_weight,
                                                         remove_nm, select_layers, to_groups, to_rows,
                                                         to_sparse_inference)

PATTERNS = [(2, 4), (1, 4), (1, 8), (1, 16), (3, 8), (2, 6)]


def _check_topn(weight: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> None:
    groups, gmask = to_groups(weight.abs(), m), to_groups(mask, m)
    assert set(gmask.unique().tolist()) <= {0.0, 1.0}
    assert bool((gmask.sum(-1) == n).all()), "not exactly n kept in every group"
    kept_min = torch.where(gmask.bool(), groups, torch.full_like(groups, float("inf"))).min(-1).values
    dropped_max = torch.where(gmask.bool(), torch.full_like(groups, -1.0), groups).max(-1).values
    assert bool((kept_min >= dropped_max).all()), "a dropped weight is larger than a kept one"


@pytest.mark.parametrize("n,m", PATTERNS)
def test_linear_mask_keeps_top_n_of_every_m(n, m):
    w = torch.randn(10, 48, generator=torch.Generator().manual_seed(n * 100 + m))
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape
    _check_topn(w, mask, n, m)
    # groups are m consecutive input features of a row
    assert torch.equal(to_groups(mask, m), mask.reshape(10, 48 // m, m))
    assert is_nm(w * mask, n, m) and (n == m or not is_nm(w, n, m))


def test_hand_case_2_of_4():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, 0.0]])
    assert nm_mask(w, 2, 4).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert nm_mask(w, 1, 4).tolist() == [[0, 1, 0, 0, 0, 1, 0, 0]]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 8)])
def test_conv2d_groups_run_along_input_channels_channels_last(n, m):
    w = torch.randn(6, 16, 3, 3, generator=torch.Generator().manual_seed(3))
    mask = nm_mask(w, n, m)
    _check_topn(w, mask, n, m)
    # every (out, kh, kw) position: the 16 input channels split in 16/m groups, n kept in each
    per_position = mask.permute(0, 2, 3, 1).reshape(6, 3, 3, 16 // m, m).sum(-1)
    assert bool((per_position == n).all())
    # the hand statement of the layout: rows are weight.permute(0, 2, 3, 1)
    assert torch.equal(to_rows(w), w.permute(0, 2, 3, 1).reshape(6, -1))
    assert torch.equal(from_rows(to_rows(w), w.shape), w)


def test_conv1d_layout_and_mask():
    w = torch.randn(5, 8, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(to_rows(w), w.permute(0, 2, 1).reshape(5, -1))
    assert torch.equal(from_rows(to_rows(w), w.shape), w)
    mask = nm_mask(w, 1, 4)
    assert bool((mask.permute(0, 2, 1).reshape(5, 3, 2, 4).sum(-1) == 1).all())


def test_bad_patterns_and_shapes_are_config_errors():
    with pytest.raises(ConfigError):
        nm_mask(torch.randn(4, 8), 4, 4)
    with pytest.raises(ConfigError):
        nm_mask(torch.randn(4, 8), 0, 4)
    with pytest.raises(ConfigError):
        nm_mask(torch.randn(4, 10), 2, 4)
    with pytest.raises(ConfigError):
        SRSTE(n=2, m=4, decay=-1.0)


def test_sr_ste_gradient_is_the_formula():
    # hand case: loss = sum(c * W~) with W~ = W * mask, so dL/dW~ = c and SR-STE gives c + lam (1 - mask) W
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, 0.0]], requires_grad=True)
    c = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    mask = nm_mask(w, 2, 4)
    lam = 0.5
    out = NMMaskFunction.apply(w, mask, 0.0, lam)
    assert torch.equal(out.detach(), w.detach() * mask)
    (out * c).sum().backward()
    expected = torch.tensor([[1.0 + 0.5 * 0.1, 2.0, 3.0, 4.0 + 0.5 * 0.5, 5.0, 6.0, 7.0 + 0.5 * -0.2, 8.0]])
    assert torch.allclose(w.grad, expected)


def test_plain_ste_and_decaying_mask_pass_the_gradient_straight_through():
    w = torch.randn(3, 8, requires_grad=True)
    mask = nm_mask(w, 1, 4)
    out = NMMaskFunction.apply(w, mask, 0.3, 0.0)
    assert torch.allclose(out, w.detach() * (mask + 0.3 * (1 - mask)))
    g = torch.randn(3, 8)
    out.backward(g)
    assert torch.equal(w.grad, g)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


def test_layer_choice_excludes_the_classifier_and_takes_patterns():
    model = _mlp()
    assert select_layers(model, m=4) == (["0", "2"], [])
    assert select_layers(model, m=4, include_last=True)[0] == ["0", "2", "4"]
    assert select_layers(model, ["2"], m=4)[0] == ["2"]
    assert select_layers(nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 2)), m=4) == ([], ["0"])
    with pytest.raises(ConfigError):
        select_layers(model, ["nope"], m=4)


def test_parametrization_keeps_the_model_n_m_at_every_step():
    torch.manual_seed(0)
    model = _mlp()
    names = apply_nm(model, 1, 4, decay=2e-4)
    assert names == ["0", "2"] and set(nm_parametrizations(model)) == {"0", "2"}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
    masks = []
    for _ in range(6):
        for name in names:
            assert is_nm(model.get_submodule(name).weight, 1, 4)
        masks.append(nm_mask(model[0].parametrizations.weight.original, 1, 4))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    # the dense weights keep learning, so the mask may change between steps (recomputed each forward)
    assert all(is_nm(model.get_submodule(n).weight, 1, 4) for n in names)
    # the classifier stays dense
    assert not is_nm(model[4].weight, 1, 4)


def test_sr_ste_gradient_through_a_layer_equals_the_formula():
    torch.manual_seed(1)
    layer = nn.Linear(8, 3, bias=False)
    dense = layer.weight.detach().clone()
    apply_nm(layer_model := nn.Sequential(layer, nn.Linear(3, 2)), 2, 4, decay=0.1)
    x = torch.randn(5, 8)
    layer_model[0](x).sum().backward()
    mask = nm_mask(dense, 2, 4)
    expected = x.sum(0).expand(3, 8) + 0.1 * (1 - mask) * dense   # d sum(x W~^T)/dW~ = sum_b x_b
    assert torch.allclose(layer.parametrizations.weight.original.grad, expected, atol=1e-6)


def test_eval_applies_the_hard_mask_and_remove_keeps_it():
    model = _mlp()
    apply_nm(model, 2, 4)
    nm_parametrizations(model)["0"].alpha = 0.5      # a soft mask in training...
    model.eval()
    assert is_nm(model[0].weight, 2, 4)              # ...but the hard one in eval
    x = torch.randn(7, 16)
    before = model(x)
    remove_nm(model)
    assert not nm_parametrizations(model) and is_nm(model[0].weight, 2, 4)
    assert torch.allclose(model(x), before)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 8), (1, 16), (3, 8), (1, 5)])
def test_encode_decode_round_trip(n, m):
    w = torch.randn(6, 80, generator=torch.Generator().manual_seed(m))
    w = w * nm_mask(w, n, m)
    w[0, :m] = 0.0                                   # a group with fewer than n nonzeros
    values, packed = encode_nm(w, n, m)
    assert values.shape == (6, 80 // m, n)
    assert packed.numel() == -(-values.numel() * index_bits(m) // 8)
    assert torch.equal(decode_nm(values, packed, n, m, w.shape), w)
    idx = unpack_bits(packed, index_bits(m), values.numel()).reshape(values.shape)
    assert bool((idx[..., 1:] > idx[..., :-1]).all())   # in increasing in-group order


def test_index_bits():
    assert [index_bits(m) for m in (2, 4, 5, 8, 16, 17, 256)] == [1, 2, 3, 3, 4, 5, 8]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.conv1d = nn.Conv1d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 16, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))                 # [B, 16, 4, 4]
        h = torch.relu(self.conv1d(h.flatten(2)))             # [B, 16, 16]
        return self.out(torch.relu(self.fc(h.flatten(1))))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 8), (1, 16)])
def test_artifact_round_trip_rebuilds_identical_outputs(tmp_path, n, m):
    torch.manual_seed(2)
    model = _Net()
    names = apply_nm(model, n, m)
    # the first conv's rows (3 x 3 x 8 = 72 weights) split into groups of 4 and 8, not 16
    assert names == (["conv", "conv1d", "fc"] if m <= 8 else ["conv1d", "fc"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(6, 8, 4, 4)
    for _ in range(3):
        opt.zero_grad(); model(x).pow(2).mean().backward(); opt.step()
    model.eval()
    want = model(x)
    info = export_nm(model, tmp_path / "m.pt")
    tensors, meta = load_artifact(tmp_path / "m.pt", "nm-sparsity")
    assert set(meta["layers"]) == set(names)
    assert info["dense_bytes"] == dense_bytes(_Net()) and info["ratio"] < 1.0
    loaded = load_nm(tmp_path / "m.pt", _Net).eval()
    assert not nm_parametrizations(loaded)
    assert torch.equal(loaded(x), want)
    for name in names:
        assert torch.equal(loaded.get_submodule(name).weight, nm_weight(model.get_submodule(name)))


def test_artifact_size_ratio_follows_the_pattern(tmp_path):
    big = nn.Sequential(nn.Linear(512, 512, bias=False), nn.Linear(512, 2, bias=False))
    for (n, m), lo, hi in [((2, 4), 0.5, 0.56), ((1, 8), 0.12, 0.15), ((1, 16), 0.06, 0.08)]:
        model = nn.Sequential(*[nn.Linear(l.in_features, l.out_features, bias=False) for l in big])
        apply_nm(model, n, m)
        info = export_nm(model, tmp_path / f"{n}_{m}.pt")
        # values (32 bits) + ceil(log2 m) bits per kept weight, over 32 bits per weight (plus the small head)
        expected = (n / m) * (32 + index_bits(m)) / 32
        assert lo < info["ratio"] < hi and abs(info["ratio"] - expected) < 0.02, (n, m, info)


def test_load_refuses_foreign_and_mismatched(tmp_path):
    model = _mlp()
    apply_nm(model, 2, 4)
    export_nm(model, tmp_path / "a.pt")
    with pytest.raises(ConfigError):
        load_nm(tmp_path / "a.pt", lambda: nn.Sequential(nn.Linear(16, 8)))
    with pytest.raises(CheckpointError):
        load_nm(tmp_path / "missing.pt", _mlp)
    with pytest.raises(ConfigError):
        export_nm(_mlp(), tmp_path / "b.pt")


def test_csr_inference_equals_the_dense_n_m_model():
    torch.manual_seed(3)
    model = _mlp()
    apply_nm(model, 1, 8)
    model.eval()
    x = torch.randn(9, 16)
    want = model(x)
    sparse = to_sparse_inference(model)
    assert isinstance(sparse[0], CSRLinear) and isinstance(sparse[2], CSRLinear)
    assert sparse[0].weight.layout == torch.sparse_csr and sparse[0].weight._nnz() == 32 * 16 // 8
    assert torch.allclose(sparse(x), want, atol=1e-5)
    x3 = torch.randn(2, 3, 16)                          # leading dims pass through
    assert torch.allclose(sparse(x3), torch.stack([sparse(x3[i]) for i in range(2)]), atol=1e-6)


def test_sr_ste_technique_trains_an_n_m_model():
    from trainlab.training.trainer import run_training

    result = run_training("blobs-mlp", [("sr-ste", {"n": 1, "m": 4})], seed=0, keep_state=True)
    assert result.final["nm_density"] == pytest.approx(0.25)
    assert result.final["test_acc"] > 0.5
    originals = sorted(k for k in result.state if k.endswith("parametrizations.weight.original"))
    # every Linear but the classifier's output layer carries the N:M parametrization
    plain = [k for k in result.state if k.endswith("weight") and result.state[k].dim() == 2]
    assert len(originals) == 2 and plain == ["head.weight"]
