"""Magnitude-based group pruning of a dense network: one-shot, with or without fine-tuning (a baseline).

The classic structured pruning baseline (Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters
for Efficient ConvNets", 2017, arXiv:1608.08710): train the dense network, remove the groups with
the smallest norms, then retrain. It uses the same pruning groups as HESSO
(trainlab.techniques.pruning.space), scored on their own, output-side slices (filter rows, biases,
norm entries), so the two differ only in how groups are chosen and when the network adapts.

Two settings of `prune_at`:
- 1.0 (default): prune after the last epoch, no fine-tuning. Pruning happens in `on_epoch_end` of
  the last epoch, before that epoch's evaluation, so the reported test accuracy is the pruned
  network's; the dense network's accuracy just before pruning is reported as `dense_test_acc`.
- a fraction in (0, 1), or "hesso": prune after that step (for "hesso": the step at which HESSO
  with its default schedule reaches its target, 25% of the run), then train on for the rest of
  the budget with the pruned groups held at zero (fine-tuning within the same budget).

ranking: "layer" (default) divides each group's norm by the mean norm of its layer's groups
before one global ranking, so every layer is pruned by how weak a group is within it (close to
the paper's layer-wise ranking); "global" compares raw norms across layers. With output-side
groups, raw norms grow with a filter's fan-in: on the digits CNN, "global" pruning at 25% of the
run removed 31 of the first layer's 32 channels and the fine-tuned network ended at 75-88% test
accuracy (3 seeds), so it is kept only as an option.

Claim: none of its own; it is the baseline of HESSO's claims. Every layer keeps at least one
output channel.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState


RANKINGS = ("layer", "global")


def layer_normalized_norms(space: Any) -> torch.Tensor:
    """Each group's L2 norm divided by the mean norm of the groups of its layer (the first producer
    layer that spans it), so that layers of different width and weight scale compete fairly."""
    norms = space.group_norms()
    scores = norms.clone()
    done = torch.zeros(space.num_groups, dtype=torch.bool)
    for cov in space.analysis.coverage:
        ids = torch.as_tensor(cov, dtype=torch.long)
        fresh = ids[~done[ids]]
        if len(fresh):
            scores[fresh] = norms[fresh] / (norms[ids].mean() + 1e-12)
            done[fresh] = True
    return scores


def magnitude_selection(space: Any, target_group_sparsity: float, ranking: str = "global") -> list[int]:
    """floor(target * G) groups of smallest L2 norm (raw, or divided by their layer's mean with
    ranking="layer"), keeping >= 1 group per layer."""
    if ranking not in RANKINGS:
        raise ConfigError(f"magnitude ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    count = int(target_group_sparsity * space.num_groups + 1e-9)
    scores = layer_normalized_norms(space) if ranking == "layer" else space.group_norms()
    return space.select(scores, count)


@register
class MagnitudeGroupPrune(Technique):
    """Dense training, then the lowest-norm groups are zeroed (after the last epoch, or at a step
    followed by the rest of the training with those groups held at zero)."""

    name = "magnitude-group-prune"
    version = 2  # 2: output-side groups, ranked within their layer
    family = "pruning"
    paper = Paper(title="Pruning Filters for Efficient ConvNets", authors="Li, Kadav, Durdanovic, Samet, Graf",
                  year=2017, arxiv="1608.08710")
    fidelity = "variant"
    deviations = (
        "groups are ranked by the L2 norm of their output-side slices (filter row, bias, BatchNorm entries), "
        "not by the L1 norm of the filter alone",
        "one ranking across layers at one target group sparsity (norms divided by their layer's mean norm by "
        "default); the paper ranks filters within each layer, with per-layer rates chosen by a sensitivity analysis",
        "fine-tuning, when used, is the rest of the same training budget (same schedule, no restart), not a "
        "separate retraining run",
    )
    modifies = frozenset({"weights"})
    summary = "baseline: prune the smallest groups by L2 norm, after training or at a step with fine-tuning after"

    def __init__(self, target_group_sparsity: float = 0.5, prune_at: float | str = 1.0,
                 ranking: str = "layer") -> None:
        super().__init__(target_group_sparsity=target_group_sparsity, prune_at=prune_at, ranking=ranking)
        if ranking not in RANKINGS:
            raise ConfigError(f"magnitude-group-prune: ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
        self.ranking = ranking
        if not 0.0 <= target_group_sparsity < 1.0:
            raise ConfigError(f"magnitude-group-prune: target_group_sparsity must be in [0, 1), got {target_group_sparsity}")
        if prune_at != "hesso" and not (isinstance(prune_at, (int, float)) and 0.0 < prune_at <= 1.0):
            raise ConfigError(f"magnitude-group-prune: prune_at must be a fraction in (0, 1] or 'hesso', got {prune_at!r}")
        self.target = target_group_sparsity
        self.prune_at = prune_at
        self.prune_step: int | None = None   # optimizer steps after which to prune (None: after training)
        self.pruned: list[int] = []
        self.space: Any = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        from trainlab.techniques.pruning.hesso import example_input
        from trainlab.techniques.pruning.space import PruningSpace

        self.space = PruningSpace(model, example_input(task))
        return model

    def on_train_start(self, model: nn.Module, optimizer: Any, state: TrainState) -> None:
        from trainlab.techniques.pruning.hesso import default_end_step

        total = max(1, state.total_steps)
        if self.prune_at == "hesso":
            self.prune_step = default_end_step(total)
        elif self.prune_at < 1.0:
            self.prune_step = max(1, int(round(self.prune_at * total)))
        else:
            self.prune_step = None

    def after_step(self, model: nn.Module, optimizer: Any, state: TrainState) -> None:
        if self.prune_step is None:
            return
        if state.step + 1 == self.prune_step:   # state.step counts the steps before this one
            self.pruned = magnitude_selection(self.space, self.target, self.ranking)
        if self.pruned:
            self.space.zero_(self.pruned)       # held at zero for the rest of the training

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": list(self.pruned)}

    def load_state_dict(self, state: Any) -> None:
        self.pruned = [int(g) for g in state.get("pruned", [])]

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self.prune_step is None and state.epoch == state.epochs - 1:
            # the dense model's accuracy just before pruning, for the distance-to-dense comparison
            from trainlab.tasks.loading import load_task_data
            from trainlab.training.metrics import evaluate

            data = load_task_data(state.task, state.seed)
            dense = evaluate(model, data.test_x, data.test_y, state.task.eval_batch_size, state.device)
            state.epoch_metrics["dense_test_acc"] = dense["acc"]
            self.pruned = magnitude_selection(self.space, self.target, self.ranking)
            self.space.zero_(self.pruned)
        state.epoch_metrics["group_sparsity"] = self.space.group_sparsity()
