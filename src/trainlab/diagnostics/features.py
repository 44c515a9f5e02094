"""Reading a network's internal representations: the classifier layer, the penultimate features
(the classifier's input), or any named layer's output, for any model, through forward hooks."""
from __future__ import annotations

import torch
from torch import nn

from trainlab.errors import ConfigError


def classifier_layer(model: nn.Module, num_classes: int | None = None) -> nn.Linear:
    """The last nn.Linear of `model` (in module order) whose out_features is `num_classes` (any
    out_features when None): the layer whose input are the penultimate features."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and (num_classes is None or module.out_features == num_classes):
            found = module
    if found is None:
        want = f" with {num_classes} outputs" if num_classes is not None else ""
        raise ConfigError(f"the model has no nn.Linear classifier layer{want}; pass the layer to read explicitly")
    return found


def layer_inputs_outputs(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch_size: int = 1024,
                         want: str = "input") -> torch.Tensor:
    """`layer`'s input (want="input") or output (want="output") for inputs `x`, flattened to
    [N, features], computed in batches without gradients in the model's current mode."""
    if want not in ("input", "output"):
        raise ConfigError(f"want must be 'input' or 'output', got {want!r}")
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        value = inputs[0] if want == "input" else output
        captured.append(value.detach().flatten(1))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size])
    finally:
        handle.remove()
    if not captured:
        raise ConfigError("the layer was not called by the model's forward pass")
    return torch.cat(captured)


def penultimate_features(model: nn.Module, x: torch.Tensor, num_classes: int | None = None,
                         batch_size: int = 1024) -> torch.Tensor:
    """The input of the classifier layer (see classifier_layer) for inputs `x`: [N, features]."""
    return layer_inputs_outputs(model, classifier_layer(model, num_classes), x, batch_size, want="input")


def named_layer(model: nn.Module, name: str) -> nn.Module:
    """A submodule by its dotted name (as in model.named_modules()), with a clear error."""
    modules = dict(model.named_modules())
    if name not in modules:
        known = ", ".join(n for n in list(modules)[1:12] if n)
        raise ConfigError(f"the model has no layer '{name}' (layers: {known}, ...)")
    return modules[name]


class LayerCapture:
    """Keeps what `layer` last received (want="input": its first positional input) or produced
    (want="output") in a forward pass, with its autograd graph, while installed: for techniques
    that need a model's internal features of the training step (e.g. the classifier's input).
    training_only: record only forward passes made with the layer in training mode."""

    def __init__(self, layer: nn.Module, want: str = "input", training_only: bool = False) -> None:
        if want not in ("input", "output"):
            raise ConfigError(f"want must be 'input' or 'output', got {want!r}")
        self.want = want
        self.training_only = training_only
        self.value: torch.Tensor | None = None
        if want == "output":
            self.handle = layer.register_forward_hook(self._keep_output)
        else:
            self.handle = layer.register_forward_pre_hook(self._keep_input)

    def _keep_input(self, module: nn.Module, inputs: tuple) -> None:
        if module.training or not self.training_only:
            self.value = inputs[0]

    def _keep_output(self, module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if module.training or not self.training_only:
            self.value = output

    def take(self, missing: str | None = None) -> torch.Tensor | None:
        """The captured value, cleared; when nothing was captured, ConfigError(missing) if a message
        is given, else None."""
        value, self.value = self.value, None
        if value is None and missing is not None:
            raise ConfigError(missing)
        return value

    def clear(self) -> None:
        self.value = None

    def remove(self) -> None:
        self.handle.remove()
        self.value = None
