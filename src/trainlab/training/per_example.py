"""Per-example gradients with torch.func, shared by the diagnostics and techniques that need them
(gradient coherence, the diagonal Fisher)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_example_grad_fn(model: nn.Module, names: Sequence[str], loss_fn: LossFn,
                        randomness: str = "different") -> Callable:
    """fn(tensors, x, y) -> tuple of per-example gradients [m, *shape], one per name in `names`:
    the gradient of loss_fn(model(x_i[None]), y_i[None]) with respect to the parameters `names`
    evaluated at `tensors` (a tuple in `names` order), for every example i of the batch (x, y). The
    model's other parameters and its buffers are held at their current values. The model runs in
    its current mode (BatchNorm in training mode would couple an example to its batch: callers
    refuse or switch it)."""
    names = list(names)
    held = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}
    held.update({n: b for n, b in model.named_buffers()})

    def example_loss(trainable: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**held, **dict(zip(names, trainable))}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return vmap(grad(example_loss), in_dims=(None, 0, 0), randomness=randomness)
