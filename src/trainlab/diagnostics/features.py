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
