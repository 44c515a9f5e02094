"""Training only the normalization layers' affine parameters of a randomly initialized network.

Paper: Jonathan Frankle, David J. Schwab, Ari S. Morcos, "Training BatchNorm and Only BatchNorm:
On the Expressive Power of Random Features in CNNs", ICLR 2021, arXiv:2003.00152.

Claim: with every other weight frozen at its random initialization (output layer included),
training only BatchNorm's per-channel scale gamma and shift beta reaches accuracy "far above
chance", and far above a control that trains the same number of randomly chosen parameters
(the paper's control: two random parameters per channel), e.g. 82% on CIFAR-10 for sufficiently
deep ResNets (abstract).
Paper scale: CIFAR-10 ResNets of depth 14-866 and wide ResNets, ImageNet ResNet-50/101/200;
160 epochs (CIFAR-10). Deep and wide networks, with many BatchNorm parameters, do best.
Where this falls short: here the network is a 2-3 layer CNN on digits or a CIFAR-10 subset, trained
for a few epochs, so the number of BatchNorm parameters (and the accuracy they can reach) is much
smaller. The control here draws its parameters uniformly over all non-normalization weights
(elementwise), not two per channel as in the paper.

`freeze_all_but_norm(model)` sets requires_grad=False on everything but the normalization layers'
affine parameters and returns how many elements stay trainable. The control,
`train_random_subset(model, count, generator)`, freezes the normalization parameters and lets
exactly `count` randomly chosen weight elements train: their gradients are masked, and
`RandomSubsetMask.restore()` puts every frozen element back after a step, so weight decay or
momentum cannot move them either.

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.bn_only import freeze_all_but_norm, train_random_subset

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))
    n = freeze_all_but_norm(model)                       # 16 = 8 gammas + 8 betas
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

    control = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    mask = train_random_subset(control, count=5, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(control.parameters(), lr=0.1, weight_decay=1e-4)
    control(torch.randn(3, 4)).sum().backward(); opt.step(); mask.restore()   # 5 elements moved
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper(
    "Training BatchNorm and Only BatchNorm: On the Expressive Power of Random Features in CNNs",
    "Frankle, Schwab, Morcos", 2021, "2003.00152",
)

#: module types whose affine parameters count as "normalization parameters"
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def is_norm_layer(module: nn.Module) -> bool:
    """BatchNorm/InstanceNorm (any dims), GroupNorm, LayerNorm, RMSNorm; a module that declares
    itself a normalization layer with a class attribute `is_normalization = True`; or a leaf-like
    module whose class name contains "Norm" (e.g. EvoNorm, PowerNorm) and has no child modules
    holding parameters."""
    if isinstance(module, NORM_TYPES) or getattr(type(module), "is_normalization", False):
        return True
    if "Norm" in type(module).__name__:
        return not any(True for child in module.children() for _ in child.parameters())
    return False


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters owned directly by normalization layers (their affine scale and shift)."""
    params, seen = [], set()
    for module in model.modules():
        if is_norm_layer(module):
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def norm_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in norm_parameters(model))


