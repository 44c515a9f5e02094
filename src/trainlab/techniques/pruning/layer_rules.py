"""Channel-analysis rules for layers (call_module nodes and functional layers): Linear, Conv
(grouped, depthwise, transposed), BatchNorm/InstanceNorm/GroupNorm/LayerNorm, Embedding, PReLU,
pooling, nn.MultiheadAttention, and opaque modules. Layers create atoms for their outputs
(`an.producer`) and attach weight rows/columns and norm entries to atoms (`an.record`).
"""
from __future__ import annotations

import inspect
import operator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.fx.node import Node

from trainlab.techniques.pruning.groups import TMap
from trainlab.techniques.pruning.op_rules import Rule, _arg, _channel_dim, _fixed_like, _label, _map, _val


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
    cdim = len(m.shape) - 1
    an.record(weight, 1, _input_features(an, node, m, cdim, label), passive=~m.nz_along(cdim))
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
        an.record(mod.weight, w_in_dim, inp, passive=~m.nz_along(cdim))
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
    zero_in = [~m.nz_along(len(m.shape) - 1) for m in maps]
    if mod._qkv_same_embed_dim:
        an.union(torch.as_tensor(feats[0]), torch.as_tensor(feats[1]))
        an.union(torch.as_tensor(feats[0]), torch.as_tensor(feats[2]))
        an.record(mod.in_proj_weight, 1, feats[0], passive=zero_in[0] & zero_in[1] & zero_in[2])
    else:
        for w, f, z in zip((mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight), feats, zero_in):
            an.record(w, 1, f, passive=z)
    heads = an.fresh(mod.num_heads)
    rows = np.repeat(heads, mod.head_dim)
    if mod._qkv_same_embed_dim:
        an.record(mod.in_proj_weight, 0, np.tile(rows, 3))
    else:
        for w in (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight):
            an.record(w, 0, rows)
    an.record(mod.in_proj_bias, 0, np.tile(rows, 3))
    # a head whose q, k, v rows and biases are zero outputs zeros (v = 0): out_proj's columns
    # for it are input slices
    an.record(mod.out_proj.weight, 1, rows, passive=np.ones(len(rows), dtype=bool))
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


def softmax_module(an, node: Node, value: Any) -> Any:
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
