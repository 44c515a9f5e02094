"""Orthogonal convolutions by regularization (L_orth), and the exact singular values of a conv layer.

Paper: El Mehdi Achour, Francois Malgouyres, Franck Mamalet, "Existence, Stability and Scalability
of Orthogonal Convolutional Neural Networks", JMLR 23 (2022), arXiv:2108.05623.

Claim: for a convolution with kernel K (M output channels, C input channels, size k, stride S),
the regularizer

    L_orth(K) = || conv(K, K, padding P, stride S) - I_r0 ||_F^2 - max(0, M - C * S^d),
    P = floor((k - 1) / S) * S,  I_r0 = the identity kernel (1 at the centre for m = m'),

is zero exactly when K is orthogonal (under circular padding), and the paper shows that "this
regularization strategy is stable with respect to numerical and optimization errors and that, in
the presence of small errors and when the size of the signal/image is large, the convolutional
layers remain close to isometric" (abstract): a small L_orth means singular values close to 1.
Paper scale: experiments on CIFAR-10 and ImageNet-size networks with the regularizer on every
convolution, with the singular values of the trained layers computed exactly; the weight lambda
trades accuracy against orthogonality. Where this falls short: the checks here use small CNNs on
8x8 digits / 1-D signals, and report singular values under circular padding while the models pad
with zeros (the paper's experiments have the same mismatch for zero-padded networks).

``conv_singular_values(conv_or_weight, input_size, stride)`` computes all singular values of the
circular convolution operator exactly, with FFTs (Sedghi, Gupta, Long, "The Singular Values of
Convolutional Layers", ICLR 2019): for stride 1 the operator is block-diagonalized by the 2-D DFT,
so its singular values are those of the n^d matrices K_hat(u) in C^{M x C}; for stride S the
S^d aliased frequencies of each output frequency are stacked into M x (C * S^d) blocks (scaled by
S^(-d/2)). Conv1d and Conv2d weights are supported.

``conv-spectrum`` (a probe that modifies nothing, in this file because it serves this technique's
claim) logs per epoch the mean |sigma - 1| over the singular values of all conv layers, and the
largest and smallest singular values, each conv at the spatial size of its actual input.

Plain PyTorch::

    import torch
    from trainlab.techniques.regularization.orthogonal_conv import orthogonality_loss, conv_singular_values

    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    loss = 0.1 * orthogonality_loss(conv.weight, stride=1)     # add to the task loss
    loss.backward()
    sigmas = conv_singular_values(conv, input_size=8)          # all 32 * 8 * 8 ... singular values
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper("Existence, Stability and Scalability of Orthogonal Convolutional Neural Networks",
              "Achour, Malgouyres, Mamalet", 2022, "2108.05623")
CONVS = (nn.Conv1d, nn.Conv2d)


def _conv_fn(dims: int):
    if dims == 1:
        return F.conv1d
    if dims == 2:
        return F.conv2d
    raise ConfigError(f"orthogonality for {dims}-D convolutions is not supported (1-D and 2-D are)")


def orthogonality_loss(weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """L_orth of a kernel [M, C, k] or [M, C, k, k] (odd k), the paper's Definition (eq. 6/7)."""
    dims = weight.dim() - 2
    conv = _conv_fn(dims)
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ConfigError(f"L_orth needs odd kernel sizes, got {k}")
    m, c = weight.shape[0], weight.shape[1]
    pad = ((k - 1) // stride) * stride
    # conv(K, K): the M filters, as a batch of M "images" with C channels, convolved with K itself
    kk = conv(F.pad(weight, (pad, pad) * dims), weight, stride=stride)
    target = torch.zeros_like(kk)
    centre = (slice(None), slice(None)) + (kk.shape[-1] // 2,) * dims
    target[centre] = torch.eye(m, dtype=weight.dtype, device=weight.device)
    delta = max(0, m - c * stride ** dims)
    return (kk - target).pow(2).sum() - delta


def conv_singular_values(conv_or_weight: nn.Module | torch.Tensor, input_size: int | tuple[int, ...],
                         stride: int | None = None) -> torch.Tensor:
    """All singular values (descending) of the convolution as a linear map under circular padding.

    input_size: n (or (n,) / (n, n)) of the input's spatial size; it must be divisible by the stride.
    """
    if isinstance(conv_or_weight, nn.Module):
        if not isinstance(conv_or_weight, CONVS):
            raise ConfigError(f"conv_singular_values needs Conv1d/Conv2d, got {type(conv_or_weight).__name__}")
        if conv_or_weight.groups != 1 or any(d != 1 for d in conv_or_weight.dilation):
            raise ConfigError("conv_singular_values supports groups=1 and dilation=1 only")
        weight = conv_or_weight.weight
        stride = conv_or_weight.stride[0] if stride is None else stride
    else:
        weight = conv_or_weight
        stride = 1 if stride is None else stride
    weight = weight.detach()
    weight = weight if weight.dtype == torch.float64 else weight.float()
    dims = weight.dim() - 2
    if dims not in (1, 2):
        raise ConfigError(f"conv_singular_values supports 1-D and 2-D kernels, got shape {tuple(weight.shape)}")
    n = (input_size,) * dims if isinstance(input_size, int) else tuple(input_size)
    if len(n) != dims or any(s % stride for s in n):
        raise ConfigError(f"input size {n} must have {dims} entries divisible by the stride {stride}")
    if any(weight.shape[2 + i] > n[i] for i in range(dims)):
        raise ConfigError(f"kernel {tuple(weight.shape[2:])} is larger than the input {n}")
    m, c = weight.shape[:2]
    spectrum = torch.fft.fftn(weight, s=n, dim=tuple(range(2, 2 + dims)))  # [M, C, *n]
    if stride == 1:
        blocks = spectrum.movedim((0, 1), (-2, -1))  # [*n, M, C]
    else:
        # output frequency u (on the n/S grid) gathers the input frequencies j * n/S + u, j < S
        out = tuple(s // stride for s in n)
        if dims == 1:
            blocks = spectrum.unflatten(2, (stride, out[0])).permute(3, 0, 1, 2)  # [o, M, C, S]
        else:
            blocks = (spectrum.unflatten(3, (stride, out[1])).unflatten(2, (stride, out[0]))
                      .permute(3, 5, 0, 1, 2, 4))  # [o1, o2, M, C, S, S]
        blocks = blocks.reshape(*out, m, c * stride ** dims) / stride ** (dims / 2)
    sv = torch.linalg.svdvals(blocks.reshape(-1, *blocks.shape[-2:]))
    return sv.flatten().sort(descending=True).values


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CONVS)]


@register
class OrthogonalConv(Technique):
    """Adds lambda * sum over conv layers of L_orth(K) to the loss."""

    name = "orthogonal-conv"
    family = "regularization"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = ("tests/techniques/test_orthogonal_conv.py::test_lorth_equals_a_transcription_of_the_authors_"
                         "code: L_orth of 2-D kernels (row- and column-orthogonal cases, strides 1 and 2) equals a "
                         "transcription of the authors' Lorth / Lorth2D (deel-ai/deel-lip, deel/lip/regularizers.py); "
                         "1-D kernels (the paper's theory, not in that code) use the same formula")
    modifies = frozenset({"loss"})
    order = 70
    summary = "regularize every convolution towards orthogonality (L_orth of Achour et al.)"
    requires = frozenset({"conv"})

    def __init__(self, lam: float = 0.1) -> None:
        if lam < 0:
            raise ConfigError(f"orthogonal-conv: lam must be >= 0, got {lam}")
        super().__init__(lam=lam)
        self.lam = float(lam)
        self.layers: list[nn.Module] = []

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self.layers = [m for _, m in conv_layers(model)]
        if not self.layers:
            raise ConfigError(f"orthogonal-conv: the model {type(model).__name__} has no Conv1d/Conv2d layer")
        for m in self.layers:
            if m.groups != 1 or any(d != 1 for d in m.dilation):
                raise ConfigError("orthogonal-conv supports groups=1 and dilation=1 convolutions only")
            if m.kernel_size[0] % 2 == 0:
                raise ConfigError(f"orthogonal-conv needs odd kernel sizes, got {m.kernel_size}")

    def penalty(self) -> torch.Tensor:
        return sum(orthogonality_loss(m.weight, m.stride[0]) for m in self.layers)

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        return base_loss + self.lam * self.penalty()


@register
class ConvSpectrum(Technique):
    """Probe: per-epoch singular-value statistics of every conv layer (changes nothing)."""

    name = "conv-spectrum"
    family = "regularization"
    paper = PAPER
    fidelity = "control"  # a measuring probe (changes nothing); its singular values are tested against the explicit matrix
    modifies = frozenset()
    summary = "probe: log mean |sigma - 1|, max and min singular values of the conv layers"
    requires = frozenset({"conv"})

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[str, tuple[int, ...]] = {}
        self._hooks: list[Any] = []

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self.sizes = {}
        for name, m in conv_layers(model):
            self._hooks.append(m.register_forward_pre_hook(self._recorder(name)))

    def _recorder(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            self.sizes.setdefault(name, tuple(args[0].shape[2:]))
        return record

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        sigmas = []
        for name, m in conv_layers(model):
            size = self.sizes.get(name)
            if size is None or any(s % m.stride[0] for s in size):
                continue
            sigmas.append(conv_singular_values(m, size))
        if sigmas:
            s = torch.cat(sigmas)
            state.epoch_metrics["conv_sigma_dev"] = float((s - 1).abs().mean())
            state.epoch_metrics["conv_sigma_max"] = float(s.max())
            state.epoch_metrics["conv_sigma_min"] = float(s.min())

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


_QUOTE = ("we show that this regularization strategy is stable with respect to numerical and optimization errors "
          "and that, in the presence of small errors and when the size of the signal/image is large, the "
          "convolutional layers remain close to isometric")
_SETTING = PaperSetting(
    train_size=50_000,
    text="CIFAR-10 (and ImageNet-size) networks with the regularizer on every convolution and the trained layers' "
         "singular values computed exactly; the quoted stability result is a theorem, confirmed on convolutions "
         "trained with the regularizer; epochs and model sizes not read here")
# No preconditions: the claim compares the spectra of regularized and plain convolutions; the paper's condition
# ("small errors") concerns the regularized layer's own L_orth, which is not logged, not a regime of the baseline.

CLAIMS = [
    Claim(
        id="orthogonal-conv-spectrum-digits", technique="orthogonal-conv", task="digits-cnn",
        metric="conv_sigma_dev", direction="lower",
        treatment=arm("conv-spectrum", ("orthogonal-conv", {"lam": 0.1})), baseline=arm("conv-spectrum"),
        seeds=5, suites=("quick", "full"), overrides={"epochs": 5}, min_effect=0.05,
        paper_quote=_QUOTE,
        paper_number="singular values of the regularized convolutions close to 1 (no single headline number)",
        paper_scale="CIFAR-10 / ImageNet networks with the regularizer on every convolution", paper_setting=_SETTING,
        notes="Mechanism claim: mean |sigma - 1| over all singular values (circular padding, exact FFT method) of "
              "both conv layers at the end of training; the conv-spectrum probe runs in both arms.",
    ),
    Claim(
        id="orthogonal-conv-spectrum-mnist1d", technique="orthogonal-conv", task="mnist1d-cnn",
        metric="conv_sigma_dev", direction="lower",
        treatment=arm("conv-spectrum", ("orthogonal-conv", {"lam": 0.1})), baseline=arm("conv-spectrum"),
        seeds=5, suites=("full",), overrides={"epochs": 5}, min_effect=0.05, paper_quote=_QUOTE,
        paper_number="singular values of the regularized convolutions close to 1 (no single headline number)",
        paper_scale="CIFAR-10 / ImageNet networks with the regularizer on every convolution", paper_setting=_SETTING,
        notes="1-D convolutions (the paper treats 1-D and 2-D); three conv layers.",
    ),
]
