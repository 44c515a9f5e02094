"""Subnet construction: slice the removed groups out and build a smaller, real nn.Module.

The subnet is a copy of the traced `torch.fx.GraphModule`: the same graph, with every layer
replaced by a smaller copy (fewer rows/columns, fewer BatchNorm entries, fewer GroupNorm groups,
fewer attention heads) and the constants that encode channel counts in the graph rewritten
(explicit sizes of `view`/`reshape`/`expand`, channel padding amounts, split sizes). Layers keep
their types (so `.train()` / `.eval()`, state_dict names and further fine-tuning work), except
`nn.MultiheadAttention` with removed heads or input features, which becomes
`PrunedMultiheadAttention` (nn.MultiheadAttention ties its input width to its head count).

Exactness: removing a group gives the same outputs as the model with that group's parameters
set to zero (in eval mode). `construct_subnet` checks this on the example input and refuses to
return a subnet that does not match.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import Node

from trainlab.techniques.pruning.graph import CapturedGraph
from trainlab.techniques.pruning.groups import GroupAnalysis, TMap


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention whose input width, head count and output width are independent.

    Computes what nn.MultiheadAttention computes (same parameter names and layouts), for the
    heads and features that remain.
    """

    def __init__(self, src: nn.MultiheadAttention, params: dict[str, torch.Tensor], num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = src.head_dim
        self.batch_first = src.batch_first
        self.dropout = src.dropout
        self.add_zero_attn = src.add_zero_attn
        self._qkv_same_embed_dim = src._qkv_same_embed_dim
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                     "bias_k", "bias_v"):
            t = params.get(name)
            self.register_parameter(name, nn.Parameter(t) if t is not None else None)
        w, b = params["out_proj.weight"], params.get("out_proj.bias")
        self.out_proj = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        self.out_proj.weight = nn.Parameter(w)
        if b is not None:
            self.out_proj.bias = nn.Parameter(b)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        inner = self.num_heads * self.head_dim
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split(inner)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.split(inner)
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length = query.shape[0], query.shape[1]
        q, k, v = self._project(query, key, value)
        mask = _additive_mask(attn_mask, q.dtype)
        kpm = _additive_mask(key_padding_mask, q.dtype)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(n, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(n, 1, -1)], dim=1)
            mask = F.pad(mask, (0, 1)) if mask is not None else None
            kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, 1, k.shape[2])], dim=1)
            v = torch.cat([v, v.new_zeros(n, 1, v.shape[2])], dim=1)
            mask = F.pad(mask, (0, 1)) if mask is not None else None
            kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
        h, hd = self.num_heads, self.head_dim
        q = q.reshape(n, length, h, hd).transpose(1, 2)
        k = k.reshape(n, k.shape[1], h, hd).transpose(1, 2)
        v = v.reshape(n, v.shape[1], h, hd).transpose(1, 2)
        if mask is not None and mask.dim() == 3:  # [N*H, L, S]
            mask = mask.reshape(n, h, mask.shape[1], mask.shape[2])
        if kpm is not None:
            kpm = kpm.reshape(n, 1, 1, kpm.shape[-1])
            mask = kpm if mask is None else mask + kpm
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(dim=-1)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            if dropout > 0:
                attn = F.dropout(attn, p=dropout)
            out = attn @ v
        else:
            causal = is_causal and mask is None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, h * hd))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


# --------------------------------------------------------------------------------- planning

def _removed_atoms(ga: GroupAnalysis, removed_groups: Iterable[int]) -> np.ndarray:
    """Boolean per atom: does it belong to a removed group?"""
    roots = np.array(sorted({ga.groups[g].root for g in removed_groups}), dtype=np.int64)
    return np.isin(ga.roots, roots)


def keep_indices(ga: GroupAnalysis, removed_groups: Iterable[int]) -> dict[str, dict[int, torch.Tensor]]:
    """Per parameter/buffer and dim: the indices that stay."""
    removed = _removed_atoms(ga, removed_groups)
    drop: dict[str, dict[int, np.ndarray]] = {}
    for r in ga.records:
        shape = ga.param_shapes[r.name]
        per_dim = drop.setdefault(r.name, {})
        if r.dim is not None:
            gone = removed[r.atoms]
            per_dim[r.dim] = per_dim.get(r.dim, np.zeros(shape[r.dim], dtype=bool)) | gone
        else:
            mask = removed[r.atoms]
            if not mask.any():
                continue
            for d in range(mask.ndim):
                others = tuple(i for i in range(mask.ndim) if i != d)
                full = mask.all(axis=others) if others else mask
                per_dim[d] = per_dim.get(d, np.zeros(shape[d], dtype=bool)) | full
            kept = np.ones(shape, dtype=bool)
            for d, g in per_dim.items():
                sel = [np.newaxis] * mask.ndim
                sel[d] = slice(None)
                kept &= ~g[tuple(sel)]
            if not np.array_equal(kept, ~mask):
                raise RuntimeError(f"internal error: removal from '{r.name}' is not a rectangular slice")
    return {name: {d: torch.as_tensor(np.nonzero(~g)[0], dtype=torch.long) for d, g in dims.items() if g.any()}
            for name, dims in drop.items()}


