"""Adapters: a frozen pretrained network plus a small trained update of its weights.

Shared machinery of the adapter techniques (lora.py, lora_xs.py, lora_sb.py, flora.py), which
differ only in how they parametrize the update Delta W of one weight:

    LoRA      Delta W = (alpha / r) B A                       (Hu et al. 2021, arXiv:2106.09685)
    LoRA-XS   Delta W = (alpha / r) B R A, B A from SVD(W)    (Balazy et al. 2024, arXiv:2405.17604)
    LoRA-SB   Delta W = B R A, B R A = SVD_r(first update)    (Ponkshe et al. 2024, arXiv:2411.19557)
    FLoRA     Delta W = s G x1 U1 x2 U2 x3 U3 x4 U4           (Si et al. 2024, arXiv:2405.14739)

* `DeltaWeight`: a module whose forward() returns Delta W (the shape of the base weight). Its
  trained tensors are parameters, its frozen factors buffers.
* `Adapted`: wraps an nn.Linear or nn.Conv2d; forward uses W + Delta W with the base layer's own
  bias, stride and padding, so the merged layer (W <- W + Delta W) computes the same function.
* `apply_adapters(model, make_delta, targets)`: freezes every parameter of the model, then wraps
  the target layers; only the DeltaWeights' parameters train. `merge_adapters(model)` folds the
  updates into plain layers (no extra inference cost). `unmerged_base(model)` gives the frozen
  network back.
* `save_adapters(path, model)` / `load_adapters(path, base_model)`: the adapter file holds only
  the update tensors (what the method cannot recompute from the base weights) and rebuilds the
  adapted model on a copy of the base network.
* `AdapterTechnique`: the Trainer form (prepare wraps the model; logs `trainable_params`).
* Transfer tasks (`digits-transfer-mlp`, `digits-transfer-cnn`): the base network is pretrained on
  digits 0-4 inside make_model (deterministic per seed, about a second), the data are digits 5-9
  relabelled 0-4, and `test_base_acc` is the frozen base's accuracy on the target test set.

Plain PyTorch::

    import torch
    from trainlab.techniques.compression.adapters import apply_adapters, merge_adapters, trainable_count
    from trainlab.techniques.compression.lora import LoRADelta

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    apply_adapters(model, lambda layer: LoRADelta.build(layer, rank=4, alpha=8.0))
    print(trainable_count(model))                        # 4 * (64 + 32) + 4 * (32 + 5)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(torch.randn(8, 64)).logsumexp(1).mean(); loss.backward(); opt.step()
    merged = merge_adapters(model)                       # plain Linear layers again
"""
from __future__ import annotations

import copy
import functools
import importlib
import os
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.errors import CheckpointError, ConfigError
from trainlab.training.technique import Technique, TrainState

#: the modules that define each adapter method's DeltaWeight (imported when a file is loaded)
DELTA_MODULES = {
    "lora": "trainlab.techniques.compression.lora",
    "lora-xs": "trainlab.techniques.compression.lora_xs",
    "lora-sb": "trainlab.techniques.compression.lora_sb",
    "flora": "trainlab.techniques.compression.flora",
}
TARGETS = ("linear", "conv", "all")
_DELTAS: dict[str, type["DeltaWeight"]] = {}


