"""Dynamic channel pruning with self-supervised mask prediction (FTWT).

Paper: Sara Elkerdawy, Mostafa Elhoushi, Hong Zhang, Nilanjan Ray, "Fire Together Wire Together:
A Dynamic Pruning Approach with Self-Supervised Mask Prediction", CVPR 2022, arXiv:2110.08232.
Official code: github.com/selkerdawy/FTWT (``utils/layers.py``, ``utils/utils.py``, ``cifar.py``).

Claim: a small gating head per layer, reading the previous layer's activations, predicts which of
the layer's output channels to compute for each input; trained as a self-supervised binary
classification against masks drawn from the layer's own activations, it reaches "similar accuracy
to SOTA methods with 15% and 24% higher FLOPs reduction" on CIFAR, and beats static pruning at
equal FLOPs (VGG16, ResNet-56, MobileNet on CIFAR-10/100; ResNet on ImageNet).

What happens (as in the official code):
* Each gated block is ``out = act(norm(conv(x)))``. Its predictor reads the block's INPUT ``x``
  (detached: the paper's "decoupled" mode, so the mask loss trains only the predictors and the
  task loss only the backbone), global-average-pools it over space, takes a softmax over the
  channels and applies a linear layer (the official 1x1 conv) to give one logit per output channel.
* The target (``mass_targets``): per input and channel, the peak ``max |out|`` over space; the
  peaks are normalized to sum to one, sorted in decreasing order, and a channel is kept while the
  running sum of the sorted peaks (itself included) stays within the mass ``threshold`` (the
  paper's r; 1e-5 of slack as in the code). ``threshold=1`` keeps every channel whose share is
  above 1e-5 (only dead channels drop).
* The applied mask is the predictor's hard decision ``sigmoid(logit) > 0.5`` (no gradient through
  it), in training and in evaluation: ``out * mask``, so an unselected channel is exactly zero.
* Loss: binary cross-entropy with logits against the targets, averaged over the batch, summed
  over channels, averaged over gated layers, times ``weight``, added to the task loss. The
  official code switches the mask loss off after half of its (fine-tuning) run ("cooldown").
* FLOPs per input (``DynamicPruning.flops``): a gated conv costs ``2 K a_in a_out S`` (kernel size
  K, active input channels a_in, active output channels a_out, output positions S; a multiply-add
  counts 2, as trainlab.techniques.pruning.accounting.count_flops does), where a_in is the previous
  block's active count when only pools/dropout lie between them. The predictors' linear layers
  (``2 C_in C_out`` each) are INCLUDED; the rest of the network (the head) is counted dense. The
  official code counts the convs alone and leaves the predictors out.

Scope: models whose ``features`` attribute is an ``nn.Sequential`` of blocks [Conv or Linear ->
norm -> activation] (trainlab's SmallCNN: digits-cnn, mnist1d-cnn, cifar10-cnn; MLP). Other
models are refused with a ConfigError. On a Linear block the predictor (C_in x C_out) costs as much
as the layer it gates, so dynamic pruning of an MLP cannot save FLOPs; it is allowed, and counted.
On a one-channel input (digits, MNIST-1D) the first predictor sees one pooled number, so its mask
is close to input-independent.

What was found at this scale (claims below): in a 15-epoch budget the predictors learn little
beyond each channel's frequency of being kept, so they keep more channels than their targets: an
oracle threshold for 50% of the FLOPs reached 92% on digits-cnn; the claims therefore pick the
oracle target whose reached FLOPs lie near 50% on calibration seeds. A channel kept in fewer than
half of the inputs is then never predicted on, and one kept in more always is: on MNIST-1D (r about
0.52) the second conv kept all its channels and the third about 5-11%, and test accuracy fell to
40-71% (5 seeds) where static uniform pruning at the same FLOPs kept 95%. On digits (r about 0.72)
ftwt lost 1-2 points against static pruning and against dense, at slightly more FLOPs than the
static arm (out of the claims' equal-FLOPs regime by 0.006).

Speed: masking computes every channel and then zeroes some, so it saves nothing by itself. With
``skip=True`` (evaluation, batch size 1, BatchNorm or no norm) a block gathers the active input
channels and the active filters and runs a smaller convolution; benchmarks/dynamic_pruning.py
measures it: on the digits and MNIST-1D CNNs at about 47% of the dense FLOPs it was 3.0-3.4x SLOWER
than the dense network per input (plain masking: 2.2-2.4x; gathering, the predictors and Python
per-block work cost more than the convolutions saved at these widths), while a static network of
the same FLOPs ran at 0.89x (batch 1) and 0.70-0.73x (batch 256). A per-input mask cannot shrink a
batched convolution: the inputs of one batch want different channels. No speed-up is claimed.

Artifact: dynamic pruning keeps every weight (and adds the predictors), so there is no smaller
file to write; ``parameter_overhead`` gives the predictors' share.

Plain PyTorch::

    import torch
    from trainlab.tasks.models import SmallCNN
    from trainlab.techniques.compression.dynamic_pruning import apply_ftwt

    model = SmallCNN((1, 8, 8), 10, channels=(32, 64))
    dp = apply_ftwt(model, torch.randn(2, 1, 8, 8), threshold=0.9)
    dp.set_mode("predicted")                    # masks from the predictors, in training and eval
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss = torch.nn.functional.cross_entropy(model(x), y) + dp.mask_loss()
    loss.backward()
    model.eval(); model(x); print(dp.flops_ratio())   # per-input FLOPs / dense FLOPs, [16]
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper("Fire Together Wire Together: A Dynamic Pruning Approach with Self-Supervised Mask Prediction",
              "Elkerdawy, Elhoushi, Zhang, Ray", 2022, "2110.08232")

MODES = ("dense", "predicted", "target", "static")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.Identity)
_ACTS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU)
# modules between two blocks that keep a zero channel zero (so the next block may skip it)
_PER_CHANNEL = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Dropout, nn.Identity)
_DELTA = 1e-5  # the official code's slack on the cumulative mass


# ------------------------------------------------------------------------------- the targets

def channel_peaks(out: torch.Tensor) -> torch.Tensor:
    """[B, C] peak magnitude of each channel: max |out| over the spatial axes (|out| for [B, C])."""
    a = out.abs()
    return a.flatten(2).amax(2) if a.dim() > 2 else a


def mass_targets(out: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B, C] binary targets: per input, the channels with the largest peaks whose cumulative share
    of the total peak mass stays within `threshold` (+1e-5); threshold=1 drops only channels whose
    share is at most 1e-5; a negative threshold keeps all."""
    peaks = channel_peaks(out.detach()).float()
    keep = torch.ones_like(peaks)
    if threshold < 0:
        return keep
    share = peaks / peaks.sum(1, keepdim=True).clamp_min(1e-30)
    if threshold >= 1:
        return (share > _DELTA).float()
    ordered, order = torch.sort(share, dim=1, descending=True)
    drop_sorted = (ordered.cumsum(1) - threshold) > _DELTA
    keep.scatter_(1, order, (~drop_sorted).float())
    return keep


