"""Reversible residual blocks (additive coupling) with activation-free backpropagation.

Papers:
* Mihir Pendse, Vithursan Thangarasa, Vitaliy Chiley, Ryan Holmdahl, Joel Hestness, Dennis DeCoste.
  "Memory Efficient 3D U-Net with Reversible Mobile Inverted Bottlenecks for Brain Tumor
  Segmentation". 2021, arXiv:2104.09648 (the reversible mobile inverted bottleneck).
* Aidan N. Gomez, Mengye Ren, Raquel Urtasun, Roger B. Grosse. "The Reversible Residual Network:
  Backpropagation Without Storing Activations". 2017, arXiv:1707.04585 (the additive coupling).

Method: split the channels of x into halves (x1, x2) and compute y1 = x1 + F(x2), y2 = x2 + G(y1).
The block is invertible: x2 = y2 - G(y1), x1 = y1 - F(x2). A stack of such blocks therefore needs
to keep only its final output for backpropagation: the backward pass walks the blocks in reverse,
rebuilds each block's input from its output, recomputes F and G with autograd enabled and
backpropagates through them. Pendse et al. use MobileNetV2's inverted bottleneck (1x1 expansion,
depthwise 3x3, 1x1 projection) as F and G in a 3D U-Net.
Claim: "Using reversible layers enables the model to recompute input activations given the outputs
of that layer, saving memory by eliminating the need to store activations during the forward pass";
with a fixed memory budget they train "image volumes up to 3x larger, models with 25% more depth, or
models with up to 2x the number of channels". Here: the memory saving is measured exactly by
counting the bytes autograd saves for backward (benchmarks/reversible.py); the trainlab claim checks
that training with the reversible backward gives the gradients of stored-activation backprop.

Choices where recomputation could differ from the forward pass:
* Randomness (dropout): each block's forward records the CPU (and, on CUDA, the device) RNG state
  and the backward replays F and G under that state (as torch.utils.checkpoint does), so dropout
  masks in the recomputation are those of the forward pass. The global RNG is left as it was.
* BatchNorm running statistics: the forward pass updates them once. The recomputation in backward
  (training mode, the same batch, so the same batch statistics) would update them a second time;
  every buffer of the stack is snapshotted before the recomputation and restored after it, so a
  training step updates running statistics exactly once, as with stored activations.

Plain PyTorch::

    import torch
    from trainlab.techniques.memory.reversible import ReversibleSequence, reversible_inverted_bottleneck

    stack = ReversibleSequence([reversible_inverted_bottleneck(16, expansion=4) for _ in range(8)])
    x = torch.randn(4, 16, 12, 12)
    stack(x).square().mean().backward()          # backward rebuilds activations from the output
    assert torch.allclose(stack.inverse(stack(x)), x, atol=1e-4)
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper(
    title="Memory Efficient 3D U-Net with Reversible Mobile Inverted Bottlenecks for Brain Tumor Segmentation",
    authors="Pendse, Thangarasa, Chiley, Holmdahl, Hestness, DeCoste", year=2021, arxiv="2104.09648",
)
REVNET_PAPER = Paper(
    title="The Reversible Residual Network: Backpropagation Without Storing Activations",
    authors="Gomez, Ren, Urtasun, Grosse", year=2017, arxiv="1707.04585",
)


class ReversibleBlock(nn.Module):
    """Additive coupling y1 = x1 + f(x2), y2 = x2 + g(y1) over the two halves of dim 1.

    f and g map a tensor with half the channels to one of the same shape."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f, self.g = f, g

    @staticmethod
    def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() < 2 or x.shape[1] % 2:
            raise ConfigError(f"ReversibleBlock: dim 1 must have an even size, got shape {tuple(x.shape)}")
        return x.chunk(2, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self._halves(x)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        """x from y = forward(x): x2 = y2 - g(y1), x1 = y1 - f(x2)."""
        y1, y2 = self._halves(y)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)


