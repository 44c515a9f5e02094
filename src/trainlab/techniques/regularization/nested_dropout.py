"""Nested dropout on the feature layer: keep only the first k features, k random, to compress features.

Paper: Yingyi Chen, Shell Xu Hu, Xi Shen, Chunrong Ai, Johan A.K. Suykens, "Compressing Features for
Learning with Noisy Labels", IEEE TNNLS 2022, arXiv:2206.13140 (workshop version: "Boosting
Co-teaching with Compression Regularization for Label Noise", arXiv:2104.13766). Nested dropout
itself is from Rippel, Gelbart, Adams, "Learning Ordered Representations with Nested Dropout", 2014.

Claim: compressing the feature layer with nested dropout regularizes training under label noise,
so a network trained with it reaches higher clean test accuracy than one trained with plain
cross-entropy; combined with Co-teaching it matches the state of the art. Paper scale: CIFAR-10/100
with simulated noise (ResNet-18, ~350 epochs), Clothing1M (ResNet-18/50) and ANIMAL-10N (VGG-19);
official README: ANIMAL-10N CE 79.4% -> Nested 81.3% -> Nested + Co-teaching 84.1%; Clothing1M
Nested 73.1%, Nested + Co-teaching 74.9% (CE 67.2% as reported by others).

What happens (official ``train_resnet.py``): the features h (dim K) entering the last linear
classifier are multiplied by a prefix mask m_k = [1]*k + [0]*(K-k) (no rescaling), with one k per
batch drawn from p(k) proportional to exp(-((k - mu) / sigma)^2), k = 1..K, mu = 0 (sigma = 10
for CIFAR-10's 512 features, 100 for CIFAR-100 and Clothing1M). Rippel et al.'s geometric
p(k) = rho (1 - rho)^(k-1) is offered as ``distribution="geometric"``.
At test time the paper evaluates every prefix length on a clean validation set and keeps the best
K. There is no validation split here, so ``eval_k`` decides: "auto" (default) keeps the shortest
prefix that holds 99% of the training distribution's mass (features beyond it were almost never
trained), an int keeps that many, and None keeps all features.

The paper's combination with Co-teaching is not implemented: it is a second stage that fine-tunes
*two* networks (each trained with nested dropout first) on each other's small-loss samples; the
technique contract trains one model per run, so this would need a two-stage pipeline with a peer
network and its own optimizer, which is beyond this technique.

The layer is inserted as a module in front of the model's last ``nn.Linear`` (which becomes
``Sequential(nested_dropout, linear)``, so state_dict keys of that layer gain a ``.1``).

Plain PyTorch::

    import torch
    from trainlab.techniques.regularization.nested_dropout import NestedDropout

    head = torch.nn.Sequential(NestedDropout(64, sigma=10.0), torch.nn.Linear(64, 10))
    out = head(torch.randn(32, 64))          # training mode: a random prefix of the 64 features
    head.eval(); out = head(torch.randn(32, 64))   # eval: the first `eval_k` features
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trainlab.claims.claim import Claim, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper("Compressing Features for Learning with Noisy Labels", "Chen, Hu, Shen, Ai, Suykens", 2022, "2206.13140")
DISTRIBUTIONS = ("gaussian", "geometric")


def prefix_distribution(num_features: int, distribution: str = "gaussian", sigma: float = 10.0,
                        rho: float = 0.1, mu: float = 0.0) -> torch.Tensor:
    """p(k) for k = 1..K (index k-1): the official half-Gaussian, or geometric with parameter rho."""
    k = torch.arange(1, num_features + 1, dtype=torch.float64)
    if distribution == "gaussian":
        w = torch.exp(-((k - mu) / sigma) ** 2)
    elif distribution == "geometric":
        w = rho * (1.0 - rho) ** (k - 1)
    else:
        raise ConfigError(f"nested dropout: distribution must be one of {DISTRIBUTIONS}, got '{distribution}'")
    return (w / w.sum()).float()


def prefix_mask(k: torch.Tensor, num_features: int) -> torch.Tensor:
    """Masks [len(k), K] with the first k[i] entries of row i set to one."""
    return (torch.arange(num_features, device=k.device).view(1, -1) < k.view(-1, 1)).float()


class NestedDropout(nn.Module):
    """Keeps a random prefix of the features in training, the first `eval_k` (or all) in eval."""

    def __init__(self, num_features: int, distribution: str = "gaussian", sigma: float = 10.0, rho: float = 0.1,
                 per_sample: bool = False, eval_k: int | str | None = "auto",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.num_features, self.per_sample = num_features, per_sample
        self.generator = generator
        self.register_buffer("probs", prefix_distribution(num_features, distribution, sigma, rho), persistent=False)
        if eval_k == "auto":
            eval_k = int(torch.searchsorted(self.probs.cumsum(0), torch.tensor(0.99)).item()) + 1
        elif eval_k is not None and not (isinstance(eval_k, int) and 1 <= eval_k <= num_features):
            raise ConfigError(f"nested dropout: eval_k must be 'auto', None or 1..{num_features}, got {eval_k!r}")
        self.eval_k = None if eval_k is None else min(int(eval_k), num_features)
        self.last_k: torch.Tensor | None = None  # the prefix lengths of the last training forward

    def sample_k(self, n: int) -> torch.Tensor:
        draws = n if self.per_sample else 1
        return torch.multinomial(self.probs.cpu(), draws, replacement=True, generator=self.generator) + 1

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.num_features:
            raise ConfigError(f"nested dropout expects {self.num_features} features, got {h.shape[-1]}")
        if self.training:
            k = self.sample_k(h.shape[0]).to(h.device)
            self.last_k = k
            return h * prefix_mask(k, self.num_features).to(h.dtype)
        if self.eval_k is None:
            return h
        return h * prefix_mask(torch.tensor([self.eval_k], device=h.device), self.num_features).to(h.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, per_sample={self.per_sample}, eval_k={self.eval_k}"


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the model's last nn.Linear in module order."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer to act on")
    name, layer = found
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr, layer


def insert_before_last_linear(model: nn.Module, module: nn.Module) -> nn.Module:
    """Replace the last Linear by Sequential(module, linear), in place; returns the model."""
    parent, attr, layer = last_linear(model)
    if not attr:
        raise ConfigError("the model itself is a Linear layer; wrap it in a module first")
    setattr(parent, attr, nn.Sequential(module, layer))
    return model


@register
class NestedDropoutTechnique(Technique):
    """Nested dropout on the features entering the classifier's last Linear layer."""

    name = "nested-dropout"
    family = "regularization"
    paper = PAPER
    modifies = frozenset({"model"})
    summary = "keep a random prefix of the penultimate features (ordered, compressed features)"

    def __init__(self, distribution: str = "gaussian", sigma: float = 10.0, rho: float = 0.1,
                 per_sample: bool = False, eval_k: int | str | None = "auto") -> None:
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"nested dropout: distribution must be one of {DISTRIBUTIONS}, got '{distribution}'")
        if sigma <= 0 or not 0 < rho <= 1:
            raise ConfigError("nested dropout: sigma must be > 0 and rho in (0, 1]")
        super().__init__(distribution=distribution, sigma=sigma, rho=rho, per_sample=per_sample, eval_k=eval_k)
        self.kwargs: dict[str, Any] = dict(distribution=distribution, sigma=sigma, rho=rho, per_sample=per_sample,
                                           eval_k=eval_k)
        self.layer: NestedDropout | None = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        _, _, linear = last_linear(model)
        self.layer = NestedDropout(linear.in_features, **self.kwargs)
        return insert_before_last_linear(model, self.layer)

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        assert self.layer is not None
        self.layer.generator = state.generator

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self.layer is not None and self.layer.eval_k is not None:
            state.epoch_metrics["nested_eval_k"] = float(self.layer.eval_k)