# ---------------------------------------------------------------------------- the predictor

class MaskPredictor(nn.Module):
    """Global average pool over space -> softmax over channels -> linear: one logit per output
    channel (the official MaskPredictorNN with its defaults: no embedding, softmax on)."""

    def __init__(self, in_channels: int, out_channels: int, softmax: bool = True) -> None:
        super().__init__()
        self.softmax = softmax
        self.linear = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(2).mean(2) if x.dim() > 2 else x
        if self.softmax:
            z = z.softmax(1)
        return self.linear(z)


class GatedBlock(nn.Module):
    """A [layer -> post (norm, activation)] block whose output channels are masked per input.

    mode: "dense" (nothing masked; the predictor still runs so it can learn), "predicted" (the
    predictor's hard decisions), "target" (the self-supervised targets: an oracle predictor, used to
    set the threshold for a FLOPs target), "static" (the fixed `static_mask`, a static pruning).
    After each forward: `last_logits`, `last_target`, `last_mask` ([B, C] or None: all kept).
    """

    def __init__(self, layer: nn.Module, post: Sequence[nn.Module], threshold: float = 0.9,
                 predictor: bool = True, softmax: bool = True) -> None:
        super().__init__()
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups != 1:
            raise ConfigError(f"ftwt: grouped convolutions are not supported (groups={layer.groups})")
        self.layer = layer
        self.post = nn.Sequential(*post)
        self.in_channels = layer.in_channels if hasattr(layer, "in_channels") else layer.in_features
        self.out_channels = layer.out_channels if hasattr(layer, "out_channels") else layer.out_features
        self.kernel = math.prod(layer.kernel_size) if hasattr(layer, "kernel_size") else 1
        self.predictor = MaskPredictor(self.in_channels, self.out_channels, softmax) if predictor else None
        self.register_buffer("static_mask", torch.ones(self.out_channels))
        self.threshold = float(threshold)
        self.mode = "dense"
        self.skip = False
        self.eval_targets = True   # also compute the targets in eval mode (to measure mask accuracy)
        self._prev: GatedBlock | None = None
        self.last_logits: torch.Tensor | None = None
        self.last_target: torch.Tensor | None = None
        self.last_mask: torch.Tensor | None = None
        self.last_positions = 1  # output positions S of the last forward
        self.last_batch = 1
        self.out_spatial: tuple[int, ...] = ()

    @property
    def prev(self) -> "GatedBlock | None":
        """The block feeding this one through per-channel modules only (its zero channels reach this
        block's input as zeros, so this block may skip them), or None."""
        return self._prev

    def link(self, block: "GatedBlock | None") -> None:
        """Set `prev` (kept as a plain reference: nn.Module would register it as a submodule)."""
        object.__setattr__(self, "_prev", block)

    def _mask(self, out: torch.Tensor) -> torch.Tensor | None:
        if self.mode == "dense":
            return None
        if self.mode == "static":
            return self.static_mask.expand(out.shape[0], -1)
        if self.mode == "target":
            return self.last_target
        return (self.last_logits.detach() > 0).to(out.dtype)   # sigmoid(l) > 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.predictor is not None and self.mode in ("dense", "predicted", "target"):
            self.last_logits = self.predictor(x.detach())
        else:
            self.last_logits = None
        self.last_batch = x.shape[0]
        if self.skip and not self.training and x.shape[0] == 1 and self.mode == "predicted":
            return self._skip_forward(x)
        out = self.post(self.layer(x))
        self.out_spatial = tuple(out.shape[2:])
        self.last_positions = math.prod(out.shape[2:]) if out.dim() > 2 else 1
        need = self.predictor is not None and (self.training or self.mode == "target" or self.eval_targets)
        self.last_target = mass_targets(out, self.threshold) if need else None
        mask = self._mask(out)
        self.last_mask = mask
        if mask is None:
            return out
        return out * mask.view(*mask.shape, *([1] * (out.dim() - 2))).to(out.dtype)

    # -- batch-size-1 inference that computes only the active channels ------------------------
    def _skip_forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = (self.last_logits[0] > 0).nonzero().squeeze(1)
        prev = self.prev.last_mask if self.prev is not None else None
        cin = prev[0].nonzero().squeeze(1) if prev is not None else None
        mask = x.new_zeros(1, self.out_channels)
        mask[0, keep] = 1.0
        self.last_mask, self.last_target = mask, None
        if len(keep) == 0:   # nothing to compute
            return x.new_zeros(1, self.out_channels, *self.out_spatial)
        w = self.layer.weight.index_select(0, keep)
        if cin is not None and len(cin) == 0:   # every input channel is zero: one zero channel stands in
            xin, w = x[:, :1] * 0, w[:, :1] * 0
        elif cin is not None:
            xin, w = x.index_select(1, cin), w.index_select(1, cin)
        else:
            xin = x
        b = None if self.layer.bias is None else self.layer.bias.index_select(0, keep)
        if isinstance(self.layer, nn.Linear):
            y = F.linear(xin, w, b)
        else:
            conv = F.conv1d if isinstance(self.layer, nn.Conv1d) else F.conv2d
            y = conv(xin, w, b, self.layer.stride, self.layer.padding, self.layer.dilation)
        for m in self.post:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                y = F.batch_norm(y, m.running_mean[keep], m.running_var[keep],
                                 None if m.weight is None else m.weight[keep],
                                 None if m.bias is None else m.bias[keep], False, 0.0, m.eps)
            elif isinstance(m, _ACTS) or isinstance(m, nn.Identity):
                y = m(y)
            else:
                raise ConfigError(f"ftwt: skip=True supports BatchNorm or no norm, not {type(m).__name__}")
        out = x.new_zeros(1, self.out_channels, *y.shape[2:])
        out.index_copy_(1, keep, y)
        return out

    def dense_flops(self) -> int:
        """FLOPs of the layer for one input with every channel on (a multiply-add counts 2)."""
        return 2 * self.kernel * self.in_channels * self.out_channels * self.last_positions

    def predictor_flops(self) -> int:
        """FLOPs of the predictor's linear layer for one input (pooling and softmax not counted,
        as FlopCounterMode counts matmuls and convolutions only)."""
        return 2 * self.in_channels * self.out_channels if self.predictor is not None else 0

    def active_out(self, batch: int) -> torch.Tensor:
        """[B] active output channels of the last forward."""
        if self.last_mask is None:
            return torch.full((batch,), float(self.out_channels))
        return self.last_mask.detach().float().sum(1).cpu()

    def extra_repr(self) -> str:
        return f"mode={self.mode}, threshold={self.threshold:g}, predictor={self.predictor is not None}"


