"""Minimal removal structures ("pruning groups") found from a captured graph.

The analysis gives every channel of every tensor an identity, an *atom*. A tensor carries a map
(an integer tensor broadcastable to its shape) saying which atom each element belongs to. Layers
create atoms (a Conv2d's output channels, a Linear's output features, attention heads); shape
operations move them along (reshape, permute, cat, pad); elementwise operations between tensors
tie them (residual `+` unites channel i of both sides); grouped convolutions, GroupNorm and
attention heads tie whole blocks. A union-find over atoms gives the groups: everything in one
group must be removed together. Parameters are attached to atoms by *records* (conv weight rows
to the output atoms, columns to the input atoms, BatchNorm entries to the channel atoms).

Output side and input side (as in OTOv2's zero-invariant groups): a group *owns* its producers'
rows, biases and norm entries (and per-channel parameters); those are what an optimizer scores,
shrinks and zeroes, and a group counts as zero when they are. The consumers' input columns that
only ever multiply the group's channels while those are zero are the group's *input slices*:
they are dropped when the subnet is built, never scored or zeroed. Where a removed channel is not
zero when its group is (after a sigmoid, say), the consumer's columns stay owned by the group,
since zeroing them is then what makes removal exact.

Safety rule: whatever the analysis does not understand marks the touching atoms *fixed*
(never removed), with a note. Fixed atoms are the union-find class of atom 0.

Zero-invariance: each map element also carries a flag `nz` = "this value is not necessarily zero
when its group's parameters are all zero". Layers reset it (zeroed rows give zero outputs);
e.g. sigmoid sets it. A group may be removed only where its removed values do not reach kept
values through something other than a zeroed parameter slice (sums over channels, attention
scores, ...); rules fix atoms where that would fail. This is what makes "zero the group, remove
it, get the same outputs" exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.fx.node import Node

from trainlab.errors import ConfigError
from trainlab.techniques.pruning.graph import CapturedGraph

FIXED = 0
#: a parameter small enough to give each element its own atom when used outside a known layer
MAX_ELEMENTWISE_PARAM = 1 << 20


class UnionFind:
    """Union-find over integer atoms; the class of atom 0 is 'fixed'."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if rb == FIXED or (ra != FIXED and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra  # the smaller id (and always the fixed class) stays the root
        return True

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        pairs = np.unique(np.stack([np.asarray(a, dtype=np.int64).ravel(), np.asarray(b, dtype=np.int64).ravel()]), axis=1)
        for x, y in pairs.T.tolist():
            if x != y:
                self.union(x, y)

    def union_all(self, atoms: np.ndarray) -> None:
        atoms = np.unique(np.asarray(atoms, dtype=np.int64))
        for x in atoms[1:].tolist():
            self.union(int(atoms[0]), x)

    def fix(self, atoms: np.ndarray | Iterable[int]) -> bool:
        changed = False
        for a in np.unique(np.asarray(list(atoms) if not isinstance(atoms, np.ndarray) else atoms, dtype=np.int64)).tolist():
            changed |= self.union(FIXED, a)
        return changed

    def roots(self) -> np.ndarray:
        """Root of every atom, as an array (path-compressed)."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


@dataclass
class TMap:
    """Atom map of one tensor: `atoms` and `nz` are broadcastable to `shape`."""

    atoms: torch.Tensor   # int64
    nz: torch.Tensor      # bool
    shape: tuple[int, ...]

    @staticmethod
    def fixed(shape: Sequence[int], nz: bool = True) -> "TMap":
        ones = [1] * len(shape)
        return TMap(torch.zeros(ones, dtype=torch.long), torch.full(ones, nz), tuple(shape))

    @staticmethod
    def along(shape: Sequence[int], dim: int, atoms: np.ndarray, nz: bool = False) -> "TMap":
        """A map varying only along `dim` (e.g. a layer's fresh output channels)."""
        view = [1] * len(shape)
        view[dim] = len(atoms)
        a = torch.as_tensor(atoms, dtype=torch.long).reshape(view)
        return TMap(a, torch.full(view, nz), tuple(shape))

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.atoms.expand(self.shape).contiguous(), self.nz.expand(self.shape).contiguous()

    def varying(self) -> list[int]:
        return [d for d in range(self.atoms.dim()) if self.atoms.shape[d] > 1]

    def nz_along(self, dim: int) -> np.ndarray:
        """Per index along `dim`: may any element there be non-zero when its group is zero?"""
        n = self.nz
        for d in range(n.dim()):
            if d != dim and n.shape[d] > 1:
                n = n.any(dim=d, keepdim=True)
        n = n.reshape(-1)
        if n.numel() == 1 and self.shape[dim] != 1:
            n = n.expand(self.shape[dim])
        return n.numpy().astype(bool)

    def along_dim(self, dim: int) -> np.ndarray:
        """The atoms along `dim` (index 0 along every other dim), expanded to the dim's size."""
        a = self.atoms
        for d in range(a.dim()):
            if d != dim and a.shape[d] > 1:
                a = a.narrow(d, 0, 1)
        a = a.reshape(-1)
        if a.numel() == 1 and self.shape[dim] != 1:
            a = a.expand(self.shape[dim])
        return a.numpy().astype(np.int64)


def compress(atoms: torch.Tensor, nz: torch.Tensor, shape: Sequence[int]) -> TMap:
    """Shrink the maps to size 1 along every dim where both are constant."""
    for d in range(atoms.dim()):
        if atoms.shape[d] > 1:
            a0, n0 = atoms.narrow(d, 0, 1), nz.narrow(d, 0, 1)
            if bool((atoms == a0).all()) and bool((nz == n0).all()):
                atoms, nz = a0, n0
    return TMap(atoms.contiguous(), nz.contiguous(), tuple(shape))


@dataclass
class Record:
    """Parameter (or buffer) slices that belong to atoms: `atoms[i]` owns index i along `dim`;
    with dim None, `atoms` has the parameter's shape and owns single elements."""

    name: str
    dim: int | None
    atoms: np.ndarray
    is_buffer: bool = False
    #: per index along `dim`: a consumer's input slice that needs no zeroing (its inputs are zero
    #: whenever its group is); None = every index belongs to its group's own slices
    passive: np.ndarray | None = None


@dataclass
class Group:
    """One minimal removal structure: parameter slices that are removed together.

    slices: the group's own slices (output side: producer rows, biases, norm entries), the ones
    that are scored, shrunk and zeroed. input_slices: consumers' input columns that are only
    dropped when the subnet is built. size: parameter elements of the own slices; removed_size:
    what the subnet loses with the group (both kinds; overlaps counted once)."""

    id: int
    root: int
    label: str
    slices: list[tuple[str, int | None, np.ndarray]]   # (param name, dim or None, indices or element mask)
    size: int = 0           # number of parameter elements (buffers excluded), overlaps counted once
    producers: list[str] = field(default_factory=list)
    input_slices: list[tuple[str, int | None, np.ndarray]] = field(default_factory=list)
    removed_size: int = 0

    def __repr__(self) -> str:
        return f"Group({self.id}, {self.label}, size={self.size}, removed_size={self.removed_size})"


@dataclass
class Check:
    """Deferred check: the roots of `atoms` must be constant along `dims` (else fix them)."""

    atoms: torch.Tensor
    dims: tuple[int, ...]
    reason: str


class Analyzer:
    """Walks the captured graph once, building atoms, records and checks; then `finalize()`."""

    def __init__(self, cg: CapturedGraph, unprunable: set[str], strict: bool = False) -> None:
        self.cg = cg
        self.uf = UnionFind()
        self.unprunable = unprunable
        self.strict = strict
        self.maps: dict[Node, Any] = {}
        self.records: list[Record] = []
        self.producers: list[tuple[str, np.ndarray]] = []   # (label, atoms) of each layer output
        self.checks: list[Check] = []
        self.notes: dict[str, None] = {}                   # ordered set of notes
        self.rigid_params: set[str] = set()
        self.param_names = {id(p): n for n, p in cg.model.named_parameters(remove_duplicate=False)}
        self.buffer_names = {id(b): n for n, b in cg.model.named_buffers(remove_duplicate=False)}
        self.node: Node | None = None

    # -- helpers used by rules -------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        return self.uf.new(n)

    def fix(self, maps: Any, reason: str) -> None:
        """Mark every atom in `maps` (a TMap, nested tuples of them, or an atom array) as fixed."""
        atoms = [m.atoms.reshape(-1).numpy() for m in _flatten_maps(maps)] if not isinstance(maps, np.ndarray) else [maps]
        atoms = [a for a in atoms if a.size]
        if not atoms:
            return
        all_atoms = np.concatenate(atoms)
        if self.uf.fix(all_atoms[all_atoms != FIXED]):
            self.note(reason)

    def note(self, reason: str) -> None:
        self.notes.setdefault(reason, None)

    def unknown(self, what: str) -> None:
        """An operation the analysis does not understand: keep everything touching it."""
        msg = f"{what} is not understood by the group analysis; its channels are kept"
        if self.strict:
            raise ConfigError(msg + " (strict mode). Pass unprunable=[...] for the module, or strict=False")
        node = self.node
        for arg in node.all_input_nodes:
            self.fix(self.maps.get(arg), msg)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = torch.broadcast_tensors(a, b)
        self.uf.union_arrays(a.reshape(-1).numpy(), b.reshape(-1).numpy())

    def require_constant(self, m: TMap, dims: Iterable[int], reason: str) -> None:
        dims = tuple(d for d in dims if 0 <= d < m.atoms.dim() and m.atoms.shape[d] > 1)
        if dims:
            self.checks.append(Check(m.atoms, dims, reason))

    def record(self, param: torch.Tensor | None, dim: int | None, atoms: np.ndarray,
               passive: np.ndarray | None = None) -> None:
        """Attach a parameter's slices along `dim` to `atoms`. passive: per index, True for a
        consumer's input slice whose inputs are zero whenever its group is (see Record)."""
        if param is None:
            return
        name = self.param_names.get(id(param))
        is_buffer = False
        if name is None:
            name = self.buffer_names.get(id(param))
            is_buffer = True
        if name is None:
            return  # a tensor not owned by the model (nothing to slice)
        if passive is not None:
            passive = np.asarray(passive, dtype=bool)
            passive = passive if passive.any() else None
        self.records.append(Record(name, dim, np.asarray(atoms, dtype=np.int64), is_buffer, passive))

    def producer(self, label: str, atoms: np.ndarray) -> None:
        self.producers.append((label, np.asarray(atoms, dtype=np.int64)))

    def value(self, node: Any) -> Any:
        return self.cg.values.get(node) if isinstance(node, Node) else node

    def describe(self) -> str:
        return self.cg.describe(self.node)

    # -- the pass ----------------------------------------------------------------------------
    def run(self) -> None:
        from trainlab.techniques.pruning import rules

        for node in self.cg.graph.nodes:
            self.node = node
            if node.op == "output":
                self.fix(_maps_of(node.args[0], self.maps), "the model's outputs are kept")
                continue
            value = self.cg.values.get(node)
            out = rules.apply(self, node, value)
            self.maps[node] = out
        self.node = None


def _flatten_maps(obj: Any) -> list[TMap]:
    if isinstance(obj, TMap):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [m for o in obj for m in _flatten_maps(o)]
    if isinstance(obj, dict):
        return [m for o in obj.values() for m in _flatten_maps(o)]
    return []


def _maps_of(arg: Any, maps: dict[Node, Any]) -> Any:
    if isinstance(arg, Node):
        return maps.get(arg)
    if isinstance(arg, (tuple, list)):
        return [_maps_of(a, maps) for a in arg]
    if isinstance(arg, dict):
        return {k: _maps_of(v, maps) for k, v in arg.items()}
    return None


@dataclass
class GroupAnalysis:
    """What the analysis found: groups, the root of every atom, and the maps for construction."""

    groups: list[Group]
    roots: np.ndarray                    # atom -> root
    group_of_root: dict[int, int]        # root -> group id (prunable roots only)
    records: list[Record]
    maps: dict[Node, Any]
    notes: list[str]
    producers: list[tuple[str, np.ndarray]]
    coverage: list[np.ndarray]           # per producer: the group ids it spans (>= 1 must stay)
    param_shapes: dict[str, tuple[int, ...]]

    def group_ids(self, atoms: np.ndarray) -> np.ndarray:
        """Group id of each atom (-1 where the atom is fixed / not prunable)."""
        roots = self.roots[np.asarray(atoms, dtype=np.int64)]
        lookup = np.vectorize(lambda r: self.group_of_root.get(int(r), -1), otypes=[np.int64])
        return lookup(roots) if roots.size else roots


def _canon(roots: np.ndarray) -> np.ndarray:
    return np.where(roots == FIXED, -1, roots)


def _constant_along(roots: torch.Tensor, dims: Iterable[int]) -> bool:
    for d in dims:
        if roots.shape[d] > 1 and not bool((roots == roots.narrow(d, 0, 1)).all()):
            return False
    return True


def finalize(an: Analyzer) -> GroupAnalysis:
    uf = an.uf
    model = an.cg.model
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    shapes = {n: tuple(t.shape) for n, t in {**params, **buffers}.items()}

    # one slice of a tensor owned by several records (shared layers, tied weights) unites them
    by_dim: dict[tuple[str, int | None], list[Record]] = {}
    for r in an.records:
        by_dim.setdefault((r.name, r.dim), []).append(r)
    for recs in by_dim.values():
        for other in recs[1:]:
            if other.atoms.shape == recs[0].atoms.shape:
                uf.union_arrays(recs[0].atoms, other.atoms)
            else:
                uf.fix(np.concatenate([recs[0].atoms.ravel(), other.atoms.ravel()]))
    for r in an.records:
        inside = any(r.name.startswith(u + ".") for u in an.unprunable if u)
        if r.name in an.rigid_params or inside:
            if uf.fix(r.atoms.ravel()):
                an.note(f"parameter '{r.name}' is also used by a module the analysis keeps whole")

    # fixpoint over the deferred checks and the one-dim rule (fixing only merges classes)
    node_maps = [m for v in an.maps.values() for m in _flatten_maps(v)]
    elementwise = [torch.as_tensor(r.atoms) for r in an.records if r.dim is None]
    while True:
        roots_np = uf.roots()
        roots = torch.as_tensor(_canon(roots_np))
        changed = False
        for c in an.checks:
            if not _constant_along(roots[c.atoms], c.dims):
                changed |= uf.fix(c.atoms.reshape(-1).numpy())
                an.note(c.reason)
        for atoms in [m.atoms for m in node_maps] + elementwise:
            r = roots[atoms]
            vary = [d for d in range(r.dim()) if r.shape[d] > 1 and not _constant_along(r, [d])]
            if len(vary) > 1:
                changed |= uf.fix(atoms.reshape(-1).numpy())
                an.note("channels spread over two tensor dims at once (e.g. an outer product) are kept")
        if not changed:
            break

    roots_np = uf.roots()
    producer_roots = set()
    for _, atoms in an.producers:
        producer_roots.update(np.unique(roots_np[atoms]).tolist())
    producer_roots.discard(FIXED)

    slices: dict[int, list[tuple[str, int | None, np.ndarray]]] = {}
    input_slices: dict[int, list[tuple[str, int | None, np.ndarray]]] = {}
    for r in an.records:
        rr = roots_np[r.atoms]
        for root, idx in _split_by_root(rr.ravel()):
            if root not in producer_roots:
                continue
            if r.dim is None:
                mask = np.zeros(rr.size, dtype=bool)
                mask[idx] = True
                slices.setdefault(root, []).append((r.name, None, mask.reshape(rr.shape)))
                continue
            passive = r.passive[idx] if r.passive is not None else np.zeros(len(idx), dtype=bool)
            if (~passive).any():
                slices.setdefault(root, []).append((r.name, r.dim, idx[~passive]))
            if passive.any():
                input_slices.setdefault(root, []).append((r.name, r.dim, idx[passive]))

    labels: dict[int, str] = {}
    producers_of: dict[int, list[str]] = {}
    for label, atoms in an.producers:
        for root, idx in _split_by_root(roots_np[atoms]):
            if root == FIXED:
                continue
            text = f"{label}[{_ranges(idx)}]"
            labels.setdefault(root, text)
            producers_of.setdefault(root, []).append(text)

    groups: list[Group] = []
    group_of_root: dict[int, int] = {}
    for root in sorted(producer_roots):
        if root not in slices:
            continue
        g = Group(id=len(groups), root=root, label=labels.get(root, f"atom {root}"), slices=slices[root],
                  producers=producers_of.get(root, []), input_slices=input_slices.get(root, []))
        g.size = _slice_size(g.slices, params, shapes)
        if g.size == 0:
            continue  # nothing to score or zero: its channels are kept
        g.removed_size = _slice_size(g.slices + g.input_slices, params, shapes)
        group_of_root[root] = g.id
        groups.append(g)

    coverage = []
    for _, atoms in an.producers:
        gids = {group_of_root.get(int(r), -1) for r in np.unique(roots_np[atoms]).tolist()}
        gids.discard(-1)
        if gids:
            coverage.append(np.array(sorted(gids), dtype=np.int64))
    return GroupAnalysis(groups=groups, roots=roots_np, group_of_root=group_of_root, records=an.records,
                         maps=an.maps, notes=list(an.notes), producers=an.producers, coverage=coverage,
                         param_shapes=shapes)


def _split_by_root(roots: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(root, positions holding it) for each distinct root, positions in increasing order."""
    if roots.size == 0:
        return []
    order = np.argsort(roots, kind="stable")
    sorted_roots = roots[order]
    cuts = np.nonzero(np.diff(sorted_roots))[0] + 1
    # a stable sort keeps equal roots in their original order: positions come out increasing
    return [(int(sorted_roots[a]), order[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, roots.size])]


def _slice_size(slices: list[tuple[str, int | None, np.ndarray]], params: dict[str, torch.Tensor],
                shapes: dict[str, tuple[int, ...]]) -> int:
    """Parameter elements covered by the slices, counting an element in two slices once."""
    by_param: dict[str, list[tuple[int | None, np.ndarray]]] = {}
    for name, dim, idx in slices:
        if name in params:
            by_param.setdefault(name, []).append((dim, idx))
    total = 0
    for name, parts in by_param.items():
        shape = shapes[name]
        numel = math.prod(shape)
        if len(parts) == 1 and parts[0][0] is not None:  # one slice along one dim: no overlap
            dim, idx = parts[0]
            total += len(idx) * (numel // shape[dim])
            continue
        mask = torch.zeros(shape, dtype=torch.bool)
        for dim, idx in parts:
            if dim is None:
                mask |= torch.as_tensor(idx)
            else:
                sel = [slice(None)] * len(shape)
                sel[dim] = torch.as_tensor(idx, dtype=torch.long)
                mask[tuple(sel)] = True
        total += int(mask.sum())
    return total


def _ranges(idx: np.ndarray) -> str:
    """Compact text for sorted indices: 0:4,7."""
    idx = sorted(int(i) for i in idx)
    parts, start, prev = [], None, None
    for i in idx:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(str(start) if start == prev else f"{start}:{prev + 1}")
            start = prev = i
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev + 1}")
    return ",".join(parts)


def analyze(cg: CapturedGraph, unprunable: set[str] | None = None, strict: bool = False) -> GroupAnalysis:
    an = Analyzer(cg, set(unprunable or ()), strict)
    an.run()
    return finalize(an)