def freeze_all_but_norm(model: nn.Module, train_output_layer: bool = False) -> int:
    """Freeze every parameter except the normalization layers' affine ones; return the number of
    trainable elements. train_output_layer: also train the last nn.Linear (a variant in the paper,
    Sec. 5; off by default as in its main experiments)."""
    keep = {id(p) for p in norm_parameters(model)}
    if train_output_layer:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears:
            keep |= {id(p) for p in linears[-1].parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class RandomSubsetMask:
    """Which elements of each parameter may change; masks gradients and restores the rest.

    `masks[name]` is a bool tensor like the parameter (True = trainable). Gradient hooks zero the
    frozen elements' gradients; `restore()` copies the frozen elements back from their initial
    values (call it after each optimizer step: decoupled weight decay and momentum act on them
    otherwise).
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.masks = masks
        params = dict(model.named_parameters())
        self.initial = {n: params[n].detach().clone() for n in masks}
        self._hooks = [params[n].register_hook(self._gradient_mask(m)) for n, m in masks.items()]

    @staticmethod
    def _gradient_mask(mask: torch.Tensor):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * mask.to(grad.dtype)
        return hook

    @property
    def count(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @torch.no_grad()
    def restore(self) -> None:
        params = dict(self.model.named_parameters())
        for n, m in self.masks.items():
            p = params[n]
            p.copy_(torch.where(m.to(p.device), p, self.initial[n].to(p.device)))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {n: m.clone() for n, m in self.masks.items()},
                "initial": {n: v.clone() for n, v in self.initial.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["masks"]) != set(self.masks):
            raise ConfigError("random-subset: saved masks belong to another model")
        for n in self.masks:
            self.masks[n].copy_(state["masks"][n])
            self.initial[n].copy_(state["initial"][n])


def train_random_subset(model: nn.Module, count: int, generator: torch.Generator | None = None) -> RandomSubsetMask:
    """Make exactly `count` elements, drawn uniformly without replacement from all parameters that
    are not normalization parameters, the only ones that train. Normalization parameters are
    frozen (requires_grad=False) at their initial values; the other parameters keep
    requires_grad=True (so optimizers include them) with masked gradients."""
    norm_ids = {id(p) for p in norm_parameters(model)}
    candidates = [(n, p) for n, p in model.named_parameters() if id(p) not in norm_ids]
    total = sum(p.numel() for _, p in candidates)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= total:
        raise ConfigError(f"random-subset: count must be an integer in [0, {total}], got {count!r}")
    for p in model.parameters():
        p.requires_grad_(id(p) not in norm_ids)
    chosen = torch.randperm(total, generator=generator)[:count]
    flat = torch.zeros(total, dtype=torch.bool)
    flat[chosen] = True
    masks, offset = {}, 0
    for n, p in candidates:
        masks[n] = flat[offset:offset + p.numel()].view_as(p).to(p.device)
        offset += p.numel()
    return RandomSubsetMask(model, masks)


@register
class BNOnly(Technique):
    """Train only the normalization layers' scale and shift; everything else stays at its init."""

    name = "bn-only"
    family = "normalization"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the normalization parameters keep the model's own initialization (PyTorch: gamma = 1, beta = 0); the "
        "authors' code (facebookresearch/open_lth, default batchnorm_init='uniform') draws gamma from U[0, 1] and "
        "the other weights from a Kaiming normal",
        "every normalization layer's affine parameters train (BatchNorm, GroupNorm, LayerNorm, ...), not only "
        "BatchNorm2d's; the same for the BatchNorm models of the claims here",
    )
    modifies = frozenset({"weights"})
    summary = "freeze all weights at init; train only BatchNorm's gamma and beta"
    requires = frozenset({"norm_layers"})

    def __init__(self, train_output_layer: bool = False) -> None:
        super().__init__(train_output_layer=train_output_layer)
        self.train_output_layer = bool(train_output_layer)
        self.trainable = 0

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        if not norm_parameters(model):
            raise ConfigError("bn-only: the model has no normalization layer with affine parameters")
        self.trainable = freeze_all_but_norm(model, self.train_output_layer)
        return model

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        state.epoch_metrics["trainable_elements"] = float(self.trainable)


@register
class RandomSubset(Technique):
    """Control for bn-only: train `count` randomly chosen weight elements (default: as many as the
    model has normalization parameters), freeze everything else at its init."""

    name = "random-subset"
    family = "normalization"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the trainable elements are drawn uniformly over all non-normalization weights; the paper's control "
        "trains two random parameters per channel",
        "initialization as in bn-only: the model's own, not the authors' Kaiming normal / U[0, 1] gamma",
    )
    modifies = frozenset({"weights", "gradients"})
    order = 90  # mask gradients after other gradient hooks; restore after other projections
    summary = "control: train as many random weights as bn-only trains normalization parameters"

    def __init__(self, count: int | None = None) -> None:
        super().__init__(count=count)
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise ConfigError(f"random-subset: count must be a non-negative integer, got {count!r}")
        self.count = count
        self.mask: RandomSubsetMask | None = None
        self._pending: Mapping[str, Any] | None = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        # freeze the norm parameters now, before the optimizer is built; choose elements at train start
        norm_ids = {id(p) for p in norm_parameters(model)}
        if self.count is None and not norm_ids:
            raise ConfigError("random-subset: no normalization parameters to match; give count explicitly")
        for p in model.parameters():
            p.requires_grad_(id(p) not in norm_ids)
        return model

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        count = self.count if self.count is not None else norm_parameter_count(model)
        self.mask = train_random_subset(model, count, state.generator)
        if self._pending is not None:
            self.mask.load_state_dict(self._pending)
            self._pending = None

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        if self.mask is not None:
            self.mask.restore()

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self.mask is not None:
            state.epoch_metrics["trainable_elements"] = float(self.mask.count)

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        if self.mask is not None:
            self.mask.remove()

    def state_dict(self) -> dict[str, Any]:
        return self.mask.state_dict() if self.mask is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if self.mask is None:  # loaded before on_train_start: apply once the masks exist
            self._pending = state
        else:
            self.mask.load_state_dict(state)


