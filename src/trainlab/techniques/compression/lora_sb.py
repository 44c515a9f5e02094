"""LoRA-SB: the LoRA-XS structure initialized from an approximation of full fine-tuning's first update.

Paper: Kaustubh Ponkshe, Raghav Singhal, Eduard Gorbunov, Alexey Tumanov, Samuel Horvath, Praneeth
Vepakomma. "Initialization using Update Approximation is a Silver Bullet for Extremely Efficient
Low-Rank Fine-Tuning". 2024, arXiv:2411.19557. Official code: RaghavSinghal10/lora-sb.

Method: Delta W = B R A with B (d_out x r) and A (r x d_in) frozen and only R (r x r) trained, as in
LoRA-XS, but initialized so that B R A is the best rank-r approximation of the first update full
fine-tuning would make. Following the official code (utils/gradient_utils.py,
utils/initialization_utils.py): the gradient G of each adapted weight is summed over a few training
samples (the base network in train mode); the first update of Adam is approximated by
Delta W_0 = -eta_1 sign(G), eta_1 the learning rate of the first step (lr / warmup steps under
linear warmup); with the SVD Delta W_0 = U S V^T, B = U_r, R = diag(S_r), A = V_r^T, and the
scaling alpha / r is 1 (alpha = r). So the network starts at W + SVD_r(Delta W_0), not at W.
Deviations in numerics only: an exact float64 SVD (the official code uses torch.svd_lowrank with 10
power iterations and rounds the factors to bfloat16). Trainable parameters: r^2 per layer. The
adapter file stores B, A and R (B and A depend on training data, not only on the base weights).

Claims: "our approach exceeds the performance of standard LoRA while using 27-90 times fewer learnable
parameters, and comprehensively outperforms LoRA-XS".

Plain PyTorch::

    import torch, torch.nn.functional as F
    from trainlab.techniques.compression.adapters import apply_adapters
    from trainlab.techniques.compression.lora_sb import LoRASBDelta, lora_sb_initialize

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    apply_adapters(model, lambda layer: LoRASBDelta.build(layer, rank=4))
    x, y = torch.randn(64, 64), torch.randint(0, 5, (64,))
    lora_sb_initialize(model, F.cross_entropy, x, y, lr=1e-3)   # B R A = SVD_4(-1e-3 sign(grad))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.compression.adapters import AdapterTechnique, adapted_layers, matrix_shape
from trainlab.claims.tuning import tuned_claim
from trainlab.techniques.compression.lora import LR_TUNING, TUNING_NOTE, check_rank
from trainlab.techniques.compression.lora_xs import CoreDelta, truncated_svd
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, TrainState

PAPER = Paper(title="Initialization using Update Approximation is a Silver Bullet for Extremely Efficient "
                    "Low-Rank Fine-Tuning",
              authors="Ponkshe, Singhal, Gorbunov, Tumanov, Horvath, Vepakomma", year=2024, arxiv="2411.19557")


class LoRASBDelta(CoreDelta):
    """Delta W = B R A (scaling 1); B, A, R are zero until lora_sb_initialize fills them."""

    method = "lora-sb"

    @classmethod
    def check_settings(cls, rank: int = 4, **_: Any) -> None:
        check_rank("lora-sb", rank)

    @classmethod
    def build(cls, layer: nn.Module, rank: int = 4) -> "LoRASBDelta":
        cls.check_settings(rank)
        d_out, d_in = matrix_shape(layer)
        rank = min(rank, d_out, d_in)   # a rank-r approximation needs r <= min(d_out, d_in)
        return cls(tuple(layer.weight.shape), rank, {"rank": rank}, scaling=1.0).to(layer.weight.dtype)

    def init_from_update(self, update: Tensor) -> None:
        """B, R, A from the truncated SVD of an update of the weight (any shape of the weight)."""
        rank = self.R.shape[0]
        u, s, vh = truncated_svd(update.reshape(self.B.shape[0], -1), rank)
        with torch.no_grad():
            self.B.copy_(u)
            self.R.copy_(torch.diag(s))
            self.A.copy_(vh)


def approximate_first_update(grad: Tensor, lr: float) -> Tensor:
    """The first update of Adam from gradient `grad`: -lr * sign(grad) (the official code's form)."""
    return -lr * torch.sign(grad)


def base_gradients(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                   batch_size: int | None = None) -> dict[str, Tensor]:
    """Gradient of the summed per-batch mean loss over (x, y) with respect to each adapted layer's
    frozen base weight (model in train mode, the adapters' current updates applied)."""
    layers = adapted_layers(model)
    weights = {n: layer.base.weight for n, layer in layers.items()}
    was, flags = model.training, {n: w.requires_grad for n, w in weights.items()}
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    model.train()
    try:
        for w in weights.values():
            w.requires_grad_(True)
        step = batch_size or len(x)
        for i in range(0, len(x), step):
            loss = loss_fn(model(x[i:i + step]), y[i:i + step])
            for (n, _), g in zip(weights.items(), torch.autograd.grad(loss, list(weights.values()))):
                grads[n] += g
    finally:
        for n, w in weights.items():
            w.requires_grad_(flags[n])
        model.train(was)
    return grads


@torch.no_grad()
def lora_sb_initialize(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                       lr: float, batch_size: int | None = None) -> dict[str, float]:
    """Initialize every LoRA-SB layer of `model` from -lr * sign(gradient on (x, y)). Returns, per
    layer, the share of the approximated update's Frobenius norm the rank-r factors keep."""
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"lora-sb: the first-step learning rate must be > 0, got {lr!r}")
    layers = {n: m for n, m in adapted_layers(model).items() if isinstance(m.delta, LoRASBDelta)}
    if not layers:
        raise ConfigError("lora-sb: the model has no LoRA-SB adapters to initialize")
    for layer in layers.values():   # the gradient is the base network's (Delta W = 0)
        layer.delta.B.zero_(), layer.delta.A.zero_(), layer.delta.R.zero_()
    with torch.enable_grad():
        grads = base_gradients(model, loss_fn, x, y, batch_size)
    kept = {}
    for n, layer in layers.items():
        update = approximate_first_update(grads[n], float(lr))
        layer.delta.init_from_update(update)
        kept[n] = float(layer.delta().norm() / update.norm().clamp_min(1e-30))
    return kept