def _rng_devices(x: Tensor) -> list[int]:
    return [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []


def _rng_state(x: Tensor) -> tuple[Tensor, Tensor | None]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(x.device) if x.is_cuda else None)


def _set_rng_state(state: tuple[Tensor, Tensor | None], x: Tensor) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], x.device)


class _ReversibleFunction(torch.autograd.Function):
    """Runs the blocks without a graph, saves only the output; backward rebuilds the inputs."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, blocks: Sequence[ReversibleBlock], params: Sequence[nn.Parameter],
                *flat_params: Tensor) -> Tensor:
        ctx.blocks, ctx.params, ctx.rng = blocks, params, []
        with torch.no_grad():
            for block in blocks:
                x1, x2 = block._halves(x)
                rng_f = _rng_state(x)
                y1 = x1 + block.f(x2)
                rng_g = _rng_state(x)    # g draws after f: keep both states to replay them in any order
                y2 = x2 + block.g(y1)
                ctx.rng.append((rng_f, rng_g))
                x = torch.cat([y1, y2], dim=1)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable     # the recomputed graph is not kept: no double backward
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        (y,) = ctx.saved_tensors
        blocks, params = ctx.blocks, ctx.params
        grads: dict[int, Tensor] = {}
        # the recomputation must not move BatchNorm running statistics a second time
        buffers = [b for block in blocks for b in block.buffers()]
        saved_buffers = [b.detach().clone() for b in buffers]
        with torch.random.fork_rng(devices=_rng_devices(y)):
            for block, (rng_f, rng_g) in zip(reversed(blocks), reversed(ctx.rng)):
                y1, y2 = (t.detach() for t in block._halves(y))
                dy1, dy2 = block._halves(grad_y)
                g_params = [p for p in block.g.parameters() if p.requires_grad]
                f_params = [p for p in block.f.parameters() if p.requires_grad]
                # y2 = x2 + g(y1): recompute g(y1), recover x2, backprop dy2 into y1 and g
                y1.requires_grad_()
                _set_rng_state(rng_g, y)
                with torch.enable_grad():
                    gy1 = block.g(y1)
                g_out = torch.autograd.grad(gy1, [y1, *g_params], dy2, allow_unused=True)
                dy1 = dy1 + g_out[0] if g_out[0] is not None else dy1
                x2 = (y2 - gy1.detach()).requires_grad_()
                # y1 = x1 + f(x2): recompute f(x2), recover x1, backprop the total dy1 into x2 and f
                _set_rng_state(rng_f, y)
                with torch.enable_grad():
                    fx2 = block.f(x2)
                f_out = torch.autograd.grad(fx2, [x2, *f_params], dy1, allow_unused=True)
                dx2 = dy2 + f_out[0] if f_out[0] is not None else dy2
                for p, gp in zip([*g_params, *f_params], [*g_out[1:], *f_out[1:]]):
                    if gp is not None:
                        grads[id(p)] = grads[id(p)] + gp if id(p) in grads else gp
                with torch.no_grad():
                    y = torch.cat([y1.detach() - fx2.detach(), x2.detach()], dim=1)
                grad_y = torch.cat([dy1, dx2], dim=1)
        with torch.no_grad():
            for b, s in zip(buffers, saved_buffers):
                b.copy_(s)
        return (grad_y, None, None, *(grads.get(id(p)) for p in params))


class ReversibleSequence(nn.Module):
    """A stack of ReversibleBlocks whose backward keeps only the final output (RevNet backprop).

    reversible=False runs the same blocks with ordinary autograd (stored activations): the
    reference the reversible backward must match."""

    def __init__(self, blocks: Iterable[ReversibleBlock], reversible: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        for b in self.blocks:
            if not isinstance(b, ReversibleBlock):
                raise ConfigError(f"ReversibleSequence: every block must be a ReversibleBlock, got {type(b).__name__}")
        self.reversible = reversible

    def forward(self, x: Tensor) -> Tensor:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.reversible and torch.is_grad_enabled() and (x.requires_grad or params):
            return _ReversibleFunction.apply(x, list(self.blocks), params, *params)
        for block in self.blocks:
            x = block(x)
        return x

    def inverse(self, y: Tensor) -> Tensor:
        """The input x with forward(x) = y (exact up to rounding)."""
        with torch.no_grad():
            for block in reversed(self.blocks):
                y = block.inverse(y)
        return y


class InvertedBottleneck(nn.Module):
    """MobileNetV2's inverted residual branch without the skip: 1x1 expand -> BN -> ReLU6 ->
    depthwise kxk -> BN -> ReLU6 -> 1x1 project -> BN (linear bottleneck)."""

    def __init__(self, channels: int, expansion: int = 4, kernel_size: int = 3, norm: bool = True) -> None:
        super().__init__()
        if channels < 1 or expansion < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError("InvertedBottleneck: channels, expansion >= 1 and an odd kernel_size are required, "
                              f"got {channels}, {expansion}, {kernel_size}")
        hidden = channels * expansion
        bn = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=not norm), bn(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=not norm),
            bn(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=not norm), bn(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def reversible_inverted_bottleneck(channels: int, expansion: int = 4, kernel_size: int = 3,
                                   norm: bool = True) -> ReversibleBlock:
    """A reversible block on `channels` channels whose F and G are inverted bottlenecks on half of them."""
    if channels % 2:
        raise ConfigError(f"reversible_inverted_bottleneck: channels must be even, got {channels}")
    return ReversibleBlock(InvertedBottleneck(channels // 2, expansion, kernel_size, norm),
                           InvertedBottleneck(channels // 2, expansion, kernel_size, norm))


def mlp_branch(width: int, hidden: int | None = None, dropout: float = 0.0) -> nn.Module:
    """Linear -> ReLU -> (Dropout) -> Linear on `width` features: an MLP-style F or G."""
    hidden = hidden or width
    layers: list[nn.Module] = [nn.Linear(width, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, width))
    return nn.Sequential(*layers)


def reversible_gradient_error(module: nn.Module, x: Tensor, loss_fn: Any = None) -> float:
    """max |grad_reversible - grad_stored| / max |grad_stored| over the input and every parameter,
    for loss_fn(module(x)) (default: sum of squares / 2), where every ReversibleSequence inside
    `module` (or `module` itself) runs once reversibly and once with stored activations. Buffers
    and the RNG are restored before each pass, so both see the same BatchNorm state and dropout
    masks; afterwards the buffers are as after one training step."""
    loss_fn = loss_fn or (lambda out: out.square().sum() / 2)
    stacks = [m for m in module.modules() if isinstance(m, ReversibleSequence)]
    if not stacks:
        raise ConfigError("reversible_gradient_error: the module contains no ReversibleSequence")
    params = [p for p in module.parameters() if p.requires_grad]
    buffers = [b.detach().clone() for b in module.buffers()]
    rng = torch.get_rng_state()
    modes = [m.reversible for m in stacks]
    results = []
    try:
        for mode in (False, True):
            with torch.no_grad():
                for b, saved in zip(module.buffers(), buffers):
                    b.copy_(saved)
            torch.set_rng_state(rng)
            for m in stacks:
                m.reversible = mode
            xi = x.detach().clone().requires_grad_(x.is_floating_point())
            with torch.enable_grad():
                wrt = [xi, *params] if xi.requires_grad else params
                results.append(torch.autograd.grad(loss_fn(module(xi)), wrt, allow_unused=True))
    finally:
        for m, mode in zip(stacks, modes):
            m.reversible = mode
    ref, rev = results
    pairs = [(a, b) for a, b in zip(ref, rev) if a is not None and b is not None]
    num = max(((a - b).abs().max().item() for a, b in pairs), default=0.0)
    den = max((a.abs().max().item() for a, _ in pairs), default=0.0)
    return num / den if den > 0 else num


def saved_activation_bytes(module: nn.Module, *inputs: Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for backward during module(*inputs)
    (torch.autograd.graph.saved_tensors_hooks): the activation memory backprop keeps, counted exactly.
    Parameters are left out (every layer saves its weight, but that is not activation memory). A
    saved view counts its whole storage: pass inputs that own their memory (not slices of a dataset)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t        # the graph keeps t alive, so a storage address is not reused meanwhile

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
    del out
    return sum(storages.values())


def reversible_mlp(model: nn.Module, blocks: int = 4, hidden: int | None = None,
                   dropout: float = 0.0) -> nn.Module:
    """Replace the hidden stack of a trainlab MLP (Flatten, Linear, ..., Linear head) by: its first
    Linear and activation, a ReversibleSequence of `blocks` blocks on the hidden width (F and G:
    Linear -> ReLU -> Linear on half of it), and its head."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ConfigError("reversible: the model needs an input Linear and a Linear head (an MLP with depth >= 1)")
    first, head = linears[0], linears[-1]
    width = first.out_features
    if width % 2 or head.in_features != width:
        raise ConfigError(f"reversible: the hidden width must be even and feed the head, got {width} -> {head.in_features}")
    half = width // 2
    stack = ReversibleSequence(
        ReversibleBlock(mlp_branch(half, hidden, dropout), mlp_branch(half, hidden, dropout)) for _ in range(blocks))
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), stack, head)