# --------------------------------------------------------------------------- the transform

def find_blocks(model: nn.Module) -> list[tuple[int, list[int]]]:
    """(index of the layer, indices of its norm/activation modules) for each [Conv/Linear -> norm
    -> activation] block of `model.features`; raises ConfigError where the model has none."""
    feats = getattr(model, "features", None)
    if not isinstance(feats, nn.Sequential):
        raise ConfigError(f"ftwt needs a model whose `features` is an nn.Sequential of [Conv/Linear -> norm -> "
                          f"activation] blocks (SmallCNN: digits-cnn, mnist1d-cnn, cifar10-cnn; MLP); "
                          f"{type(model).__name__} has none")
    mods = list(feats)
    blocks: list[tuple[int, list[int]]] = []
    for i, m in enumerate(mods):
        if isinstance(m, GatedBlock):
            raise ConfigError("ftwt: the model is already gated")
        if not isinstance(m, _LAYERS):
            continue
        post, j = [], i + 1
        while j < len(mods) and isinstance(mods[j], _NORMS) and not post:
            post.append(j)
            j += 1
        if j < len(mods) and isinstance(mods[j], _ACTS):
            post.append(j)
            blocks.append((i, post))
    if not blocks:
        raise ConfigError(f"ftwt: {type(model).__name__}.features has no [Conv/Linear -> norm -> activation] block")
    return blocks