@register
class LoRASB(AdapterTechnique):
    """LoRA-XS structure (only r x r R trains) initialized from the SVD of the approximated first
    full fine-tuning update (sign of the gradient on `num_samples` training samples)."""

    name = "lora-sb"
    paper = PAPER
    delta_cls = LoRASBDelta
    summary = "frozen base + B R A per layer (only R trains), B R A = SVD_r(-lr sign(grad)) at init; mergeable"
    fidelity = "faithful"
    deviations = ()

    def __init__(self, rank: int = 4, num_samples: int | None = None, targets: str | None = None) -> None:
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise ConfigError(f"lora-sb: num_samples must be a whole number >= 1 (or None: one batch), "
                              f"got {num_samples!r}")
        super().__init__(targets=targets, rank=rank)
        self.num_samples = num_samples
        self._settings["num_samples"] = num_samples
        self.init_kept: dict[str, float] = {}

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        data = state.data
        n = min(len(data.train_y), self.num_samples or state.task.batch_size)
        # a random subset of the training set, from the run's technique generator (paired per seed)
        idx = torch.randperm(len(data.train_y), generator=state.generator)[:n]
        device = state.device
        lr = float(optimizer.param_groups[0]["lr"])   # the first step's lr (after warmup scaling)
        self.init_kept = lora_sb_initialize(model, state.loss_fn, data.train_x[idx].to(device),
                                            data.train_y[idx].to(device), lr, batch_size=state.task.batch_size)

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        super().on_epoch_end(model, state)
        if self.init_kept:
            state.epoch_metrics["init_norm_kept"] = sum(self.init_kept.values()) / len(self.init_kept)


# --------------------------------------------------------------------------- claims

