"""Channel-analysis rules for Python-level operations: elementwise math, shape movement,
reductions, matmul and attention, tensor creation, attributes (see groups.py for atoms, maps
and records, rules.py for the dispatch).

Each rule receives the Analyzer, the fx node and the node's concrete value, and returns the
output's map (a TMap, a tuple of them for tuple outputs, or None for non-tensors). Rules tie
atoms (`an.union`), attach parameter slices (`an.record`), add deferred checks
(`an.require_constant`) and keep what they cannot handle exactly (`an.fix`, `an.unknown`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.fx.node import Node, map_arg

from trainlab.techniques.pruning.groups import MAX_ELEMENTWISE_PARAM, TMap, compress

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