def new_shape(m: TMap, removed: np.ndarray, roots: np.ndarray) -> tuple[int, ...]:
    """The shape a tensor with map `m` has in the subnet."""
    gone = torch.as_tensor(removed[m.atoms.numpy()])
    shape = list(m.shape)
    for d in range(gone.dim()):
        if gone.shape[d] > 1:
            others = [i for i in range(gone.dim()) if i != d]
            along = gone.all(dim=others[0], keepdim=True) if others else gone
            for o in others[1:]:
                along = along.all(dim=o, keepdim=True)
            shape[d] = int((~along).sum())
    return tuple(shape)


def _kept_positions(m: TMap, removed: np.ndarray, dim: int) -> torch.Tensor:
    gone = torch.as_tensor(removed[m.atoms.numpy()])
    if gone.shape[dim] == 1:
        return torch.ones(m.shape[dim], dtype=torch.bool)
    others = [i for i in range(gone.dim()) if i != dim]
    for o in others:
        gone = gone.all(dim=o, keepdim=True)
    return ~gone.reshape(-1)


# ------------------------------------------------------------------------------ construction

def construct_subnet(cg: CapturedGraph, ga: GroupAnalysis, removed_groups: Iterable[int]) -> fx.GraphModule:
    """A GraphModule computing the model with `removed_groups` taken out."""
    removed_groups = sorted(set(int(g) for g in removed_groups))
    keeps = keep_indices(ga, removed_groups)
    removed = _removed_atoms(ga, removed_groups)
    gm = copy.deepcopy(cg.graph_module)
    by_name = {n.name: n for n in cg.graph.nodes}

    # 1. slice every parameter and buffer that loses indices
    for name, dims in keeps.items():
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = gm.get_submodule(owner_name)
        except AttributeError:
            continue  # not used by the traced graph
        tensor = getattr(owner, attr)
        sliced = tensor.detach()
        for d, idx in dims.items():
            sliced = sliced.index_select(d, idx)
        sliced = sliced.clone()
        if isinstance(tensor, nn.Parameter):
            setattr(owner, attr, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            owner.register_buffer(attr, sliced, persistent=attr not in owner._non_persistent_buffers_set)

    # 2. layer attributes and replacements
    done: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in done:
            continue
        done.add(node.target)
        mod = gm.get_submodule(node.target)
        orig = cg.graph_module.get_submodule(node.target)
        out_map = ga.maps.get(by_name[node.name])
        _resize_module(gm, node.target, mod, orig, out_map, removed, ga.roots)

    # 3. constants in the graph that encode channel counts
    for node in gm.graph.nodes:
        orig = by_name.get(node.name)
        if orig is None:
            continue
        _rewrite_args(node, orig, ga, removed)
    gm.recompile()
    return gm


def _resize_module(gm: fx.GraphModule, target: str, mod: nn.Module, orig: nn.Module, out_map: Any,
                   removed: np.ndarray, roots: np.ndarray) -> None:
    if isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = mod.weight.shape
    elif isinstance(mod, nn.modules.conv._ConvNd):
        w = mod.weight
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        if orig.groups > 1:
            per_group = (orig.in_channels if transposed else orig.out_channels) // orig.groups
            mod.groups = w.shape[0] // per_group
        if transposed:
            mod.in_channels, mod.out_channels = w.shape[0], w.shape[1] * mod.groups
        else:
            mod.out_channels, mod.in_channels = w.shape[0], w.shape[1] * mod.groups
    elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        if mod.weight is not None:
            mod.num_features = mod.weight.shape[0]
        elif getattr(mod, "running_mean", None) is not None:
            mod.num_features = mod.running_mean.shape[0]
        elif isinstance(out_map, TMap):
            mod.num_features = new_shape(out_map, removed, roots)[1]
    elif isinstance(mod, nn.GroupNorm):
        per_group = orig.num_channels // orig.num_groups
        channels = mod.weight.shape[0] if mod.weight is not None else new_shape(out_map, removed, roots)[1]
        mod.num_channels, mod.num_groups = channels, channels // per_group
    elif isinstance(mod, nn.Embedding):
        mod.embedding_dim = mod.weight.shape[1]
    elif isinstance(mod, nn.PReLU):
        mod.num_parameters = mod.weight.numel()
    elif isinstance(mod, nn.MultiheadAttention):
        _replace_attention(gm, target, mod)
    elif isinstance(mod, nn.Unflatten) and isinstance(out_map, TMap):
        shape = new_shape(out_map, removed, roots)
        dim = mod.dim % len(shape)
        mod.unflattened_size = tuple(shape[dim:dim + len(mod.unflattened_size)])
    elif isinstance(mod, (nn.modules.padding._ConstantPadNd,)) and isinstance(out_map, TMap):
        mod.padding = tuple(_new_pad(list(mod.padding), out_map, removed))


def _replace_attention(gm: fx.GraphModule, target: str, mod: nn.MultiheadAttention) -> None:
    inner = (mod.in_proj_weight.shape[0] // 3) if mod._qkv_same_embed_dim else mod.q_proj_weight.shape[0]
    in_width = (mod.in_proj_weight if mod._qkv_same_embed_dim else mod.q_proj_weight).shape[1]
    heads = inner // mod.head_dim
    if heads == mod.num_heads and in_width == mod.embed_dim and mod.out_proj.weight.shape[0] == mod.embed_dim:
        return
    params = {name: p.detach() for name, p in mod.named_parameters()}
    new = PrunedMultiheadAttention(mod, params, heads)
    owner_name, _, attr = target.rpartition(".")
    setattr(gm.get_submodule(owner_name), attr, new)


def _new_pad(amounts: list[int], out_map: TMap, removed: np.ndarray) -> list[int]:
    rank = len(out_map.shape)
    out = list(amounts)
    for i in range(len(amounts) // 2):
        d = rank - 1 - i
        before, after = amounts[2 * i], amounts[2 * i + 1]
        if out_map.atoms.shape[d] == 1 or (before == 0 and after == 0):
            continue
        kept = _kept_positions(out_map, removed, d)
        size = out_map.shape[d]
        out[2 * i] = int(kept[:before].sum())
        out[2 * i + 1] = int(kept[size - after:].sum()) if after else 0
    return out


_SIZE_OPS = frozenset({"view", "reshape", "expand"})


def _rewrite_args(node: Node, orig: Node, ga: GroupAnalysis, removed: np.ndarray) -> None:
    """Rewrite integer arguments that encode sizes which shrink in the subnet."""
    if node.op not in ("call_method", "call_function"):
        return
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    out_map = ga.maps.get(orig)
    if not isinstance(out_map, TMap) and name not in ("split",):
        return
    if name in _SIZE_OPS:
        new = new_shape(out_map, removed, ga.roots)
        if new == tuple(out_map.shape):
            return
        args = list(node.args)
        if len(args) == 2 and isinstance(args[1], (tuple, list)):
            sizes = list(args[1])
            args[1] = type(args[1])(_resized(sizes, new))
        else:
            args[1:] = _resized(args[1:], new)
        node.args = tuple(args)
    elif name == "unflatten":
        new = new_shape(out_map, removed, ga.roots)
        args = list(node.args)
        dim = args[1] % len(new)
        sizes = list(args[2])
        args[2] = type(args[2])(_resized(sizes, new[dim:dim + len(sizes)]))
        node.args = tuple(args)
    elif name == "pad":
        args = list(node.args)
        amounts = args[1] if len(args) > 1 else node.kwargs["pad"]
        new_amounts = _new_pad(list(amounts), out_map, removed)
        if len(args) > 1:
            args[1] = type(amounts)(new_amounts)
            node.args = tuple(args)
        else:
            node.kwargs = {**node.kwargs, "pad": type(amounts)(new_amounts)}
    elif name == "split":
        maps = ga.maps.get(orig)
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
        if isinstance(size, int) and isinstance(maps, tuple) and maps:
            new = new_shape(maps[0], removed, ga.roots)
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            new_size = new[dim % len(new)]
            if new_size != size:
                args = list(node.args)
                args[1] = new_size
                node.args = tuple(args)


def _resized(sizes: list[Any], new: tuple[int, ...]) -> list[Any]:
    if len(sizes) != len(new):
        return sizes
    return [new[i] if isinstance(s, int) and s != -1 and s != new[i] else s for i, s in enumerate(sizes)]