# Ranks by the paper's rule: its LoRA-SB runs use 3x the LoRA rank (RoBERTa-large GLUE: LoRA r = 8,
# LoRA-SB r = 24; Mistral-7B / Gemma: LoRA r = 32, LoRA-SB r = 96). Here LoRA r = 4, LoRA-SB r = 12;
# per layer the rank is capped at min(d_out, d_in) (the 5-class head: 5).
_COUNTS = ("Trainable parameters (2x128 MLP on 8x8 inputs, all three Linear layers adapted, biases frozen): "
           "LoRA r=4: 4x(64+128) + 4x(128+128) + 4x(128+5) = 2,324; LoRA-SB r=12: 12^2 + 12^2 + 5^2 = 313 "
           "(7.4x fewer; the paper: 27-90x fewer at LLM scale); LoRA-XS r=12: 313; full fine-tuning: 25,477. ")
_SETUP = ("Setting: the base network is pretrained on digits 0-4 inside each run (make_model, deterministic per "
          "seed); every arm adapts it to digits 5-9 relabelled 0-4 (about 720 training images) with Adam lr 3e-3, "
          "one warmup epoch, cosine, 20 epochs of batch 64, the same lr for every arm (the paper tunes lr per "
          "method). LoRA-SB's init uses the gradient of one batch of 64 training samples and the first step's lr "
          "(lr / 11 warmup steps), as the official code does with its lr / warmup steps. Measured (seeds 0-4, test / "
          "train accuracy): LoRA r=4 0.883-0.950 / 0.942-0.969; LoRA-SB r=12 0.706-0.761 / 0.723-0.768; LoRA-XS "
          "r=12 0.789-0.861 / 0.827-0.869; the frozen base 0.15-0.18 on the target. Both r x r methods underfit at "
          "this shared lr and budget (training accuracy far below 1), LoRA-SB most: its Delta W = B R A with "
          "orthonormal B, A moves by about lr per entry of R and step, LoRA-XS's by (alpha/r) Sigma_r times that. "
          "The paper tunes lr per method on a grid (GLUE script: 1e-4 to 5e-3); no per-method lr search is done "
          "here, so these verdicts hold for one shared lr (3e-3, the task's, fixed before any adapter run). ")
_SETTING = PaperSetting(
    params=9_000_000_000,
    text="Mistral-7B and Gemma-2 9B on MetaMathQA -> GSM8K/MATH, Llama-3.2 3B on commonsense reasoning, "
         "RoBERTa-large on GLUE; LoRA-SB r = 96 (LLMs) / 24 (RoBERTa) vs LoRA r = 32 / 8; AdamW, linear warmup")
_REGIME = (
    Precondition("test_base_acc", "<=", 0.3, arm="baseline", over="max",
                 why="the adaptation task is not solved by the frozen base: the pretrained network's accuracy on "
                     "digits 5-9 before adaptation is near chance (0.2) in every seed"),
    Precondition("test_acc", ">=", 0.8, arm="baseline", over="min",
                 why="the baseline adapter learns the target task (>= 80% test accuracy in every seed; full "
                     "fine-tuning's accuracy is checked in lora-vs-full-finetune)"),
)
_SHARED_LR = ("At one shared learning rate: every arm uses the task's Adam lr 3e-3 (the paper tunes lr per method; "
              "the claim without the -shared-lr suffix is the same comparison with each arm at its own lr chosen on "
              "a validation split). ")
