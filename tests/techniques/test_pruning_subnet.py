"""Pruning groups and subnet construction: the zero-groups-then-remove property over a zoo.

For every model: zero a random set of groups (their own, output-side slices only, as OTO does:
the consumers' input columns keep their values), build the subnet, and require (i) the subnet's
eval-mode outputs to equal the group-sparse model's (max abs diff <= 1e-5), (ii) the parameter
count to drop by exactly the removed groups' own and input slices. Some group structures are also
checked by hand.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.techniques.pruning.space import PruningSpace


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ the zoo

class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.BatchNorm1d(10),
                                 nn.GELU(), nn.Linear(10, 3))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Conv-BN-ReLU-pool twice, then flatten into a Linear (each channel owns 4 input columns)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc(x.view(x.size(0), -1))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    """Residual `+` with identity and projection shortcuts."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b1, self.b2, self.b3 = Block(4, 4, 1), Block(4, 4, 1), Block(4, 8, 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.b3(self.b2(self.b1(x)))
        return self.head(x.mean(dim=(2, 3)))


class ConcatBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)))
        return self.head(self.c(y).amax(dim=(2, 3)))


class DepthwiseSeparable(nn.Module):
    """Depthwise conv with channel multiplier 2, pointwise conv, GroupNorm, grouped conv, SE gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn1 = nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16)
        self.pw, self.gn = nn.Conv2d(16, 12, 1), nn.GroupNorm(6, 12)
        self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.se1, self.se2 = nn.Linear(12, 4), nn.Linear(4, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu6(self.bn1(self.dw(x)))
        x = self.grouped(F.silu(self.gn(self.pw(x))))
        gate = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3))))))
        x = x * gate[:, :, None, None]
        return self.head(x.mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    """Token embedding + learned positions, attention with explicit q/k/v Linear layers
    (`num_heads` / `head_dim` attributes, manual softmax(q k^T) v), BatchNorm over features
    (so the residual stream is prunable), GELU MLP."""

    def __init__(self, vocab: int = 11, dim: int = 16, heads: int = 4, seq: int = 6) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.1)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm = nn.BatchNorm1d(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def split(self, t):
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, ids):
        h = self.tok(ids) + self.pos[:, : ids.shape[1]]
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        att = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
        h = h + self.o((att @ v).transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h[:, 0])


class MHABlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = h + a
        h = h + self.fc2(F.relu(self.fc1(h)))
        return self.head(h.mean(dim=1))


class Misc(nn.Module):
    """InstanceNorm, spatial zero padding, ConvTranspose, a GLU (chunk into halves), PReLU with
    per-channel slopes and a bare per-channel scale parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.inorm = nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True)
        self.pad, self.c2 = nn.ZeroPad2d(1), nn.Conv2d(8, 12, 3)
        self.up, self.bn = nn.ConvTranspose2d(12, 6, 2, stride=2), nn.BatchNorm2d(6)
        self.glu_in, self.prelu = nn.Conv2d(6, 10, 1), nn.PReLU(5)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 5).reshape(1, 5, 1, 1))
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.inorm(self.c1(x)))
        x = F.relu(self.c2(self.pad(x)))
        a, b = self.glu_in(self.bn(self.up(x))).chunk(2, dim=1)
        return self.head((self.prelu(a * torch.sigmoid(b)) * self.scale).mean(dim=(2, 3)))


def _trainlab_models():
    from trainlab.tasks import models as M

    return [
        ("trainlab-resnet20-A", lambda: M.ResNet((3, 8, 8), 10, depth=8, width=8), lambda: torch.randn(2, 3, 8, 8)),
        ("trainlab-transformer", lambda: M.TinyTransformer((6,), 5, vocab_size=11, dim=16, heads=4, depth=1),
         lambda: torch.randint(0, 11, (2, 6))),
        ("trainlab-mlp-bn", lambda: M.MLP((1, 4, 4), 3, width=8, depth=2, norm="batch"), lambda: torch.randn(4, 1, 4, 4)),
        ("trainlab-cnn1d-groupnorm", lambda: M.SmallCNN((2, 16), 3, channels=(8, 12), norm="group"),
         lambda: torch.randn(3, 2, 16)),
    ]


ZOO = [
    ("mlp", MLP, lambda: torch.randn(4, 1, 4, 4)),
    ("cnn-bn-flatten", CNN, lambda: torch.randn(3, 3, 8, 8)),
    ("resnet", ResNet, lambda: torch.randn(2, 3, 8, 8)),
    ("concat", ConcatBlock, lambda: torch.randn(2, 3, 6, 6)),
    ("depthwise-separable", DepthwiseSeparable, lambda: torch.randn(2, 3, 6, 6)),
    ("tiny-transformer", TinyTransformer, lambda: torch.randint(0, 11, (3, 6))),
    ("multihead-attention", MHABlock, lambda: torch.randn(2, 5, 6)),
    ("misc-layers", Misc, lambda: torch.randn(2, 3, 6, 6)),
] + _trainlab_models()


