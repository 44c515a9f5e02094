"""Dispatch of the channel analysis: which rule handles which fx node.

Layers are matched by module type (MODULE_RULES, in layer_rules.py), Python-level operations by
their normalized name (FUNCTION_RULES, mostly in op_rules.py). Anything else is kept whole (its
channels become unprunable, with a note), or raises in strict mode.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx.node import Node

from trainlab.techniques.pruning.graph import METADATA_METHODS
from trainlab.techniques.pruning.groups import TMap
from trainlab.techniques.pruning.layer_rules import (
    batch_norm, channelwise, conv, embedding, functional_linear, group_norm, instance_norm, layer_norm, linear,
    multihead_attention, opaque_module, prelu, softmax_module,
)
from trainlab.techniques.pruning.op_rules import (
    NONZERO_SAFE, UNSAFE_AT_ZERO, ZERO_PRESERVING, Rule, _attribute, _chunking, _clamp, _creation, _fixed_like,
    _masked_fill, _minmax, _name, _pow, _selecting, _where, binary, get_attr, getitem, matmul, movement, pad,
    placeholder, reduction, sdpa, unary,
)

# ------------------------------------------------------------------------------------ tables

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
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), softmax_module),
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
