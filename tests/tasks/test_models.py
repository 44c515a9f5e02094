import math

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.models import (
    MLP,
    MODELS,
    PadShortcut,
    ResNet,
    SelfAttention,
    SmallCNN,
    TinyTransformer,
    TransformerBlock,
    build_model,
)

NORMS = ["batch", "group", "layer", "instance", "none"]
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)

# small settings per model so every combination runs in well under a second
SMALL = {
    "mlp": dict(width=16, depth=2),
    "cnn": dict(channels=(8, 16)),
    "resnet": dict(depth=8, width=4),
    "transformer": dict(vocab_size=11, dim=16, depth=2, heads=4),
}
SHAPES = {
    "mlp": [(64,), (1, 8, 8), (2, 40)],
    "cnn": [(1, 8, 8), (3, 12, 10), (2, 40)],
    "resnet": [(1, 8, 8), (3, 16, 16), (2, 40)],
    "transformer": [(12,)],
}
CASES = [(name, shape) for name, shapes in SHAPES.items() for shape in shapes]


def _inputs(name: str, shape: tuple[int, ...], n: int = 4) -> torch.Tensor:
    if name == "transformer":
        return torch.randint(0, SMALL["transformer"]["vocab_size"], (n, *shape))
    return torch.randn(n, *shape)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name,shape", CASES)
def test_every_model_with_every_norm_gives_logits(name, shape, norm):
    cls = MODELS[name]
    if norm == "instance" and name in ("mlp", "transformer"):
        with pytest.raises(ConfigError, match="instance"):
            cls(shape, 7, norm=norm, **SMALL[name])
        return
    torch.manual_seed(0)
    model = cls(shape, 7, norm=norm, **SMALL[name])
    x = _inputs(name, shape)
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert out.shape == (4, 7)
        assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    has_norm = any(isinstance(m, NORM_TYPES) for m in model.modules())
    assert has_norm == (norm != "none")


def test_cnn_and_resnet_pick_conv_by_input_rank():
    for cls, kw in ((SmallCNN, SMALL["cnn"]), (ResNet, SMALL["resnet"])):
        assert any(isinstance(m, nn.Conv1d) for m in cls((2, 40), 3, **kw).modules())
        assert not any(isinstance(m, nn.Conv2d) for m in cls((2, 40), 3, **kw).modules())
        assert any(isinstance(m, nn.Conv2d) for m in cls((1, 8, 8), 3, **kw).modules())
        with pytest.raises(ConfigError, match="input_shape"):
            cls((64,), 3, **kw)


# ------------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("depth,width,norm", [(0, 256, "none"), (2, 256, "none"), (20, 50, "none"),
                                              (3, 32, "batch"), (3, 32, "layer"), (4, 64, "group")])
def test_mlp_parameter_count(depth, width, norm):
    d_in, k = 64, 10
    model = MLP((1, 8, 8), k, width=width, depth=depth, norm=norm)
    if depth == 0:
        expected = d_in * k + k
    else:
        linear = (d_in * width + width) + (depth - 1) * (width * width + width) + (width * k + k)
        affine = 0 if norm == "none" else depth * 2 * width
        expected = linear + affine
    assert _count(model) == expected


def test_mlp_twenty_narrow_layers_with_poor_init():
    torch.manual_seed(0)
    model = MLP((64,), 10, width=50, depth=20, init="normal", init_std=0.01)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 21
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert abs(weights.std().item() - 0.01) < 0.0005
    assert all((m.bias == 0).all() for m in linears)
    # a 1% std init shrinks the signal by about sqrt(50 * 1e-4 / 2) per ReLU layer: the output vanishes
    assert model(torch.randn(8, 64)).abs().max() < 1e-6
    kaiming = MLP((64,), 10, width=50, depth=20, init="kaiming")
    assert kaiming(torch.randn(8, 64)).abs().max() > 1e-3
    with pytest.raises(ConfigError):
        MLP((64,), 10, init="uniformish")


