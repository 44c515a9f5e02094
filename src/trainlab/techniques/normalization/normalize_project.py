"""Normalize-and-Project (NaP): normalization before nonlinearities plus weight-norm projection, so
the effective learning rate stays constant and is set only by an explicit schedule.

Paper: Clare Lyle, Zeyu Zheng, Khimya Khetarpal, James Martens, Hado van Hasselt, Razvan Pascanu,
Will Dabney, "Normalization and effective learning rates in reinforcement learning", NeurIPS 2024,
arXiv:2407.01800.

Claim: in a normalized network the parameter norm grows during training, and since the layers are
scale-invariant this silently decays the effective learning rate (ELR ~ lr / ||W||^2); on a
sequence of tasks this implicit decay makes the network lose plasticity. NaP (1) inserts a
normalization layer before every nonlinearity and (2) after each optimizer step projects each
hidden weight matrix back onto the norm it had at initialization, so the ELR stays constant and
the learning-rate schedule becomes explicit. NaP "improves robustness to nonstationarity" on
synthetic plasticity benchmarks (iterated random-label CIFAR-10), sequential and single-task Atari,
and does not hurt stationary CIFAR-10 / ImageNet / language-model training.
Paper scale: CIFAR-10 continual random-label memorization (20M steps, 200 label resets, Adam
1e-4), Rainbow on 57 Atari games and 10 sequential games (20M frames per game), ResNet-18/50 and a
400M-parameter transformer on stationary tasks.
Where this falls short: here the task sequence is a handful of label re-permutations (or
re-randomizations) of the digits data for tens of epochs, so plasticity loss is mild; no
official code for NaP was found, so the details below follow the paper's text.

What this implementation does:

* ``insert_norm_before_nonlinearities(model)``: in every nn.Sequential, an activation whose
  preceding module (skipping nn.Identity) is a Linear or Conv gets a normalization layer between
  them — LayerNorm over features for Linear, GroupNorm(1, C) (LayerNorm over C,H,W) for Conv —
  unless a normalization layer is already there. An nn.Identity placeholder in that slot (as
  trainlab's MLP has with norm="none") is replaced; otherwise the activation becomes
  Sequential(norm, activation). The Linear/Conv bias, made redundant by the norm's mean
  subtraction, is removed (``remove_bias=True``), as in the paper.
* ``WeightNormProjector``: records the Frobenius norm of every Linear/Conv weight at
  initialization and, on ``project()``, rescales each back to it: W <- W * ||W_0|| / ||W||. The
  network's last Linear (the output layer, not followed by a normalization, so not
  scale-invariant) is left alone unless ``project_output=True``. Normalization layers' scale and
  offset: with ``affine="joint"`` the concatenated (gamma, beta) vector of each norm layer is
  projected onto its initial norm (for ReLU-like activations scaling both together only rescales
  the next layer's input, which the next normalization removes); ``affine="none"`` leaves them
  free. Projection runs after every optimizer step (the paper found every step and every 1000
  steps nearly identical).
* The explicit schedule (``lr_schedule="cosine-restarts"``), the paper's sequential-task schedule:
  at every task change the learning rate restarts with a linear warm-up from
  ``init_factor`` x lr to lr over ``warmup_fraction`` of the task's steps, then a cosine decay to
  ``end_factor`` x lr at the task's end:
  factor(s) = init + (1 - init) * s / W for s < W, else
  end + (1 - end) * (1 + cos(pi * (s - W) / (S - W))) / 2, where s is the step within the task and
  S its length. The paper's Atari values were init 1e-8, peak 6.25e-4, 1000 warm-up steps, end
  1e-6 (relative factors ~1.6e-5 and 1.6e-3, the defaults here). ``lr_schedule="task"`` keeps the
  task's own schedule.

* ``project=False`` keeps the inserted normalization (and the removed biases) but never projects:
  the control "LayerNorm, no projection", which separates the projection's effect from that of the
  normalization it comes with (the paper compares both on its plasticity benchmarks).

The task sequence for the claims comes from the ``permuted-label-sequence`` technique (used in both
arms): every ``segment_epochs`` epochs the labels are re-permuted (a new class permutation) or, with
``mode="random"``, re-drawn at random per example (the paper's memorization benchmark). At each
epoch end it logs ``seq_acc``, the accuracy on the whole training set under the current labels (eval
mode), and at each segment's last epoch ``seq_end_acc``; in permute mode also ``seq_test_acc``
(test set, same permutation).

Plain PyTorch::

    import torch
    from trainlab.techniques.normalization.normalize_project import (
        WeightNormProjector, insert_norm_before_nonlinearities, nap_lr_factor)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    insert_norm_before_nonlinearities(model)           # Linear -> LayerNorm -> ReLU
    projector = WeightNormProjector(model)             # remembers the initial norms
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: nap_lr_factor(s, steps_per_task=100))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step(); sched.step(); projector.project()      # weights back on their initial norms
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.normalization.bn_only import is_norm_layer
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper("Normalization and effective learning rates in reinforcement learning",
              "Lyle, Zheng, Khetarpal, Martens, van Hasselt, Pascanu, Dabney", 2024, "2407.01800")

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.Mish, nn.Softplus,
)
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _norm_for(layer: nn.Module) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.LayerNorm(layer.out_features)
    return nn.GroupNorm(1, layer.out_channels)  # LayerNorm over (C, spatial) of each sample


def insert_norm_before_nonlinearities(model: nn.Module, remove_bias: bool = True) -> int:
    """Put a normalization layer between each Linear/Conv and the activation that follows it in an
    nn.Sequential, where none is; returns how many were inserted (see the module docstring)."""
    inserted = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.children())
        for i, act in enumerate(children):
            if not isinstance(act, ACTIVATION_TYPES):
                continue
            j = i - 1
            while j >= 0 and isinstance(children[j], nn.Identity):
                j -= 1
            if j < 0 or not isinstance(children[j], _WEIGHT_LAYERS):
                continue  # already normalized, or not a weight layer's activation
            layer = children[j]
            norm = _norm_for(layer).to(layer.weight.device)
            if j < i - 1:  # an Identity placeholder sits right before the activation: use its slot
                seq[i - 1] = norm
            else:
                seq[i] = nn.Sequential(norm, act)
            if remove_bias and layer.bias is not None:
                layer.register_parameter("bias", None)
            inserted += 1
    return inserted


def output_layer(model: nn.Module) -> nn.Module | None:
    """The model's last nn.Linear (in module order), taken to be the output layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class WeightNormProjector:
    """Projects weights (and optionally norm layers' joint scale/offset) onto their initial norms."""

    def __init__(self, model: nn.Module, project_output: bool = False, affine: str = "joint") -> None:
        if affine not in ("joint", "none"):
            raise ConfigError(f"normalize-and-project: affine must be 'joint' or 'none', got {affine!r}")
        out = None if project_output else output_layer(model)
        self.weights: list[nn.Parameter] = [m.weight for m in model.modules()
                                            if isinstance(m, _WEIGHT_LAYERS) and m is not out]
        self.affine: list[tuple[nn.Parameter, nn.Parameter | None]] = []
        if affine == "joint":
            for m in model.modules():
                w = getattr(m, "weight", None)
                if is_norm_layer(m) and isinstance(w, nn.Parameter):
                    b = getattr(m, "bias", None)
                    self.affine.append((w, b if isinstance(b, nn.Parameter) else None))
        self.weight_norms = torch.stack([w.detach().norm() for w in self.weights]) if self.weights else torch.zeros(0)
        self.affine_norms = torch.stack([self._joint_norm(w, b) for w, b in self.affine]) if self.affine else torch.zeros(0)

    @staticmethod
    def _joint_norm(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        sq = w.detach().pow(2).sum()
        if b is not None:
            sq = sq + b.detach().pow(2).sum()
        return sq.sqrt()

    @torch.no_grad()
    def project(self) -> None:
        if self.weights:
            norms = torch._foreach_norm(self.weights)
            scales = [(t.to(n.device) / n.clamp_min(1e-12)) for t, n in zip(self.weight_norms, norms)]
            torch._foreach_mul_(self.weights, scales)
        for (w, b), target in zip(self.affine, self.affine_norms):
            scale = target.to(w.device) / self._joint_norm(w, b).clamp_min(1e-12)
            w.mul_(scale)
            if b is not None:
                b.mul_(scale)

    def state_dict(self) -> dict[str, Any]:
        return {"weight_norms": self.weight_norms.clone(), "affine_norms": self.affine_norms.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["weight_norms"].shape != self.weight_norms.shape or state["affine_norms"].shape != self.affine_norms.shape:
            raise ConfigError("normalize-and-project: saved norms belong to another model")
        self.weight_norms = state["weight_norms"].clone()
        self.affine_norms = state["affine_norms"].clone()


def nap_lr_factor(step: int, steps_per_task: int, warmup_fraction: float = 0.05, init_factor: float = 1.6e-5,
                  end_factor: float = 1.6e-3) -> float:
    """Multiplier of the peak learning rate at global `step`: warm-up then cosine decay, restarted
    every `steps_per_task` steps (see the module docstring for the formula)."""
    if steps_per_task < 1:
        raise ConfigError(f"normalize-and-project: steps_per_task must be >= 1, got {steps_per_task}")
    s = step % steps_per_task
    warmup = int(round(warmup_fraction * steps_per_task))
    if s < warmup:
        return init_factor + (1.0 - init_factor) * s / warmup
    t = (s - warmup) / max(1, steps_per_task - warmup)
    return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


@register
class NormalizeAndProject(Technique):
    """NaP: normalization before nonlinearities, weights projected to their initial norms after
    every step, optionally the paper's restarted warm-up + cosine schedule per task."""

    name = "normalize-and-project"
    family = "normalization"
    paper = PAPER
    fidelity = "faithful"  # no official code was found; norm insertion, projection and schedule follow the text
    modifies = frozenset({"model", "weights"})
    order = 80  # project after other techniques' after_step updates
    summary = "LayerNorm before nonlinearities + weights projected to their initial norm each step"

    def __init__(self, insert_norms: bool = True, project_output: bool = False, affine: str = "joint",
                 lr_schedule: str = "task", segment_epochs: int | None = None, warmup_fraction: float = 0.05,
                 init_factor: float = 1.6e-5, end_factor: float = 1.6e-3, project: bool = True) -> None:
        super().__init__(insert_norms=insert_norms, project_output=project_output, affine=affine,
                         lr_schedule=lr_schedule, segment_epochs=segment_epochs, warmup_fraction=warmup_fraction,
                         init_factor=init_factor, end_factor=end_factor, project=project)
        if not isinstance(project, bool):
            raise ConfigError(f"normalize-and-project: project must be true or false, got {project!r}")
        if affine not in ("joint", "none"):
            raise ConfigError(f"normalize-and-project: affine must be 'joint' or 'none', got {affine!r}")
        if lr_schedule not in ("task", "cosine-restarts"):
            raise ConfigError(f"normalize-and-project: lr_schedule must be 'task' or 'cosine-restarts', got {lr_schedule!r}")
        if lr_schedule == "cosine-restarts" and (not isinstance(segment_epochs, int) or segment_epochs < 1):
            raise ConfigError("normalize-and-project: lr_schedule='cosine-restarts' needs segment_epochs >= 1 "
                              "(the task length in epochs)")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"normalize-and-project: warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.insert_norms, self.project_output, self.affine, self.project = insert_norms, project_output, affine, project
        if not project:  # the control "normalization, no projection" leaves the weights alone
            self.modifies = frozenset(self.modifies - {"weights"})
        self.lr_schedule, self.segment_epochs = lr_schedule, segment_epochs
        self.warmup_fraction, self.init_factor, self.end_factor = warmup_fraction, init_factor, end_factor
        if lr_schedule != "task":  # the schedule is this technique's only when it sets one
            self.modifies = frozenset(self.modifies | {"schedule"})
        self.projector: WeightNormProjector | None = None
        self._pending: Mapping[str, Any] | None = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        inserted = insert_norm_before_nonlinearities(model) if self.insert_norms else 0
        if inserted == 0 and not any(is_norm_layer(m) for m in model.modules()):
            raise ConfigError("normalize-and-project: the model has no normalization layer and none could be "
                              "inserted (no Linear/Conv -> activation inside an nn.Sequential)")
        self.projector = WeightNormProjector(model, self.project_output, self.affine) if self.project else None
        if self._pending is not None and self.projector is not None:
            self.projector.load_state_dict(self._pending)
            self._pending = None
        return model

    def make_scheduler(self, optimizer: torch.optim.Optimizer, task: Any, total_steps: int) -> Any:
        if self.lr_schedule == "task":
            return None
        steps_per_task = max(1, total_steps // task.epochs) * self.segment_epochs
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: nap_lr_factor(
            s, steps_per_task, self.warmup_fraction, self.init_factor, self.end_factor))

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        if self.projector is not None:
            self.projector.project()

    def state_dict(self) -> dict[str, Any]:
        return self.projector.state_dict() if self.projector is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if self.projector is None:
            self._pending = state
        else:
            self.projector.load_state_dict(state)


def segment_labels(labels: torch.Tensor, segment: int, num_classes: int, mode: str, seed: int) -> torch.Tensor:
    """The labels of task `segment`: "permute" maps class c to perm[c] (segment 0: identity);
    "random" draws a fresh uniform label per example (every segment, including 0)."""
    if mode not in ("permute", "random"):
        raise ConfigError(f"permuted-label-sequence: mode must be 'permute' or 'random', got {mode!r}")
    g = torch.Generator().manual_seed((seed * 1_000_003 + segment * 7_919 + 17) % (2**63))
    if mode == "permute":
        perm = torch.arange(num_classes) if segment == 0 else torch.randperm(num_classes, generator=g)
        return perm.to(labels.device)[labels]
    return torch.randint(0, num_classes, labels.shape, generator=g).to(labels.device)


@register
class PermutedLabelSequence(Technique):
    """A task sequence for plasticity experiments: labels change every `segment_epochs` epochs.
    Use it in both arms; it logs seq_acc / seq_end_acc (and seq_test_acc in permute mode)."""

    name = "permuted-label-sequence"
    family = "normalization"
    paper = PAPER
    fidelity = "control"  # the benchmark's task sequence, used in every arm; not the paper's method
    requires = frozenset({"classification"})  # it permutes or redraws class labels
    modifies = frozenset({"batch"})
    order = 5  # change the labels before any other batch transform sees them
    summary = "diagnostic task sequence: labels re-permuted (or re-randomized) every k epochs"

    def __init__(self, segment_epochs: int = 5, mode: str = "permute", eval_batch_size: int = 1024) -> None:
        super().__init__(segment_epochs=segment_epochs, mode=mode, eval_batch_size=eval_batch_size)
        if not isinstance(segment_epochs, int) or segment_epochs < 1:
            raise ConfigError(f"permuted-label-sequence: segment_epochs must be a positive integer, got {segment_epochs!r}")
        if mode not in ("permute", "random"):
            raise ConfigError(f"permuted-label-sequence: mode must be 'permute' or 'random', got {mode!r}")
        self.segment_epochs, self.mode, self.eval_batch_size = segment_epochs, mode, eval_batch_size
        self.data = None
        self._cache: dict[str, Any] = {}

    def segment(self, epoch: int) -> int:
        return epoch // self.segment_epochs

    def _labels(self, split: str, segment: int, state: TrainState) -> torch.Tensor:
        key = (split, segment)
        if self._cache.get("key") != key:
            original = self.data.train_y if split == "train" else self.data.test_y
            self._cache = {"key": key, "labels": segment_labels(original, segment, state.num_classes, self.mode,
                                                                state.seed)}
        return self._cache["labels"]

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        from trainlab.tasks.loading import load_task_data

        if state.task is None:
            raise ConfigError("permuted-label-sequence needs the run's task (it evaluates on the training data)")
        self.data = load_task_data(state.task, state.seed)

    def transform_batch(self, batch: Batch, state: TrainState) -> Batch:
        if batch.targets.dim() != 1:
            raise ConfigError("permuted-label-sequence must see integer labels (put it before mixing techniques)")
        seg = self.segment(state.epoch)
        if self.mode == "permute":
            g_labels = segment_labels(batch.targets, seg, state.num_classes, "permute", state.seed)
        else:
            g_labels = self._labels("train", seg, state).to(batch.targets.device)[batch.indices.cpu()]
        return batch.replace(targets=g_labels, labels=g_labels)

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        from trainlab.training.metrics import evaluate

        if self.data is None:
            return
        seg = self.segment(state.epoch)
        acc = evaluate(model, self.data.train_x, self._labels("train", seg, state), self.eval_batch_size,
                       state.device)["acc"]
        state.epoch_metrics["seq_acc"] = acc
        state.epoch_metrics["seq_segment"] = float(seg)
        if self.mode == "permute":
            test_labels = segment_labels(self.data.test_y, seg, state.num_classes, "permute", state.seed)
            state.epoch_metrics["seq_test_acc"] = evaluate(model, self.data.test_x, test_labels,
                                                           self.eval_batch_size, state.device)["acc"]
        if (state.epoch + 1) % self.segment_epochs == 0:
            state.epoch_metrics["seq_end_acc"] = acc


_SEQ = ("permuted-label-sequence", {"segment_epochs": 3, "mode": "permute"})
_QUOTE = ("\"ensuring that the effective learning rate remains constant throughout training\" ... \"improving "
          "robustness to nonstationarity in synthetic plasticity loss benchmarks\" (abstract)")
#: 10 tasks of 3 epochs; no weight decay and a constant learning rate in both arms
_SEQUENCE = {"epochs": 30, "weight_decay": 0.0, "schedule": "constant"}
_NUMBER = "iterated random-label CIFAR-10: plain networks' accuracy on new labels falls over resets, NaP's does not"
_SCALE = "CIFAR-10 random-label memorization, 200 label resets, 20M steps; sequential Atari"
_SETTING = PaperSetting(text="iterated random-label memorization of CIFAR-10 images (200 label resets, 20M steps, "
                             "Adam 1e-4), plus sequential and single-task Atari (Rainbow, 20M frames a game); here "
                             "the digits data (or 256 of its images) with a 2-layer, 128-wide MLP")
_NAP = ("normalize-and-project", {})
#: test_acc is read against the original labels, which the sequence no longer trains on: chance-level
#: test accuracy is expected in both arms and is no sign of a broken model
_RELABELLED = ("baseline", "treatment")
#: the control: the same LayerNorms inserted (and biases removed), weights never projected
_LN_ONLY = ("normalize-and-project", {"project": False})
#: the paper's main plasticity benchmark: every 15 epochs each of 256 training images gets a fresh random label
#: (12 tasks), Adam 1e-3, batch 32; metric: accuracy on the current labels at the end of the last task
_RANDOM = ("permuted-label-sequence", {"segment_epochs": 15, "mode": "random"})
_RANDOM_SEQUENCE = {"epochs": 180, "weight_decay": 0.0, "schedule": "constant", "train_subset": 256,
                    "batch_size": 32, "optimizer": "adam", "lr": 1e-3}
_MEMORIZES = Precondition("max:seq_end_acc", ">=", 0.8, arm="baseline", over="min",
                          why="the baseline memorizes the random labels of some task (the benchmark measures how "
                              "well that ability lasts)")
_LOSES_PLASTICITY = Precondition("max:seq_end_acc - seq_end_acc", ">=", 0.03, arm="baseline", over="mean",
                                 why="the baseline loses plasticity: its end-of-task accuracy on the last task is "
                                     "below its best earlier one")

CLAIMS = [
    Claim(
        id="nap-random-labels-digits", technique="normalize-and-project", task="digits-mlp",
        metric="seq_end_acc", direction="higher",
        treatment=arm(_RANDOM, _NAP, label="NaP (LayerNorm + projection)"),
        baseline=arm(_RANDOM, _LN_ONLY, label="LayerNorm, no projection"),
        overrides=_RANDOM_SEQUENCE, paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE,
        paper_setting=_SETTING, preconditions=(_MEMORIZES, _LOSES_PLASTICITY),
        allow_collapse=_RELABELLED, seeds=5, suites=("full",),
        notes="The paper's benchmark, iterated random-label memorization, against the control that separates the "
              "projection from the normalization it comes with: 12 tasks of 15 epochs on 256 digits images, each "
              "task a fresh random label per image (the same labels in both arms of a seed).",
    ),
    Claim(
        id="nap-random-labels-vs-plain-digits", technique="normalize-and-project", task="digits-mlp",
        metric="seq_end_acc", direction="higher",
        treatment=arm(_RANDOM, _NAP, label="NaP (LayerNorm + projection)"),
        baseline=arm(_RANDOM, label="plain MLP (no normalization)"),
        overrides=_RANDOM_SEQUENCE, paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE,
        paper_setting=_SETTING, preconditions=(_MEMORIZES, _LOSES_PLASTICITY),
        allow_collapse=_RELABELLED, seeds=5, suites=("full",),
        notes="As nap-random-labels-digits against the unnormalized MLP: normalization and projection together. "
              "Shares the NaP runs.",
    ),
    Claim(
        id="nap-plasticity-digits", technique="normalize-and-project", task="digits-mlp",
        metric="seq_end_acc", direction="higher",
        treatment=arm(_SEQ, _NAP, label="NaP (LayerNorm + projection)"),
        baseline=arm(_SEQ, label="plain MLP (no normalization)"),
        overrides=_SEQUENCE, paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE, paper_setting=_SETTING,
        allow_collapse=_RELABELLED, seeds=5, suites=("full",),
        notes="LayerNorm + projection together against no normalization. Class labels re-permuted every 3 epochs "
              "(10 tasks, SGD+momentum); metric: training accuracy on the last task's labels at its end. The "
              "projection's own share: nap-projection-digits.",
    ),
    Claim(
        id="nap-projection-digits", technique="normalize-and-project", task="digits-mlp",
        metric="seq_end_acc", direction="higher",
        treatment=arm(_SEQ, _NAP, label="NaP (LayerNorm + projection)"),
        baseline=arm(_SEQ, _LN_ONLY, label="LayerNorm, no projection"),
        overrides=_SEQUENCE, paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE, paper_setting=_SETTING,
        allow_collapse=_RELABELLED, seeds=5, suites=("full",),
        notes="The control for nap-plasticity-digits (same NaP runs): the same LayerNorms without the projection.",
    ),
    Claim(
        id="nap-plasticity-digits-adam", technique="normalize-and-project", task="digits-mlp",
        metric="mean:seq_end_acc", direction="higher",
        treatment=arm(_SEQ, _NAP, label="NaP (LayerNorm + projection)"),
        baseline=arm(_SEQ, label="plain MLP (no normalization)"),
        overrides={**_SEQUENCE, "optimizer": "adam", "lr": 1e-3}, paper_quote=_QUOTE, paper_number=_NUMBER,
        paper_scale=_SCALE, paper_setting=_SETTING,
        allow_collapse=_RELABELLED, seeds=5, suites=("full",),
        notes="As nap-plasticity-digits with Adam (the paper's optimizer); metric: mean over the 10 tasks of the "
              "accuracy at each task's end. LayerNorm + projection against no normalization; the control is "
              "nap-projection-digits-adam.",
    ),
    Claim(
        id="nap-projection-digits-adam", technique="normalize-and-project", task="digits-mlp",
        metric="mean:seq_end_acc", direction="higher",
        treatment=arm(_SEQ, _NAP, label="NaP (LayerNorm + projection)"),
        baseline=arm(_SEQ, _LN_ONLY, label="LayerNorm, no projection"),
        overrides={**_SEQUENCE, "optimizer": "adam", "lr": 1e-3}, paper_quote=_QUOTE, paper_number=_NUMBER,
        paper_scale=_SCALE, paper_setting=_SETTING,
        allow_collapse=_RELABELLED, seeds=5, suites=("full",),
        notes="The control for nap-plasticity-digits-adam (same NaP runs): the same LayerNorms without the projection.",
    ),
    Claim(
        id="nap-schedule-digits", technique="normalize-and-project", task="digits-mlp",
        metric="seq_end_acc", direction="higher",
        treatment=arm(_SEQ, ("normalize-and-project", {"lr_schedule": "cosine-restarts", "segment_epochs": 3}),
                      label="NaP + warm-up/cosine restarted per task"),
        baseline=arm(_SEQ, label="plain MLP (no normalization)"),
        overrides=_SEQUENCE, paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale=_SCALE, paper_setting=_SETTING,
        allow_collapse=_RELABELLED, seeds=5, suites=("full",),
        notes="NaP with the paper's sequential-task schedule (warm-up then cosine, restarted at each task).",
    ),
]