@register
class Reversible(Technique):
    """Reversible hidden stack (additive coupling) trained with activation-free backpropagation."""

    name = "reversible"
    family = "memory"
    paper = PAPER
    fidelity = "variant"
    version = 3
    deviations = (
        "an MLP hidden stack with Linear-ReLU-Linear F and G on digits (the paper: 3D U-Net with "
        "reversible inverted bottlenecks on BraTS); the inverted-bottleneck block is provided as "
        "reversible_inverted_bottleneck for conv feature maps but not used in the claim",
        "activation memory is measured by counting bytes saved for backward (benchmarks/reversible.py), "
        "not as the peak GPU memory of a training run",
    )
    modifies = frozenset({"model"})
    summary = "RevNet additive coupling; backward rebuilds activations from outputs"

    def __init__(self, blocks: int = 4, hidden: int | None = None, dropout: float = 0.0, stored: bool = False,
                 check_every: int = 1, check_examples: int = 128) -> None:
        if not isinstance(blocks, int) or blocks < 1:
            raise ConfigError(f"reversible: blocks must be a positive integer, got {blocks!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"reversible: dropout must be in [0, 1), got {dropout}")
        if check_every < 0 or check_examples < 1:
            raise ConfigError("reversible: check_every must be >= 0 and check_examples >= 1")
        super().__init__(blocks=blocks, hidden=hidden, dropout=dropout, stored=stored, check_every=check_every,
                         check_examples=check_examples)
        self.blocks, self.hidden, self.dropout, self.stored = blocks, hidden, dropout, bool(stored)
        self.check_every, self.check_examples = check_every, check_examples

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        model = reversible_mlp(model, self.blocks, self.hidden, self.dropout)
        for m in model.modules():
            if isinstance(m, ReversibleSequence):
                m.reversible = not self.stored    # stored=True: the same network, ordinary backprop (control)
        return model

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        # the gradient the reversible backward gives vs stored-activation backprop, on the run's loss
        if not self.check_every or (state.epoch + 1) % self.check_every or state.data is None:
            return
        # a copy: a slice would share (and be counted with) the whole training set's storage
        x = state.data.train_x[: self.check_examples].to(state.device).clone()
        y = state.data.train_y[: self.check_examples].to(state.device)
        loss_fn = state.loss_fn or nn.functional.cross_entropy
        err = reversible_gradient_error(model, x, lambda out: loss_fn(out, y))
        state.epoch_metrics["reversible_grad_err"] = err
        # activation bytes kept for backward on this batch; buffers restored (BatchNorm would count a step)
        buffers = [b.detach().clone() for b in model.buffers()]
        state.epoch_metrics["saved_activation_bytes"] = float(saved_activation_bytes(model, x))
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)


