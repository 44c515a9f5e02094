"""HESSO: Hybrid Efficient Structured Sparse Optimizer (Only-Train-Once series).

Paper: Tianyi Chen, Xiaoyi Qu, David Aponte, Colby Banbury, Jongwoo Ko, Tianyu Ding, Yong Ma,
Vladimir Lyapunov, Ilya Zharkov, Luming Liang, "HESSO: Towards Automatic Efficient and User
Friendly Any Neural Network Training and Pruning", 2024, arXiv:2409.09085. The pruning groups and
subnet construction follow OTOv2 (Chen et al., "OTOv2: Automatic, Generic, User-Friendly",
ICLR 2023, arXiv:2303.06862) and OTOv3 (arXiv:2312.09411); the half-space projection variant is
OTOv2's DHSPG step.

Claim: trained once with HESSO, a network reaches a target group sparsity and its zero groups can
be removed without fine-tuning, keeping accuracy close to the dense model ("HESSO could
automatically and efficiently train a DNN within a single run to produce a high-performing
sub-network"). Checked here as (1) non-inferiority to the dense model trained with the same budget
(margin 1 point of test accuracy), (2) against magnitude pruning at the step where HESSO reaches
its target followed by the same remaining training (a fair one-run baseline), and (3) against
magnitude pruning after training without fine-tuning (OTO's "no fine-tuning" property only; that
baseline never adapts to its pruning, so beating it says little about HESSO's selection).

Groups (OTOv2's zero-invariant groups, as the official code's node groups hold them): a group owns
its producers' rows, biases and norm entries; the importance scores, the shrinking and the group
sparsity are computed on those alone, and the consumers' input columns are dropped only when the
subnet is built (trainlab.techniques.pruning.groups).

Algorithm (as in the paper and the official code): train normally for `warmup_steps`; then
`pruning_periods` periods of equal length L (= pruning_steps // pruning_periods). At the start of
each period, score every group not yet pruned by a weighted sum of five saliency criteria, each
normalized by its L2 norm over all groups (group magnitude, magnitude per element, cosine
between the group and its update direction + 1, first- and second-order Taylor |<x, d>|,
<x, d>^2 / 2; weights 0.2 each), and mark the lowest-scoring groups redundant (period k gets
floor(target * G) // P of them, the last one the rest). During the period, after each ordinary
optimizer step, redundant groups are multiplied by (L - t - 1) / (L - t) (t = 0..L-1), so they
reach exactly zero at the period's end; pruned groups stay zero afterwards. So after
warmup_steps + P * L steps exactly floor(target * G) groups are zero. Groups are chosen so
that every layer keeps at least one output channel.

The base step is SGD (momentum, Nesterov, coupled weight decay), Adam (coupled weight decay) or
AdamW (decoupled), written out here so the optimizer's state round-trips through state_dict;
with target 0 it reproduces torch.optim's trajectories.

Scale and shortfalls: the paper trains ImageNet/CIFAR ResNets, VGG, BERT, YOLO and LLMs for
hundreds of epochs on GPUs; here the checks are a small CNN on scikit-learn digits (cheap) and
ResNet-20 on a CIFAR-10 subset (about 70 minutes on 2 cores). The Corrective Redundant
Identification Cycle (CRIC) of the paper is not implemented. The cosine criterion's sign follows
the official code. The half-space variant uses a fixed lambda instead of DHSPG's adaptive one.
See HESSOTechnique.deviations for every known difference from the official optimizer.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper(
    title="HESSO: Towards Automatic Efficient and User Friendly Any Neural Network Training and Pruning",
    authors="Chen, Qu, Aponte, Banbury, Ko, Ding, Ma, Lyapunov, Zharkov, Liang",
    year=2024,
    arxiv="2409.09085",
)

DEFAULT_WARMUP_FRACTION, DEFAULT_PRUNING_FRACTION, DEFAULT_PRUNING_PERIODS = 0.1, 0.15, 10
DEFAULT_IMPORTANCE = {"magnitude": 0.2, "avg_magnitude": 0.2, "cosine_similarity": 0.2,
                      "taylor_first_order": 0.2, "taylor_second_order": 0.2}
VARIANTS = ("sgd", "adam", "adamw")


class HESSO(torch.optim.Optimizer):
    """HESSO over a PruningSpace. All trainable parameters of the space's model are optimized
    (or `params`, which must then include every parameter that belongs to a group).

    warmup_steps: optimizer steps before pruning starts. pruning_steps: steps over which the
    groups are driven to zero, in `pruning_periods` equal periods. projection: "shrink" (HESSO's
    progressive shrinking) or "half-space" (DHSPG's half-space step on redundant groups, with the
    sparsity-promoting weight `half_space_lambda` and threshold `half_space_epsilon`).
    channel_multiple: keep a multiple of this many groups per layer where possible (the official
    code's group_divisible; friendlier widths for CPU kernels). With a value > 1 the number of
    zero groups can end below the target.
    """

    def __init__(self, space: Any, lr: float, target_group_sparsity: float = 0.5, variant: str = "sgd",
                 momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, warmup_steps: int = 0,
                 pruning_steps: int = 1, pruning_periods: int = 1,
                 importance: Mapping[str, float] | None = None, projection: str = "shrink",
                 half_space_lambda: float = 1e-3, half_space_epsilon: float = 0.0, channel_multiple: int = 1,
                 params: Iterable[nn.Parameter] | Iterable[dict] | None = None) -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"HESSO variant must be one of {', '.join(VARIANTS)}, got '{variant}'")
        if not lr > 0:
            raise ConfigError(f"HESSO learning rate must be positive, got {lr}")
        if not 0.0 <= target_group_sparsity < 1.0:
            raise ConfigError(f"target_group_sparsity must be in [0, 1), got {target_group_sparsity}")
        if projection not in ("shrink", "half-space"):
            raise ConfigError(f"HESSO projection must be 'shrink' or 'half-space', got '{projection}'")
        weights = dict(DEFAULT_IMPORTANCE if importance is None else importance)
        unknown = set(weights) - set(DEFAULT_IMPORTANCE)
        if unknown:
            raise ConfigError(f"unknown importance criteria {sorted(unknown)} (known: {', '.join(DEFAULT_IMPORTANCE)})")
        if params is None:
            params = [p for p in space.model.parameters() if p.requires_grad]
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, betas=tuple(betas), eps=eps)
        super().__init__(params, defaults)
        self.space = space
        self.variant = variant
        self.target_group_sparsity = float(target_group_sparsity)
        self.importance = weights
        self.projection = projection
        self.half_space_lambda = half_space_lambda
        self.half_space_epsilon = half_space_epsilon
        self.channel_multiple = int(channel_multiple)
        self.num_groups = space.num_groups
        self.target_groups = int(math.floor(self.target_group_sparsity * self.num_groups + 1e-9))
        self.configure_schedule(warmup_steps, pruning_steps, pruning_periods)
        self.num_steps = 0
        self.pruned: list[int] = []           # committed zero groups, in pruning order
        self.redundant: list[int] = []        # groups being driven to zero in the current period
        self.period = -1

    # -- schedule ----------------------------------------------------------------------------
    def configure_schedule(self, warmup_steps: int, pruning_steps: int, pruning_periods: int) -> None:
        """Set (or reset, before training) the schedule. pruning_periods is capped at pruning_steps."""
        if warmup_steps < 0 or pruning_steps < 1 or pruning_periods < 1:
            raise ConfigError("HESSO needs warmup_steps >= 0, pruning_steps >= 1 and pruning_periods >= 1")
        self.warmup_steps = int(warmup_steps)
        self.pruning_periods = int(min(pruning_periods, pruning_steps))
        self.period_length = int(pruning_steps) // self.pruning_periods
        k, p = self.target_groups, self.pruning_periods
        self.per_period = [k // p] * (p - 1) + [k - (k // p) * (p - 1)]

    @property
    def end_step(self) -> int:
        """The step after which the target group sparsity is reached."""
        return self.warmup_steps + self.pruning_periods * self.period_length

    # -- base optimizers ---------------------------------------------------------------------
    def _direction(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Update direction d (the step is p -= lr * d), updating the per-parameter state."""
        g = p.grad.detach()
        state = self.state[p]
        wd = group["weight_decay"]
        if self.variant == "sgd":
            if wd:
                g = g.add(p.detach(), alpha=wd)
            mom = group["momentum"]
            if mom:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(mom).add_(g, alpha=1 - group["dampening"])
                g = g.add(buf, alpha=mom) if group["nesterov"] else buf
            return g
        if self.variant == "adam" and wd:
            g = g.add(p.detach(), alpha=wd)
        b1, b2 = group["betas"]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].lerp_(g, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - b2 ** t)).add_(group["eps"])
        return state["exp_avg"] / denom / (1 - b1 ** t)

    # -- group scores ------------------------------------------------------------------------
    def _scores(self, directions: dict[int, torch.Tensor]) -> torch.Tensor:
        index = self.space.index
        zero = lambda p: torch.zeros_like(p)  # noqa: E731
        d_of = lambda p: directions.get(id(p), None)  # noqa: E731
        xx = index.reduce(lambda p: p * p)
        dd = index.reduce(lambda p: (d_of(p) if d_of(p) is not None else zero(p)) ** 2)
        xd = index.reduce(lambda p: p * (d_of(p) if d_of(p) is not None else zero(p)))
        sizes = torch.tensor([float(g.size) for g in self.space.groups], dtype=torch.float64)
        norm_x, norm_d = xx.sqrt(), dd.sqrt()
        raw = {
            "magnitude": norm_x,
            "avg_magnitude": norm_x / (sizes + 1e-6),
            "cosine_similarity": xd / (norm_x + 1e-8) / (norm_d + 1e-8) + 1,
            "taylor_first_order": xd.abs(),
            "taylor_second_order": 0.5 * xd ** 2,
        }
        score = torch.zeros(self.num_groups, dtype=torch.float64)
        for name, w in self.importance.items():
            if w:
                s = raw[name]
                score += w * s / (s.norm() + 1e-8)
        return score

    def _select(self, scores: torch.Tensor, count: int) -> list[int]:
        """The `count` lowest-scoring groups not yet pruned, keeping >= 1 group per layer."""
        return self.space.select(scores, count, exclude=self.pruned, multiple=self.channel_multiple)

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.num_steps += 1
        directions: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    directions[id(p)] = self._direction(p, group)

        t = self.num_steps - self.warmup_steps - 1          # 0-based step within the pruning phase
        in_pruning = 0 <= t < self.pruning_periods * self.period_length
        pos = t % self.period_length if in_pruning else -1
        if in_pruning and pos == 0:
            self.period = t // self.period_length
            self.redundant = self._select(self._scores(directions), self.per_period[self.period])
        active = self.redundant if in_pruning else []
        before = {}
        if active and self.projection == "half-space":
            before = {id(p): p.detach().clone() for p in self.space.index.params}

        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                d = directions.get(id(p))
                if d is None:
                    continue
                if self.variant == "adamw" and group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(d, alpha=-lr)

        if active:
            if self.projection == "shrink":
                factors = torch.ones(self.num_groups, dtype=torch.float64)
                factors[torch.as_tensor(active)] = (self.period_length - pos - 1) / (self.period_length - pos)
                self.space.index.scale_(factors)
            else:
                self._half_space(active, before, pos)
        self._zero(self.pruned)
        if in_pruning and pos == self.period_length - 1:
            self._zero(self.redundant)
            self.pruned.extend(self.redundant)
            self.redundant = []
        return loss

    def _half_space(self, active: list[int], before: dict[int, torch.Tensor], pos: int) -> None:
        """DHSPG on redundant groups: a group-lasso push towards zero, then project a group onto
        zero when the step leaves the half-space {x : <x, x_before> > eps * |x_before|^2}."""
        index = self.space.index
        lr = self.param_groups[0]["lr"]
        norms = index.sq_norms().sqrt()
        push = torch.zeros(self.num_groups, dtype=torch.float64)
        ids = torch.as_tensor(active)
        push[ids] = lr * self.half_space_lambda / (norms[ids] + 1e-12)
        index.scale_((1 - push).clamp(min=0.0))
        inner = index.reduce(lambda p: p * before[id(p)])
        old_sq = index.reduce(lambda p: before[id(p)] ** 2)
        cross = [g for g in active if inner[g] < self.half_space_epsilon * old_sq[g]]
        self._zero(cross)

    def _zero(self, groups: list[int]) -> None:
        if groups:
            factors = torch.ones(self.num_groups, dtype=torch.float64)
            factors[torch.as_tensor(groups)] = 0.0
            self.space.index.scale_(factors)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["hesso"] = {"num_steps": self.num_steps, "pruned": list(self.pruned), "redundant": list(self.redundant),
                       "period": self.period, "warmup_steps": self.warmup_steps,
                       "period_length": self.period_length, "pruning_periods": self.pruning_periods,
                       "per_period": list(self.per_period), "num_groups": self.num_groups}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("hesso", None)
        if extra is not None and extra.get("num_groups") != self.num_groups:
            raise ConfigError(f"HESSO state has {extra.get('num_groups')} groups, this space has {self.num_groups}")
        super().load_state_dict(state_dict)
        if extra is not None:
            self.num_steps, self.period = int(extra["num_steps"]), int(extra["period"])
            self.pruned, self.redundant = list(extra["pruned"]), list(extra["redundant"])
            self.warmup_steps, self.period_length = int(extra["warmup_steps"]), int(extra["period_length"])
            self.pruning_periods, self.per_period = int(extra["pruning_periods"]), list(extra["per_period"])

    def group_sparsity(self) -> float:
        return self.space.group_sparsity()


