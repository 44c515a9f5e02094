"""PS-KD: progressive self-knowledge distillation, targets softened by the model's last-epoch predictions.

Paper: Kyungyul Kim, ByeongMoon Ji, Doyoung Yoon, Sangheum Hwang, "Self-Knowledge Distillation with
Progressive Refinement of Targets", ICCV 2021, arXiv:2006.12000.

Claim: training on targets (1 - alpha_t) * y + alpha_t * p^{t-1}, where p^{t-1} is the model's
own prediction for the sample in the previous epoch and alpha_t = alpha_T * t / T grows linearly,
"achieves not only better accuracy, but also provides high quality of confidence estimates in
terms of calibration" (abstract). Paper scale (official README): CIFAR-100, PreAct ResNet-18,
300 epochs: top-1 error 24.18% -> 20.82% and ECE 11.84% -> 1.77%; also ImageNet ResNet-152
(ECE 5.08% -> 1.85%), detection and translation. alpha_T = 0.8.
Where this falls short: checked on small CPU tasks for tens of epochs.

Details as in the official code: epoch t is 0-based and alpha_t = alpha_T * (t + 1) / T; in the
first epoch the stored predictions are the one-hot labels (so the first epoch is plain CE); the
prediction stored for a sample is the softmax of the training forward pass that used it, and it
replaces the previous one right after the step (predictions of the "previous epoch" are therefore
those of the last time the sample was seen). Label smoothing of the task is not applied on top.
With a mixing policy in the run, the soft targets are formed first and then mixed, and the stored
prediction comes from the unmixed sample (an extra forward pass without gradients, in eval mode).

Plain PyTorch::

    import torch, torch.nn.functional as F
    from trainlab.techniques.regularization.ps_kd import PSKDTargets

    model, pskd = torch.nn.Linear(4, 3), PSKDTargets(num_examples=100, num_classes=3, alpha_T=0.8)
    x, y, idx = torch.randn(8, 4), torch.randint(0, 3, (8,)), torch.arange(8)
    for epoch in range(3):
        soft = pskd.targets(y, idx, epoch, epochs=3)
        out = model(x)
        F.cross_entropy(out, soft).backward()
        pskd.remember(out, idx)
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

PAPER = Paper("Self-Knowledge Distillation with Progressive Refinement of Targets",
              "Kim, Ji, Yoon, Hwang", 2021, "2006.12000")


def alpha_schedule(alpha_T: float, epoch: int, epochs: int) -> float:
    """alpha_t = alpha_T * (epoch + 1) / epochs, epoch 0-based (the official code's form)."""
    return max(0.0, alpha_T * (epoch + 1) / epochs)


class PSKDTargets:
    """The per-sample store of last predictions and the soft targets built from it."""

    def __init__(self, num_examples: int, num_classes: int, alpha_T: float = 0.8) -> None:
        self.alpha_T = float(alpha_T)
        self.num_classes = num_classes
        self.predictions = torch.zeros(num_examples, num_classes)
        self.seen = torch.zeros(num_examples, dtype=torch.bool)

    def targets(self, labels: torch.Tensor, index: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        one_hot = F.one_hot(labels.long(), self.num_classes).float()
        index = index.to(self.predictions.device)
        # never-seen samples (the first epoch) use their label as "previous prediction"
        prev = torch.where(self.seen[index].view(-1, 1), self.predictions[index], one_hot.to(self.predictions.device))
        alpha = alpha_schedule(self.alpha_T, epoch, epochs)
        return (1.0 - alpha) * one_hot + alpha * prev.to(one_hot.device)

    def remember(self, logits_or_probs: torch.Tensor, index: torch.Tensor, probs: bool = False) -> None:
        p = logits_or_probs.detach().float()
        p = p if probs else p.softmax(dim=1)
        index = index.to(self.predictions.device)
        self.predictions[index] = p.to(self.predictions.device)
        self.seen[index] = True


@register
class PSKD(Technique):
    """Soft targets (1 - alpha_t) * y + alpha_t * (the sample's last prediction), alpha_t = alpha_T * t / T."""

    name = "ps-kd"
    family = "regularization"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = ("tests/techniques/test_ps_kd.py::test_three_epochs_match_a_transcription_of_the_authors_"
                         "training_loop: three epochs through the technique's hooks give the parameters and stored "
                         "predictions of a transcription of the authors' loop (lgcnsai/PS-KD-Pytorch, main.py "
                         "train, loss/pskd_loss.py): alpha schedule, one-hot first epoch, soft-target loss")
    modifies = frozenset({"batch", "loss_objective"})
    order = 10  # before mixing policies, so that mixup mixes the PS-KD targets
    summary = "progressive self-distillation: targets mixed with the model's last-epoch predictions"
    requires = frozenset({"classification"})

    def __init__(self, alpha_T: float = 0.8) -> None:
        if not 0.0 <= alpha_T <= 1.0:
            raise ConfigError(f"ps-kd: alpha_T must be in [0, 1], got {alpha_T}")
        super().__init__(alpha_T=alpha_T)
        self.alpha_T = float(alpha_T)
        self.store: PSKDTargets | None = None
        self._resumed: Mapping[str, Any] | None = None

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        self.store = PSKDTargets(state.num_train, state.num_classes, self.alpha_T)
        if self._resumed is not None:
            saved = self._resumed["predictions"]
            if tuple(saved.shape) != tuple(self.store.predictions.shape):
                raise CheckpointError(f"ps-kd: saved predictions have shape {tuple(saved.shape)}, "
                                      f"the data needs {tuple(self.store.predictions.shape)}")
            self.store.predictions, self.store.seen = saved.clone(), self._resumed["seen"].clone()
            self._resumed = None

    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        assert self.store is not None, "on_train_start was not called"
        if batch.targets.dim() != 1:
            raise ConfigError("ps-kd must see integer labels; put mixing policies after it (they are, by default)")
        if state.task is not None and state.task.label_smoothing:
            raise ConfigError("ps-kd and label smoothing cannot be combined (PS-KD replaces the targets)")
        soft = self.store.targets(batch.labels, batch.indices.cpu(), state.epoch, state.epochs).to(batch.inputs.device)
        return batch.replace(targets=soft)

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        # the base loss is already the cross-entropy with the PS-KD soft targets; remember predictions
        assert self.store is not None
        self.store.remember(unmixed_probabilities(state, batch, outputs), batch.indices.cpu(), probs=True)
        return base_loss

    def state_dict(self) -> dict[str, Any]:
        if self.store is None:
            return {}
        return {"predictions": self.store.predictions.clone(), "seen": self.store.seen.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._resumed = dict(state) if state else None


_QUOTE = ("it is confirmed that PS-KD achieves not only better accuracy, but also provides high quality of "
          "confidence estimates in terms of calibration as well as ordinal ranking")
_SCALE = "CIFAR-100 (PreAct ResNet-18/101, DenseNet-121, ResNeXt-29, PyramidNet-200; 300 epochs), ImageNet ResNet-152"
_SETTING = PaperSetting(
    train_size=50_000, epochs=300, params=11_200_000,
    text="CIFAR-100, PreAct ResNet-18, 300 epochs, alpha_T 0.8 (official README: top-1 error 24.18% -> 20.82%, ECE "
         "11.84% -> 1.77%); also deeper CIFAR-100 networks, ImageNet ResNet-152, detection and translation")
#: PS-KD regularizes against overconfidence on a fitted training set: the baseline fits its training data
_FITS = Precondition(
    "train_acc", ">=", 0.95,
    why="the baseline fits its training set (final-epoch training accuracy at least 95%), as the paper's CIFAR-100 "
        "networks do: the targets it softens are those of a model that has learned its training labels")
_GAP = Precondition(
    "train_acc - test_acc", ">=", 0.05,
    why="a train-test gap of at least 5 points: the overfitting a regularizer can reduce")
_OVERCONFIDENT = Precondition(
    "test_ece", ">=", 0.05,
    why="the baseline is miscalibrated (test ECE at least 5%; the paper's baseline: 11.84%), so there is "
        "overconfidence for the softened targets to remove")

CLAIMS = [
    Claim(
        id="ps-kd-accuracy-mnist1d", technique="ps-kd", task="mnist1d-mlp", metric="test_acc",
        direction="higher", treatment=arm(("ps-kd", {"alpha_T": 0.8})), baseline=arm(), seeds=5, suites=("full",),
        paper_quote=_QUOTE,
        paper_number="CIFAR-100 PreAct ResNet-18: top-1 error 24.18% -> 20.82%", paper_scale=_SCALE,
        paper_setting=_SETTING, preconditions=(_FITS, _GAP),
        notes="MNIST-1D with an MLP (20 epochs, Adam): the baseline overfits and is overconfident.",
    ),
    Claim(
        id="ps-kd-calibration-mnist1d", technique="ps-kd", task="mnist1d-mlp", metric="test_ece",
        direction="lower", treatment=arm(("ps-kd", {"alpha_T": 0.8})), baseline=arm(), seeds=5, suites=("full",),
        paper_quote=_QUOTE,
        paper_number="CIFAR-100 PreAct ResNet-18: ECE 11.84% -> 1.77%", paper_scale=_SCALE,
        paper_setting=_SETTING, preconditions=(_FITS, _OVERCONFIDENT),
        notes="MNIST-1D with an MLP (20 epochs, Adam); ECE with 15 equal-width bins.",
    ),
]