class DeltaWeight(nn.Module):
    """The update Delta W of one weight. Subclasses set `method`, implement `build` (the structure
    and initialization for a layer) and forward() (Delta W, shaped like the layer's weight)."""

    method: ClassVar[str] = ""
    #: tensors the adapter file stores; None = all parameters and buffers
    stored: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, weight_shape: Iterable[int], settings: Mapping[str, Any]) -> None:
        super().__init__()
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.settings = dict(settings)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            _DELTAS[cls.method] = cls

    @classmethod
    def build(cls, layer: nn.Module, **settings: Any) -> "DeltaWeight":  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def check_settings(cls, **settings: Any) -> None:
        """Raise ConfigError for settings a user got wrong (before any model is built)."""

    def forward(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def stored_tensors(self) -> dict[str, Tensor]:
        """The tensors an adapter file keeps for this layer."""
        tensors = dict(self.named_parameters()) | dict(self.named_buffers())
        keep = self.stored if self.stored is not None else tuple(tensors)
        return {k: tensors[k].detach() for k in keep}


def delta_class(method: str) -> type[DeltaWeight]:
    """The DeltaWeight class of an adapter method ("lora", "lora-xs", "lora-sb", "flora")."""
    if method not in _DELTAS and method in DELTA_MODULES:
        importlib.import_module(DELTA_MODULES[method])
    if method not in _DELTAS:
        raise ConfigError(f"unknown adapter method '{method}' (known: {', '.join(DELTA_MODULES)})")
    return _DELTAS[method]


def matrix_shape(layer: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of a layer's weight as a matrix: a conv kernel [out, in, kh, kw] is read as
    [out, in * kh * kw], the usual way matrix adapters treat convolutions."""
    w = layer.weight
    return int(w.shape[0]), int(w[0].numel())


class Adapted(nn.Module):
    """A frozen nn.Linear or nn.Conv2d (`base`) whose weight is W + Delta W (`delta`)."""

    def __init__(self, base: nn.Module, delta: DeltaWeight) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise ConfigError(f"adapters wrap nn.Linear and nn.Conv2d layers, got {type(base).__name__}")
        if tuple(delta.weight_shape) != tuple(base.weight.shape):
            raise ConfigError(f"adapter update shape {delta.weight_shape} does not match the weight "
                              f"{tuple(base.weight.shape)}")
        self.base = base
        self.delta = delta

    def weight(self) -> Tensor:
        return self.base.weight + self.delta().to(self.base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.base, nn.Linear):
            return F.linear(x, self.weight(), self.base.bias)
        return self.base._conv_forward(x, self.weight(), self.base.bias)

    def merged(self) -> nn.Module:
        """A plain copy of the base layer with W + Delta W as its weight."""
        layer = copy.deepcopy(self.base)
        with torch.no_grad():
            layer.weight.copy_(self.weight())
        return layer


def _is_target(module: nn.Module, targets: str) -> bool:
    if targets == "linear":
        return isinstance(module, nn.Linear)
    if targets == "conv":
        return isinstance(module, nn.Conv2d)
    return isinstance(module, (nn.Linear, nn.Conv2d))


def apply_adapters(model: nn.Module, make_delta: Callable[[nn.Module], DeltaWeight], targets: str = "all",
                   names: Iterable[str] | None = None) -> list[str]:
    """Freeze every parameter of `model`, then wrap its target layers (in place) with an update
    from make_delta(layer). targets: "linear", "conv" or "all"; names: only these layers (their
    names in model.named_modules()). Returns the wrapped layers' names."""
    if targets not in TARGETS:
        raise ConfigError(f"adapter targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    if any(isinstance(m, Adapted) for m in model.modules()):
        raise ConfigError("the model already has adapters (merge_adapters or a fresh model first)")
    wanted = None if names is None else set(names)
    model.requires_grad_(False)
    chosen = [(n, m) for n, m in model.named_modules() if n and _is_target(m, targets)
              and (wanted is None or n in wanted)]
    if wanted is not None and wanted - {n for n, _ in chosen}:
        raise ConfigError(f"no {targets} layers named {sorted(wanted - {n for n, _ in chosen})}")
    if not chosen:
        raise ConfigError(f"the model has no {targets} layers to adapt")
    for name, layer in chosen:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        delta = make_delta(layer).to(layer.weight.device)
        setattr(owner, child, Adapted(layer, delta))
    return [n for n, _ in chosen]


def adapted_layers(model: nn.Module) -> dict[str, Adapted]:
    """The wrapped layers by name (names as before wrapping)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Adapted)}


def trainable_count(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent, _, child = name.rpartition(".")
    if not name:
        return new
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every update into its layer (in place): plain Linear/Conv2d with W + Delta W, as cheap
    to run as the dense network. Returns the model."""
    for name, layer in list(adapted_layers(model).items()):
        model = _replace(model, name, layer.merged())
    return model


def unmerged_base(model: nn.Module) -> nn.Module:
    """A copy of the frozen base network (the adapters removed, the updates dropped)."""
    base = copy.deepcopy(model)
    for name, layer in list(adapted_layers(base).items()):
        base = _replace(base, name, layer.base)
    return base


# --------------------------------------------------------------------------- adapter files

def save_adapters(path: str | os.PathLike, model: nn.Module, extra: Mapping[str, Any] | None = None) -> int:
    """Write the model's adapter tensors (only those the method cannot recompute from the base
    weights) to `path`; returns the file's size in bytes. The base network is not in the file."""
    from trainlab.techniques.compression.artifact import save_artifact

    layers = adapted_layers(model)
    if not layers:
        raise ConfigError("the model has no adapters to save")
    methods = {layer.delta.method for layer in layers.values()}
    if len(methods) != 1:
        raise ConfigError(f"one adapter method per file, the model has {sorted(methods)}")
    tensors = {f"{n}.{k}": t for n, layer in layers.items() for k, t in layer.delta.stored_tensors().items()}
    meta = {"layers": {n: dict(layer.delta.settings) for n, layer in layers.items()}, **dict(extra or {})}
    return save_artifact(path, f"adapter:{methods.pop()}", tensors, meta)


def load_adapters(path: str | os.PathLike, base_model: nn.Module) -> nn.Module:
    """A copy of `base_model` (the frozen network the adapters were trained on) with the file's
    adapters attached; base_model itself is left unchanged."""
    from trainlab.techniques.compression.artifact import load_artifact

    tensors, meta = load_artifact(path)
    method = _file_method(path)
    cls = delta_class(method)
    model = copy.deepcopy(base_model)
    layers = meta.get("layers", {})
    for name, settings in layers.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"adapter file '{path}' names layer '{name}', which the base model lacks") from None
        delta = cls.build(layer, **settings).to(layer.weight.device)
        model = _replace(model, name, Adapted(layer, delta))
    model.requires_grad_(False)
    for name, layer in adapted_layers(model).items():
        own = {k: tensors.get(f"{name}.{k}") for k in layer.delta.stored_tensors()}
        missing = [k for k, v in own.items() if v is None]
        if missing:
            raise CheckpointError(f"adapter file '{path}' lacks {name}.{missing[0]}")
        state = layer.delta.state_dict()
        for k, v in own.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise CheckpointError(f"adapter file '{path}': {name}.{k} has shape {tuple(v.shape)}, "
                                      f"the model needs {tuple(state[k].shape)}")
            state[k] = v
        layer.delta.load_state_dict(state)
    return model


def _file_method(path: str | os.PathLike) -> str:
    import torch as _t

    payload = _t.load(path, map_location="cpu", weights_only=True)
    method = str(payload.get("method", ""))
    if not method.startswith("adapter:"):
        raise CheckpointError(f"'{path}' is not an adapter file (written by '{method}')")
    return method.split(":", 1)[1]


# --------------------------------------------------------------------------- Trainer form

class AdapterTechnique(Technique):
    """Trainer form: prepare() freezes the model and wraps its target layers with `delta_cls`
    updates; each epoch logs `trainable_params` (the parameters the optimizer trains)."""

    family = "compression"
    modifies = frozenset({"model"})
    delta_cls: ClassVar[type[DeltaWeight]]
    default_targets: ClassVar[str] = "linear"

    def __init__(self, targets: str | None = None, **settings: Any) -> None:
        targets = self.default_targets if targets is None else targets
        if targets not in TARGETS:
            raise ConfigError(f"{self.name}: targets must be one of {', '.join(TARGETS)}, got {targets!r}")
        super().__init__(targets=targets, **settings)
        self.targets = targets
        self.delta_settings = dict(settings)
        self.delta_cls.check_settings(**settings)
        self._trainable = 0

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        apply_adapters(model, functools.partial(self.delta_cls.build, **self.delta_settings), self.targets)
        self._trainable = trainable_count(model)
        return model

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        state.epoch_metrics["trainable_params"] = float(self._trainable)


# --------------------------------------------------------------------------- transfer tasks

#: the source classes the base network is pretrained on, and the target classes it is adapted to
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)


def _classes(x: Tensor, y: Tensor, classes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    keep = torch.isin(y, torch.tensor(classes))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    return x[keep], relabel[y[keep]]


def digits_split(classes: tuple[int, ...] = TARGET_CLASSES, **kwargs: Any):
    """scikit-learn digits restricted to `classes`, relabelled 0..len(classes)-1 (same train/test
    split as trainlab's digits)."""
    from trainlab.tasks.datasets import digits
    from trainlab.tasks.task import DataBundle

    full = digits(**kwargs)
    tx, ty = _classes(full.train_x, full.train_y, tuple(classes))
    sx, sy = _classes(full.test_x, full.test_y, tuple(classes))
    name = f"digits{''.join(map(str, classes))}"
    return DataBundle(tx, ty, sx, sy, num_classes=len(classes), name=name,
                      info={**full.info, "classes": [str(c) for c in classes]})


class TransferCNN(nn.Module):
    """All-convolutional net for 8x8 images: three 3x3 convs (ReLU), a 1x1 conv to the classes and
    global average pooling, so every weight is a 4-D conv kernel (no BatchNorm: a frozen base
    stays frozen, running statistics included)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 channels: tuple[int, int, int] = (16, 32, 32)) -> None:
        super().__init__()
        c0 = int(input_shape[0])
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.head = nn.Conv2d(c3, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).mean(dim=(2, 3))


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def pretrained_base(input_shape: tuple[int, ...], num_classes: int, arch: str = "mlp", pretrain_epochs: int = 30,
                    pretrain_lr: float = 1e-3, **arch_kwargs: Any) -> nn.Module:
    """A network pretrained on digits 0-4 (Adam, batch 64, `pretrain_epochs` epochs, drawn from the
    global torch RNG, so deterministic after torch.manual_seed). Its accuracy on the source test
    set is `model.source_acc`, on the target test set (digits 5-9) `model.base_target_acc`."""
    from trainlab.tasks.models import build_model

    if arch == "mlp":
        model = build_model("mlp", input_shape, num_classes, **arch_kwargs)
    elif arch == "cnn":
        model = TransferCNN(input_shape, num_classes, **arch_kwargs)
    else:
        raise ConfigError(f"pretrained_base: arch must be 'mlp' or 'cnn', got {arch!r}")
    src = digits_split(SOURCE_CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=pretrain_lr)
    n = len(src.train_y)
    model.train()
    for _ in range(pretrain_epochs):
        order = torch.randperm(n)
        for i in range(0, n - 63, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(src.train_x[idx]), src.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    tgt = digits_split(TARGET_CLASSES)
    model.source_acc = _accuracy(model, src.test_x, src.test_y)
    model.base_target_acc = _accuracy(model, tgt.test_x, tgt.test_y)
    return model


def transfer_evaluate(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """The usual classification test metrics, plus base_acc: the frozen pretrained network's
    accuracy on the target test set before any adaptation (the same in every arm of a seed)."""
    from trainlab.training.metrics import evaluate

    device = next(model.parameters()).device
    out = evaluate(model, x, y, 1024, device)
    out["base_acc"] = float(getattr(model, "base_target_acc", float("nan")))
    return out


def transfer_tasks() -> list:
    """The two transfer tasks: pretrain on digits 0-4 (in make_model), adapt to digits 5-9."""
    from trainlab.tasks.task import Task

    common = dict(make_data=functools.partial(digits_split, TARGET_CLASSES), evaluate=transfer_evaluate,
                  optimizer="adam", weight_decay=0.0, schedule="cosine", batch_size=64)
    return [
        Task(name="digits-transfer-mlp", make_model=functools.partial(pretrained_base, arch="mlp"), epochs=20,
             lr=3e-3, model_kwargs={"width": 128, "depth": 2}, **common,
             description="pretrain a 2x128 MLP on digits 0-4 (30 epochs, inside make_model), adapt to digits 5-9 "
                         "relabelled 0-4 (Adam, 20 epochs); test_base_acc = the frozen base on the target"),
        Task(name="digits-transfer-cnn", make_model=functools.partial(pretrained_base, arch="cnn"), epochs=20,
             lr=3e-3, model_kwargs={"channels": (16, 32, 32)}, **common,
             description="pretrain an all-conv net (3x3 convs 16-32-32, 1x1 conv head, average pooling) on digits "
                         "0-4 inside make_model, adapt to digits 5-9 relabelled 0-4 (Adam, 20 epochs)"),
    ]
