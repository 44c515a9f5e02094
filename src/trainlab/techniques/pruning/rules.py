"""Per-operation rules of the channel analysis (see groups.py for atoms, maps and records).

Each rule receives the Analyzer, the fx node and the node's concrete value, and returns the
output's map (a TMap, a tuple of them for tuple outputs, or None for non-tensors). Rules tie
atoms (`an.union`), attach parameter slices (`an.record`), declare layer outputs
(`an.producer`), add deferred checks (`an.require_constant`) and keep what they cannot handle
exactly (`an.fix`, `an.unknown`).
"""
from __future__ import annotations

import inspect
import math
import operator
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.fx.node import Node, map_arg

from trainlab.techniques.pruning.graph import METADATA_METHODS
from trainlab.techniques.pruning.groups import FIXED, MAX_ELEMENTWISE_PARAM, TMap, compress

Rule = Callable[..., Any]

# ------------------------------------------------------------------------------- helpers

def _fixed_like(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TMap.fixed(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_fixed_like(v) for v in value)
    return None


def _arg(node: Node, pos: int, name: str, default: Any = None) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    if len(node.args) > pos:
        return node.args[pos]
    return default


def _val(an, a: Any) -> Any:
    return map_arg(a, lambda n: an.cg.values.get(n)) if isinstance(a, (Node, tuple, list, dict)) else a


def _map(an, a: Any) -> TMap | None:
    m = an.maps.get(a) if isinstance(a, Node) else None
    return m if isinstance(m, TMap) else None


def _pad_rank(m: TMap, rank: int) -> TMap:
    extra = rank - m.atoms.dim()
    if extra <= 0:
        return m
    view = [1] * extra
    return TMap(m.atoms.reshape(view + list(m.atoms.shape)), m.nz.reshape(view + list(m.nz.shape)),
                tuple([1] * extra + list(m.shape)))


def _label(an, node: Node) -> str:
    return f"{type(an.cg.module(node)).__name__} '{node.target}'"


def _channel_dim(rank: int, spatial: int) -> int:
    """Channel dim of an [N, C, *spatial] or unbatched [C, *spatial] input."""
    return max(0, rank - spatial - 1)


# ---------------------------------------------------------------------- elementwise unary

ZERO_PRESERVING = frozenset({
    "relu", "relu6", "gelu", "silu", "tanh", "leaky_relu", "elu", "selu", "celu", "hardtanh", "mish",
    "hardswish", "softsign", "tanhshrink", "softshrink", "hardshrink", "dropout", "dropout1d", "dropout2d",
    "dropout3d", "alpha_dropout", "feature_alpha_dropout", "identity", "neg", "abs", "clone", "contiguous",
    "detach", "float", "half", "double", "bfloat16", "to", "type", "type_as", "square", "sin", "sinh", "asinh",
    "atan", "tan", "erf", "expm1", "sign", "trunc", "fix", "round", "floor", "ceil", "sqrt", "log1p", "atanh",
    "asin", "nan_to_num", "requires_grad", "cpu", "cuda", "positive",
})
NONZERO_SAFE = frozenset({"sigmoid", "hardsigmoid", "exp", "cos", "cosh", "softplus", "logsigmoid", "erfc",
                          "logical_not", "bitwise_not", "isnan", "isinf", "isfinite"})
UNSAFE_AT_ZERO = frozenset({"log", "log2", "log10", "rsqrt", "reciprocal", "digamma", "lgamma"})


def unary(kind: str) -> Rule:
    def rule(an, node: Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        m = _map(an, node.args[0] if node.args else None)
        if m is None or tuple(m.shape) != tuple(value.shape):
            an.unknown(an.describe())
            return _fixed_like(value)
        if kind == "zero":
            return TMap(m.atoms, m.nz, tuple(value.shape))
        if kind == "unsafe":
            an.fix(m, f"{an.describe()} is infinite at zero; its input channels are kept")
        return TMap(m.atoms, torch.ones_like(m.nz), tuple(value.shape))
    return rule


def _clamp(an, node: Node, value: Any) -> Any:
    lo = _val(an, _arg(node, 1, "min"))
    hi = _val(an, _arg(node, 2, "max"))
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        return binary("add")(an, node, value)
    zero_ok = (lo is None or lo <= 0) and (hi is None or hi >= 0)
    return unary("zero" if zero_ok else "nonzero")(an, node, value)


def _pow(an, node: Node, value: Any) -> Any:
    e = _val(an, node.args[1]) if len(node.args) > 1 else None
    if isinstance(node.args[0], Node) and isinstance(e, (int, float)):
        return unary("zero" if e > 0 else ("nonzero" if e == 0 else "unsafe"))(an, node, value)
    an.unknown(an.describe())
    return _fixed_like(value)


# --------------------------------------------------------------------- elementwise binary

def _pair(an, a: TMap, b: TMap, kind: str, out_shape: tuple[int, ...]) -> TMap:
    """Tie two tensors combined elementwise (with broadcasting)."""
    rank = len(out_shape)
    a, b = _pad_rank(a, rank), _pad_rank(b, rank)
    # an operand broadcast along a dim where the other one's channels vary is shared by all of
    # them: it can never lose elements, and it must not tie those channels to each other
    shared_a = any(a.shape[d] == 1 and out_shape[d] > 1 and b.atoms.shape[d] > 1 for d in range(rank))
    shared_b = any(b.shape[d] == 1 and out_shape[d] > 1 and a.atoms.shape[d] > 1 for d in range(rank))
    why = f"{an.describe()} broadcasts one operand over the other's channels; that operand is kept"
    nz_a, nz_b = a.nz, b.nz
    if shared_a and shared_b:
        an.fix([a, b], f"{an.describe()} combines channels of two tensors as an outer product; they are kept")
        return TMap.fixed(out_shape)
    if shared_a:
        an.fix(a, why)
        atoms, nz_a = b.atoms, torch.ones_like(a.nz)
    elif shared_b:
        an.fix(b, why)
        atoms, nz_b = a.atoms, torch.ones_like(b.nz)
    else:
        an.union(a.atoms, b.atoms)
        atoms = a.atoms if len(a.varying()) >= len(b.varying()) else b.atoms
    if kind == "mul":
        nz = nz_a & nz_b
    elif kind == "div":
        nz = nz_a
    else:
        nz = nz_a | nz_b
    atoms, nz = torch.broadcast_tensors(atoms, nz)
    return compress(atoms.contiguous(), nz.contiguous(), out_shape)


def binary(kind: str) -> Rule:
    def rule(an, node: Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        x, y = node.args[0], node.args[1] if len(node.args) > 1 else _arg(node, 1, "other")
        mx, my = _map(an, x), _map(an, y)
        if kind == "div" and my is not None and bool((~my.nz).any()):
            an.fix(my, f"{an.describe()} divides by channels that could be zero; they are kept")
        if mx is not None and my is not None:
            return _pair(an, mx, my, kind, tuple(value.shape))
        m, other = (mx, _val(an, y)) if mx is not None else (my, _val(an, x))
        if m is None:
            return TMap.fixed(value.shape)
        if tuple(m.shape) != tuple(value.shape):
            m = _pad_rank(m, len(value.shape))
            m = TMap(m.atoms, m.nz, tuple(value.shape))
        scalar_zero = isinstance(other, (int, float)) and other == 0
        finite = not isinstance(other, (int, float)) or math.isfinite(other)
        if kind == "mul" and finite:
            return m
        if kind == "div" and mx is not None and finite:
            return m
        if kind == "div":  # scalar / tensor
            an.fix(m, f"{an.describe()} divides by channels that could be zero; they are kept")
            return TMap(m.atoms, torch.ones_like(m.nz), m.shape)
        if kind == "add" and scalar_zero:
            return m
        return TMap(m.atoms, torch.ones_like(m.nz), m.shape)
    return rule


def _minmax(reduce_kind: str) -> Rule:
    """torch.max/min: elementwise with a tensor, or a reduction."""
    def rule(an, node: Node, value: Any) -> Any:
        other = _arg(node, 1, "other")
        if isinstance(other, Node) and isinstance(an.cg.values.get(other), torch.Tensor):
            return binary("add")(an, node, value)
        return reduction(reduce_kind)(an, node, value)
    return rule


def _where(an, node: Node, value: Any) -> Any:
    cond, x, y = (node.args + (None, None, None))[:3]
    maps = [m for m in (_map(an, x), _map(an, y)) if m is not None]
    mc = _map(an, cond)
    if not isinstance(value, torch.Tensor) or not maps:
        an.unknown(an.describe())
        return _fixed_like(value)
    out = maps[0]
    if len(maps) == 2:
        out = _pair(an, maps[0], maps[1], "add", tuple(value.shape))
    else:
        out = TMap(out.atoms, torch.ones_like(out.nz), tuple(value.shape))
    if mc is not None:
        out = _pair(an, out, mc, "add", tuple(value.shape))
    return out


def _masked_fill(an, node: Node, value: Any) -> Any:
    mx, mm = _map(an, node.args[0]), _map(an, _arg(node, 1, "mask"))
    fill = _val(an, _arg(node, 2, "value"))
    if mx is None or not isinstance(value, torch.Tensor):
        an.unknown(an.describe())
        return _fixed_like(value)
    out = _pair(an, mx, mm, "add", tuple(value.shape)) if mm is not None else mx
    nz = mx.nz if isinstance(fill, (int, float)) and fill == 0 else torch.ones_like(mx.nz)
    atoms, nz = torch.broadcast_tensors(out.atoms, nz)
    return compress(atoms.contiguous(), nz.contiguous(), tuple(value.shape))


# ---------------------------------------------------------------------------- data movement

def _substituted(an, node: Node, which: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Node args with the data operand(s) replaced by full atom (0) or nz (1) maps."""
    def data(n: Node) -> torch.Tensor:
        m = _map(an, n)
        if m is None:
            raise _NoMap
        return m.full()[which]

    first = node.args[0]
    if isinstance(first, (list, tuple)):
        first = [data(n) for n in first]
    else:
        first = data(first)
    rest = _val(an, tuple(node.args[1:]))
    kwargs = _val(an, dict(node.kwargs))
    return (first, *rest), kwargs


class _NoMap(Exception):
    pass


def _call(an, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return an.cg.module(node)(*args, **kwargs)
    return node.target(*args, **kwargs)


def _moved(an, node: Node, value: Any) -> Any:
    """Apply the node's own shape operation to the atom and nz maps."""
    try:
        args_a, kw = _substituted(an, node, 0)
        args_n, kw_n = _substituted(an, node, 1)
        atoms, nz = _call(an, node, args_a, kw), _call(an, node, args_n, kw_n)
    except _NoMap:
        an.unknown(an.describe())
        return _fixed_like(value)
    if isinstance(value, torch.Tensor):
        return compress(atoms, nz, tuple(value.shape))
    return tuple(compress(a, n, tuple(v.shape)) for a, n, v in zip(atoms, nz, value))


def movement(an, node: Node, value: Any) -> Any:
    return _moved(an, node, value)


def _indexed_dims(index: Any, ndim: int) -> list[int]:
    if not isinstance(index, tuple):
        index = (index,)
    used = sum(i.dim() if isinstance(i, torch.Tensor) and i.dtype == torch.bool else 1
               for i in index if i is not None and i is not Ellipsis)
    dims, d = [], 0
    for i in index:
        if i is None:
            continue
        if i is Ellipsis:
            d += ndim - used
            continue
        if isinstance(i, torch.Tensor) and i.dtype == torch.bool:
            dims.extend(range(d, d + i.dim()))
            d += i.dim()
            continue
        if not (isinstance(i, slice) and i == slice(None)):
            dims.append(d)
        d += 1
    return dims


def getitem(an, node: Node, value: Any) -> Any:
    src = node.args[0]
    src_map = an.maps.get(src) if isinstance(src, Node) else None
    if not isinstance(an.cg.values.get(src), torch.Tensor):
        if isinstance(src_map, (tuple, list)):
            idx = _val(an, node.args[1])
            return src_map[idx] if isinstance(idx, int) else _fixed_like(value)
        return None if not isinstance(value, torch.Tensor) else TMap.fixed(value.shape)
    m = _map(an, src)
    if m is None:
        return _fixed_like(value)
    index = _val(an, node.args[1])
    an.require_constant(m, _indexed_dims(index, len(m.shape)),
                        f"{an.describe()} selects part of a channel dim; those channels are kept")
    return _moved(an, node, value)


def _selecting(dim_pos: int, dim_name: str = "dim") -> Rule:
    """select / narrow / index_select / gather-free selections along one dim."""
    def rule(an, node: Node, value: Any) -> Any:
        m = _map(an, node.args[0])
        if m is None:
            return _fixed_like(value)
        dim = _val(an, _arg(node, dim_pos, dim_name, 0))
        an.require_constant(m, [dim % len(m.shape)], f"{an.describe()} selects part of a channel dim; those channels are kept")
        return _moved(an, node, value)
    return rule


def _chunking(an, node: Node, value: Any) -> Any:
    """chunk / split / unbind along a dim: equal parts stay equal if position j of every part
    is removed together."""
    m = _map(an, node.args[0])
    if m is None or not isinstance(value, (tuple, list)):
        an.unknown(an.describe())
        return _fixed_like(value)
    name = _name(node)[0]
    default_dim = 0
    dim = _val(an, _arg(node, 1 if name == "unbind" else 2, "dim", default_dim))
    dim = dim % len(m.shape)
    sizes = [v.shape[dim] if v.dim() == len(m.shape) else 1 for v in value]
    if m.atoms.shape[dim] > 1:
        if name == "unbind" or len(set(sizes)) != 1:
            an.require_constant(m, [dim], f"{an.describe()} splits a channel dim unevenly; those channels are kept")
        else:
            full = m.atoms.expand(m.shape)
            parts = full.split(sizes[0], dim=dim)
            for p in parts[1:]:
                an.union(parts[0], p)
    return _moved(an, node, value)


def _pad_arg(an, node: Node) -> tuple[list[int], str, Any]:
    if node.op == "call_module":
        mod = an.cg.module(node)
        pad = mod.padding
        pad = list(pad) if isinstance(pad, (tuple, list)) else [pad] * (2 * _pad_module_dims(mod))
        mode = "constant" if "Constant" in type(mod).__name__ or "Zero" in type(mod).__name__ else "other"
        return pad, mode, getattr(mod, "value", 0.0)
    pad = list(_val(an, _arg(node, 1, "pad")))
    return pad, _val(an, _arg(node, 2, "mode", "constant")) or "constant", _val(an, _arg(node, 3, "value", None))


def _pad_module_dims(mod: nn.Module) -> int:
    name = type(mod).__name__
    return 3 if "3d" in name else 2 if "2d" in name else 1


def pad(an, node: Node, value: Any) -> Any:
    """Constant padding: new positions along a channel dim get fresh atoms (constant elements
    removed together with whatever they are added to); other dims keep the map as is."""
    m = _map(an, node.args[0])
    if m is None or not isinstance(value, torch.Tensor):
        an.unknown(an.describe())
        return _fixed_like(value)
    amounts, mode, fill = _pad_arg(an, node)
    rank = len(m.shape)
    atoms, nz = m.atoms, m.nz
    for i in range(len(amounts) // 2):
        d = rank - 1 - i
        before, after = amounts[2 * i], amounts[2 * i + 1]
        if before == 0 and after == 0:
            continue
        if atoms.shape[d] == 1:
            # constant along d (also when the size is 1): every padded element keeps the identity
            continue
        if mode != "constant" or before < 0 or after < 0:
            an.fix(m, f"{an.describe()} pads a channel dim with mode '{mode}'; those channels are kept")
            return TMap(m.atoms, torch.ones_like(m.nz), tuple(value.shape))
        shape_b = list(atoms.shape)
        shape_b[d] = before
        shape_a = list(atoms.shape)
        shape_a[d] = after
        nb, na = int(np.prod(shape_b)), int(np.prod(shape_a))
        fresh = torch.as_tensor(an.fresh(nb + na), dtype=torch.long)
        const_nz = not (fill is None or fill == 0)
        atoms = torch.cat([fresh[:nb].reshape(shape_b), atoms, fresh[nb:].reshape(shape_a)], dim=d)
        nz = torch.cat([torch.full(shape_b, const_nz), nz, torch.full(shape_a, const_nz)], dim=d)
    return compress(atoms, nz, tuple(value.shape))


# ------------------------------------------------------------------------------- reductions

_KEEP_ZERO = frozenset({"sum", "mean", "amax", "amin", "max", "min", "prod", "var", "std", "nansum", "nanmean",
                        "norm"})


def _reduce_dims(an, node: Node, rank: int, value: Any) -> tuple[list[int], bool]:
    dim = _val(an, _arg(node, 1, "dim", None))
    out = value[0] if isinstance(value, tuple) else value
    keepdim = isinstance(out, torch.Tensor) and out.dim() == rank and rank > 0
    if dim is None or isinstance(dim, (tuple, list)) and len(dim) == 0:
        return list(range(rank)), keepdim
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % rank for d in dims), keepdim


def reduction(kind: str) -> Rule:
    def rule(an, node: Node, value: Any) -> Any:
        m = _map(an, node.args[0])
        if m is None:
            return _fixed_like(value)
        rank = len(m.shape)
        if kind in ("softmax", "log_softmax", "softmin", "normalize", "cumsum", "cumprod", "logcumsumexp"):
            dim = _val(an, _arg(node, 1, "dim", None))
            if kind == "normalize":
                dim = _val(an, _arg(node, 2, "dim", 1))
            if dim is None:
                an.unknown(an.describe())
                return _fixed_like(value)
            dims, keep = [dim % rank], True
        else:
            dims, keep = _reduce_dims(an, node, rank, value)
        varying = [d for d in dims if m.atoms.shape[d] > 1]
        if varying:
            if kind in ("sum", "nansum", "normalize"):
                # zeros add nothing: exact if the removed values are zero here
                a_full, n_full = torch.broadcast_tensors(m.atoms, m.nz)
                an.fix(a_full[n_full].numpy(), f"{an.describe()} sums over channels that are not zero when removed; they are kept")
                if kind == "normalize":
                    return TMap(m.atoms, m.nz, tuple(value.shape))
            else:
                an.fix(m, f"{an.describe()} reduces over channels ({kind}); they are kept")
            return _fixed_like(value)
        if kind in ("softmax", "log_softmax", "softmin", "cumsum", "cumprod", "logcumsumexp", "normalize"):
            nz = m.nz if kind in ("cumsum", "normalize") else torch.ones_like(m.nz)
            return TMap(m.atoms, nz, tuple(value.shape))
        atoms, nz = m.atoms, m.nz
        for d in dims:
            if d < atoms.dim():
                atoms, nz = atoms.narrow(d, 0, 1), nz.narrow(d, 0, 1)
        if not keep:
            keep_dims = [d for d in range(rank) if d not in dims]
            atoms = atoms.reshape([atoms.shape[d] for d in keep_dims])
            nz = nz.reshape([nz.shape[d] for d in keep_dims])
        if kind not in _KEEP_ZERO:
            nz = torch.ones_like(nz)
        if isinstance(value, torch.Tensor):
            return TMap(atoms, nz, tuple(value.shape))
        # (values, indices) of max/min with a dim
        return (TMap(atoms, nz, tuple(value[0].shape)), TMap.fixed(value[1].shape))
    return rule


# ------------------------------------------------------------------------- matmul, attention

def matmul(an, node: Node, value: Any) -> Any:
    ma, mb = _map(an, node.args[0]), _map(an, node.args[1])
    if ma is None or mb is None or not isinstance(value, torch.Tensor) or len(ma.shape) < 2 or len(mb.shape) < 2:
        an.unknown(an.describe())
        return _fixed_like(value)
    rank = len(value.shape)
    a, b = _pad_rank(ma, rank), _pad_rank(mb, rank)
    why = f"{an.describe()} mixes channels along two dims of one operand; they are kept"
    if a.atoms.shape[-2] > 1 and a.atoms.shape[-1] > 1:
        an.fix(a, why)
        a = TMap.fixed(a.shape)
    if b.atoms.shape[-2] > 1 and b.atoms.shape[-1] > 1:
        an.fix(b, why)
        b = TMap.fixed(b.shape)
    batch = [d for d in range(rank - 2) if a.atoms.shape[d] > 1 or b.atoms.shape[d] > 1]
    if batch:
        # batched products (attention heads): everything in one batch slice goes together
        ab = a.atoms.expand(list(value.shape[:-2]) + list(a.atoms.shape[-2:]))
        bb = b.atoms.expand(list(value.shape[:-2]) + list(b.atoms.shape[-2:]))
        fa = ab.reshape(-1, *ab.shape[-2:]).reshape(int(np.prod(value.shape[:-2])), -1)
        fb = bb.reshape(-1, *bb.shape[-2:]).reshape(int(np.prod(value.shape[:-2])), -1)
        for row_a, row_b in zip(fa, fb):
            an.uf.union_all(np.concatenate([row_a.numpy(), row_b.numpy()]))
        rep = ab[..., :1, :1]
        atoms = rep.expand(list(value.shape[:-2]) + [1, 1])
    else:
        ka = a.atoms.narrow(-2, 0, 1).squeeze(-2)
        kb = b.atoms.narrow(-1, 0, 1).squeeze(-1)
        an.union(ka, kb)
        kz = (a.nz.narrow(-2, 0, 1).squeeze(-2) & b.nz.narrow(-1, 0, 1).squeeze(-1))
        if a.atoms.shape[-1] > 1 or b.atoms.shape[-2] > 1:
            ka_full, kz_full = torch.broadcast_tensors(ka, kz)
            an.fix(ka_full[kz_full].numpy(), f"{an.describe()} contracts over channels that are not zero when removed; they are kept")
        atoms = torch.zeros([1] * rank, dtype=torch.long)
        if a.atoms.shape[-2] > 1:
            atoms = a.atoms.narrow(-1, 0, 1)
        elif b.atoms.shape[-1] > 1:
            atoms = b.atoms.narrow(-2, 0, 1)
    nz = (a.nz.any(-1, keepdim=True).any(-2, keepdim=True) & b.nz.any(-1, keepdim=True).any(-2, keepdim=True))
    atoms, nz = torch.broadcast_tensors(atoms, nz)
    return compress(atoms.contiguous(), nz.contiguous(), tuple(value.shape))


def sdpa(an, node: Node, value: Any) -> Any:
    """scaled_dot_product_attention over [..., H, L, E]: each head is one unit."""
    q, k, v = (_map(an, node.args[i]) if len(node.args) > i else None for i in range(3))
    if q is None or k is None or v is None or not isinstance(value, torch.Tensor) or len(value.shape) < 3:
        an.unknown(an.describe())
        return _fixed_like(value)
    rank = len(value.shape)
    heads = value.shape[-3]
    if any(len(m.shape) != rank or m.shape[-3] != heads for m in (q, k, v)):
        an.fix([q, k, v], f"{an.describe()} uses grouped or broadcast heads; they are kept")
        return _fixed_like(value)
    mask = _map(an, _arg(node, 3, "attn_mask"))
    if mask is not None:
        an.fix(mask, f"{an.describe()}: channels of an attention mask are kept")
    reps, nz_heads = [], []
    per_head = []
    for m in (q, k, v):
        full = m.atoms.expand(m.shape).movedim(-3, 0).reshape(heads, -1)
        per_head.append(full)
    for h in range(heads):
        atoms = torch.cat([p[h] for p in per_head]).numpy()
        an.uf.union_all(atoms)
        reps.append(int(atoms[0]))
        nz_heads.append(bool(v.nz.expand(v.shape).movedim(-3, 0)[h].any()))
    view = [1] * rank
    view[-3] = heads
    return TMap(torch.tensor(reps, dtype=torch.long).reshape(view), torch.tensor(nz_heads).reshape(view),
                tuple(value.shape))


# ------------------------------------------------------------------------------------ layers

def _input_features(an, node: Node, m: TMap, dim: int, what: str) -> np.ndarray:
    an.require_constant(m, [d for d in range(len(m.shape)) if d != dim],
                        f"{what}: its input channels vary along other dims too; they are kept")
    return m.along_dim(dim)


def linear(an, node: Node, value: Any) -> Any:
    mod = an.cg.module(node)
    return _linear_like(an, node, value, mod.weight, mod.bias, _label(an, node))


def _linear_like(an, node: Node, value: Any, weight: torch.Tensor, bias: torch.Tensor | None, label: str) -> Any:
    m = _map(an, node.args[0])
    if m is None or not isinstance(value, torch.Tensor):
        an.unknown(an.describe())
        return _fixed_like(value)
    an.record(weight, 1, _input_features(an, node, m, len(m.shape) - 1, label))
    out = an.fresh(weight.shape[0])
    an.record(weight, 0, out)
    an.record(bias, 0, out)
    an.producer(label, out)
    return TMap.along(value.shape, len(value.shape) - 1, out)


def functional_linear(an, node: Node, value: Any) -> Any:
    w = an.cg.values.get(_arg(node, 1, "weight"))
    b = an.cg.values.get(_arg(node, 2, "bias")) if isinstance(_arg(node, 2, "bias"), Node) else None
    if not isinstance(w, nn.Parameter):
        an.unknown(an.describe())
        return _fixed_like(value)
    return _linear_like(an, node, value, w, b, f"linear in '{an.cg.scope(node) or '<root>'}'")


def conv(an, node: Node, value: Any) -> Any:
    mod = an.cg.module(node)
    m = _map(an, node.args[0])
    if m is None or not isinstance(value, torch.Tensor):
        an.unknown(an.describe())
        return _fixed_like(value)
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    spatial = mod.weight.dim() - 2
    cdim = _channel_dim(len(m.shape), spatial)
    label = _label(an, node)
    inp = _input_features(an, node, m, cdim, label)
    out_ch = mod.out_channels
    out = an.fresh(out_ch)
    g = mod.groups
    w_in_dim, w_out_dim = (0, 1) if transposed else (1, 0)
    if g == 1:
        an.record(mod.weight, w_in_dim, inp)
        an.record(mod.weight, w_out_dim, out)
    else:
        ipg, opg = mod.in_channels // g, out_ch // g
        for k in range(g):  # a conv group's inputs and outputs go together
            an.uf.union_all(np.concatenate([inp[k * ipg:(k + 1) * ipg], out[k * opg:(k + 1) * opg]]))
        if transposed:
            an.record(mod.weight, 0, inp)
        else:
            an.record(mod.weight, 0, out)
    an.record(mod.bias, 0, out)
    an.producer(label, out)
    return TMap.along(value.shape, _channel_dim(len(value.shape), spatial), out)


def _channel_norm(an, node: Node, value: Any, mod: nn.Module, spatial: int | None) -> Any:
    """BatchNorm / InstanceNorm: per-channel statistics and affine."""
    m = _map(an, node.args[0])
    if m is None or not isinstance(value, torch.Tensor):
        an.unknown(an.describe())
        return _fixed_like(value)
    rank = len(m.shape)
    cdim = 1 if spatial is None and rank >= 2 else (_channel_dim(rank, spatial) if spatial is not None else 0)
    atoms = _input_features(an, node, m, cdim, _label(an, node))
    for t in (mod.weight, mod.bias, getattr(mod, "running_mean", None), getattr(mod, "running_var", None)):
        an.record(t, 0, atoms)
    affine = getattr(mod, "affine", True) and mod.weight is not None
    is_batch = isinstance(mod, nn.modules.batchnorm._BatchNorm)
    nz = torch.zeros_like(m.nz) if affine else (torch.ones_like(m.nz) if is_batch else m.nz)
    return TMap(m.atoms, nz, tuple(value.shape))


def batch_norm(an, node: Node, value: Any) -> Any:
    return _channel_norm(an, node, value, an.cg.module(node), None)


def instance_norm(an, node: Node, value: Any) -> Any:
    mod = an.cg.module(node)
    return _channel_norm(an, node, value, mod, int(type(mod).__name__[-2]))


def group_norm(an, node: Node, value: Any) -> Any:
    mod = an.cg.module(node)
    m = _map(an, node.args[0])
    if m is None or not isinstance(value, torch.Tensor):
        an.unknown(an.describe())
        return _fixed_like(value)
    atoms = _input_features(an, node, m, 1, _label(an, node))
    if mod.num_groups == 1 and mod.num_channels > 1:
        an.fix(m, f"{_label(an, node)} normalizes all its channels together; they are kept")
        return TMap(m.atoms, torch.ones_like(m.nz), tuple(value.shape))
    per = mod.num_channels // mod.num_groups
    for k in range(mod.num_groups):  # a GroupNorm group shares statistics: removed whole
        an.uf.union_all(atoms[k * per:(k + 1) * per])
    an.record(mod.weight, 0, atoms)
    an.record(mod.bias, 0, atoms)
    nz = torch.zeros_like(m.nz) if mod.affine else m.nz
    return TMap(m.atoms, nz, tuple(value.shape))


def layer_norm(an, node: Node, value: Any) -> Any:
    m = _map(an, node.args[0])
    if m is None or not isinstance(value, torch.Tensor):
        an.unknown(an.describe())
        return _fixed_like(value)
    if node.op == "call_module":
        shape = an.cg.module(node).normalized_shape
    else:
        shape = _val(an, _arg(node, 1, "normalized_shape"))
    k = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    rank = len(m.shape)
    if any(m.atoms.shape[d] > 1 for d in range(rank - k, rank)):
        an.fix(m, f"{an.describe()} normalizes over channels (removing some would change its statistics); they are kept")
    return TMap(m.atoms, torch.ones_like(m.nz), tuple(value.shape))


def embedding(an, node: Node, value: Any) -> Any:
    mod = an.cg.module(node)
    idx = _map(an, node.args[0])
    if idx is not None:
        an.fix(idx, f"{_label(an, node)}: index tensors are kept")
    out = an.fresh(mod.embedding_dim)
    an.record(mod.weight, 1, out)
    an.producer(_label(an, node), out)
    return TMap.along(value.shape, len(value.shape) - 1, out)


def prelu(an, node: Node, value: Any) -> Any:
    mod = an.cg.module(node)
    m = _map(an, node.args[0])
    if m is None:
        return _fixed_like(value)
    if mod.weight.numel() > 1:
        cdim = 1 if len(m.shape) >= 2 else 0
        an.record(mod.weight, 0, _input_features(an, node, m, cdim, _label(an, node)))
    return TMap(m.atoms, m.nz, tuple(value.shape))


def channelwise(spatial: int | None) -> Rule:
    """Pooling / upsampling: per-channel spatial operations."""
    def rule(an, node: Node, value: Any) -> Any:
        m = _map(an, node.args[0])
        if m is None or not isinstance(value, torch.Tensor):
            an.unknown(an.describe())
            return _fixed_like(value)
        rank = len(m.shape)
        sp = spatial if spatial is not None else rank - 2
        cdim = _channel_dim(rank, sp)
        an.require_constant(m, range(cdim + 1, rank), f"{an.describe()}: channels vary along its spatial dims; they are kept")
        atoms, nz = m.atoms, m.nz
        for d in range(cdim + 1, rank):
            if d < atoms.dim() and atoms.shape[d] > 1:
                atoms, nz = atoms.narrow(d, 0, 1), nz.narrow(d, 0, 1)
        return TMap(atoms, nz, tuple(value.shape))
    return rule


def multihead_attention(an, node: Node, value: Any) -> Any:
    mod: nn.MultiheadAttention = an.cg.module(node)
    label = _label(an, node)
    sig = inspect.signature(mod.forward)
    bound = sig.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    arg = bound.arguments
    maps = [_map(an, arg[k]) for k in ("query", "key", "value")]
    if any(m is None for m in maps) or not isinstance(value, tuple):
        an.unknown(an.describe())
        return _fixed_like(value)
    mq, mk, mv = maps
    feats = [_input_features(an, node, m, len(m.shape) - 1, label) for m in maps]
    if mod._qkv_same_embed_dim:
        an.union(torch.as_tensor(feats[0]), torch.as_tensor(feats[1]))
        an.union(torch.as_tensor(feats[0]), torch.as_tensor(feats[2]))
        an.record(mod.in_proj_weight, 1, feats[0])
    else:
        for w, f in zip((mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight), feats):
            an.record(w, 1, f)
    heads = an.fresh(mod.num_heads)
    rows = np.repeat(heads, mod.head_dim)
    if mod._qkv_same_embed_dim:
        an.record(mod.in_proj_weight, 0, np.tile(rows, 3))
    else:
        for w in (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight):
            an.record(w, 0, rows)
    an.record(mod.in_proj_bias, 0, np.tile(rows, 3))
    an.record(mod.out_proj.weight, 1, rows)
    if mod.bias_k is not None:
        an.record(mod.bias_k, 2, rows)
        an.record(mod.bias_v, 2, rows)
    an.producer(f"{label} heads", heads)
    weights_used = any(u.op == "call_function" and u.target is operator.getitem and u.args[1] == 1 and u.users
                       for u in node.users)
    attn_mask = an.cg.values.get(arg.get("attn_mask")) if isinstance(arg.get("attn_mask"), Node) else None
    if weights_used and _val(an, arg.get("need_weights", True)):
        an.fix(heads, f"{label}: its attention weights are used, so its heads are kept")
    if isinstance(attn_mask, torch.Tensor) and attn_mask.dim() == 3:
        an.fix(heads, f"{label}: per-head attention masks keep its heads")
    for key in ("attn_mask", "key_padding_mask"):
        mm = _map(an, arg.get(key))
        if mm is not None:
            an.fix(mm, f"{label}: channels of a mask are kept")
    out = an.fresh(mod.out_proj.out_features)
    an.record(mod.out_proj.weight, 0, out)
    an.record(mod.out_proj.bias, 0, out)
    an.producer(label, out)
    out_map = TMap.along(value[0].shape, len(value[0].shape) - 1, out)
    weights = TMap.fixed(value[1].shape) if isinstance(value[1], torch.Tensor) else None
    return (out_map, weights)


def opaque_module(an, node: Node, value: Any) -> Any:
    why = an.cg.opaque.get(str(node.target))
    label = _label(an, node)
    if why is None:
        an.unknown(label)
    else:
        msg = f"{label} is {why}; its input and output channels are kept"
        for arg in node.all_input_nodes:
            an.fix(an.maps.get(arg), msg)
        out = _fixed_like(value)
        an.fix(out, msg)
    for name, _ in an.cg.module(node).named_parameters():
        an.rigid_params.add(f"{node.target}.{name}")
    return _fixed_like(value)


# -------------------------------------------------------------------------- inputs, attributes

_LAYER_SLOTS = {"linear": (1, 2), "embedding": (1,), "layer_norm": (2, 3), "group_norm": (2, 3),
                "batch_norm": (1, 2, 3, 4)}


def get_attr(an, node: Node, value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return None
    param_name = an.param_names.get(id(value))
    buffer_name = an.buffer_names.get(id(value))
    if param_name is None and buffer_name is None:
        return TMap.fixed(value.shape)  # a constant fx stored on the module
    layer_uses = [u for u in node.users if _name(u)[0] in _LAYER_SLOTS and node in u.args[1:]]
    if len(layer_uses) == len(node.users):
        return None  # consumed only as a layer weight: that layer's rule records it
    if layer_uses or value.numel() > MAX_ELEMENTWISE_PARAM:
        an.rigid_params.add(param_name or buffer_name)
        return TMap.fixed(value.shape)
    atoms = an.fresh(value.numel()).reshape(tuple(value.shape) or ())
    an.record(value, None, atoms)
    nz = torch.full(tuple(value.shape), param_name is None)
    return TMap(torch.as_tensor(atoms, dtype=torch.long), nz, tuple(value.shape))


def placeholder(an, node: Node, value: Any) -> Any:
    return _fixed_like(value)


def _creation(like: bool, zero: bool) -> Rule:
    def rule(an, node: Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        m = _map(an, node.args[0]) if like and node.args else None
        if m is None:
            return TMap.fixed(value.shape)
        nz = torch.zeros_like(m.nz) if zero else torch.ones_like(m.nz)
        return TMap(m.atoms, nz, tuple(value.shape))
    return rule


def _attribute(an, node: Node, value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return None
    if node.args[1] == "data":
        m = _map(an, node.args[0])
        return m if m is not None else TMap.fixed(value.shape)
    if node.args[1] in ("T", "mT"):
        return movement(an, node, value)
    an.unknown(an.describe())
    return _fixed_like(value)


# ------------------------------------------------------------------------------------ tables

_ALIASES = {
    "iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "div", "truediv": "div", "true_divide": "div",
    "divide": "div", "multiply": "mul", "subtract": "sub", "concat": "cat", "concatenate": "cat",
    "swapaxes": "transpose", "swapdims": "transpose", "moveaxis": "movedim", "clip": "clamp",
    "absolute": "abs", "negative": "neg", "rsub": "sub", "radd": "add",
}
_INPLACE_OPERATORS = frozenset({"iadd", "isub", "imul", "itruediv"})


def _name(node: Node) -> tuple[str, bool]:
    """(normalized op name, whether it works in place)."""
    if node.op == "call_method":
        raw = str(node.target)
    elif node.op == "call_function":
        raw = getattr(node.target, "__name__", str(node.target))
    else:
        return "", False
    inplace = raw in _INPLACE_OPERATORS or (raw.endswith("_") and not raw.startswith("_")) or bool(node.kwargs.get("inplace"))
    name = raw[:-1] if raw.endswith("_") and not raw.startswith("_") else raw
    return _ALIASES.get(name, name), inplace


FUNCTION_RULES: dict[str, Rule] = {}
for _n in ZERO_PRESERVING:
    FUNCTION_RULES[_n] = unary("zero")
for _n in NONZERO_SAFE:
    FUNCTION_RULES[_n] = unary("nonzero")
for _n in UNSAFE_AT_ZERO:
    FUNCTION_RULES[_n] = unary("unsafe")
FUNCTION_RULES.update({
    "add": binary("add"), "sub": binary("add"), "mul": binary("mul"), "div": binary("div"),
    "maximum": binary("add"), "minimum": binary("add"), "fmax": binary("add"), "fmin": binary("add"),
    "eq": binary("add"), "ne": binary("add"), "gt": binary("add"), "ge": binary("add"), "lt": binary("add"),
    "le": binary("add"), "logical_and": binary("add"), "logical_or": binary("add"),
    "clamp": _clamp, "pow": _pow, "where": _where, "masked_fill": _masked_fill,
    "max": _minmax("max"), "min": _minmax("min"),
    "sum": reduction("sum"), "nansum": reduction("nansum"), "mean": reduction("mean"), "nanmean": reduction("nanmean"),
    "amax": reduction("amax"), "amin": reduction("amin"), "prod": reduction("prod"), "var": reduction("var"),
    "std": reduction("std"), "logsumexp": reduction("logsumexp"), "argmax": reduction("argmax"),
    "argmin": reduction("argmin"), "softmax": reduction("softmax"), "log_softmax": reduction("log_softmax"),
    "softmin": reduction("softmin"), "normalize": reduction("normalize"), "cumsum": reduction("cumsum"),
    "cumprod": reduction("cumprod"),
    "view": movement, "reshape": movement, "flatten": movement, "unflatten": movement, "permute": movement,
    "transpose": movement, "t": movement, "movedim": movement, "squeeze": movement, "unsqueeze": movement,
    "expand": movement, "expand_as": movement, "repeat": movement, "tile": movement, "flip": movement,
    "cat": movement, "stack": movement, "view_as": movement, "reshape_as": movement, "ravel": movement,
    "getitem": getitem, "select": _selecting(1), "narrow": _selecting(1), "index_select": _selecting(1),
    "chunk": _chunking, "split": _chunking, "tensor_split": _chunking, "unbind": _chunking,
    "pad": pad, "matmul": matmul, "bmm": matmul, "mm": matmul,
    "scaled_dot_product_attention": sdpa, "linear": functional_linear, "layer_norm": layer_norm,
    "zeros_like": _creation(True, True), "ones_like": _creation(True, False), "full_like": _creation(True, False),
    "empty_like": _creation(True, False), "rand_like": _creation(True, False), "randn_like": _creation(True, False),
    "zeros": _creation(False, True), "ones": _creation(False, False), "full": _creation(False, False),
    "arange": _creation(False, False), "tensor": _creation(False, False), "empty": _creation(False, False),
    "new_zeros": _creation(False, True), "new_ones": _creation(False, False), "new_full": _creation(False, False),
    "new_empty": _creation(False, False), "new_tensor": _creation(False, False),
    "getattr": _attribute,
    "relu": unary("zero"),
    "max_pool1d": channelwise(1), "max_pool2d": channelwise(2), "max_pool3d": channelwise(3),
    "avg_pool1d": channelwise(1), "avg_pool2d": channelwise(2), "avg_pool3d": channelwise(3),
    "adaptive_avg_pool1d": channelwise(1), "adaptive_avg_pool2d": channelwise(2), "adaptive_avg_pool3d": channelwise(3),
    "adaptive_max_pool1d": channelwise(1), "adaptive_max_pool2d": channelwise(2), "adaptive_max_pool3d": channelwise(3),
    "interpolate": channelwise(None), "upsample": channelwise(None),
})

_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
                 nn.Hardtanh, nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Identity,
                 nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)


def _softmax_module(an, node: Node, value: Any) -> Any:
    mod = an.cg.module(node)
    m = _map(an, node.args[0])
    if m is None or mod.dim is None:
        an.unknown(an.describe())
        return _fixed_like(value)
    d = mod.dim % len(m.shape)
    if m.atoms.shape[d] > 1:
        an.fix(m, f"{an.describe()} normalizes over channels; they are kept")
        return _fixed_like(value)
    return TMap(m.atoms, torch.ones_like(m.nz), tuple(value.shape))


MODULE_RULES: list[tuple[tuple[type, ...], Rule]] = [
    ((nn.Linear,), linear),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), conv),
    ((nn.modules.batchnorm._BatchNorm,), batch_norm),
    ((nn.modules.instancenorm._InstanceNorm,), instance_norm),
    ((nn.GroupNorm,), group_norm),
    ((nn.LayerNorm,), layer_norm),
    ((nn.Embedding,), embedding),
    ((nn.MultiheadAttention,), multihead_attention),
    ((nn.PReLU,), prelu),
    (_ZERO_MODULES, unary("zero")),
    (_NONZERO_MODULES, unary("nonzero")),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), _softmax_module),
    ((nn.Flatten, nn.Unflatten), movement),
    ((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d), channelwise(1)),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d), channelwise(2)),
    ((nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d), channelwise(3)),
    ((nn.Upsample,), channelwise(None)),
    ((nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
      nn.modules.padding._ReplicationPadNd), pad),
]

