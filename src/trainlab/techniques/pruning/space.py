"""PruningSpace: the facade of the structured-pruning system (Only-Train-Once style).

    space = PruningSpace(model, example_input, verbose=True)   # graph + groups, prints a summary
    opt = space.hesso(lr=0.1, target_group_sparsity=0.5, warmup_steps=..., pruning_steps=...)
    ...ordinary training loop with opt...
    small = space.construct_subnet()                  # a smaller nn.Module, same outputs (eval)

The space holds the captured graph, the pruning groups and a per-parameter index of group ids
that the optimizers use to measure, shrink and zero groups.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.pruning import rules
from trainlab.techniques.pruning.graph import capture, module_names
from trainlab.techniques.pruning.groups import Group, GroupAnalysis, analyze
from trainlab.techniques.pruning.subnet import construct_subnet


class GroupIndex:
    """For every parameter slice that belongs to a group: (parameter, dim, group id per index).

    inputs=False (the default): only the groups' own slices (output side), the ones that are
    scored, shrunk, zeroed and counted; inputs=True: also the consumers' input slices that are
    dropped only when the subnet is built (for counting what a removal takes away)."""

    def __init__(self, model: nn.Module, ga: GroupAnalysis, inputs: bool = False) -> None:
        params = dict(model.named_parameters(remove_duplicate=False))
        root_to_gid = np.full(len(ga.roots), -1, dtype=np.int64)
        for root, gid in ga.group_of_root.items():
            root_to_gid[root] = gid
        gid_of_atom = root_to_gid[ga.roots]
        self.num_groups = len(ga.groups)
        self.entries: list[tuple[nn.Parameter, int | None, torch.Tensor]] = []
        self._cpu_gids: list[torch.Tensor] = []   # the same ids on the CPU, to decide without syncing
        for r in ga.records:
            p = params.get(r.name)
            if p is None:
                continue
            gids = torch.as_tensor(gid_of_atom[r.atoms], dtype=torch.long)
            if r.passive is not None and not inputs:
                gids = gids.masked_fill(torch.as_tensor(r.passive), -1)
            if bool((gids >= 0).any()):
                self.entries.append((p, r.dim, gids.to(p.device)))
                self._cpu_gids.append(gids)
        self.params = list({id(p): p for p, _, _ in self.entries}.values())

    def _per_index(self, t: torch.Tensor, dim: int | None, gids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if dim is None:
            return t.reshape(-1), gids.reshape(-1)
        others = [d for d in range(t.dim()) if d != dim]
        return (t.sum(dim=others) if others else t), gids

    def reduce(self, fn: Any) -> torch.Tensor:
        """Per-group sum of fn(param) over the group's elements (float64)."""
        out = torch.zeros(self.num_groups, dtype=torch.float64)
        for p, dim, gids in self.entries:
            vals, ids = self._per_index(fn(p).detach().double(), dim, gids)
            keep = ids >= 0
            out.index_add_(0, ids[keep].cpu(), vals[keep].cpu())
        return out

    def sq_norms(self) -> torch.Tensor:
        return self.reduce(lambda p: p * p)

    @torch.no_grad()
    def scale_(self, factors: torch.Tensor) -> None:
        """Multiply each group's elements by factors[group] (1 leaves a group as it is)."""
        factors = factors.to(torch.float64).cpu()
        touched = torch.cat([factors != 1, torch.zeros(1, dtype=torch.bool)])  # index -1: no group
        for (p, dim, gids), cpu_gids in zip(self.entries, self._cpu_gids):
            if not bool(touched[cpu_gids].any()):
                continue
            f = torch.where(gids >= 0, factors.to(p.device, p.dtype)[gids.clamp(min=0)],
                            torch.ones((), dtype=p.dtype, device=p.device))
            if dim is not None:
                view = [1] * p.dim()
                view[dim] = -1
                f = f.reshape(view)
            p.mul_(f)

    def mask(self, group_ids: Iterable[int]) -> dict[int, torch.Tensor]:
        """id(param) -> boolean mask of the elements in any of `group_ids`."""
        chosen = torch.zeros(self.num_groups + 1, dtype=torch.bool)
        chosen[torch.as_tensor(list(group_ids), dtype=torch.long)] = True
        masks: dict[int, torch.Tensor] = {}
        for p, dim, gids in self.entries:
            sel = chosen[torch.where(gids >= 0, gids, self.num_groups).cpu()].to(p.device)
            if dim is not None:
                view = [1] * p.dim()
                view[dim] = -1
                sel = sel.reshape(view)
            m = masks.get(id(p))
            masks[id(p)] = (sel.expand(p.shape) if m is None else m | sel)
        return masks