CLAIMS = [
    Claim(
        id="lora-sb-vs-lora-shared-lr", technique="lora-sb", task="digits-transfer-mlp", metric="test_acc",
        direction="higher", treatment=arm(("lora-sb", {"rank": 12}), label="LoRA-SB r=12 (313 trainable)"),
        baseline=arm(("lora", {"rank": 4}), label="LoRA r=4 (2,324 trainable)"), margin=0.02, seeds=5,
        overrides={"warmup_epochs": 1.0},
        paper_quote="our approach exceeds the performance of standard LoRA while using 27-90 times fewer learnable "
                    "parameters",
        paper_number="e.g. Mistral-7B GSM8K: LoRA-SB r=96 (0.58M params) above LoRA r=32 (83.9M); RoBERTa-large "
                     "GLUE average: LoRA-SB above LoRA",
        paper_scale="Mistral-7B, Gemma-2 9B, Llama-3.2 3B, RoBERTa-large", paper_setting=_SETTING,
        preconditions=_REGIME,
        notes=_SHARED_LR + _SETUP + _COUNTS + "Non-inferiority at a margin of 2 accuracy points: LoRA-SB's test accuracy is "
                                 "at most 2 points below LoRA's (the paper's 'exceeds' is the stronger reading; "
                                 "the statistics show the sign of the difference).",
    ),
    Claim(
        id="lora-sb-beats-lora-xs-shared-lr", technique="lora-sb", task="digits-transfer-mlp", metric="test_acc",
        direction="higher", treatment=arm(("lora-sb", {"rank": 12}), label="LoRA-SB r=12"),
        baseline=arm(("lora-xs", {"rank": 12}), label="LoRA-XS r=12 (alpha 16)"), min_effect=0.01, seeds=5,
        overrides={"warmup_epochs": 1.0},
        paper_quote="comprehensively outperforms LoRA-XS",
        paper_number="same r: LoRA-SB above LoRA-XS on GSM8K, MATH, commonsense and GLUE in every reported setting",
        paper_scale="Mistral-7B, Gemma-2 9B, Llama-3.2 3B, RoBERTa-large", paper_setting=_SETTING,
        preconditions=(_REGIME[0], Precondition(
            "best:test_acc", ">=", 0.1, arm="baseline", over="min", relative_to="chance",
            why="LoRA-XS trains at all (10 points above chance at its best epoch, every seed)")),
        notes=_SHARED_LR + _SETUP + _COUNTS + "Same r = 12 and the same structure and parameter count (313) in both arms; "
                                 "only the initialization and scaling differ (LoRA-XS: SVD of W, R ~ N(0, 1e-5^2), "
                                 "alpha 16; LoRA-SB: SVD of the approximated first update, scaling 1). Superiority "
                                 "by at least 1 accuracy point.",
    ),
]

# The paper tunes lr per method: the same two comparisons with each arm at its own lr (LoRA-SB's init
# uses the first step's lr, so it follows the chosen lr as in the official code).
_TUNED_SETUP = _SETUP.split(" Measured (seeds 0-4")[0].replace(
    "with Adam lr 3e-3, one warmup epoch", "with Adam, one warmup epoch").replace(
    ", the same lr for every arm (the paper tunes lr per method)", "") + " "
_TUNED_MEASURED = {  # seeds 0-4, test accuracy at the chosen lr (grid 1e-3 ... 3)
    "lora-sb-vs-lora": "Measured (seeds 0-4, test accuracy at the chosen lr): LoRA r=4 0.933-0.978 (lr 1e-2 in 3 "
                       "seeds, 3e-2 and 1e-1 in one each), LoRA-SB r=12 0.950-0.961 (lr 1e-1 in 3 seeds, 3e-2 in "
                       "2); -1.0 points [95% CI -2.9, +0.9]. With the grid ending at 3e-2 LoRA-SB chose that end "
                       "in every seed and the difference was -1.4 [-3.2, +0.3].",
    "lora-sb-beats-lora-xs": "Measured (seeds 0-4, test accuracy at the chosen lr): LoRA-XS r=12 0.900-0.944 (lr "
                             "3e-1 in 3 seeds, 1e-1 in 2), LoRA-SB r=12 0.950-0.961 (lr 1e-1 in 3 seeds, 3e-2 in 2); "
                             "+2.8 points [95% CI +0.7, +4.9], below the 1-point minimum effect at its lower end. "
                             "This verdict moved with the grid's end: reproduced (+3.4 [+1.9, +5.0]) when the grid "
                             "ended at 3e-2, where both arms chose the end in most seeds.",
}
CLAIMS += [tuned_claim(c, LR_TUNING, id=c.id.removesuffix("-shared-lr"),
                       notes=TUNING_NOTE + _TUNED_SETUP + _COUNTS + c.notes.split(_COUNTS)[-1] + " "
                       + _TUNED_MEASURED[c.id.removesuffix("-shared-lr")]) for c in list(CLAIMS)]