def _resnet_count(n: int, w: int, c_in: int, k: int, shortcut: str) -> int:
    """Hand formula: 3x3 convs without bias, 2 affine params per norm channel, linear head."""
    total = 9 * c_in * w + 2 * w                              # stem conv + norm
    cin = w
    for c in (w, 2 * w, 4 * w):
        total += 9 * cin * c + 9 * c * c + 4 * c               # first block
        if cin != c and shortcut == "B":
            total += cin * c + 2 * c                            # 1x1 projection + norm
        total += (n - 1) * (18 * c * c + 4 * c)                # remaining blocks
        cin = c
    return total + 4 * w * k + k


def test_resnet20_parameter_count():
    a = ResNet((3, 32, 32), 10, depth=20, width=16, shortcut="A")
    b = ResNet((3, 32, 32), 10, depth=20, width=16, shortcut="B")
    assert _count(a) == _resnet_count(3, 16, 3, 10, "A") == 269_722
    assert _count(b) == _resnet_count(3, 16, 3, 10, "B") == 272_474
    assert round(_count(a) / 1e6, 2) == 0.27  # He et al. 2016, Table 6
    assert _count(ResNet((3, 32, 32), 10, depth=56, width=16)) == _resnet_count(9, 16, 3, 10, "A")
    assert round(_count(ResNet((3, 32, 32), 10, depth=56)) / 1e6, 2) == 0.85  # Table 6: 0.85M


def test_resnet_layer_count_is_6n_plus_2():
    model = ResNet((3, 32, 32), 10, depth=32, width=8, shortcut="A")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 32
    with pytest.raises(ConfigError, match="6n\\+2"):
        ResNet((3, 32, 32), 10, depth=21)
    with pytest.raises(ConfigError):
        ResNet((3, 32, 32), 10, shortcut="C")


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 4, 6, 6)
    y = PadShortcut(2, extra_channels=4, stride=2)(x)
    assert y.shape == (2, 8, 3, 3)
    torch.testing.assert_close(y[:, 2:6], x[:, :, ::2, ::2])
    assert (y[:, :2] == 0).all() and (y[:, 6:] == 0).all()
    y1 = PadShortcut(1, extra_channels=2, stride=2)(torch.randn(2, 3, 9))
    assert y1.shape == (2, 5, 5)


def test_resnet_stage_shapes():
    model = ResNet((3, 32, 32), 10, depth=8, width=4)
    h = model.stem(torch.randn(1, 3, 32, 32))
    shapes = []
    for stage in (model.stage1, model.stage2, model.stage3):
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(4, 32, 32), (8, 16, 16), (16, 8, 8)]


def test_smallcnn_pools_only_while_it_can():
    model = SmallCNN((1, 8, 8), 10, channels=(4, 4, 4, 4))
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then no more
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# ------------------------------------------------------------------------------------------ fx

FX_CASES = [
    (MLP, (1, 8, 8), dict(width=16, depth=3, norm="batch")),
    (MLP, (40,), dict(width=16, depth=2, norm="layer", dropout=0.1)),
    (SmallCNN, (1, 8, 8), dict(channels=(8, 16), norm="batch")),
    (SmallCNN, (2, 40), dict(channels=(8, 16), norm="group")),
    (ResNet, (3, 16, 16), dict(depth=8, width=4, shortcut="A")),
    (ResNet, (3, 16, 16), dict(depth=8, width=4, shortcut="B", norm="layer")),
    (ResNet, (2, 40), dict(depth=8, width=4, shortcut="A", norm="instance")),
]


