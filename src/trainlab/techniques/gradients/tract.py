"""TrAct: train the first layer's pre-activations, via a closed-form transform of its weight gradient.

Paper: Felix Petersen, Christian Borgelt, Stefano Ermon. "TrAct: Making First-layer
Pre-Activations Trainable". NeurIPS 2024, arXiv:2410.23970.

Idea: a first layer's weight gradient is proportional to the input pixels, so high-contrast images
dominate its updates. TrAct instead takes a gradient step on the layer's outputs z = W x (an
"activation proposal") and finds the weights that best produce it. With ridge regularization
lambda the solution is a change of the weight gradient: for inputs X (rows: the b samples, or for a
convolution every receptive-field patch of every sample, b = batch x positions),

    grad_W  <-  grad_W (X^T X / b + lambda I)^-1,

applied before any optimizer, which then works as usual (the bias gradient is unchanged). This is
the form of the authors' code (torch_tract 1.0: ``grad @ inverse(aTa / b + l * I)``, default
l = 0.1). Claim: "TrAct (Training Activations) speeds up training by factors between 1.25x and 4x
while requiring only a small computational overhead", with "different optimizers for a range of
different vision models including convolutional and transformer architectures". The paper measured
it on CIFAR-10/100 (ResNets, ViTs, 100-800 epochs) and ImageNet. Here: the first Conv/Linear layer
of small CNNs/MLPs on 8x8 digits and a CIFAR-10 subset for a few epochs; lambda is not re-tuned.

Supported first layers: nn.Linear (inputs [..., in]), nn.Conv1d and nn.Conv2d with groups = 1 and
zero padding given as numbers. The layer's input is recorded by a forward pre-hook on every
training forward pass with gradients enabled; ``transform_()`` uses the most recent one, so call it
after the backward of that same forward pass (as the Trainer's ``after_backward`` does). With
gradient accumulation over several forward passes it would use only the last input: not supported.

Plain PyTorch::

    import torch
    from trainlab.techniques.gradients.tract import TrAct

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10))
    tract = TrAct(model, lam=0.1)          # finds the first Conv2d/Conv1d/Linear
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        loss = model(torch.randn(8, 3, 8, 8)).logsumexp(1).mean()
        opt.zero_grad(); loss.backward(); tract.transform_(); opt.step()
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper(
    title="TrAct: Making First-layer Pre-Activations Trainable",
    authors="Petersen, Borgelt, Ermon", year=2024, arxiv="2410.23970",
)

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def first_layer(model: nn.Module) -> nn.Module:
    """The first Linear/Conv1d/Conv2d (in registration order) whose weight is trained."""
    for module in model.modules():
        if isinstance(module, _LAYERS) and module.weight.requires_grad:
            return module
    raise ConfigError("TrAct: the model has no nn.Linear / nn.Conv1d / nn.Conv2d layer with a trainable weight")


def input_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as a matrix whose rows are what each output position sees:
    [samples, in_features] for Linear, [samples x positions, C_in x kernel] patches for convolutions
    (the same flattening as the weight, so grad_W.view(out, -1) @ rows.T is the usual gradient)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ConfigError("TrAct supports convolutions with groups=1 and numeric zero padding only")
    if isinstance(layer, nn.Conv1d):
        if x.dim() == 2:
            x = x.unsqueeze(0)
        patches = F.unfold(x.unsqueeze(2), kernel_size=(1, layer.kernel_size[0]), dilation=(1, layer.dilation[0]),
                           padding=(0, layer.padding[0]), stride=(1, layer.stride[0]))
    else:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        patches = F.unfold(x, kernel_size=layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                           stride=layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def tract_gradient(grad_w: Tensor, rows: Tensor, lam: float) -> Tensor:
    """grad_W (X^T X / b + lam I)^-1 for X = rows (b x n); grad_W has shape [out, ...] with n inputs."""
    g = grad_w.reshape(grad_w.shape[0], -1).double()
    x = rows.double()
    gram = x.T @ x / x.shape[0]
    gram.diagonal().add_(lam)
    # gram is symmetric positive definite: G A^-1 = (A^-1 G^T)^T
    out = torch.linalg.solve(gram, g.T).T
    return out.to(grad_w.dtype).reshape(grad_w.shape)


class TrAct:
    """The TrAct gradient transform for one layer (or a model's first layer)."""

    def __init__(self, model_or_layer: nn.Module, lam: float = 0.1) -> None:
        if not (isinstance(lam, (int, float)) and lam > 0):
            raise ConfigError(f"TrAct: lambda must be a positive number, got {lam!r}")
        self.layer = model_or_layer if isinstance(model_or_layer, _LAYERS) else first_layer(model_or_layer)
        self.lam = float(lam)
        self._input: Tensor | None = None
        self._handle = self.layer.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and torch.is_grad_enabled():
            self._input = args[0].detach()

    def transform_(self) -> bool:
        """Replace the layer's weight gradient by the TrAct gradient (in place). False if there is
        nothing to transform (no gradient or no recorded input)."""
        w = self.layer.weight
        if w.grad is None or self._input is None:
            return False
        w.grad.copy_(tract_gradient(w.grad, input_rows(self.layer, self._input), self.lam))
        return True

    def remove(self) -> None:
        self._handle.remove()
        self._input = None


@register
class TrActTechnique(Technique):
    """Transforms the first layer's weight gradient after backward; any optimizer does the rest."""

    name = "tract"
    family = "gradients"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = ("tests/techniques/test_tract.py::test_matches_the_values_printed_by_the_official_package: "
                         "Linear and Conv2d weight and bias gradients equal those the authors' torch_tract 1.0.0 "
                         "(Felix-Petersen/tract, torch_tract/tract.py) prints for its own seeded self-test; Conv1d "
                         "first layers (not in the official code) use the same formula on their patches")
    modifies = frozenset({"gradients"})
    order = 40  # before gradient noise and clipping: it replaces the raw first-layer gradient
    summary = "first-layer weight gradient times (X^T X / b + lambda I)^-1 (trains the pre-activations)"

    def __init__(self, lam: float = 0.1) -> None:
        if not (isinstance(lam, (int, float)) and lam > 0):
            raise ConfigError(f"tract: lam must be a positive number, got {lam!r}")
        super().__init__(lam=lam)
        self.lam = float(lam)
        self._tract: TrAct | None = None

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self._tract = TrAct(model, self.lam)

    def after_backward(self, model: nn.Module, state: TrainState) -> None:
        if self._tract is not None:
            self._tract.transform_()

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        if self._tract is not None:
            self._tract.remove()
            self._tract = None


_QUOTE = ("Empirically, we find that TrAct (Training Activations) speeds up training by factors between 1.25x and 4x "
          "while requiring only a small computational overhead.")
_SCALE = "CIFAR-10/100 (ResNets, ViTs; 100-800 epochs) and ImageNet, several optimizers"
_SETTING = PaperSetting(
    train_size=50_000, epochs=100, params=11_200_000,
    text="CIFAR-10, ResNet-18 (and a small ViT), Adam or SGD with momentum 0.9 and cosine schedules, trained for 100, "
         "200, 400 and 800 epochs (100 given here): TrAct at a shorter budget matches the baseline at a longer one; "
         "also CIFAR-100 and ImageNet")
#: the regime: a speed-up of training presumes a baseline that trains
_BASELINE_TRAINS = Precondition(
    "test_acc", ">=", 0.1, relative_to="chance",
    why="the baseline trains: its final test accuracy is at least 10 points above chance (TrAct speeds up the "
        "first layer's training; with no training to speed up, epochs-to-target says nothing)")
CLAIMS = [
    Claim(
        id="tract-faster-mnist1d", technique="tract", task="mnist1d-cnn", metric="epochs_to:test_acc>=0.95",
        direction="lower", treatment=arm("tract", label="TrAct (lambda 0.1)"), baseline=arm(label="Adam"),
        seeds=5, paper_quote=_QUOTE, paper_number="1.25x-4x fewer epochs to the same accuracy",
        paper_scale=_SCALE, paper_setting=_SETTING, preconditions=(_BASELINE_TRAINS,),
        notes="First layer: a Conv1d on 1-channel MNIST-1D signals, with the task's Adam. Epochs "
              "until test accuracy first reaches 95% (runs that never do count as epochs + 1). On 8x8 digits both "
              "arms reach 97% within 2-3 epochs, too early to tell apart, hence MNIST-1D.",
    ),
    Claim(
        id="tract-faster-cifar10", technique="tract", task="cifar10-cnn", metric="epochs_to:test_acc>=0.5",
        direction="lower", treatment=arm("tract", label="TrAct (lambda 0.1)"), baseline=arm(label="SGD"),
        seeds=5, paper_quote=_QUOTE, paper_number="1.25x-4x fewer epochs to the same accuracy",
        paper_scale=_SCALE, paper_setting=_SETTING, preconditions=(_BASELINE_TRAINS,),
        notes="First layer: a 3x3 conv on CIFAR-10 (27 inputs per patch); 10k-image subset, 8 epochs, which ends "
              "near 55% test accuracy, hence the 50% target.",
    ),
]
