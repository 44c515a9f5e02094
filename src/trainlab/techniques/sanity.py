"""Ground-truth sanity claims for the harness itself.

These are not techniques from a paper; they check that the claim harness gives the right answer
where the answer is known:
- placebo: re-initializes the model from a different seed. Its arms differ by seed noise only,
  so the harness must come out *inconclusive* (a "reproduced" here is a false positive).
- more epochs: training 10 epochs instead of 2 must be *reproduced* as more accurate.
- learning rate x100: must be *contradicted* (or the runs diverge).
"""
from __future__ import annotations

import torch
from torch import nn

from trainlab.claims.claim import Claim, arm
from trainlab.techniques.registry import register
from trainlab.training.technique import Technique, TrainState


@register
class Placebo(Technique):
    """Re-initializes every layer from a seed unrelated to the run's seed: seed noise, no effect."""

    name = "placebo"
    family = "sanity"
    fidelity = "control"
    modifies = frozenset({"weights"})
    summary = "no-op control: a different random initialization"

    def __init__(self, seed_offset: int = 1_000_003) -> None:
        super().__init__(seed_offset=seed_offset)
        self.seed_offset = seed_offset

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(state.seed + self.seed_offset)
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()


CLAIMS = [
    Claim(
        id="sanity-placebo", technique="sanity", task="digits-mlp", metric="test_acc", direction="higher",
        treatment=arm("placebo"), baseline=arm(), seeds=5, suites=("quick", "full"),
        paper_quote="(no paper) a different random initialization has no systematic effect",
        notes="Must come out inconclusive; a 'reproduced' or 'contradicted' is a false positive.",
    ),
    Claim(
        id="sanity-more-epochs", technique="sanity", task="digits-mlp", metric="test_acc", direction="higher",
        treatment=arm(epochs=10, label="10 epochs"), baseline=arm(epochs=1, label="1 epoch"), seeds=5,
        suites=("quick", "full"), paper_quote="(no paper) training longer on an underfit model helps",
        notes="Must come out reproduced.",
    ),
    Claim(
        id="sanity-lr-x100", technique="sanity", task="digits-mlp", metric="test_acc", direction="higher",
        treatment=arm(lr=5.0, label="lr x100 (5.0)"), baseline=arm(label="lr 0.05"), seeds=5,
        suites=("quick", "full"), paper_quote="(no paper) a learning rate 100x too large helps",
        notes="A false claim: must come out contradicted (or the treatment runs diverge).",
        allow_collapse=("treatment",),  # a learning rate meant to fail may leave the model at chance
    ),
]
