"""AdaMixUp: mixup with a learned mixing policy and an intrusion discriminator.

Paper: Hongyu Guo, Yongyi Mao, Richong Zhang, "MixUp as Locally Linear Out-Of-Manifold
Regularization", AAAI 2019, arXiv:1809.02499.

Claim: mixup can suffer "manifold intrusion" (mixed samples that coincide with real data of
another class get conflicting labels). AdaMixUp learns the mixing policy per pair with a policy
region generator and an intrusion discriminator, and "improves upon MixUp when applied to the
current art of deep classification models" (abstract). Paper scale: MNIST, Fashion-MNIST, SVHN,
CIFAR-10/100 (and 20% subsets), ImageNet-R, with ResNet-18 / a small CNN (tensorpack, hundreds of
epochs); the table's numbers could not be read in this environment and are not restated.
Where this falls short: small CPU tasks, few epochs.

What is trained, following the official implementation (GitHub.AdaMixup.AAAI.MNIST.Cifar.py):

* The batch is split in halves. The first half x1 is mixed with partners x2 (a permutation of the
  batch); the second half is kept "unseen" as extra original examples for the discriminator.
* Policy region generator: a network of the classifier's architecture (a fresh copy here, with its
  last Linear replaced by Linear(F, 100) -> Linear(100, 3)) sees the noisy pair
  (m1 * x1 + m2 * x2) / 2, m ~ N(0, 1) truncated at 2 std, and outputs softmax (alpha, delta, eps);
  lam = alpha + u * delta with u ~ U(0, 1) (reparameterized, so lam carries gradients).
* The classifier is trained on the mixed samples (soft labels lam * y1 + (1 - lam) * y2) together
  with the original x1 (cross-entropy on both).
* Intrusion discriminator: Linear(F, C) -> Linear(C, 2) on the classifier's penultimate features
  (shared backbone), trained to tell originals (x1 and the unseen half, label 1) from mixed samples
  (label 0).
* All of it minimizes the sum of the two cross-entropies: classifier, generator and discriminator.

Differences from the official code: the discriminator reuses the classifier's forward pass of
[mixed, x1, unseen] (the official code runs the shared backbone a second time on a shuffled copy),
so the classifier's batch also contains the unseen half as clean examples, whose loss is not used;
the generator and discriminator are optimized by their own optimizer of the task's kind and
schedule (the official code uses one optimizer for all). Batch-norm statistics of the classifier
therefore see [mixed, x1, unseen] together.

The extra networks live inside the technique (built at on_train_start, in its state_dict).
AdaMixUp owns the training objective, so it cannot be combined with ELR, PS-KD or DM, nor with
another mixing policy.

Plain PyTorch: the building blocks are ``PolicyGenerator`` (pair -> lam) and ``IntrusionHead``::

    import torch, torch.nn.functional as F
    from trainlab.techniques.regularization.adamixup import PolicyGenerator

    gen = PolicyGenerator(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32)), features=32)
    x1, x2 = torch.randn(8, 16), torch.randn(8, 16)
    lam = gen(x1, x2)                       # [8], in (0, 1), differentiable
    x_mix = lam.view(-1, 1) * x1 + (1 - lam.view(-1, 1)) * x2
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, arm
from trainlab.errors import ConfigError
from trainlab.techniques.regularization.mixup import CIFAR10_OVERFIT, MNIST1D_OVERFIT, OVERFITS
from trainlab.techniques.regularization.nested_dropout import last_linear
from trainlab.techniques.registry import register
from trainlab.training.optim import build_optimizer, build_scheduler
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper("MixUp as Locally Linear Out-Of-Manifold Regularization", "Guo, Mao, Zhang", 2019, "1809.02499")


def _init_small(layer: nn.Linear) -> nn.Linear:
    # the official code initializes these heads with N(0, 1e-3^2) weights
    nn.init.normal_(layer.weight, std=1e-3)
    nn.init.zeros_(layer.bias)
    return layer


class PolicyGenerator(nn.Module):
    """backbone(noisy pair) -> Linear(F, 100) -> Linear(100, 3) -> softmax (alpha, delta, eps);
    lam = alpha + u * delta, u ~ U(0, 1)."""

    def __init__(self, backbone: nn.Module, features: int, hidden: int = 100, noise: bool = True) -> None:
        super().__init__()
        self.backbone, self.noise = backbone, noise
        self.head = nn.Sequential(_init_small(nn.Linear(features, hidden)), _init_small(nn.Linear(hidden, 3)))

    def region(self, x1: torch.Tensor, x2: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """softmax outputs [B, 3] = (alpha, delta, discarded)."""
        if self.noise:
            m1 = nn.init.trunc_normal_(torch.empty(x1.shape), a=-2.0, b=2.0, generator=generator).to(x1.device)
            m2 = nn.init.trunc_normal_(torch.empty(x2.shape), a=-2.0, b=2.0, generator=generator).to(x2.device)
            gate = (m1 * x1 + m2 * x2) / 2.0
        else:
            gate = (x1 + x2) / 2.0
        return self.head(self.backbone(gate)).softmax(dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        r = self.region(x1, x2, generator)
        u = torch.rand(x1.shape[0], generator=generator).to(x1.device)
        return r[:, 0] + u * r[:, 1]


class IntrusionHead(nn.Module):
    """Linear(F, C) -> Linear(C, 2) on penultimate features: original (1) or mixed (0)."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_init_small(nn.Linear(features, num_classes)), _init_small(nn.Linear(num_classes, 2)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def _generator_backbone(model: nn.Module, seed: int) -> tuple[nn.Module, int]:
    """A freshly initialized copy of the classifier without its last Linear (features out)."""
    backbone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in backbone.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    parent, attr, layer = last_linear(backbone)
    if not attr:
        raise ConfigError("adamixup needs a model whose last Linear layer is a submodule")
    setattr(parent, attr, nn.Identity())
    return backbone, layer.in_features


