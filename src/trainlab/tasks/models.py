"""The model zoo: small classifiers whose normalization layers come from trainlab.tasks.norms.

Every model is built as ``Model(input_shape, num_classes, ..., norm=<name>)`` (the Task.make_model
signature), uses only ``make_norm`` for its normalization layers, so any registered norm plugs in,
and is deterministic given ``torch.manual_seed``. MLP, SmallCNN and ResNet trace with
``torch.fx.symbolic_trace`` (residual additions are plain ``+``, shapes are fixed at construction).

* ``MLP``: flatten -> ``depth`` x [Linear -> norm -> activation -> dropout] -> Linear.
* ``SmallCNN``: [Conv -> norm -> ReLU -> MaxPool] per entry of ``channels`` -> global average
  pool -> Linear. Conv2d for ``[C, H, W]`` inputs, Conv1d for ``[C, L]``.
* ``ResNet``: the CIFAR ResNet of He, Zhang, Ren & Sun, "Deep Residual Learning for Image
  Recognition", 2016 (arXiv:1512.03385), Sec. 4.2: 6n+2 layers, a 3x3 stem, three stages of n
  basic blocks with widths w, 2w, 4w (stride 2 at the start of stages 2 and 3), global average
  pool, linear head. ResNet-20 (n=3, w=16, 3 input channels, 10 classes) has 269,722
  parameters with option-A shortcuts and 272,474 with option B; the paper's Table 6 says 0.27M.
  Shortcuts: ``"A"`` (the paper's CIFAR choice) subsamples by stride 2 and zero-pads the new
  channels, adding no parameters; ``"B"`` uses a 1x1 strided conv + norm projection where the
  shape changes. Also works on 1-D signals ``[C, L]`` with Conv1d.
* ``TinyTransformer``: an encoder over token ids ``[N, T]`` with learned position embeddings,
  multi-head self-attention written with explicit q/k/v Linear layers and
  ``F.scaled_dot_product_attention`` (heads are a reshape; ``num_heads`` and ``head_dim`` are
  attributes, so a pruning system can find and remove heads), and a GELU MLP. Norm placement:

  - ``"post"`` (Vaswani et al., 2017): ``x = Norm(x + F(x))``; no final norm.
  - ``"pre"`` (Xiong et al., 2020, arXiv:2002.04745): ``x = x + F(Norm(x))``; final norm before
    the head.
  - ``"peri"`` (Kim et al., "Peri-LN: Revisiting Layer Normalization in the Transformer
    Architecture", 2025, arXiv:2502.02732; the ICML 2025 version is titled "... Revisiting
    Normalization Layer ..."): ``x = x + Norm_out(F(Norm_in(x)))``, normalization around both
    the input and the output of each sublayer, before the residual add; final norm before the
    head. ``embed_norm=True`` additionally normalizes the embedding output (off by default, so the
    three placements differ only inside the blocks).

  The paper measured Peri-LN on decoder-only language models of 400M-3.2B parameters; this model
  is a few-layer classifier for CPU-scale experiments, so it can show the mechanism (residual
  stream variance across depth, via ``hidden_states``) but not the paper's scale effects.

``build_model(name, input_shape, num_classes, **kw)`` builds one of ``MODELS`` by name.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.norms import make_norm

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"unknown activation '{name}' (known: {', '.join(sorted(ACTIVATIONS))})") from None


def _shape(input_shape: Sequence[int], model: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"{model}: input_shape must be non-empty positive sizes, got {tuple(input_shape)}")
    return shape


def _positive(model: str, **values: int) -> None:
    for key, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{model}: {key} must be a positive integer, got {v!r}")


def _conv_dims(shape: tuple[int, ...], model: str) -> int:
    """1 for [C, L] inputs, 2 for [C, H, W]."""
    if len(shape) not in (2, 3):
        raise ConfigError(
            f"{model}: input_shape must be [C, L] (1-D signal) or [C, H, W] (image), got {list(shape)}"
        )
    return len(shape) - 1


# --------------------------------------------------------------------------------------------- MLP

MLP_INITS = ("default", "normal", "kaiming", "xavier")


class MLP(nn.Module):
    """Flatten -> `depth` hidden layers [Linear -> norm -> activation -> dropout] -> Linear.

    depth: number of hidden layers (0 gives a linear classifier).
    init: "default" (PyTorch's Linear init), "normal" (weights ~ N(0, init_std^2), biases 0, the
    classic poor init for deep narrow nets), "kaiming" (He normal, fan-in, ReLU gain) or "xavier"
    (Glorot normal); all but "default" zero the biases. Applies to every Linear, head included.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 256,
        depth: int = 2,
        activation: str = "relu",
        norm: str | None = "none",
        dropout: float = 0.0,
        init: str = "default",
        init_std: float = 0.01,
        bias: bool = True,
    ) -> None:
        super().__init__()
        shape = _shape(input_shape, "MLP")
        _positive("MLP", num_classes=num_classes, width=width)
        if not isinstance(depth, int) or depth < 0:
            raise ConfigError(f"MLP: depth must be a non-negative integer, got {depth!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"MLP: dropout must be in [0, 1), got {dropout}")
        if init not in MLP_INITS:
            raise ConfigError(f"MLP: unknown init '{init}' (known: {', '.join(MLP_INITS)})")
        if init == "normal" and not init_std > 0:
            raise ConfigError(f"MLP: init_std must be positive, got {init_std}")
        self.input_shape, self.num_classes, self.width, self.depth = shape, num_classes, width, depth
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(shape)
        for _ in range(depth):
            layers += [nn.Linear(features, width, bias=bias), make_norm(norm, width, 0), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(features, num_classes, bias=bias)
        if init != "default":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    _init_linear(m, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _init_linear(m: nn.Linear, init: str, std: float) -> None:
    if init == "normal":
        nn.init.normal_(m.weight, 0.0, std)
    elif init == "kaiming":
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    elif init == "xavier":
        nn.init.xavier_normal_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------- SmallCNN

def _conv(dims: int, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Module:
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


class SmallCNN(nn.Module):
    """[Conv -> norm -> activation -> MaxPool(2)] per entry of `channels` -> global average pool
    -> dropout -> Linear.

    Conv2d for [C, H, W] inputs, Conv1d for [C, L]. A block pools only while its input's spatial
    size is at least 2, so 8x8 digits with three blocks still work (8 -> 4 -> 2 -> 1).
    conv_bias: default True only when norm is "none" (a following norm's shift makes it redundant).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        norm: str | None = "batch",
        activation: str = "relu",
        kernel_size: int = 3,
        dropout: float = 0.0,
        conv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        shape = _shape(input_shape, "SmallCNN")
        dims = _conv_dims(shape, "SmallCNN")
        channels = tuple(channels)
        _positive("SmallCNN", num_classes=num_classes, kernel_size=kernel_size)
        if not channels:
            raise ConfigError("SmallCNN: channels must list at least one block width")
        _positive("SmallCNN", **{f"channels[{i}]": c for i, c in enumerate(channels)})
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"SmallCNN: dropout must be in [0, 1), got {dropout}")
        bias = (norm in (None, "none")) if conv_bias is None else conv_bias
        pool_cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        self.input_shape, self.num_classes, self.conv_dims = shape, num_classes, dims
        layers: list[nn.Module] = []
        cin, size = shape[0], list(shape[1:])
        for c in channels:
            layers += [_conv(dims, cin, c, kernel_size, bias=bias), make_norm(norm, c, dims), make_activation(activation)]
            if min(size) >= 2:
                layers.append(pool_cls(2))
                size = [s // 2 for s in size]
            cin = c
        self.features = nn.Sequential(*layers)
        self.spatial_dims = tuple(range(2, 2 + dims))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=self.spatial_dims)
        return self.head(self.dropout(x))


# ------------------------------------------------------------------------------------------ ResNet

class BasicBlock(nn.Module):
    """conv3x3 -> norm -> act -> conv3x3 -> norm, plus shortcut, then act (He et al. 2016, Fig. 2)."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int, norm: str | None, shortcut: str,
                 activation: str) -> None:
        super().__init__()
        self.conv1 = _conv(dims, cin, cout, 3, stride)
        self.norm1 = make_norm(norm, cout, dims)
        self.act1 = make_activation(activation)
        self.conv2 = _conv(dims, cout, cout, 3)
        self.norm2 = make_norm(norm, cout, dims)
        self.act2 = make_activation(activation)
        reshape = stride != 1 or cin != cout
        if reshape and shortcut == "B":
            self.shortcut: nn.Module = nn.Sequential(_conv(dims, cin, cout, 1, stride), make_norm(norm, cout, dims))
        elif reshape:
            self.shortcut = PadShortcut(dims, cout - cin, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class PadShortcut(nn.Module):
    """Option-A shortcut: take every `stride`-th position and zero-pad the extra channels."""

    def __init__(self, dims: int, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.dims, self.extra_channels, self.stride = dims, extra_channels, stride
        # the new channels go half before, half after, so the original channels sit in the middle
        before = extra_channels // 2
        self.pad = (0, 0) * dims + (before, extra_channels - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * self.dims]
        return F.pad(x, self.pad)


class ResNet(nn.Module):
    """CIFAR-style ResNet with 6n+2 layers (He et al. 2016, Sec. 4.2); see the module docstring."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 20,
        width: int = 16,
        norm: str | None = "batch",
        shortcut: str = "A",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        shape = _shape(input_shape, "ResNet")
        dims = _conv_dims(shape, "ResNet")
        _positive("ResNet", num_classes=num_classes, width=width, depth=depth)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"ResNet: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ConfigError(f"ResNet: shortcut must be 'A' (zero-pad) or 'B' (projection), got {shortcut!r}")
        n = (depth - 2) // 6
        self.input_shape, self.num_classes, self.depth, self.width = shape, num_classes, depth, width
        self.blocks_per_stage, self.conv_dims = n, dims
        self.stem = nn.Sequential(_conv(dims, shape[0], width, 3), make_norm(norm, width, dims),
                                  make_activation(activation))
        stages: list[nn.Module] = []
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(dims, cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, norm,
                                 shortcut, activation) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stage1, self.stage2, self.stage3 = stages
        self.spatial_dims = tuple(range(2, 2 + dims))
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(x.mean(dim=self.spatial_dims))


# ------------------------------------------------------------------------------------- Transformer

class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections; heads are a reshape.

    The head count is inferred from the projection width (`-1` in the reshape), so removing heads
    means shrinking q/k/v's output rows and `out`'s input columns by multiples of `head_dim` and
    updating `num_heads`.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout, self.causal = dropout, causal

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, H*hd] -> [N, H, T, hd]"""
        return x.reshape(x.shape[0], x.shape[1], -1, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


NORM_PLACEMENTS = ("post", "pre", "peri")


class TransformerBlock(nn.Module):
    """Self-attention and MLP sublayers, each with a residual connection.

    Norm modules by placement (only those used exist):
      post: res_norm1, res_norm2           x = res_norm(x + F(x))
      pre:  in_norm1, in_norm2             x = x + F(in_norm(x))
      peri: in_norm1/2 and out_norm1/2     x = x + out_norm(F(in_norm(x)))
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm: str | None, placement: str,
                 dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        self.placement = placement
        self.attn = SelfAttention(dim, num_heads, dropout, causal)
        self.mlp = FeedForward(dim, int(round(mlp_ratio * dim)), dropout)
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.drop2 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if placement == "post":
            self.res_norm1, self.res_norm2 = make_norm(norm, dim, 0), make_norm(norm, dim, 0)
        else:
            self.in_norm1, self.in_norm2 = make_norm(norm, dim, 0), make_norm(norm, dim, 0)
        if placement == "peri":
            self.out_norm1, self.out_norm2 = make_norm(norm, dim, 0), make_norm(norm, dim, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement == "post":
            x = self.res_norm1(x + self.drop1(self.attn(x)))
            return self.res_norm2(x + self.drop2(self.mlp(x)))
        if self.placement == "pre":
            x = x + self.drop1(self.attn(self.in_norm1(x)))
            return x + self.drop2(self.mlp(self.in_norm2(x)))
        x = x + self.drop1(self.out_norm1(self.attn(self.in_norm1(x))))
        return x + self.drop2(self.out_norm2(self.mlp(self.in_norm2(x))))


class TinyTransformer(nn.Module):
    """A small Transformer encoder classifier over token ids [N, T]; see the module docstring.

    input_shape: (T,), the sequence length (also the number of learned positions).
    pool: "last" (the last token's state; with causal=True this is a left-to-right reader) or
    "mean" (average over tokens). Float token tensors are cast to long.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        vocab_size: int,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4,
        norm: str | None = "layer",
        norm_placement: str = "pre",
        dropout: float = 0.0,
        pool: str = "last",
        causal: bool = False,
        embed_norm: bool = False,
    ) -> None:
        super().__init__()
        shape = _shape(input_shape, "TinyTransformer")
        if len(shape) != 1:
            raise ConfigError(f"TinyTransformer: input_shape must be (sequence_length,), got {list(shape)}")
        _positive("TinyTransformer", num_classes=num_classes, vocab_size=vocab_size, dim=dim, depth=depth,
                  heads=heads)
        if dim % heads != 0:
            raise ConfigError(f"TinyTransformer: dim ({dim}) must be divisible by heads ({heads})")
        if norm_placement not in NORM_PLACEMENTS:
            raise ConfigError(f"TinyTransformer: norm_placement must be one of {', '.join(NORM_PLACEMENTS)}, "
                              f"got {norm_placement!r}")
        if pool not in ("last", "mean"):
            raise ConfigError(f"TinyTransformer: pool must be 'last' or 'mean', got {pool!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"TinyTransformer: dropout must be in [0, 1), got {dropout}")
        if not mlp_ratio > 0:
            raise ConfigError(f"TinyTransformer: mlp_ratio must be positive, got {mlp_ratio}")
        self.input_shape, self.num_classes, self.vocab_size = shape, num_classes, vocab_size
        self.seq_len, self.dim, self.depth = shape[0], dim, depth
        self.norm_placement, self.pool = norm_placement, pool
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, shape[0], dim))
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.embed_norm = make_norm(norm, dim, 0) if embed_norm else nn.Identity()
        self.embed_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, norm, norm_placement, dropout, causal) for _ in range(depth)
        )
        # Post-LN's stream is already normalized by the last block; pre/peri need a final norm
        self.final_norm = nn.Identity() if norm_placement == "post" else make_norm(norm, dim, 0)
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.long()
        if tokens.dim() != 2 or tokens.shape[1] > self.seq_len:
            raise ConfigError(f"TinyTransformer: expected token ids [N, T<= {self.seq_len}], got {list(x.shape)}")
        h = self.token_embed(tokens) + self.pos_embed[:, : tokens.shape[1]]
        return self.embed_dropout(self.embed_norm(h))

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after the embedding and after each block: depth + 1 tensors [N, T, dim]."""
        states = [self.embed(x)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        h = self.final_norm(h)
        h = h[:, -1] if self.pool == "last" else h.mean(dim=1)
        return self.head(h)


# -------------------------------------------------------------------------------------- by name

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet": ResNet,
    "transformer": TinyTransformer,
}


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> nn.Module:
    """Build the model called `name` (a key of MODELS); unknown names or settings are ConfigErrors."""
    cls = MODELS.get(name)
    if cls is None:
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    try:
        inspect.signature(cls).bind(input_shape, num_classes, **kwargs)
    except TypeError as err:
        params = [p for p in inspect.signature(cls).parameters if p not in ("input_shape", "num_classes")]
        raise ConfigError(f"model '{name}': {err} (settings: {', '.join(params)})") from None
    return cls(input_shape, num_classes, **kwargs)