class DynamicPruning:
    """The gated blocks of one model, their modes, the mask loss and the FLOPs accounting."""

    def __init__(self, model: nn.Module, blocks: list[GatedBlock], dense_flops: int) -> None:
        self.model, self.blocks, self.dense_total = model, blocks, int(dense_flops)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"ftwt: mode must be one of {', '.join(MODES)}, got {mode!r}")
        for b in self.blocks:
            if mode in ("predicted", "target") and b.predictor is None:
                continue    # a block without a predictor is never masked by predictions
            b.mode = mode

    def set_threshold(self, threshold: float) -> None:
        for b in self.blocks:
            b.threshold = float(threshold)

    def predictors(self) -> list[nn.Parameter]:
        return [p for b in self.blocks if b.predictor is not None for p in b.predictor.parameters()]

    def mask_loss(self, weight: float = 1.0) -> torch.Tensor:
        """BCE with logits of the last forward's predictions against its targets: mean over the
        batch, sum over channels, mean over gated layers, times `weight`."""
        terms = [F.binary_cross_entropy_with_logits(b.last_logits, b.last_target, reduction="none").mean(0).sum()
                 for b in self.blocks if b.predictor is not None and b.last_logits is not None
                 and b.last_target is not None]
        if not terms:
            raise ConfigError("ftwt: no predictions recorded; run a forward pass first")
        return weight * torch.stack(terms).mean()

    def flops(self) -> torch.Tensor:
        """[B] FLOPs of the last forward, per input: the dense network's, with each gated layer's
        cost replaced by its cost on the active channels, plus the predictors (when they ran)."""
        batch = self.blocks[0].last_batch
        total = torch.full((batch,), float(self.dense_total))
        for b in self.blocks:
            a_out = b.active_out(batch)
            a_in = b.prev.active_out(batch) if b.prev is not None else torch.full((batch,), float(b.in_channels))
            total += 2.0 * b.kernel * a_in * a_out * b.last_positions - b.dense_flops()
            if b.last_logits is not None and b.mode == "predicted":
                total += b.predictor_flops()
        return total

    def flops_ratio(self) -> torch.Tensor:
        """[B] per-input FLOPs of the last forward over the dense network's FLOPs."""
        return self.flops() / self.dense_total

    def active_fraction(self) -> float:
        """Mean fraction of output channels kept over the gated layers and inputs of the last forward."""
        fr = [float(b.last_mask.float().mean()) for b in self.blocks if b.last_mask is not None]
        return sum(fr) / len(fr) if fr else 1.0

    def parameter_overhead(self) -> float:
        """Predictor parameters over the model's other parameters."""
        pred = sum(p.numel() for p in self.predictors())
        total = sum(p.numel() for p in self.model.parameters())
        return pred / max(1, total - pred)

    @torch.no_grad()
    def measure(self, x: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
        """Eval-mode mean FLOPs ratio and active fraction over the inputs `x` (the model's mode restored)."""
        was = self.model.training
        self.model.eval()
        ratios, active = [], []
        try:
            for i in range(0, len(x), batch_size):
                self.model(x[i:i + batch_size])
                ratios.append(self.flops_ratio())
                active.append(self.active_fraction() * len(x[i:i + batch_size]))
        finally:
            self.model.train(was)
        return {"flops_ratio": float(torch.cat(ratios).mean()), "active_fraction": sum(active) / len(x)}


def apply_ftwt(model: nn.Module, example_input: torch.Tensor, threshold: float = 0.9,
               layers: str | Sequence[int] = "all", predictors: bool = True, softmax: bool = True) -> DynamicPruning:
    """Replace each [Conv/Linear -> norm -> activation] block of `model.features` by a GatedBlock
    (in place); `layers`: "all" or indices into the found blocks to give a predictor (the others
    are wrapped but never masked). The dense FLOPs are counted on `example_input[:1]` first."""
    from trainlab.techniques.pruning.accounting import count_flops

    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"ftwt: threshold must be a mass fraction in (0, 1] (or negative: keep all), got {threshold}")
    found = find_blocks(model)
    if layers == "all":
        chosen = set(range(len(found)))
    elif isinstance(layers, (list, tuple)) and all(isinstance(i, int) for i in layers):
        bad = [i for i in layers if not 0 <= i < len(found)]
        if bad or not layers:
            raise ConfigError(f"ftwt: layers must index the model's {len(found)} blocks (0..{len(found) - 1}), "
                              f"got {list(layers)}")
        chosen = set(layers)
    else:
        raise ConfigError(f"ftwt: layers must be 'all' or a list of block indices, got {layers!r}")
    dense = count_flops(model, example_input[:1])
    feats: nn.Sequential = model.features  # type: ignore[assignment]
    mods = list(feats)
    new: list[nn.Module] = []
    blocks: list[GatedBlock] = []
    starts = {i: post for i, post in found}
    skip_to = -1
    prev: GatedBlock | None = None
    chain = False   # whether only per-channel modules lie between `prev` and the next block
    for i, m in enumerate(mods):
        if i <= skip_to:
            continue
        if i in starts:
            post = starts[i]
            block = GatedBlock(m, [mods[j] for j in post], threshold, predictor=len(blocks) in chosen,
                               softmax=softmax)
            block.link(prev if chain else None)
            blocks.append(block)
            new.append(block)
            prev, chain, skip_to = block, True, post[-1]
        else:
            new.append(m)
            if not isinstance(m, _PER_CHANNEL):
                chain = False
    model.features = nn.Sequential(*new)
    with torch.no_grad():   # record each block's output positions
        was = model.training
        model.eval()
        model(example_input[:1])
        model.train(was)
    return DynamicPruning(model, blocks, dense)