# ---------------------------------------------------------------------------------- technique

def schedule(total_steps: int, warmup_fraction: float = DEFAULT_WARMUP_FRACTION,
             pruning_fraction: float = DEFAULT_PRUNING_FRACTION,
             pruning_periods: int = DEFAULT_PRUNING_PERIODS) -> tuple[int, int, int]:
    """(warmup_steps, pruning_steps, end_step) of a run of `total_steps` optimizer steps; after
    step end_step the target group sparsity is reached (HESSO.end_step)."""
    total = max(1, int(total_steps))
    warmup = int(round(warmup_fraction * total))
    steps = max(1, int(round(pruning_fraction * total)))
    periods = min(pruning_periods, steps)
    return warmup, steps, warmup + periods * (steps // periods)


def default_end_step(total_steps: int) -> int:
    """The step at which HESSO with the technique's default schedule reaches its target."""
    return schedule(total_steps)[2]


def example_input(task: Any, count: int = 2) -> torch.Tensor:
    """A few training inputs of a task, for tracing (seed 0's data; only shapes matter)."""
    from trainlab.tasks.loading import load_task_data

    data = load_task_data(task, 0)
    return data.train_x[:count].clone()


@register
class HESSOTechnique(Technique):
    """Train with HESSO to `target_group_sparsity`; the zero groups are removable (no fine-tuning).

    The schedule is set from the run's length: warm-up for `warmup_fraction` of the steps, then
    prune over `pruning_fraction` of them in `pruning_periods` periods (the official tutorial's
    advice: start at ~1/10 of training, finish by ~1/4). The base optimizer follows the task
    (sgd/adam/adamw with its lr, momentum, weight decay, betas); the task's LR schedule applies.
    """

    name = "hesso"
    version = 2  # 2: groups hold the output side only
    family = "pruning"
    paper = PAPER
    fidelity = "variant"
    deviations = (
        "the Corrective Redundant Identification Cycle (CRIC, HESSO-CRIC) is not implemented: redundant groups "
        "are identified once per period and never restored",
        "within a pruning period the redundant groups shrink by (L - t - 1) / (L - t) over the period's L steps; "
        "the official optimizer (tianyic/only_train_once, optimizer/hesso.py) identifies them at the period's first "
        "step, shrinks over the next L - 1 steps and leaves one step idle; both reach exactly zero at the period's end",
        "the adam/adamw base steps are torch's Adam/AdamW; the official optimizer starts the first moment at the "
        "raw gradient (not (1 - beta1) times it) before its bias correction",
        "every producer layer keeps at least one output channel (the official code keeps at least group_divisible "
        "groups per node group); channel_multiple gives back chosen groups instead of the official refinement",
        "where a removed channel is not zero while its group is zero (after a sigmoid, say), the consumer's input "
        "columns belong to the group's own slices (scored and zeroed) so that removal stays exact; the official "
        "groups assume zero-invariant operations there",
        "the half-space projection option uses a fixed lambda, not DHSPG's adaptive one",
    )
    modifies = frozenset({"optimizer", "weights"})
    summary = "structured pruning while training: progressively zero the least important groups"

    def __init__(self, target_group_sparsity: float = 0.5, warmup_fraction: float = DEFAULT_WARMUP_FRACTION,
                 pruning_fraction: float = DEFAULT_PRUNING_FRACTION, pruning_periods: int = DEFAULT_PRUNING_PERIODS,
                 projection: str = "shrink",
                 importance: Mapping[str, float] | None = None) -> None:
        super().__init__(target_group_sparsity=target_group_sparsity, warmup_fraction=warmup_fraction,
                         pruning_fraction=pruning_fraction, pruning_periods=pruning_periods,
                         projection=projection, importance=importance)
        if not 0 <= warmup_fraction < 1 or not 0 < pruning_fraction <= 1 - warmup_fraction:
            raise ConfigError("hesso: need 0 <= warmup_fraction < 1 and 0 < pruning_fraction <= 1 - warmup_fraction")
        self.target = target_group_sparsity
        self.warmup_fraction, self.pruning_fraction = warmup_fraction, pruning_fraction
        self.pruning_periods, self.projection, self.importance = pruning_periods, projection, importance
        self.space: Any = None
        self.optimizer: HESSO | None = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        from trainlab.techniques.pruning.space import PruningSpace

        self.space = PruningSpace(model, example_input(task))
        return model

    def make_optimizer(self, params: Any, task: Any) -> torch.optim.Optimizer:
        variant = task.optimizer.lower()
        if variant not in VARIANTS:
            raise ConfigError(f"hesso supports sgd, adam and adamw base optimizers, not '{task.optimizer}'")
        self.optimizer = HESSO(
            self.space, lr=task.lr, target_group_sparsity=self.target, variant=variant, momentum=task.momentum,
            nesterov=task.nesterov and task.momentum > 0, weight_decay=task.weight_decay, betas=tuple(task.betas),
            projection=self.projection, importance=self.importance, params=params,
        )
        return self.optimizer

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        warmup, steps, _ = schedule(state.total_steps, self.warmup_fraction, self.pruning_fraction,
                                    self.pruning_periods)
        optimizer.configure_schedule(warmup, steps, self.pruning_periods)

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        sparsity = self.space.group_sparsity()
        zero = self.space.zero_groups()
        state.epoch_metrics["group_sparsity"] = sparsity
        state.epoch_metrics["removable_params_fraction"] = self.space.removed_params(zero) / max(1, self.space.total_params())


_TUTORIAL = ("official code's ResNet18/CIFAR-10 tutorial (tianyic/only_train_once, tutorials/01.resnet18_cifar10.ipynb): "
             "70% group sparsity, about 92% fewer parameters, 92.91% test accuracy, 0.11 points below the dense "
             "baseline, without fine-tuning")
_QUOTE = "HESSO could automatically and efficiently train a DNN within a single run to produce a high-performing sub-network."
_PAPER_SETTING = PaperSetting(
    train_size=50_000, epochs=100, params=11_200_000,
    text=("CIFAR-10, ResNet18 (CIFAR variant), SGD lr 0.1, weight decay 1e-4, 100 epochs, pruning from epoch 10 to 20 "
          "in 10 periods, 70% group sparsity (official tutorial); the paper's tables also cover ResNet50/VGG16 on "
          "CIFAR-10, ResNet50 on ImageNet, BERT, YOLO and LLMs"))
_HESSO = arm(("hesso", {"target_group_sparsity": 0.5}), label="HESSO, 50% group sparsity")
_DENSE = arm(label="dense training, same budget (no pruning)")
_MAG_FT = arm(("magnitude-group-prune", {"target_group_sparsity": 0.5, "prune_at": "hesso", "ranking": "layer"}),
              label="dense training, 50% of groups pruned by layer-normalized magnitude at HESSO's end step (25% of "
                    "the run), then the same remaining training (fine-tuning)")
_MAG_ONESHOT = arm(("magnitude-group-prune", {"target_group_sparsity": 0.5, "ranking": "layer"}),
                   label="dense training, then 50% of groups pruned by layer-normalized magnitude (no fine-tuning)")
_DENSE_LEARNS = Precondition("test_acc", ">=", 0.3, arm="baseline", over="min", relative_to="chance",
                             why="the dense model learns the task (else 'as good as dense' is empty)")
# the one-shot baseline records its dense accuracy just before pruning
_DENSE_BEFORE_PRUNING_LEARNS = Precondition("dense_test_acc", ">=", 0.3, arm="baseline", over="min",
                                            relative_to="chance",
                                            why="the dense model learns the task before it is pruned")
_DIGITS_SCALE = ("paper: ResNet18 on 50k CIFAR-10 images for 100 epochs (11M parameters); here: scikit-learn digits "
                 "(1,437 8x8 training images), a 19.6k-parameter BatchNorm CNN (96 pruning groups), 15 epochs, CPU")


# the digits claims share their treatment, task and the paper's setting; each sets its baseline
_digits_claim = functools.partial(
    Claim, technique="hesso", task="digits-cnn", metric="test_acc", direction="higher", treatment=_HESSO,
    paper_quote=_QUOTE, paper_number=_TUTORIAL, paper_scale=_DIGITS_SCALE, paper_setting=_PAPER_SETTING)

CLAIMS = [
    _digits_claim(
        id="hesso-digits-vs-dense",
        baseline=_DENSE,
        margin=0.01,
        seeds=5,
        preconditions=(_DENSE_LEARNS,),
        notes=("Non-inferiority: reproduced when the whole 95% interval of (HESSO - dense) test accuracy lies above "
               "-1 point. The margin is fixed in advance, looser than the tutorial's 0.11 points because 1 point of "
               "digits' 360 test images is 3.6 images. Both arms train the same steps with the same schedule. The dense "
               "CNN is near the ceiling here (99.2-99.7%) and has spare width, so this is an easy setting for "
               "non-inferiority; it says nothing yet about the paper's harder settings."),
    ),
    _digits_claim(
        id="hesso-digits-vs-magnitude-finetune",
        baseline=_MAG_FT,
        min_effect=0.0,
        seeds=8,
        notes=("The fair one-run baseline: the same groups, the same number removed at the same step as HESSO "
               "finishes, the same remaining 75% of training for both. A win says HESSO's saliency-driven, progressive "
               "selection beats one-shot magnitude pruning at that point; the paper does not run this baseline. No "
               "precondition of its own: neither arm is the dense model; hesso-digits-vs-dense checks that it learns. "
               "Measured: 5 seeds were inconclusive (+0.4 pt, 95% CI -0.1 to +1.0; the harness estimated 6 seeds to "
               "decide), so the claim runs 8; the 8-seed interval (+0.03 to +0.73 pt) is not corrected for that "
               "second look."),
    ),
    _digits_claim(
        id="hesso-digits-vs-magnitude-oneshot",
        baseline=_MAG_ONESHOT,
        min_effect=0.0,
        seeds=5,
        preconditions=(_DENSE_BEFORE_PRUNING_LEARNS,),
        notes=("Only OTO's 'no fine-tuning needed' property: the baseline prunes after training and never adapts, so "
               "a win here is expected of any train-while-pruning method and says little about HESSO's selection; "
               "see hesso-digits-vs-magnitude-finetune and hesso-digits-vs-dense."),
    ),
    Claim(
        id="hesso-cifar10-resnet20",
        technique="hesso",
        task="cifar10-resnet",
        metric="test_acc",
        direction="higher",
        treatment=_HESSO,
        baseline=_MAG_ONESHOT,
        paper_quote=_QUOTE,
        paper_number=_TUTORIAL,
        paper_scale=("paper: ResNet18 on 50k CIFAR-10 images for 100 epochs (11M parameters); here: ResNet-20 "
                     "(0.27M parameters) on a 10k-image subset for 15 epochs, CPU"),
        paper_setting=_PAPER_SETTING,
        min_effect=0.0,
        seeds=3,
        suites=("full",),
        overrides={"train_subset": 10_000, "epochs": 15},
        preconditions=(_DENSE_BEFORE_PRUNING_LEARNS,),
        notes=("Both arms remove the same number of groups (50% of ResNet-20's pruning groups) and are evaluated "
               "without fine-tuning; HESSO's zero groups are removable exactly (subnet equality is tested). This is "
               "only OTO's 'no fine-tuning' property: the baseline never adapts to its pruning. The fair comparisons "
               "(non-inferiority to dense, magnitude pruning with fine-tuning in the same budget) are the "
               "hesso-digits-* claims, cheap enough for a CPU; on ResNet-20 they would add about 45 minutes."),
    ),
]