_WIDE = {"model_kwargs": {"channels": (128, 256)}}
#: cifar10-cnn at twice its width (64, 128, 256): 896 BatchNorm parameters; lr 0.5 as for digits
_WIDE_CIFAR = {"model_kwargs": {"channels": (64, 128, 256)}, "lr": 0.5}
_QUOTE = ("\"sufficiently deep ResNets reach 82% (CIFAR-10) and 32% (ImageNet, top-5) accuracy in this configuration, "
          "far higher than when training an equivalent number of randomly chosen parameters elsewhere in the "
          "network\" (abstract)")
_SETTING = PaperSetting(
    train_size=50_000, epochs=160, params=13_900_000,
    text="CIFAR-10, ResNet-866 (the 82% figure; 144 residual blocks per stage of width 16-32-64: about 13.9M weights, "
         "counted from that layout, of which about 65K are BatchNorm's), SGD for 160 epochs; ResNets of depth 14-866 "
         "and wide ResNets on CIFAR-10, ResNet-50/101/200 on ImageNet")
# No preconditions: the paper's claim is about what training the affine parameters alone can express, in any
# BatchNorm CNN; it names no regime of the baseline (deep and wide networks only raise the accuracy reached).

CLAIMS = [
    Claim(
        id="bn-only-vs-random-digits", technique="bn-only", task="digits-cnn", metric="test_acc", direction="higher",
        treatment=arm("bn-only", label="train BatchNorm only"),
        baseline=arm("random-subset", label="train as many random weights"),
        overrides={**_WIDE, "lr": 0.5},
        paper_quote=_QUOTE,
        paper_number="CIFAR-10: 82% for deep ResNets with BatchNorm only; equal-count random parameters far lower",
        paper_scale="CIFAR-10 ResNet-14..866, WRNs; ImageNet ResNet-50..200", paper_setting=_SETTING,
        seeds=5, suites=("quick", "full"),
        notes="digits-cnn widened to channels (128, 256): 768 BatchNorm parameters out of ~300k; lr 0.5 "
              "(both arms), 15 epochs.",
    ),
    Claim(
        id="bn-only-above-init-cifar10", technique="bn-only", task="cifar10-cnn", metric="test_acc", direction="higher",
        treatment=arm("bn-only", label="train BatchNorm only"),
        baseline=arm(("random-subset", {"count": 0}), label="train nothing (random features at init)"),
        overrides=_WIDE_CIFAR,
        paper_quote=_QUOTE, paper_number="CIFAR-10: far above chance (10%); 82% for ResNet-866 (abstract)",
        paper_scale="CIFAR-10 ResNet-14..866, WRNs; ImageNet ResNet-50..200", paper_setting=_SETTING,
        min_effect=0.15, seeds=3, suites=("full",),
        notes="'Far above chance' as: at least 15 points above the same untrained random network.",
        allow_collapse=("baseline",),  # the untrained network is expected to sit at chance
    ),
    Claim(
        id="bn-only-vs-random-cifar10", technique="bn-only", task="cifar10-cnn", metric="test_acc", direction="higher",
        treatment=arm("bn-only", label="train BatchNorm only"),
        baseline=arm("random-subset", label="train as many random weights"),
        overrides=_WIDE_CIFAR,
        paper_quote=_QUOTE,
        paper_number="CIFAR-10: 82% for deep ResNets with BatchNorm only; equal-count random parameters far lower",
        paper_scale="CIFAR-10 ResNet-14..866, WRNs; ImageNet ResNet-50..200", paper_setting=_SETTING,
        seeds=3, suites=("full",),
    ),
]