_SETTING = PaperSetting(
    train_size=335, epochs=None,
    text="BraTS 2020 (240x240x155x4 MRI volumes), 3D U-Net with reversible inverted bottlenecks; memory "
         "compared with the non-reversible network at a fixed budget")

CLAIMS: list[Claim] = [
    Claim(
        id="reversible-exact-gradients", technique="reversible", task="digits-mlp",
        metric="max:reversible_grad_err", direction="lower", reference=1e-5,
        treatment=arm(("reversible", {"blocks": 4}), label="reversible MLP stack (4 blocks)"),
        seeds=5, suites=("full",),
        paper_quote="Using reversible layers enables the model to recompute input activations given the outputs "
                    "of that layer, saving memory by eliminating the need to store activations during the "
                    "forward pass",
        paper_number="(exactness of the recomputed backward; the memory numbers are in benchmarks/reversible.py)",
        paper_scale="3D U-Net on BraTS volumes", paper_setting=_SETTING,
        notes="One-arm claim on the mechanism: at the end of every epoch, the gradient of the training loss on "
              "128 training examples computed by the reversible backward (activations rebuilt from the output) "
              "is compared with stored-activation backprop through the same weights; the metric is the largest "
              "relative difference (max abs difference / max abs gradient) over inputs and parameters, the "
              "largest over epochs. Reference 1e-5: float32 rounding of the reconstruction, not an exact zero. "
              "The paper's memory and larger-volume claims are not training-run outcomes here; "
              "benchmarks/reversible.py counts the bytes autograd saves for backward (a 16-block inverted-bottleneck "
              "stack on 8x32x16x16 maps: 106 MiB stored vs 0.25 MiB reversible, at 1.2-1.6x the step time). "
              "Measured (5 seeds, 10 epochs each): largest relative gradient difference 9.7e-8 to 1.4e-7 "
              "(float32 rounding); test accuracy 96.9-97.5%.",
    ),
    Claim(
        id="reversible-activation-memory", technique="reversible", task="digits-mlp",
        metric="saved_activation_bytes", direction="lower",
        treatment=arm(("reversible", {"blocks": 4}), label="reversible backward"),
        baseline=arm(("reversible", {"blocks": 4, "stored": True}), label="same network, stored activations"),
        seeds=5, suites=("full",),
        paper_quote="Using reversible layers enables the model to recompute input activations given the outputs "
                    "of that layer, saving memory by eliminating the need to store activations during the "
                    "forward pass",
        paper_number="with a fixed memory budget: image volumes up to 3x larger, 25% more depth, or up to 2x the "
                     "channels of the non-reversible network",
        paper_scale="3D U-Net on BraTS volumes", paper_setting=_SETTING,
        notes="Control: the same network and weights (first Linear, 4 reversible blocks, head) trained with "
              "ordinary backprop. Metric: bytes of the activations autograd saves for backward in one forward "
              "pass on 128 training examples (saved_tensors_hooks, distinct storages, parameters excluded), at "
              "the last epoch; the count is exact and the same in every seed, so the interval only restates "
              "it. The layers outside the reversible stack (input Linear, ReLU, head) store their activations "
              "in both arms. The paper's outcome (larger volumes or deeper models at a fixed GPU budget) is not "
              "a verdict at this scale; benchmarks/reversible.py gives the ratio at four depths. Measured (5 seeds, "
              "identical in each): 163,840 bytes reversible (the input, the first ReLU's output and the stack's "
              "output) vs 753,664 bytes stored, ratio 0.22; test accuracy identical in both arms (96.9-97.5%); "
              "step time about 1.5x (measured under load).",
    ),
]