def _randomize(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so eval mode really uses them."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))


def _random_removable(space: PruningSpace, rng: random.Random, fraction: float) -> list[int]:
    chosen: list[int] = []
    for g in rng.sample(range(space.num_groups), space.num_groups):
        if rng.random() < fraction and space.coverage_ok(chosen + [g]):
            chosen.append(g)
    return chosen


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,make,inputs", ZOO, ids=[z[0] for z in ZOO])
def test_zeroed_groups_removed_exactly(name, make, inputs):
    torch.manual_seed(0)
    model = make()
    _randomize(model)
    x = inputs()
    space = PruningSpace(model, x)
    assert space.num_groups > 0
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    for trial in range(3):
        model.load_state_dict(dense)
        ids = _random_removable(space, random.Random(trial), fraction=0.5)
        assert ids
        space.zero_(ids)
        assert set(space.zero_groups()) >= set(ids)
        # exactness must not come from zeroing the consumers' input columns: outside the zeroed
        # groups' own slices they keep their values
        params = dict(model.named_parameters())
        owned = space.index.mask(ids)
        checked = 0
        for g in ids:
            for pname, dim, idx in space.groups[g].input_slices:
                p = params[pname].detach()
                sel = torch.zeros(p.shape[dim], dtype=torch.bool)
                sel[torch.as_tensor(idx, dtype=torch.long)] = True
                view = [1] * p.dim()
                view[dim] = -1
                check = sel.reshape(view).expand(p.shape) & ~owned.get(id(params[pname]), torch.zeros_like(p, dtype=torch.bool))
                assert torch.equal(p[check], dense[pname][check])
                checked += int(check.sum())
        assert checked > 0 or not any(space.groups[g].input_slices for g in ids)
        subnet = space.construct_subnet(ids, verify=False)
        model.eval()
        subnet.eval()
        with torch.no_grad():
            want, got = model(x), subnet(x)
        assert got.shape == want.shape
        assert (want - got).abs().max().item() <= 1e-5, name
        assert _count(model) - _count(subnet) == space.removed_params(ids)
        assert _count(subnet) < _count(model)


@pytest.mark.parametrize("name,make,inputs", ZOO, ids=[z[0] for z in ZOO])
def test_single_group_drop_equals_group_size(name, make, inputs):
    torch.manual_seed(0)
    model = make()
    space = PruningSpace(model, inputs())
    for g in space.groups[:: max(1, space.num_groups // 5)]:
        assert _count(model) - _count(space.construct_subnet([g.id], verify=False)) == g.removed_size
        assert g.removed_size == g.size + sum(_slice_count(model, s) for s in g.input_slices)


def _slice_count(model: nn.Module, piece) -> int:
    name, dim, idx = piece
    p = dict(model.named_parameters())[name]
    return len(idx) * (p.numel() // p.shape[dim])


def test_groups_hold_output_side_only_by_hand():
    """OTO's zero-invariant groups: a group owns its producer's rows, bias and norm entries; the
    next layer's input columns are not scored or zeroed, only dropped with the group."""
    model = CNN()
    space = PruningSpace(model, torch.randn(2, 3, 8, 8))
    c1 = [g for g in space.groups if g.label.startswith("Conv2d 'c1'")]
    assert len(c1) == 6
    for i, g in enumerate(c1):
        assert sorted((n, d, [int(j) for j in idx]) for n, d, idx in g.slices if "running" not in n) == [
            ("b1.bias", 0, [i]), ("b1.weight", 0, [i]), ("c1.bias", 0, [i]), ("c1.weight", 0, [i])]
        assert [(n, d, [int(j) for j in idx]) for n, d, idx in g.input_slices] == [("c2.weight", 1, [i])]
        assert g.size == 27 + 1 + 2 and g.removed_size == g.size + 8 * 9
    # the score is the output side's norm: changing c2's input column leaves it as it is
    before = space.group_norms()[c1[0].id].item()
    with torch.no_grad():
        model.c2.weight[:, 0] *= 10
    assert space.group_norms()[c1[0].id].item() == pytest.approx(before)
    with torch.no_grad():
        model.c1.weight[0].zero_()
        model.c1.bias[0] = 0
        model.b1.weight[0] = 0
        model.b1.bias[0] = 0
    assert space.zero_groups() == [c1[0].id] and space.group_sparsity() == 1 / space.num_groups


def test_columns_after_a_sigmoid_stay_in_the_group():
    """sigmoid(0) = 0.5: a zeroed producer still feeds its consumer, so the consumer's columns are
    the group's own slices (they must be zeroed for the removal to be exact)."""

    class SigmoidMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.head(F.relu(self.b(torch.sigmoid(self.a(x)))))

    model = SigmoidMLP()
    x = torch.randn(3, 4)
    space = PruningSpace(model, x)
    a = [g for g in space.groups if g.label.startswith("Linear 'a'")]
    b = [g for g in space.groups if g.label.startswith("Linear 'b'")]
    assert len(a) == 6 and len(b) == 5
    assert all({n for n, _, _ in g.slices} == {"a.weight", "a.bias", "b.weight"} and not g.input_slices for g in a)
    assert all({n for n, _, _ in g.input_slices} == {"head.weight"} for g in b)
    space.zero_([a[0].id, b[0].id])
    model.eval()
    assert torch.allclose(space.construct_subnet()(x), model(x), atol=1e-6)


def test_residual_group_spans_every_block_by_hand():
    model = ResNet()
    space = PruningSpace(model, torch.randn(2, 3, 8, 8))
    stem = [g for g in space.groups if g.label.startswith("Conv2d 'stem'")]
    assert len(stem) == 4  # one group per residual channel of the first stage
    # channel c owns: stem row (3*9) + bn (2) + for b1, b2: conv2 row (4*9) + bn2 (2); removal also
    # drops the input columns of b1, b2's conv1 (4*9 each), b3's conv1 (8*9) and projection (8*1)
    assert {g.size for g in stem} == {27 + 2 + 2 * (36 + 2)}
    assert {g.removed_size for g in stem} == {27 + 2 + 2 * (36 + 2 + 36) + 72 + 8}
    b3 = [g for g in space.groups if "'b3.conv2'" in g.label or "'b3.short.0'" in g.label]
    # stage-2 channel: conv2 row (8*9) + bn2 (2) + projection row (4) + its bn (2); + head column (3)
    assert len(b3) == 8 and {g.size for g in b3} == {72 + 2 + 4 + 2}
    assert {g.removed_size for g in b3} == {72 + 2 + 4 + 2 + 3}


def test_depthwise_multiplier_and_groupnorm_by_hand():
    space = PruningSpace(DepthwiseSeparable(), torch.randn(2, 3, 6, 6))
    stem = [g for g in space.groups if g.label.startswith("Conv2d 'stem'")]
    # stem channel c feeds depthwise outputs 2c, 2c+1: stem row 27 + bias 1 + bn0 2 + dw rows 2*(9+1)
    # + bn1 4; removal also drops the pointwise columns 2*12
    assert len(stem) == 8 and {g.size for g in stem} == {27 + 1 + 2 + 20 + 4}
    assert {g.removed_size for g in stem} == {27 + 1 + 2 + 20 + 4 + 24}
    pw = [g for g in space.groups if g.label.startswith("Conv2d 'pw'")]
    # GroupNorm(6, 12) pairs channels, the 3-group conv ties blocks of 4: 3 groups of 4 channels
    assert len(pw) == 3


def test_concat_offsets_by_hand():
    space = PruningSpace(ConcatBlock(), torch.randn(2, 3, 6, 6))
    b = [g for g in space.groups if g.label.startswith("Conv2d 'b'")]
    assert len(b) == 4
    for g in b:
        (idx_bn,) = [i for n, d, i in g.slices if n == "bn.weight"]
        (idx_c,) = [i for n, d, i in g.input_slices if n == "c.weight" and d == 1]
        assert int(idx_bn[0]) == int(idx_c[0]) >= 6  # b's channels sit after a's 6 in the concat


def test_attention_heads_by_hand():
    space = PruningSpace(MHABlock(), torch.randn(2, 5, 6))
    heads = [g for g in space.groups if "heads" in g.label]
    # head: q, k, v rows (3 * 4 * 16) + their biases (3 * 4); removal also drops out_proj columns (16 * 4)
    assert len(heads) == 4 and {g.size for g in heads} == {192 + 12}
    assert {g.removed_size for g in heads} == {192 + 12 + 64}
    tiny = PruningSpace(TinyTransformer(), torch.randint(0, 11, (2, 6)))
    theads = [g for g in tiny.groups if g.label.startswith("Linear 'q'")]
    assert len(theads) == 4 and {g.size for g in theads} == {3 * (4 * 16 + 4)}
    assert {g.removed_size for g in theads} == {3 * (4 * 16 + 4) + 16 * 4}


def test_layernorm_keeps_residual_stream_with_note():
    from trainlab.tasks.models import TinyTransformer as TLT

    space = PruningSpace(TLT((6,), 5, vocab_size=11, dim=16, heads=4, depth=1), torch.randint(0, 11, (2, 6)))
    labels = {g.label.split("[")[0] for g in space.groups}
    assert labels == {"Linear 'blocks.0.attn.q'", "Linear 'blocks.0.mlp.fc1'"}
    assert any("LayerNorm" in n for n in space.notes)
    text = str(space)
    assert "pruning groups" in text and "parameters" in text and "LayerNorm" in text


def test_subnet_is_real_module_and_trains():
    model = CNN()
    space = PruningSpace(model, torch.randn(2, 3, 8, 8))
    c2 = [g.id for g in space.groups if g.label.startswith("Conv2d 'c2'")]
    space.zero_(c2[::2])
    subnet = space.construct_subnet()
    assert isinstance(subnet, nn.Module)
    assert isinstance(subnet.c2, nn.Conv2d) and subnet.c2.out_channels < 8
    subnet.train()
    loss = subnet(torch.randn(4, 3, 8, 8)).sum()
    loss.backward()
    assert all(p.grad is not None for p in subnet.parameters())
    out = subnet(torch.randn(5, 3, 8, 8))  # other batch sizes work
    assert out.shape == (5, 5)