class PruningSpace:
    """Pruning groups of `model`, found by tracing it on `example_input`.

    unprunable: modules (objects or qualified names) to keep whole; they are also kept as single
    opaque nodes when tracing, which is the way past code the tracer cannot capture.
    strict: raise a ConfigError for operations the group analysis does not understand, instead
    of keeping their channels (the default, with a note in the summary).
    verbose: print the summary (also available as `print(space)`).
    """

    def __init__(self, model: nn.Module, example_input: Any, unprunable: Sequence[nn.Module | str] | None = None,
                 strict: bool = False, verbose: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"PruningSpace needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.unprunable = module_names(model, unprunable)
        self.captured = capture(model, example_input, opaque=self.unprunable, leaf_types=rules.KNOWN_LEAF_TYPES)
        self.analysis = analyze(self.captured, self.unprunable, strict)
        self.captured.values.clear()  # the example's activations are not needed any more
        self.index = GroupIndex(model, self.analysis)                  # own slices
        self.removal_index = GroupIndex(model, self.analysis, inputs=True)  # + input slices
        self.optimizer: torch.optim.Optimizer | None = None
        if verbose:
            print(self.summary())

    # -- groups ----------------------------------------------------------------------------
    @property
    def groups(self) -> list[Group]:
        return self.analysis.groups

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def notes(self) -> list[str]:
        return list(self.analysis.notes)

    @property
    def example_inputs(self) -> tuple[Any, ...]:
        return self.captured.example_inputs

    def group_norms(self) -> torch.Tensor:
        return self.index.sq_norms().sqrt()

    def zero_groups(self) -> list[int]:
        """Ids of the groups whose own (output-side) parameters are all exactly zero."""
        return torch.nonzero(self.index.sq_norms() == 0).flatten().tolist()

    def group_sparsity(self) -> float:
        return len(self.zero_groups()) / max(1, self.num_groups)

    @torch.no_grad()
    def zero_(self, group_ids: Iterable[int]) -> None:
        """Set the own (output-side) parameters of the given groups to zero, in place; their
        consumers' input slices are left as they are (the subnet drops them)."""
        factors = torch.ones(self.num_groups, dtype=torch.float64)
        ids = list(group_ids)
        if ids:
            factors[torch.as_tensor(ids)] = 0.0
            self.index.scale_(factors)

    def prunable_params(self) -> int:
        """Parameters that a removal of groups can take away (own and input slices, each once)."""
        return self.removed_params(range(self.num_groups))

    def owned_params(self) -> int:
        """Parameters in the groups' own (output-side) slices, each counted once."""
        return int(sum(int(m.sum()) for m in self.index.mask(range(self.num_groups)).values()))

    def removed_params(self, group_ids: Iterable[int]) -> int:
        """How many parameters disappear when these groups are removed: their own slices and
        their consumers' input slices (overlaps counted once)."""
        return int(sum(int(m.sum()) for m in self.removal_index.mask(group_ids).values()))

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def coverage_ok(self, group_ids: Iterable[int]) -> bool:
        """True if removing these groups leaves every layer at least one output channel."""
        chosen = set(group_ids)
        return all(not set(cov.tolist()) <= chosen for cov in self.analysis.coverage)

    def select(self, scores: torch.Tensor | Sequence[float], count: int, exclude: Iterable[int] = (),
               multiple: int = 1) -> list[int]:
        """The `count` lowest-scoring groups (not in `exclude`), keeping >= 1 group per layer.

        multiple > 1: then give back chosen groups (highest scores first) until every layer keeps
        a multiple of `multiple` groups where it can (like the official code's group_divisible),
        so the result may be shorter than `count`.
        """
        taken = set(int(g) for g in exclude)
        coverage = [set(c.tolist()) for c in self.analysis.coverage]
        remaining = [len(c - taken) for c in coverage]
        member: dict[int, list[int]] = {}
        for i, c in enumerate(coverage):
            for g in c:
                member.setdefault(g, []).append(i)
        chosen: list[int] = []
        for g in torch.argsort(torch.as_tensor(scores, dtype=torch.float64), stable=True).tolist():
            if len(chosen) >= count:
                break
            if g in taken or any(remaining[i] <= 1 for i in member.get(g, [])):
                continue
            chosen.append(g)
            for i in member.get(g, []):
                remaining[i] -= 1
        if multiple > 1:
            chosen = self._align(chosen, taken, coverage, multiple)
        return chosen

    @staticmethod
    def _align(chosen: list[int], taken: set[int], coverage: list[set[int]], multiple: int) -> list[int]:
        sets = sorted({frozenset(c) for c in coverage if len(c) >= multiple}, key=len)
        chosen = list(chosen)
        for _ in range(len(sets) + 1):
            changed = False
            for c in sets:
                gone = c & (taken | set(chosen))
                short = (len(gone) - len(c)) % multiple  # groups to give back to reach a multiple
                back = [g for g in reversed(chosen) if g in c][:short]
                if short and len(back) == short:
                    chosen = [g for g in chosen if g not in back]
                    changed = True
            if not changed:
                break
        return chosen

    # -- optimizers and construction ------------------------------------------------------
    def hesso(self, lr: float, target_group_sparsity: float = 0.5, **kwargs: Any) -> torch.optim.Optimizer:
        """The HESSO optimizer over all of the model's trainable parameters (see hesso.HESSO)."""
        from trainlab.techniques.pruning.hesso import HESSO

        self.optimizer = HESSO(self, lr=lr, target_group_sparsity=target_group_sparsity, **kwargs)
        return self.optimizer

    def construct_subnet(self, group_ids: Iterable[int] | None = None, verify: bool = True,
                         atol: float = 1e-5) -> nn.Module:
        """A smaller module without the given groups (default: the groups that are all zero).

        verify: compare eval-mode outputs of the subnet and of the model with those groups' own
        slices zeroed (their consumers' input slices left as they are) on the example input, and
        raise if they differ by more than atol (relative to the output scale).
        """
        ids = self.zero_groups() if group_ids is None else sorted(set(int(g) for g in group_ids))
        bad = [g for g in ids if not 0 <= g < self.num_groups]
        if bad:
            raise ConfigError(f"unknown group ids {bad[:5]} (the space has {self.num_groups} groups)")
        if not self.coverage_ok(ids):
            raise ConfigError("removing these groups would leave a layer without any output channel")
        subnet = construct_subnet(self.captured, self.analysis, ids)
        dev = next(iter(self.model.parameters()), torch.empty(0)).device
        subnet.to(dev)
        subnet.train(self.model.training)
        if verify:
            self._verify(subnet, ids, atol)
        return subnet

    @torch.no_grad()
    def _verify(self, subnet: nn.Module, ids: list[int], atol: float) -> None:
        masks = self.index.mask(ids)
        saved = {id(p): p.detach().clone() for p in self.index.params if id(p) in masks}
        was_model, was_sub = self.model.training, subnet.training
        self.model.eval()
        subnet.eval()
        try:
            for p in self.index.params:
                if id(p) in masks:
                    p.masked_fill_(masks[id(p)], 0.0)
            want = self.model(*self.example_inputs)
            got = subnet(*self.example_inputs)
        finally:
            for p in self.index.params:
                if id(p) in saved:
                    p.copy_(saved[id(p)])
            self.model.train(was_model)
            subnet.train(was_sub)
        for w, g in zip(_tensors(want), _tensors(got)):
            if w.shape != g.shape:
                raise RuntimeError(f"subnet check failed: output shape {tuple(g.shape)} != {tuple(w.shape)}")
            err = float((w - g).abs().max()) if w.numel() else 0.0
            scale = float(w.abs().max()) if w.numel() else 0.0
            if err > atol * max(1.0, scale):
                raise RuntimeError(f"subnet check failed: outputs differ by {err:.3g} (scale {scale:.3g}); "
                                   "please report the model so the analysis can be fixed")

    # -- summary --------------------------------------------------------------------------
    def summary(self, max_groups: int = 8) -> str:
        total = self.total_params()
        prunable = self.prunable_params()
        owned = self.owned_params()
        lines = [
            f"PruningSpace of {type(self.model).__name__}: {len(self.captured.graph.nodes)} graph nodes, "
            f"{self.num_groups} pruning groups",
            f"  parameters: {total:,} total, {owned:,} ({100 * owned / max(1, total):.1f}%) in the groups "
            f"(rows, biases, norm entries: scored and zeroed), {prunable:,} "
            f"({100 * prunable / max(1, total):.1f}%) removable with the consumers' input columns",
            f"  group sparsity now: {self.group_sparsity():.3f}",
        ]
        by_producer: dict[str, int] = {}
        for g in self.groups:
            key = g.label.split("[")[0]
            by_producer[key] = by_producer.get(key, 0) + 1
        lines.append("  groups by first layer:")
        items = list(by_producer.items())
        for key, n in items[:max_groups]:
            lines.append(f"    {n:5d}  {key}")
        if len(items) > max_groups:
            lines.append(f"    ... and {len(items) - max_groups} more layers")
        if self.notes:
            lines.append("  kept (not prunable):")
            lines.extend(f"    - {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"PruningSpace({type(self.model).__name__}, groups={self.num_groups})"


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []
