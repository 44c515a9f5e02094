"""Early-Learning Regularization (ELR): keep the model near its own early predictions under label noise.

Paper: Sheng Liu, Jonathan Niles-Weed, Narges Razavian, Carlos Fernandez-Granda, "Early-Learning
Regularization Prevents Memorization of Noisy Labels", NeurIPS 2020, arXiv:2007.00151.

Claim: networks first fit the clean labels ("early learning") and later memorize the false ones;
a regularizer that steers the model towards targets estimated from its own past outputs prevents
the memorization. Paper scale: CIFAR-10/100 with simulated symmetric/asymmetric noise
(ResNet-34, 120-150 epochs), Clothing1M and WebVision. Official README, CIFAR-10 with 40%
symmetric noise: ELR 89.15% clean test accuracy (91.43% with cosine annealing), against a
cross-entropy baseline that memorizes the flipped labels (the paper's Table 1).

The method (paper Sec. 4; official ``elr_loss``), per sample i with prediction p_i = softmax(z_i)
clamped to [1e-4, 1 - 1e-4]:

    t_i  <- beta * t_i + (1 - beta) * p_i / sum(p_i)       (temporal ensembling, detached; t starts at 0)
    loss  = CE(z, y) + lambda * mean_i log(1 - <t_i, p_i>)

The target is updated first and then used in the same step, as in the official code. CIFAR-10
settings of the official config: beta = 0.7, lambda = 3. The targets live in a [N, C] buffer
indexed by the sample indices of the batch (Batch.indices), sized by state.num_train/num_classes.

With a mixing policy in the run (ELR + mixup, as in the paper's ELR+), the cross-entropy uses the
mixed soft targets, the regularizer's target is the mixture lam * t_i + (1 - lam) * t_perm(i)
(ELR+ mixes its targets the same way), and the temporal ensemble is updated from predictions of
the *unmixed* samples (one extra forward pass without gradients, in eval mode). ELR+ itself (two
networks, weight averaging, co-divide) is not implemented.

The paper's symmetric noise redraws a label from ALL classes (official code, data_loader/cifar10.py), so
40% noise leaves 36% of the labels wrong with 10 classes; the claims here use that convention
(noise_kind="symmetric-all", see trainlab.tasks.wrappers), not the default "symmetric" (always another class).

Plain PyTorch::

    import torch
    from trainlab.techniques.regularization.elr import ELRLoss

    model, elr = torch.nn.Linear(4, 3), ELRLoss(num_examples=100, num_classes=3, beta=0.7, lam=3.0)
    x, y, idx = torch.randn(8, 4), torch.randint(0, 3, (8,)), torch.arange(8)
    loss = elr(model(x), y, idx)
    loss.backward()
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import CheckpointError, ConfigError
from trainlab.techniques.regularization.mixup import unmixed_probabilities
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper("Early-Learning Regularization Prevents Memorization of Noisy Labels",
              "Liu, Niles-Weed, Razavian, Fernandez-Granda", 2020, "2007.00151")
CLAMP = 1e-4


def update_targets(targets: torch.Tensor, index: torch.Tensor, probs: torch.Tensor, beta: float) -> None:
    """In place: t[index] = beta * t[index] + (1 - beta) * clamp(p) / sum(clamp(p))."""
    p = probs.detach().float().clamp(CLAMP, 1.0 - CLAMP)
    p = p / p.sum(dim=1, keepdim=True)
    targets[index] = beta * targets[index] + (1.0 - beta) * p.to(targets.device)


def clamped_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=1).clamp(CLAMP, 1.0 - CLAMP)


def regularizer_from_probabilities(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.log(1.0 - (target.to(p.device) * p).sum(dim=1)).mean()


def elr_regularizer(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i log(1 - <t_i, clamp(softmax(z_i))>); minimizing it pulls p_i towards t_i."""
    return regularizer_from_probabilities(clamped_probabilities(logits), target)


class ELRLoss(nn.Module):
    """The ELR objective with its per-sample target buffer, for any training loop."""

    def __init__(self, num_examples: int, num_classes: int, beta: float = 0.7, lam: float = 3.0) -> None:
        super().__init__()
        self.beta, self.lam = float(beta), float(lam)
        self.register_buffer("targets", torch.zeros(num_examples, num_classes))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        update_targets(self.targets, index, F.softmax(logits.detach().float(), dim=1), self.beta)
        return F.cross_entropy(logits, labels) + self.lam * elr_regularizer(logits, self.targets[index])