@pytest.mark.parametrize("cls,shape,kw", FX_CASES)
def test_fx_symbolic_trace_reproduces_the_model(cls, shape, kw):
    torch.manual_seed(0)
    model = cls(shape, 5, **kw).eval()
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(3, *shape)
    torch.testing.assert_close(graph(x), model(x))
    if cls is ResNet:
        # the residual additions are visible as add nodes in the graph
        adds = [n for n in graph.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
        assert len(adds) == 3 * model.blocks_per_stage


# ------------------------------------------------------------------------------------ determinism

@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_same_model_and_different_seed_different_model(name):
    shape = SHAPES[name][0]

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(name, shape, 6, **SMALL[name])

    a, b, c = build(3), build(3), build(4)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
    x = _inputs(name, shape)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- build_model

def test_build_model_by_name_and_errors():
    assert set(MODELS) == {"mlp", "cnn", "resnet", "transformer"}
    assert isinstance(build_model("cnn", (1, 8, 8), 10), SmallCNN)
    with pytest.raises(ConfigError, match="known: cnn, mlp, resnet, transformer"):
        build_model("vgg", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="widht"):
        build_model("mlp", (64,), 10, widht=3)
    with pytest.raises(ConfigError, match="unknown norm"):
        build_model("resnet", (3, 32, 32), 10, norm="evonorm-nope")
    with pytest.raises(ConfigError, match="activation"):
        build_model("mlp", (64,), 10, activation="swishy")


# ------------------------------------------------------------------------------------ transformer

def _manual_attention(attn: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head attention written head by head: softmax(q k^T / sqrt(d_h)) v, concat, project."""
    q, k, v = (F.linear(x, m.weight, m.bias) for m in (attn.q, attn.k, attn.v))
    d = attn.head_dim
    heads = []
    for h in range(attn.num_heads):
        sl = slice(h * d, (h + 1) * d)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(d)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    return F.linear(torch.cat(heads, dim=-1), attn.out.weight, attn.out.bias)


def _manual_mlp(block: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
    h = F.gelu(F.linear(x, block.mlp.fc1.weight, block.mlp.fc1.bias))
    return F.linear(h, block.mlp.fc2.weight, block.mlp.fc2.bias)


def _ln(x: torch.Tensor, m: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + m.eps) * m.weight + m.bias


def _randomize_norms(model: nn.Module) -> None:
    # non-trivial affine parameters, so a norm in the wrong place changes the result
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def test_attention_matches_head_by_head_computation():
    torch.manual_seed(0)
    attn = SelfAttention(12, 3)
    assert (attn.num_heads, attn.head_dim) == (3, 4)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(attn(x), _manual_attention(attn, x), atol=1e-5, rtol=1e-4)


def test_removing_a_head_equals_zeroing_its_output_columns():
    torch.manual_seed(0)
    full = SelfAttention(12, 3).eval()
    x = torch.randn(2, 5, 12)
    keep = torch.cat([torch.arange(0, 4), torch.arange(8, 12)])  # drop head 1
    small = SelfAttention(12, 3)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            src, dst = getattr(full, name), getattr(small, name)
            setattr(small, name, nn.Linear(12, 8))
            getattr(small, name).weight.copy_(src.weight[keep])
            getattr(small, name).bias.copy_(src.bias[keep])
        small.out = nn.Linear(8, 12)
        small.out.weight.copy_(full.out.weight[:, keep])
        small.out.bias.copy_(full.out.bias)
        small.num_heads = 2
        full.out.weight[:, 4:8] = 0
    torch.testing.assert_close(small(x), full(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("placement", ["post", "pre", "peri"])
def test_block_equations_match_direct_computation(placement):
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, 2, "layer", placement).eval()
    _randomize_norms(block)
    x = torch.randn(3, 6, 16) * 2
    attn = lambda z: _manual_attention(block.attn, z)  # noqa: E731
    mlp = lambda z: _manual_mlp(block, z)  # noqa: E731
    if placement == "post":
        h = _ln(x + attn(x), block.res_norm1)
        expected = _ln(h + mlp(h), block.res_norm2)
    elif placement == "pre":
        h = x + attn(_ln(x, block.in_norm1))
        expected = h + mlp(_ln(h, block.in_norm2))
    else:
        h = x + _ln(attn(_ln(x, block.in_norm1)), block.out_norm1)
        expected = h + _ln(mlp(_ln(h, block.in_norm2)), block.out_norm2)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("placement,per_block,final", [("post", 2, 0), ("pre", 2, 1), ("peri", 4, 1)])
def test_norm_calls_per_block(placement, per_block, final):
    model = TinyTransformer((10,), 3, vocab_size=7, dim=16, depth=3, heads=2, norm_placement=placement)
    calls: dict[str, int] = {}

    def hook(name):
        def count(module, inputs, output):
            key = name.split(".")[1] if name.startswith("blocks.") else name
            calls[key] = calls.get(key, 0) + 1
        return count

    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            m.register_forward_hook(hook(name))
    model(torch.randint(0, 7, (2, 10)))
    assert [calls.get(str(i), 0) for i in range(3)] == [per_block] * 3
    assert calls.get("final_norm", 0) == final
    assert "embed_norm" not in calls
    n_ln = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert n_ln == 3 * per_block + final


def test_post_ln_output_is_normalized_and_pre_ln_stream_is_not():
    torch.manual_seed(0)
    x = torch.randint(0, 11, (4, 12))
    post = TinyTransformer((12,), 3, vocab_size=11, dim=32, depth=3, heads=4, norm_placement="post")
    for h in post.hidden_states(x)[1:]:
        torch.testing.assert_close(h.mean(-1), torch.zeros(h.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(h.shape[:2]), atol=1e-3, rtol=0)
    torch.manual_seed(0)
    pre = TinyTransformer((12,), 3, vocab_size=11, dim=32, depth=3, heads=4, norm_placement="pre")
    assert not torch.allclose(pre.hidden_states(x)[-1].var(-1, unbiased=False), torch.ones(4, 12), atol=0.1)


@pytest.mark.parametrize("placement", ["post", "pre", "peri"])
def test_hidden_states_are_the_residual_stream(placement):
    torch.manual_seed(0)
    model = TinyTransformer((9,), 4, vocab_size=13, dim=16, depth=3, heads=2, norm_placement=placement,
                            pool="mean").eval()
    x = torch.randint(0, 13, (2, 9))
    states = model.hidden_states(x)
    assert len(states) == 4 and all(s.shape == (2, 9, 16) for s in states)
    expected_h0 = model.token_embed(x) + model.pos_embed
    torch.testing.assert_close(states[0], expected_h0)
    for i, block in enumerate(model.blocks):
        torch.testing.assert_close(states[i + 1], block(states[i]))
    torch.testing.assert_close(model(x), model.head(model.final_norm(states[-1]).mean(1)))


def test_peri_ln_stream_variance_grows_by_bounded_steps():
    # each sublayer adds a LayerNorm output (unit variance per token at init), so the stream's variance
    # can grow by at most (sqrt(v) + 1)^2 per sublayer, whatever the weights
    torch.manual_seed(0)
    model = TinyTransformer((16,), 2, vocab_size=20, dim=32, depth=6, heads=4, norm_placement="peri")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(10)  # large weights: would blow up an un-normalized stream
        v = [h.var(-1, unbiased=False).mean().item() for h in model.hidden_states(torch.randint(0, 20, (4, 16)))]
    for before, after in zip(v, v[1:]):
        bound = before
        for _ in range(2):
            bound = (math.sqrt(bound) + 1) ** 2
        assert after <= bound * 1.01


def test_causal_attention_ignores_later_tokens():
    torch.manual_seed(0)
    model = TinyTransformer((8,), 3, vocab_size=9, dim=16, depth=2, heads=2, causal=True).eval()
    x = torch.randint(0, 9, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 9
    hx, hy = model.hidden_states(x)[-1], model.hidden_states(y)[-1]
    torch.testing.assert_close(hx[:, :5], hy[:, :5])
    assert not torch.allclose(hx[:, 5:], hy[:, 5:])


def test_transformer_options_and_errors():
    model = TinyTransformer((6,), 3, vocab_size=5, dim=8, depth=1, heads=2, embed_norm=True, pool="mean")
    assert isinstance(model.embed_norm, nn.LayerNorm)
    assert model(torch.randint(0, 5, (2, 6)).float()).shape == (2, 3)  # float token ids are cast
    with pytest.raises(ConfigError, match="divisible"):
        TinyTransformer((6,), 3, vocab_size=5, dim=10, heads=4)
    with pytest.raises(ConfigError, match="norm_placement"):
        TinyTransformer((6,), 3, vocab_size=5, norm_placement="sandwich")
    with pytest.raises(ConfigError, match="sequence_length"):
        TinyTransformer((6, 2), 3, vocab_size=5)
    with pytest.raises(ConfigError, match="pool"):
        TinyTransformer((6,), 3, vocab_size=5, pool="cls")