# ------------------------------------------------------------------------- FLOPs targets

@torch.no_grad()
def threshold_for_flops(dp: DynamicPruning, x: torch.Tensor, target: float, iters: int = 20) -> float:
    """The largest mass threshold whose targets, applied as masks (an oracle predictor), give a mean
    FLOPs ratio (predictors included) of at most `target` on inputs `x` (bisection on [0, 1])."""
    modes = {b: b.mode for b in dp.blocks}
    old = dp.blocks[0].threshold

    def ratio(t: float) -> float:
        dp.set_threshold(t)
        for b in dp.blocks:
            if b.predictor is not None:
                b.mode = "target"
        r = dp.measure(x)["flops_ratio"]
        # the oracle's cost plus what the predictors will cost
        return r + sum(b.predictor_flops() for b in dp.blocks) / dp.dense_total

    try:
        if ratio(1.0) <= target:
            return 1.0
        lo, hi = 0.0, 1.0
        for _ in range(iters):
            mid = (lo + hi) / 2
            if ratio(mid) <= target:
                lo = mid
            else:
                hi = mid
        return lo
    finally:
        dp.set_threshold(old)
        for b, m in modes.items():
            b.mode = m


def filter_norms(block: GatedBlock) -> torch.Tensor:
    """L1 norm of each output filter of the block's layer (Li et al. 2017's ranking)."""
    return block.layer.weight.detach().abs().flatten(1).sum(1)