@register
class ELR(Technique):
    """Cross-entropy + lambda * log(1 - <t, p>) with t a running average of the model's predictions."""

    name = "elr"
    family = "regularization"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = (
        "tests/techniques/test_elr.py::test_target_update_hand_computed and ::test_regularizer_value_and_loss: the "
        "clamp to [1e-4, 1 - 1e-4], the renormalized temporal ensemble t = beta t + (1 - beta) p and the loss "
        "CE + lambda * mean log(1 - <t, p>) with the target updated before use, as elr_loss in shengliu66/ELR "
        "(ELR/model/loss.py)")
    modifies = frozenset({"loss_objective"})
    order = 60
    summary = "regularize towards a temporal ensemble of the model's own predictions (noisy labels)"
    requires = frozenset({"classification"})

    def __init__(self, beta: float = 0.7, lam: float = 3.0) -> None:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"elr: beta must be in [0, 1), got {beta}")
        if lam < 0:
            raise ConfigError(f"elr: lam must be >= 0, got {lam}")
        super().__init__(beta=beta, lam=lam)
        self.beta, self.lam = float(beta), float(lam)
        self.targets: torch.Tensor | None = None
        self._resumed: torch.Tensor | None = None  # targets from a checkpoint, applied at on_train_start

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        shape = (state.num_train, state.num_classes)
        if self._resumed is None:  # a fresh run starts from zero targets
            self.targets = torch.zeros(shape, device=state.device)
            return
        if tuple(self._resumed.shape) != shape:
            raise CheckpointError(f"elr: saved targets have shape {tuple(self._resumed.shape)}, the data needs {shape}")
        self.targets, self._resumed = self._resumed.to(state.device), None

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        assert self.targets is not None, "on_train_start was not called"
        p = clamped_probabilities(outputs)  # one softmax for the update (detached) and the regularizer
        mix = batch.meta.get("mix")
        own = p.detach() if mix is None else unmixed_probabilities(state, batch, outputs)
        update_targets(self.targets, batch.indices, own, self.beta)
        target = self.targets[batch.indices]
        if mix is not None:
            lam = mix["lam"].view(-1, 1)
            target = lam * target + (1.0 - lam) * target[mix["perm"]]
        return base_loss + self.lam * regularizer_from_probabilities(p, target)

    def state_dict(self) -> dict[str, Any]:
        return {"targets": None if self.targets is None else self.targets.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        t = state.get("targets")
        self._resumed = None if t is None else t.clone()
        self.targets = self._resumed


def memorizes(clean_fraction: float) -> tuple[Precondition, ...]:
    """The regime ELR (and other noisy-label methods) act in: the baseline memorizes the flipped labels.

    clean_fraction: the expected share of correct training labels (0.6 at 40% "symmetric" noise, 0.64 at 40%
    "symmetric-all" noise with 10 classes). A fall of test accuracy from its peak ("best:test_acc - test_acc")
    is not required: on the small CIFAR-10 setting the baseline memorizes while its final test accuracy is
    close to its best (measured, see elr-noisy-cifar10-cnn)."""
    return (
        Precondition("train_noisy_acc", ">", clean_fraction,
                     why=f"the baseline memorizes flipped labels: its final accuracy on the noisy training labels "
                         f"(eval mode) is above the share of correct labels ({clean_fraction:g}), which only fitting "
                         f"wrong labels gives"),
        Precondition("train_memorized", ">=", 0.5,
                     why="the baseline has fitted at least half of the flipped training labels (predicted as their "
                         "wrong label, eval mode); the first check alone passes with a clean-label fit near 100% and "
                         "almost no memorization (measured: digits-mlp at 20 epochs, 0.62 on the noisy labels with "
                         "only 5-8% of the flipped labels fitted)"),
    )


#: 40% noise drawn from all 10 classes, as ELR's official code: 36% of the labels are wrong
ELR_NOISE = {"label_noise": 0.4, "noise_kind": "symmetric-all"}
_QUOTE = ("we design a regularization term that steers the model towards these targets, implicitly preventing "
          "memorization of the false labels")
_NUMBER = "CIFAR-10, 40% symmetric noise: ELR 89.15% (91.43% with cosine annealing) clean test accuracy"
_SCALE = "CIFAR-10/100 (ResNet-34, 150 epochs), Clothing1M, WebVision"
_SETTING = PaperSetting(train_size=45_000, epochs=150, params=21_300_000,
                        text="CIFAR-10 with 40% symmetric noise redrawn from all classes (official code), ResNet-34 "
                             "(about 21M parameters), 45k training and 5k validation images, SGD lr 0.02, weight "
                             "decay 1e-3, batch 128, 150 epochs with cosine annealing restarts (official "
                             "config_cifar10.json); also CIFAR-100, Clothing1M and WebVision")

CLAIMS = [
    Claim(
        id="elr-noisy-digits", technique="elr", task="digits-mlp", metric="test_acc", direction="higher",
        treatment=arm(("elr", {"beta": 0.7, "lam": 3.0})), baseline=arm(label="cross-entropy"), seeds=5,
        suites=("quick", "full"), overrides={**ELR_NOISE, "epochs": 60}, min_effect=0.01,
        preconditions=memorizes(0.64),
        paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE, paper_setting=_SETTING,
        notes="60 epochs, so that plain cross-entropy memorizes the flipped labels (measured over 5 seeds: accuracy "
              "on the noisy labels 0.94-0.95, 83-88% of the flipped labels fitted, final test accuracy 16-25 points "
              "below its best epoch); at the 20 epochs used before it had not begun to (seed 0: 6% of the flipped "
              "labels fitted). Noise redrawn from all classes, as the paper's code.",
    ),
    Claim(
        id="elr-noisy-cifar10-cnn", technique="elr", task="cifar10-cnn", metric="test_acc", direction="higher",
        treatment=arm(("elr", {"beta": 0.7, "lam": 3.0})), baseline=arm(label="cross-entropy"), seeds=3,
        suites=("full",), min_effect=0.02, preconditions=memorizes(0.64),
        overrides={**ELR_NOISE, "train_subset": 1_000, "augment": None, "batch_size": 32, "epochs": 60},
        paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE, paper_setting=_SETTING,
        notes="1,000 CIFAR-10 training images without augmentation, a 16-32-64 CNN, batch 32, 60 epochs: a setting "
              "in which plain cross-entropy memorizes the flipped labels on a CPU budget (2% of the paper's data; "
              "measured on seed 0: 38% of the flipped labels fitted at epoch 30, 94% at epoch 40, all of them from "
              "epoch 50, accuracy on the noisy labels 1.00; test accuracy 0.32 at epoch 15, 0.28 at epoch 30 and "
              "0.35 at the end, so memorization here does not lower the final test accuracy below its early peak). "
              "In the earlier setting (10k images with crop-flip, 20 epochs) the baseline had not begun to memorize "
              "(about 36% accuracy on the noisy labels, test accuracy still at its peak).",
    ),
]
