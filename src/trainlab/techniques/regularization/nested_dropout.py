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
K (official ``TestNested``: accuracy of each prefix on the validation images, ties to the shorter
prefix; the validation set is 10% of the CIFAR training images, split off before the noise is
added, data/preprocess_cifar10.py). ``eval_k="holdout"`` does the same: a stratified, seed-fixed
``holdout`` share of the training set is held out of training, with its CLEAN labels, and at every
epoch end the K with the best accuracy on it (ties to the shorter prefix) is the one evaluated.
The held-out rows are not trained on: in each batch they are replaced by the batch's own
non-held-out rows (in order), so the batch size and the data order stay those of the run. The
comparison arm takes the same slice out with the control technique ``holdout-slice``, so both arms
train on the same examples. Other choices: "auto" (default) keeps the shortest prefix that holds
99% of the training distribution's mass (features beyond it were almost never trained), an int
keeps that many, and None keeps all features.
The official code also keeps the epoch with the best validation accuracy (early stopping, for
its baselines too); here every arm is evaluated at its last epoch.

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

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.regularization.elr import memorizes
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

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


# --------------------------------------------------------------------------- choosing K on held-out data

def holdout_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted training indices of a stratified, seed-fixed held-out slice: round(fraction * n_c)
    examples of each class c (at least one of every class that has two or more)."""
    import numpy as np

    y = labels.cpu().numpy()
    rng = np.random.default_rng([7, int(seed) % (1 << 63)])
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n = min(max(int(round(fraction * len(members))), 1 if len(members) > 1 else 0), len(members) - 1)
        picked.append(rng.permutation(members)[:n])
    return torch.from_numpy(np.sort(np.concatenate(picked))).long()


@torch.no_grad()
def prefix_accuracies(features: torch.Tensor, linear: nn.Linear, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy [K] of the classifier on features masked to each prefix k = 1..K:
    logits_k = b + sum_{j<k} h_j W[:, j] (the linear layer on h * prefix_mask(k))."""
    w, b = linear.weight.float(), linear.bias.float() if linear.bias is not None else None
    parts = features.float().unsqueeze(1) * w.unsqueeze(0)        # [n, C, K]
    logits = parts.cumsum(dim=2)
    if b is not None:
        logits = logits + b.view(1, -1, 1)
    return (logits.argmax(dim=1) == labels.view(-1, 1)).float().mean(dim=0)


def best_prefix(accuracies: torch.Tensor) -> int:
    """The K (1-based) of the best accuracy; ties go to the shorter prefix (as the official code)."""
    best = accuracies.max()
    return int(torch.nonzero(accuracies >= best).min()) + 1


class HeldOutSlice:
    """Holds a clean slice of the training set out of training (see the module docstring)."""

    def __init__(self, fraction: float) -> None:
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"holdout fraction must be in (0, 1), got {fraction}")
        self.fraction = float(fraction)
        self.mask: torch.Tensor | None = None
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.replaced = 0

    def setup(self, state: TrainState) -> None:
        from trainlab.tasks.loading import load_task_data

        data = load_task_data(state.task, state.seed)  # the run's own data (cached in this process)
        clean = data.clean_train_y if data.clean_train_y is not None else data.train_y
        idx = holdout_indices(clean, self.fraction, state.seed)
        self.mask = torch.zeros(len(clean), dtype=torch.bool)
        self.mask[idx] = True
        self.x, self.y = data.train_x[idx], clean[idx]

    def filter(self, batch: Batch) -> Batch:
        """The batch with its held-out rows replaced by its own other rows, in order."""
        assert self.mask is not None, "setup was not called"
        held = self.mask[batch.indices.cpu()].to(batch.inputs.device)
        n_held = int(held.sum())
        if n_held == 0:
            return batch
        kept = torch.nonzero(~held).flatten()
        if len(kept) == 0:
            raise ConfigError("holdout: a batch holds only held-out examples; use a larger batch size")
        rows = torch.arange(len(held), device=held.device)
        rows[held] = kept[torch.arange(n_held, device=held.device) % len(kept)]
        self.replaced += n_held
        return batch.replace(inputs=batch.inputs[rows], targets=batch.targets[rows], labels=batch.labels[rows],
                             indices=batch.indices[rows])