_QUOTE = ("we focus on the problem of learning with noisy labels and introduce compression inductive bias to "
          "network architectures to alleviate this over-fitting problem ... Nested Dropout further learns ordered "
          "feature representations w.r.t. feature importance")

CLAIMS = [
    Claim(
        id="nested-dropout-noisy-digits", technique="nested-dropout", task="digits-mlp", metric="test_acc",
        direction="higher", treatment=arm(("nested-dropout", {"sigma": 10.0})), baseline=arm(), seeds=5,
        suites=("full",), overrides={"label_noise": 0.4, "noise_kind": "symmetric", "epochs": 20},
        paper_quote=_QUOTE,
        paper_number="ANIMAL-10N: CE 79.4% -> Nested 81.3% (official README); Clothing1M Nested 73.1% vs CE 67.2%",
        paper_scale="CIFAR-10/100 with simulated noise (ResNet-18), Clothing1M, ANIMAL-10N",
        notes="128-d features of a 2-layer MLP; sigma=10 as in the paper's CIFAR-10 setting; eval keeps the "
              "99% prefix instead of the paper's validation-selected K.",
    ),
    Claim(
        id="nested-dropout-noisy-cifar10-cnn", technique="nested-dropout", task="cifar10-cnn", metric="test_acc",
        direction="higher", treatment=arm(("nested-dropout", {"sigma": 10.0})), baseline=arm(), seeds=3,
        suites=("full",), overrides={"label_noise": 0.4, "noise_kind": "symmetric", "epochs": 20},
        paper_quote=_QUOTE, paper_number="ANIMAL-10N: CE 79.4% -> Nested 81.3% (official README)",
        paper_scale="CIFAR-10/100 with simulated noise (ResNet-18), Clothing1M, ANIMAL-10N",
        notes="128-d features of a small CNN on a 10k-image CIFAR-10 subset, 20 epochs. The cross-entropy "
              "baseline does not reach the memorization phase at this budget (see elr-noisy-cifar10-cnn).",
    ),
]