def uniform_keep_counts(dp: DynamicPruning, target: float, iters: int = 30) -> list[int]:
    """Per block, how many output channels to keep: one fraction q for every block (at least one
    channel each), the largest q whose static FLOPs ratio is at most `target`."""

    def counts(q: float) -> list[int]:
        return [max(1, min(b.out_channels, int(round(q * b.out_channels)))) for b in dp.blocks]

    def ratio(keep: list[int]) -> float:
        total = float(dp.dense_total)
        kept = dict(zip(dp.blocks, keep))
        for b in dp.blocks:
            a_in = kept[b.prev] if b.prev is not None else b.in_channels
            total += 2.0 * b.kernel * a_in * kept[b] * b.last_positions - b.dense_flops()
        return total / dp.dense_total

    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if ratio(counts(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return counts(lo)


def static_flops_ratio(dp: DynamicPruning) -> float:
    """FLOPs ratio of the blocks' static masks (no predictors)."""
    total = float(dp.dense_total)
    for b in dp.blocks:
        a_out = float(b.static_mask.sum())
        a_in = float(b.prev.static_mask.sum()) if b.prev is not None else b.in_channels
        total += 2.0 * b.kernel * a_in * a_out * b.last_positions - b.dense_flops()
    return total / dp.dense_total


# ------------------------------------------------------------------------------ techniques

def _fraction(name: str, key: str, value: Any, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < value <= 1.0 if low_open
                                                                              else 0.0 <= value < 1.0):
        raise ConfigError(f"{name}: {key} must be a fraction in {'(0, 1]' if low_open else '[0, 1)'}, got {value!r}")
    return float(value)


class _Phased(Technique):
    """Shared schedule: train dense for the first `start` of the epochs (standing in for the paper's
    pretrained model), then switch to the pruned network for the rest of the budget."""

    family = "compression"
    modifies = frozenset({"model"})

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.dp: DynamicPruning | None = None
        self.switch_epoch = 0

    @classmethod
    def check_applicable(cls, task: Any, data: Any, model: nn.Module | None) -> str | None:
        if model is None:
            return None
        try:
            find_blocks(model)
        except ConfigError as e:
            return str(e).removeprefix("ftwt: ").removeprefix("ftwt ")
        return None

    def on_train_start(self, model: nn.Module, optimizer: Any, state: TrainState) -> None:
        self.switch_epoch = int(round(self.start * state.epochs))

    def _switching(self, state: TrainState) -> bool:
        """True at the end of the last dense epoch (the pruned phase starts with the next epoch)."""
        return state.epoch + 1 == self.switch_epoch

    def _subset(self, state: TrainState, n: int = 1024) -> torch.Tensor:
        return state.data.train_x[:n].to(state.device)


@register
class FTWT(_Phased):
    """Per-input channel masks from small predictors trained on self-supervised mass targets."""

    name = "ftwt"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the pretrained dense model is stood in for by the first `start` fraction of the run (dense training, "
        "predictors already learning their targets, no mask applied), then masks are applied for the rest of the "
        "same budget; the paper fine-tunes a pretrained model for 200 epochs with masks from randomly initialized "
        "predictors",
        "the predictors train with the task's optimizer, learning rate and weight decay; the official code gives "
        "them their own SGD (lr 0.1, momentum 0.9, no weight decay)",
        "with target_flops set, the mass threshold is chosen at the switch by bisection so that the dense model's "
        "targets, applied as masks, cost target_flops of the dense FLOPs (predictors included); the paper picks r "
        "by hand and reports the FLOPs it reaches",
        "FLOPs count the predictors' linear layers and count the head dense; the official code counts the masked "
        "convolutions only",
    )
    version = 1
    summary = "dynamic pruning: per-input channel masks from predictors trained on self-supervised targets"

    def __init__(self, threshold: float | None = None, target_flops: float | None = 0.5, weight: float = 1.0,
                 layers: str | list[int] = "all", start: float = 0.5, freeze_at: float = 0.75,
                 softmax: bool = True) -> None:
        super().__init__(threshold=threshold, target_flops=target_flops, weight=weight, layers=layers, start=start,
                         freeze_at=freeze_at, softmax=softmax)
        self.softmax = bool(softmax)
        if (threshold is None) == (target_flops is None):
            raise ConfigError("ftwt: give exactly one of threshold (the mass fraction r) and target_flops")
        if threshold is not None:
            threshold = _fraction("ftwt", "threshold", threshold)
        if target_flops is not None:
            target_flops = _fraction("ftwt", "target_flops", target_flops)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"ftwt: weight must be a number >= 0, got {weight!r}")
        self.threshold, self.target_flops, self.weight = threshold, target_flops, float(weight)
        self.layers = layers
        self.start = _fraction("ftwt", "start", start, low_open=False)
        self.freeze_at = _fraction("ftwt", "freeze_at", freeze_at)
        if self.freeze_at <= self.start:
            raise ConfigError(f"ftwt: freeze_at ({freeze_at}) must come after start ({start})")
        self.chosen_threshold = threshold if threshold is not None else 1.0
        self.frozen = False

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        from trainlab.techniques.pruning.hesso import example_input

        self.dp = apply_ftwt(model, example_input(task), self.chosen_threshold, self.layers, softmax=self.softmax)
        return model

    def on_train_start(self, model: nn.Module, optimizer: Any, state: TrainState) -> None:
        super().on_train_start(model, optimizer, state)
        self.freeze_epoch = int(round(self.freeze_at * state.epochs))
        if self.switch_epoch == 0:
            self._switch(state)

    def _switch(self, state: TrainState) -> None:
        if self.target_flops is not None:
            self.chosen_threshold = threshold_for_flops(self.dp, self._subset(state), self.target_flops)
        self.dp.set_threshold(self.chosen_threshold)
        self.dp.set_mode("predicted")

    def loss(self, outputs: torch.Tensor, batch: Any, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        if self.frozen or self.weight == 0:
            return base_loss
        return base_loss + self.dp.mask_loss(self.weight)

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self._switching(state):
            self._switch(state)
        if state.epoch + 1 == self.freeze_epoch and not self.frozen:
            # the official "cooldown": the mask loss stops; the predictors stay as they are
            for p in self.dp.predictors():
                p.requires_grad_(False)
            self.frozen = True
        if state.epoch + 1 >= self.switch_epoch:
            m = self.dp.measure(state.data.test_x.to(state.device))
            state.epoch_metrics.update(flops_ratio=m["flops_ratio"], active_fraction=m["active_fraction"])
        state.epoch_metrics["mass_threshold"] = self.chosen_threshold

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.chosen_threshold, "frozen": self.frozen,
                "mode": self.dp.blocks[0].mode if self.dp else "dense"}

    def load_state_dict(self, state: Any) -> None:
        self.chosen_threshold = float(state.get("threshold", self.chosen_threshold))
        if self.dp is not None:
            self.dp.set_threshold(self.chosen_threshold)
            if state.get("mode") == "predicted":
                self.dp.set_mode("predicted")
            if state.get("frozen"):
                for p in self.dp.predictors():
                    p.requires_grad_(False)
                self.frozen = True


@register
class UniformChannelPrune(_Phased):
    """Static control at a FLOPs budget: the same schedule as ftwt, but at the switch every block keeps
    the same fraction of its filters (largest L1 norms), fixed for all inputs."""

    name = "uniform-channel-prune"
    fidelity = "control"
    summary = "control: static L1 filter pruning, one keep fraction for every layer, set for a FLOPs ratio"

    def __init__(self, flops_ratio: float = 0.5, start: float = 0.5) -> None:
        super().__init__(flops_ratio=flops_ratio, start=start)
        self.target = _fraction("uniform-channel-prune", "flops_ratio", flops_ratio)
        self.start = _fraction("uniform-channel-prune", "start", start, low_open=False)

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        from trainlab.techniques.pruning.hesso import example_input

        self.dp = apply_ftwt(model, example_input(task), predictors=False)
        return model

    def on_train_start(self, model: nn.Module, optimizer: Any, state: TrainState) -> None:
        super().on_train_start(model, optimizer, state)
        if self.switch_epoch == 0:
            self._switch()

    def _switch(self) -> None:
        keep = uniform_keep_counts(self.dp, self.target)
        for b, k in zip(self.dp.blocks, keep):
            mask = torch.zeros(b.out_channels, device=b.static_mask.device)
            mask[filter_norms(b).topk(k).indices] = 1.0
            b.static_mask.copy_(mask)
        self.dp.set_mode("static")

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self._switching(state):
            self._switch()
        if state.epoch + 1 >= self.switch_epoch:
            state.epoch_metrics["flops_ratio"] = static_flops_ratio(self.dp)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.dp.blocks[0].mode if self.dp else "dense"}

    def load_state_dict(self, state: Any) -> None:
        if self.dp is not None and state.get("mode") == "static":
            self.dp.set_mode("static")