@register
class NestedDropoutTechnique(Technique):
    """Nested dropout on the features entering the classifier's last Linear layer."""

    name = "nested-dropout"
    family = "regularization"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = (
        "tests/techniques/test_nested_dropout.py: p(k) is the official GaussianDist formula exp(-((k - mu)/sigma)^2) "
        "normalized (test_prefix_lengths_follow_the_distribution), one unscaled prefix mask per batch "
        "(test_masks_are_prefixes, test_one_prefix_per_batch_by_default), and K chosen as the official TestNested "
        "does: best accuracy of every prefix on clean held-out data, ties to the shorter prefix "
        "(test_holdout_k_is_the_best_prefix_on_clean_held_out_data)")
    deviations = (
        "evaluation protocol: every arm is evaluated at its last epoch; the official code keeps the epoch with the best "
        "validation accuracy (early stopping on the clean validation set), for its baselines too",
        "the held-out slice is taken out of the run's own (possibly subsampled) training set, and its rows are replaced "
        "in each batch by other rows of the same batch; the official code trains on a separate 90% split",
        "the official code warms the learning rate up over its first iterations and uses two SGD optimizers "
        "(features, classifier) with the same settings; here the task's optimizer and schedule",
    )
    modifies = frozenset({"model", "batch"})
    order = 5
    summary = "keep a random prefix of the penultimate features (ordered, compressed features)"

    def __init__(self, distribution: str = "gaussian", sigma: float = 10.0, rho: float = 0.1,
                 per_sample: bool = False, eval_k: int | str | None = "auto", holdout: float = 0.1) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"nested dropout: distribution must be one of {DISTRIBUTIONS}, got '{distribution}'")
        if sigma <= 0 or not 0 < rho <= 1:
            raise ConfigError("nested dropout: sigma must be > 0 and rho in (0, 1]")
        super().__init__(distribution=distribution, sigma=sigma, rho=rho, per_sample=per_sample, eval_k=eval_k,
                         holdout=holdout)
        self.holdout = HeldOutSlice(holdout) if eval_k == "holdout" else None
        self.kwargs: dict[str, Any] = dict(distribution=distribution, sigma=sigma, rho=rho, per_sample=per_sample,
                                           eval_k=None if eval_k == "holdout" else eval_k)
        self.layer: NestedDropout | None = None
        self._features: torch.Tensor | None = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        _, _, linear = last_linear(model)
        self.layer = NestedDropout(linear.in_features, **self.kwargs)
        return insert_before_last_linear(model, self.layer)

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        assert self.layer is not None
        self.layer.generator = state.generator
        if self.holdout is not None:
            self.holdout.setup(state)

    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        return batch if self.holdout is None else self.holdout.filter(batch)

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self.layer is None:
            return
        if self.holdout is not None:
            acc = self.holdout_accuracies(model, state)
            self.layer.eval_k = best_prefix(acc)
            state.epoch_metrics["nested_holdout_acc"] = float(acc[self.layer.eval_k - 1])
            state.epoch_metrics["nested_holdout_acc_all_k"] = float(acc[-1])
        if self.layer.eval_k is not None:
            state.epoch_metrics["nested_eval_k"] = float(self.layer.eval_k)

    @torch.no_grad()
    def holdout_accuracies(self, model: nn.Module, state: TrainState) -> torch.Tensor:
        """Accuracy of every prefix length on the clean held-out slice (model in eval mode)."""
        assert self.layer is not None and self.holdout is not None and self.holdout.x is not None
        head = self.layer  # its input is the unmasked feature vector

        def grab(module: nn.Module, args: tuple) -> None:
            self._features = args[0]

        hook = head.register_forward_pre_hook(grab)
        was_training = model.training
        model.eval()
        feats = []
        try:
            size = getattr(state.task, "eval_batch_size", 1024)
            for i in range(0, len(self.holdout.x), size):
                model(self.holdout.x[i:i + size].to(state.device))
                feats.append(self._features.detach())
        finally:
            hook.remove()
            model.train(was_training)
            self._features = None
        _, _, linear = last_linear(model)
        return prefix_accuracies(torch.cat(feats), linear, self.holdout.y.to(state.device)).cpu()


@register
class HoldOutSliceTechnique(Technique):
    """Control: hold the same clean slice of the training set out of training as nested dropout's
    eval_k="holdout" does, and nothing else, so the comparison arm trains on the same examples.
    With nested dropout at a fixed K it gives that arm the same training examples too (the two
    filters are the same slice, so applying both equals applying one)."""

    name = "holdout-slice"
    family = "regularization"
    paper = None
    fidelity = "control"
    modifies = frozenset({"batch"})
    order = 5
    summary = "control: train without a held-out slice of the training set (same slice as nested dropout's)"

    def __init__(self, fraction: float = 0.1) -> None:
        super().__init__(fraction=fraction)
        self.holdout = HeldOutSlice(fraction)

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self.holdout.setup(state)

    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        return self.holdout.filter(batch)