#: module types the tracer keeps as single nodes because a rule above understands them whole
KNOWN_LEAF_TYPES: tuple[type, ...] = tuple(t for types, _ in MODULE_RULES for t in types)


def apply(an, node: Node, value: Any) -> Any:
    if node.op == "placeholder":
        return placeholder(an, node, value)
    if node.op == "get_attr":
        return get_attr(an, node, value)
    if node.op == "call_module":
        mod = an.cg.module(node)
        if str(node.target) in an.cg.opaque or _inside(str(node.target), an.unprunable):
            return opaque_module(an, node, value)
        for types, rule in MODULE_RULES:
            if isinstance(mod, types):
                return rule(an, node, value)
        return opaque_module(an, node, value)
    name, inplace = _name(node)
    rule = FUNCTION_RULES.get(name)
    if node.op == "call_method" and node.target in METADATA_METHODS:
        return None  # sizes are read again at run time, so they follow the subnet
    if rule is None:
        if not _has_tensor(value) and not any(isinstance(an.cg.values.get(n), torch.Tensor) for n in node.all_input_nodes):
            return None  # arithmetic on sizes and other Python values
        an.unknown(an.describe())
        return _fixed_like(value)
    out = rule(an, node, value)
    if inplace and isinstance(node.args[0], Node) and isinstance(out, TMap):
        an.maps[node.args[0]] = out  # later users of the mutated tensor see the new map
    return out


def _inside(name: str, modules: set[str]) -> bool:
    return any(name == u or name.startswith(u + ".") for u in modules if u)


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    return False
