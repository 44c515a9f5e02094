"""Magnitude-based group pruning of a trained dense network, without fine-tuning (a baseline).

The classic one-shot structured pruning baseline (e.g. Li, Kadav, Durdanovic, Samet & Graf,
"Pruning Filters for Efficient ConvNets", 2017, arXiv:1608.08710, without its retraining step):
train the dense network normally; at the end of the last epoch remove the groups with the
smallest L2 norms until the target group sparsity is reached. It uses the same pruning groups as
HESSO (trainlab.techniques.pruning.space), so the two differ only in how groups are chosen and
whether the network adapts to their removal during training.

Claim: none of its own; it is the baseline of HESSO's claim. Pruning happens in `on_epoch_end`
of the last epoch, which runs before that epoch's evaluation, so the reported test accuracy is
the pruned network's; the dense network's accuracy just before pruning is reported as
`dense_test_acc`. Groups are compared by raw L2 norm across layers (no per-layer
normalization), and every layer keeps at least one output channel.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState


def magnitude_selection(space: Any, target_group_sparsity: float) -> list[int]:
    """floor(target * G) groups of smallest L2 norm, keeping >= 1 group per layer."""
    count = int(target_group_sparsity * space.num_groups + 1e-9)
    return space.select(space.group_norms(), count)


@register
class MagnitudeGroupPrune(Technique):
    """Dense training, then the lowest-norm groups are zeroed after the last epoch."""

    name = "magnitude-group-prune"
    family = "pruning"
    paper = Paper(title="Pruning Filters for Efficient ConvNets", authors="Li, Kadav, Durdanovic, Samet, Graf",
                  year=2017, arxiv="1608.08710")
    modifies = frozenset({"weights"})
    summary = "baseline: prune the trained network's smallest groups by L2 norm, no fine-tuning"

    def __init__(self, target_group_sparsity: float = 0.5) -> None:
        super().__init__(target_group_sparsity=target_group_sparsity)
        if not 0.0 <= target_group_sparsity < 1.0:
            raise ConfigError(f"magnitude-group-prune: target_group_sparsity must be in [0, 1), got {target_group_sparsity}")
        self.target = target_group_sparsity
        self.space: Any = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        from trainlab.techniques.pruning.hesso import example_input
        from trainlab.techniques.pruning.space import PruningSpace

        self.space = PruningSpace(model, example_input(task))
        return model

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if state.epoch == state.epochs - 1:
            # the dense model's accuracy just before pruning, for the distance-to-dense comparison
            from trainlab.tasks.loading import load_task_data
            from trainlab.training.metrics import evaluate

            data = load_task_data(state.task, state.seed)
            dense = evaluate(model, data.test_x, data.test_y, state.task.eval_batch_size, state.device)
            state.epoch_metrics["dense_test_acc"] = dense["acc"]
            self.space.zero_(magnitude_selection(self.space, self.target))
        state.epoch_metrics["group_sparsity"] = self.space.group_sparsity()