_QUOTE = ("we focus on the problem of learning with noisy labels and introduce compression inductive bias to "
          "network architectures to alleviate this over-fitting problem ... Nested Dropout further learns ordered "
          "feature representations w.r.t. feature importance")

_SETTING = PaperSetting(train_size=45_000, epochs=350, params=11_200_000,
                        text="CIFAR-10 ResNet-18 (512 features, sigma 10), symmetric noise flipped to another class "
                             "(official script; its CIFAR-10 runs use 20% symmetric and 30% asymmetric noise), 10% of "
                             "the training images held out clean to choose K and the best epoch, 350 epochs, lr 0.1 "
                             "divided by 10 at epochs 200 and 300; also Clothing1M and ANIMAL-10N (VGG-19)")
_NESTED = arm(("nested-dropout", {"sigma": 10.0, "eval_k": "holdout", "holdout": 0.1}),
              label="nested dropout (sigma 10, K chosen on the held-out 10%)")
_CONTROL = arm(("holdout-slice", {"fraction": 0.1}), label="cross-entropy on the same 90%")
_NOISE = {"label_noise": 0.4, "noise_kind": "symmetric"}   # flipped to another class, as the official script

CLAIMS = [
    Claim(
        id="nested-dropout-noisy-digits", technique="nested-dropout", task="digits-mlp", metric="test_acc",
        direction="higher", treatment=_NESTED, baseline=_CONTROL, seeds=5, suites=("full",),
        overrides={**_NOISE, "epochs": 60}, preconditions=memorizes(0.6),
        paper_quote=_QUOTE,
        paper_number="ANIMAL-10N: CE 79.4% -> Nested 81.3% (official README); Clothing1M Nested 73.1% vs CE 67.2%",
        paper_scale="CIFAR-10/100 with simulated noise (ResNet-18), Clothing1M, ANIMAL-10N", paper_setting=_SETTING,
        notes="128-d features of a 2-layer MLP; sigma=10 as in the paper's CIFAR-10 setting; K chosen each epoch on "
              "a clean 10% held out of training in both arms (as the paper's validation split). 60 epochs, so that "
              "plain cross-entropy memorizes the flipped labels (at the 20 epochs used before it had not begun to).",
    ),
    Claim(
        id="nested-dropout-fixed-k-noisy-digits", technique="nested-dropout", task="digits-mlp", metric="test_acc",
        direction="higher", baseline=_CONTROL, seeds=5, suites=("full",),
        treatment=arm(("nested-dropout", {"sigma": 10.0, "eval_k": "auto"}), ("holdout-slice", {"fraction": 0.1}),
                      label="nested dropout (sigma 10, fixed K: the 99% prefix), same 90%"),
        overrides={**_NOISE, "epochs": 60}, preconditions=memorizes(0.6),
        paper_quote=_QUOTE,
        paper_number="ANIMAL-10N: CE 79.4% -> Nested 81.3% (official README); Clothing1M Nested 73.1% vs CE 67.2%",
        paper_scale="CIFAR-10/100 with simulated noise (ResNet-18), Clothing1M, ANIMAL-10N", paper_setting=_SETTING,
        notes="Control of nested-dropout-noisy-digits (shares its baseline runs): the same nested dropout and the same "
              "training examples, but K fixed in advance (the shortest prefix holding 99% of p(k)) instead of chosen "
              "on the clean held-out slice. It separates the compression itself from the use of clean data to "
              "choose K.",
    ),
    Claim(
        id="nested-dropout-noisy-cifar10-cnn", technique="nested-dropout", task="cifar10-cnn", metric="test_acc",
        direction="higher", treatment=_NESTED, baseline=_CONTROL, seeds=3, suites=("full",),
        overrides={**_NOISE, "train_subset": 1_000, "augment": None, "batch_size": 32, "epochs": 60},
        preconditions=memorizes(0.6),
        paper_quote=_QUOTE, paper_number="ANIMAL-10N: CE 79.4% -> Nested 81.3% (official README)",
        paper_scale="CIFAR-10/100 with simulated noise (ResNet-18), Clothing1M, ANIMAL-10N", paper_setting=_SETTING,
        notes="64-d features of a 16-32-64 CNN on 1,000 CIFAR-10 images without augmentation, batch 32, 60 epochs "
              "(the ELR claim's memorization setting, with noise flipped to another class); K chosen each epoch on "
              "the clean held-out 10% (100 images). In the earlier setting (10k images with crop-flip, 20 epochs) "
              "the baseline had not begun to memorize.",
    ),
]