@register
class AdaMixUp(Technique):
    """Mixup whose lam per pair comes from a learned policy network, kept off the data manifold by an
    intrusion discriminator."""

    name = "adamixup"
    family = "regularization"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the intrusion discriminator reuses the classifier's forward pass of [mixed, x1, unseen]; the official code "
        "runs the shared backbone a second time on a shuffled copy, so here the classifier's batch also holds the "
        "unseen half (its loss unused) and batch-norm statistics see [mixed, x1, unseen] together",
        "the policy generator and discriminator have their own optimizer of the task's kind and schedule; the "
        "official code uses one optimizer for all networks",
        "the policy generator's backbone is a freshly initialized copy of the task's classifier (the official code "
        "builds it for its own architectures)",
    )
    modifies = frozenset({"batch", "loss_objective"})
    order = 20
    incompatible_with = frozenset({"mixup", "cutmix"})
    summary = "mixup with learned per-pair mixing ratios and an intrusion discriminator"
    requires = frozenset({"classification"})

    def __init__(self, hidden: int = 100, noise: bool = True) -> None:
        super().__init__(hidden=hidden, noise=noise)
        self.hidden, self.noise = int(hidden), bool(noise)
        self.policy: PolicyGenerator | None = None
        self.intrusion: IntrusionHead | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._features: torch.Tensor | None = None
        self._capture = False
        self._hook = None
        self._resumed: Mapping[str, Any] | None = None
        self._lam_sum, self._lam_n, self._disc_correct, self._disc_n = 0.0, 0, 0, 0

    # ---- setup ----------------------------------------------------------------------------
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        backbone, features = _generator_backbone(model, state.seed + 7_777)
        self.policy = PolicyGenerator(backbone, features, self.hidden, self.noise).to(state.device)
        self.intrusion = IntrusionHead(features, state.num_classes).to(state.device)
        params = list(self.policy.parameters()) + list(self.intrusion.parameters())
        self.optimizer = build_optimizer(state.task, params)
        self.scheduler = build_scheduler(state.task, self.optimizer, state.total_steps, state.steps_per_epoch)
        _, _, head = last_linear(model)
        if self._hook is not None:
            self._hook.remove()
        self._hook = head.register_forward_pre_hook(self._grab_features)
        if self._resumed is not None:
            self._load_now(self._resumed)
            self._resumed = None

    def _grab_features(self, module: nn.Module, args: tuple) -> None:
        if self._capture:
            self._features = args[0]

    # ---- per step ---------------------------------------------------------------------------
    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        assert self.policy is not None, "on_train_start was not called"
        if "mix" in batch.meta:
            raise ConfigError("adamixup got an already mixed batch; use one mixing policy per run")
        n = batch.inputs.shape[0]
        h = n // 2
        if h < 1:
            raise ConfigError("adamixup needs batches of at least 2 samples")
        g = state.generator
        perm = torch.randperm(n, generator=g).to(batch.inputs.device)
        x1, x2, unseen = batch.inputs[:h], batch.inputs[perm][:h], batch.inputs[h:2 * h]
        y1, y2, y_unseen = batch.labels[:h], batch.labels[perm][:h], batch.labels[h:2 * h]
        lam = self.policy(x1, x2, g)
        shape = (-1,) + (1,) * (x1.dim() - 1)
        x_mix = lam.view(shape) * x1 + (1.0 - lam.view(shape)) * x2
        onehot = lambda y: F.one_hot(y, state.num_classes).float()  # noqa: E731
        y_mix = lam.view(-1, 1) * onehot(y1) + (1.0 - lam.view(-1, 1)) * onehot(y2)
        self._capture = True
        self._lam_sum += float(lam.detach().sum())
        self._lam_n += h
        mix_labels = torch.where(lam.detach() >= 0.5, y1, y2)
        return batch.replace(
            inputs=torch.cat([x_mix, x1, unseen]),
            targets=torch.cat([y_mix, onehot(y1), onehot(y_unseen)]),
            labels=torch.cat([mix_labels, y1, y_unseen]),
            indices=torch.cat([batch.indices[:h], batch.indices[:h], batch.indices[h:2 * h]]),
            meta=dict(batch.meta, adamixup={"half": h, "lam": lam.detach()}),
        )

    def loss(self, outputs: torch.Tensor, batch: Batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        assert self.intrusion is not None
        h = batch.meta["adamixup"]["half"]
        self._capture = False
        features, self._features = self._features, None
        if features is None or features.shape[0] != outputs.shape[0]:
            raise ConfigError("adamixup could not read the classifier's penultimate features")
        cls_loss = state.loss_fn(outputs[:2 * h], batch.targets[:2 * h])
        disc_labels = torch.cat([torch.zeros(h), torch.ones(2 * h)]).long().to(outputs.device)
        disc_logits = self.intrusion(features)
        self._disc_correct += int((disc_logits.detach().argmax(1) == disc_labels).sum())
        self._disc_n += disc_labels.numel()
        return cls_loss + F.cross_entropy(disc_logits, disc_labels)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        assert self.optimizer is not None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self._lam_n:
            state.epoch_metrics["adamixup_lam_mean"] = self._lam_sum / self._lam_n
        if self._disc_n:
            state.epoch_metrics["adamixup_intrusion_acc"] = self._disc_correct / self._disc_n
        self._lam_sum, self._lam_n, self._disc_correct, self._disc_n = 0.0, 0, 0, 0

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ---- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.policy is None:
            return {}
        return {"policy": self.policy.state_dict(), "intrusion": self.intrusion.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if self.policy is None:  # nets are built at on_train_start: apply there
            self._resumed = dict(state)
        else:
            self._load_now(state)

    def _load_now(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.intrusion.load_state_dict(state["intrusion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


_QUOTE = ("Extensive experiments demonstrate that AdaMixUp improves upon MixUp when applied to the current art "
          "of deep classification models")

_SETTING = PaperSetting(train_size=50_000, text="MNIST, Fashion-MNIST, SVHN, CIFAR-10/100 (also 20% subsets), "
                                              "ImageNet-R; ResNet-18 and a small CNN in tensorpack, hundreds of epochs")
_SCALE = "MNIST, Fashion-MNIST, SVHN, CIFAR-10/100; ResNet-18 and a small CNN; hundreds of epochs"
_NUMBER = "(not restated: the paper's Table 1 could not be read in this environment)"
_VARIANT = ("Tests this project's variant of AdaMixUp (fidelity: variant; see AdaMixUp.deviations: a shared forward "
            "pass for the discriminator and a separate optimizer for the policy networks). ")

# every AdaMixUp claim shares its treatment, metric and the paper's words; each sets its baseline and data
_claim = functools.partial(
    Claim, technique="adamixup", metric="test_acc", direction="higher", treatment=arm("adamixup"),
    suites=("full",), paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE, paper_setting=_SETTING)
_MIXUP = arm(("mixup", {"alpha": 1.0}))
_ERM = arm(label="ERM (no mixing)")

CLAIMS = [
    _claim(
        id="adamixup-vs-mixup-mnist1d", task="mnist1d-mlp", baseline=_MIXUP, seeds=10, overrides=MNIST1D_OVERFIT,
        notes=_VARIANT + "MNIST-1D with an MLP (60 epochs, Adam: the setting in which plain training overfits); "
              "mixup alpha=1 (the paper's MixUp baseline uses alpha=1). The policy generator is an MLP of the same "
              "shape. Whether plain training overfits here (the regime of mixing) is checked by "
              "adamixup-vs-erm-mnist1d, which shares the AdaMixUp runs.",
    ),
    _claim(
        id="adamixup-vs-erm-mnist1d", task="mnist1d-mlp", baseline=_ERM, seeds=10, overrides=MNIST1D_OVERFIT,
        preconditions=OVERFITS,
        notes=_VARIANT + "AdaMixUp against plain training, with the regime check that plain training overfits; "
              "shares its runs with adamixup-vs-mixup-mnist1d and mixup-mnist1d.",
    ),
    _claim(
        id="adamixup-vs-mixup-cifar10-cnn", task="cifar10-cnn", baseline=_MIXUP, seeds=5, overrides=CIFAR10_OVERFIT,
        notes=_VARIANT + "The mixup claim's overfitting setting (1,000 CIFAR-10 images, no augmentation, batch 32, "
              "60 epochs; shares the mixup runs); the generator doubles the cost of a step. The regime (plain "
              "training overfits) is checked by adamixup-vs-erm-cifar10-cnn. The earlier setting (10k images with "
              "crop-flip, 15 epochs) underfit; inconclusive there.",
    ),
    _claim(
        id="adamixup-vs-erm-cifar10-cnn", task="cifar10-cnn", baseline=_ERM, seeds=5, overrides=CIFAR10_OVERFIT,
        preconditions=OVERFITS,
        notes=_VARIANT + "AdaMixUp against plain training with the regime check; shares its runs with "
              "adamixup-vs-mixup-cifar10-cnn and mixup-cifar10-cnn.",
    ),
]