# ---------------------------------------------------------------------------------- claims

_QUOTE = ("On CIFAR, we reach similar accuracy to SOTA methods with 15% and 24% higher FLOPs reduction. Similarly "
          "in ImageNet, we achieve lower drop in accuracy with up to 13% improvement in FLOPs reduction.")
_SETTING = PaperSetting(train_size=50_000, epochs=200, params=14_700_000,
                        text="CIFAR-10/100 (VGG16-BN 14.7M, ResNet-56, MobileNet) and ImageNet (ResNet-18/34), "
                             "200 epochs of fine-tuning from a pretrained model, predictor lr 0.1")
#: Matching rule, fixed before any claim ran. softmax off (the official --softmax 0): with BatchNorm networks the
#: softmax of the pooled channels is close to uniform, and in seed 0 with softmax on every predictor gave one mask
#: for all inputs. ftwt's oracle FLOPs target is the one of 0.5, 0.4, 0.3, 0.2, 0.1 whose achieved mean FLOPs on
#: calibration seed 100 (not a claim seed) is closest to half the dense FLOPs (the paper's regime: >= 50%
#: reduction); the static arm's FLOPs ratio is the mean achieved on seeds 100 and 101. Only FLOPs were read.
#: Measured (target -> achieved on seed 100 [, 101]): digits-cnn 0.5 -> 0.921, 0.3 -> 0.496, 0.512;
#: mnist1d-cnn 0.4 -> 0.787, 0.3 -> 0.725, 0.2 -> 0.591, 0.1 -> 0.451, 0.414.
_TARGET = {"digits-cnn": 0.3, "mnist1d-cnn": 0.1}
_STATIC_RATIO = {"digits-cnn": 0.50, "mnist1d-cnn": 0.43}
_CALIBRATION = {"digits-cnn": "oracle target 0.5 -> 0.921 reached, 0.3 -> 0.496 and 0.512 (seeds 100, 101)",
                "mnist1d-cnn": "oracle target 0.4 -> 0.787, 0.3 -> 0.725, 0.2 -> 0.591, 0.1 -> 0.451 and 0.414"}
_TOLERANCE = 0.03


def _matched(task: str) -> tuple[Precondition, ...]:
    ratio = _STATIC_RATIO[task]
    return (Precondition("flops_ratio", "<=", ratio + _TOLERANCE, arm="treatment",
                         why=f"equal FLOPs: ftwt's mean per-input FLOPs (predictors included) within {_TOLERANCE} of "
                             f"the static arm's {ratio}"),)


def _claims(task: str, dense_acc_note: str) -> list[Claim]:
    ratio = _STATIC_RATIO[task]
    static = arm(("uniform-channel-prune", {"flops_ratio": ratio}),
                 label=f"static L1 filter pruning, same keep fraction per layer, FLOPs {ratio}")
    treatment = arm(("ftwt", {"target_flops": _TARGET[task], "softmax": False}),
                    label=f"ftwt (r set by the oracle for {_TARGET[task]} of the FLOPs, softmax off)")
    common = dict(technique="ftwt", task=task, metric="test_acc", direction="higher", treatment=treatment, seeds=5,
                  suites=("full",), paper_quote=_QUOTE, paper_setting=_SETTING,
                  paper_scale="CIFAR-10/100 and ImageNet, VGG/ResNet/MobileNet")
    rule = (f"Matching rule, fixed before any claim ran and reading FLOPs only: at the switch ftwt's mass threshold "
            f"r is the largest whose targets, applied as masks on the dense network (an oracle predictor), cost "
            f"{_TARGET[task]} of the dense FLOPs; that oracle target was picked from 0.5/0.4/0.3/0.2/0.1 as the one "
            f"whose "
            f"REACHED FLOPs on calibration seed 100 lay closest to 0.5 ({_CALIBRATION[task]}), since the predictors "
            f"keep more channels than their targets; the static arm is set to the mean reached on seeds 100 and 101 "
            f"({ratio}); the precondition checks the claim's seeds. Both arms train dense for the first half of the "
            f"budget (standing in for the paper's pretrained model) and pruned for the second half. While the "
            f"implementation was debugged (before this rule), single ftwt runs on seeds 0 and 100 were seen with their "
            f"test accuracy; one static run per task (seed 0, at a FLOPs level from a count that missed the "
            f"input-channel savings) was seen, none at the matched FLOPs. A first launch of the digits claim (static "
            f"at 0.65, from a calibration whose FLOPs count missed the input-channel savings) was stopped after "
            f"3 static and 2 ftwt seeds; its runs were discarded. ")
    return [
        Claim(id=f"ftwt-vs-static-{task}", baseline=static, preconditions=_matched(task),
              paper_number="abstract: similar accuracy to SOTA (static and dynamic) pruning methods at 15% and 24% "
                           "higher FLOPs reduction on CIFAR (the per-table numbers were not read here)",
              notes=rule + "The paper's predictors are trained for 200 epochs; here for the second half of "
                    f"{task}'s short budget with the task's optimizer, so their masks are less accurate than the "
                    "paper's and "
                    "keep more channels than their targets. " + dense_acc_note,
              **common),
        Claim(id=f"ftwt-near-dense-{task}", margin=0.01, preconditions=_matched(task),
              paper_number="abstract: a small accuracy drop from the dense model at the FLOPs reductions of its "
                           "CIFAR and ImageNet tables (the per-table numbers were not read here)",
              notes="Non-inferiority to the dense network trained for the same budget (margin 1 point of test "
                    "accuracy), at the FLOPs ftwt reaches (the precondition). " + rule + dense_acc_note,
              **common),
    ]


CLAIMS = [
    *_claims("digits-cnn", "The dense digits CNN is near its ceiling (99.4% on seed 0), so differences are small."),
    *_claims("mnist1d-cnn", "MNIST-1D's dense CNN reaches about 97% (seed 0), leaving room for a pruning cost."),
]
