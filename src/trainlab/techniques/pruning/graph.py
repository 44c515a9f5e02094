"""Graph capture for structured pruning: a torch.fx trace that also knows every node's value.

`capture(model, example_inputs)` traces the model with a subclass of the public
`torch.fx.Tracer` that runs each traced operation on the example input as it is recorded. The
graph keeps the standard `torch.nn` layers as single `call_module` nodes (so the pruning analysis
can reason about a Conv2d or a MultiheadAttention as one unit, and the subnet can swap in smaller
copies), while the Python code around them (residual `+`, `torch.cat`, `F.pad`, reshapes, manual
attention) is recorded op by op. Knowing concrete values gives two things plain symbolic tracing
lacks:

* every tensor's shape, which the channel analysis needs, and
* shape-dependent control flow (``if x.dim() != 2: raise ...``) is decided on the example input
  instead of failing. Control flow that depends on tensor *values* is refused with a ConfigError
  naming the module, since baking one branch would silently change the model.

Only public fx hooks are overridden (`create_proxy`, `call_module`, `is_leaf_module`, `to_bool`,
`iter`). Modules listed as opaque are kept as single leaf nodes; the analysis then treats every
channel touching them as unprunable.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import fx, nn
from torch.fx.node import Node, map_arg

from trainlab.errors import ConfigError

#: tensor accessors whose results depend only on shapes/dtypes, never on values
METADATA_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad", "is_nested",
                             "is_sparse", "is_quantized", "is_meta", "is_mkldnn", "names"})
METADATA_METHODS = frozenset({"size", "dim", "numel", "ndimension", "nelement", "get_device", "stride",
                               "is_contiguous", "is_floating_point", "element_size"})


@dataclass
class CapturedGraph:
    """A traced model: the fx graph, each node's concrete value and the module it came from."""

    model: nn.Module
    graph_module: fx.GraphModule          # shares the model's submodules and parameters
    example_inputs: tuple[Any, ...]
    values: dict[Node, Any]               # node -> value on the example input (eval mode)
    scopes: dict[Node, str]               # node -> qualified name of the module it was traced in
    opaque: dict[str, str] = field(default_factory=dict)   # module name -> why it is a leaf

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    def scope(self, node: Node) -> str:
        return self.scopes.get(node, "")

    def module(self, node: Node) -> nn.Module:
        return self.graph_module.get_submodule(str(node.target))

    def describe(self, node: Node) -> str:
        """A short human description of a node: the op and the module it belongs to."""
        scope = self.scope(node) or "<root>"
        if node.op == "call_module":
            return f"{type(self.module(node)).__name__} '{node.target}'"
        return f"op '{op_label(node)}' in module '{scope}'"


def op_label(node: Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


class _ConcreteTracer(fx.Tracer):
    """fx tracer that evaluates each recorded node on the example input."""

    def __init__(self, root: nn.Module, inputs: Sequence[Any], opaque: set[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.leaf_types = leaf_types
        self.root_module = root
        self.inputs = list(inputs)
        self.opaque = opaque
        self.values: dict[Node, Any] = {}
        self.scopes: dict[Node, str] = {}
        self.static: set[Node] = set()       # nodes whose value is derived from shapes only
        self.scope_stack: list[str] = [""]
        self.placeholders = 0
        self.last_node: Node | None = None
        self.evaluating = 0                  # > 0 while running real ops (fx's patches must step aside)

    # -- fx hooks ------------------------------------------------------------------------
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.opaque or isinstance(m, self.leaf_types):
            return True
        # other torch.nn modules: single nodes only when they have no children to trace into
        builtin = type(m).__module__.startswith(("torch.nn", "torch.ao.nn"))
        return builtin and not isinstance(m, nn.Sequential) and not any(True for _ in m.children())

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.evaluating:
            return forward(*args, **kwargs)
        self.scope_stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.scope_stack.pop()

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any | None = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        self.last_node = node
        self.scopes[node] = self.scope_stack[-1]
        if kind != "output":
            self.values[node] = self._evaluate(node)
            if self._is_static(node):
                self.static.add(node)
        return proxy

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self.evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def to_bool(self, obj: fx.Proxy) -> bool:
        node = obj.node
        if node in self.static:
            return bool(self.values[node])
        raise ConfigError(
            f"module '{self.scopes.get(node) or '<root>'}' ({self._scope_type(node)}) branches on tensor values "
            f"(at op '{op_label(node)}'); such data-dependent control flow cannot be captured. Pass "
            f"unprunable=['{self.scopes.get(node) or '<root>'}'] to keep it as an opaque block"
        )

    def iter(self, obj: fx.Proxy):  # type: ignore[override]
        value = self.values.get(obj.node)
        if isinstance(value, (tuple, list, torch.Size)) or isinstance(value, torch.Tensor) and value.dim() > 0:
            return iter([obj[i] for i in range(len(value))])
        return super().iter(obj)

    # -- concrete evaluation --------------------------------------------------------------
    def _evaluate(self, node: Node) -> Any:
        args = map_arg(node.args, self._value)
        kwargs = map_arg(node.kwargs, self._value)
        self.evaluating += 1
        try:
            return self._run(node, args, kwargs)
        finally:
            self.evaluating -= 1

    def _run(self, node: Node, args: Any, kwargs: Any) -> Any:
        with torch.no_grad():
            if node.op == "placeholder":
                self.placeholders += 1
                if self.placeholders <= len(self.inputs):
                    return self.inputs[self.placeholders - 1]
                if node.args:  # an argument fixed to its default value
                    return node.args[0]
                raise ConfigError(f"the model's forward takes more inputs than the {len(self.inputs)} example input(s) given")
            if node.op == "get_attr":
                obj: Any = self.root_module
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                return obj
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            if node.op == "call_module":
                return self.root_module.get_submodule(node.target)(*args, **kwargs)
        raise AssertionError(node.op)

    def _value(self, node: Node) -> Any:
        if node not in self.values:  # constants fx stored on the root without a proxy
            self.values[node] = self._evaluate(node)
            self.scopes[node] = self.scope_stack[-1]
        return self.values[node]

    def _is_static(self, node: Node) -> bool:
        value = self.values[node]
        if isinstance(value, torch.Tensor) or node.op in ("placeholder", "get_attr", "call_module"):
            return False
        if node.op == "call_function" and node.target is getattr and node.args[1] in METADATA_ATTRS:
            return True
        if node.op == "call_method" and node.target in METADATA_METHODS:
            return True
        inputs = node.all_input_nodes
        return all(n in self.static for n in inputs)

    def _scope_type(self, node: Node) -> str:
        scope = self.scopes.get(node, "")
        try:
            return type(self.root_module.get_submodule(scope)).__name__
        except AttributeError:
            return "?"


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def module_names(model: nn.Module, modules: Iterable[nn.Module | str] | None) -> set[str]:
    """Qualified names for a list of modules or names; unknown ones are ConfigErrors."""
    if not modules:
        return set()
    by_id = {id(m): name for name, m in model.named_modules()}
    names = set()
    for m in modules:
        if isinstance(m, str):
            try:
                model.get_submodule(m)
            except AttributeError:
                raise ConfigError(f"unprunable: the model has no module named '{m}'") from None
            names.add(m)
        elif isinstance(m, nn.Module):
            if id(m) not in by_id:
                raise ConfigError(f"unprunable: {type(m).__name__} module is not part of the model")
            names.add(by_id[id(m)])
        else:
            raise ConfigError(f"unprunable: expected modules or module names, got {type(m).__name__}")
    return names


def capture(model: nn.Module, example_inputs: Any, opaque: set[str] | None = None,
            leaf_types: tuple[type, ...] = ()) -> CapturedGraph:
    """Trace `model` on `example_inputs` (a tensor or a tuple of them).

    The model is traced in eval mode (so BatchNorm statistics are not updated) and put back in
    its previous mode. Modules named in `opaque`, instances of `leaf_types`, and torch.nn modules
    without children stay single leaf nodes.
    """
    inputs = _as_tuple(example_inputs)
    opaque = set(opaque or ())
    tracer = _ConcreteTracer(model, inputs, opaque, tuple(leaf_types))
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[len(inputs):]
                if p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
    was_training = model.training
    model.eval()
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any tracing failure becomes one clear message
        node = tracer.last_node
        scope = tracer.scope_stack[-1] if len(tracer.scope_stack) > 1 else (tracer.scopes.get(node, "") if node else "")
        where = f"module '{scope}' ({tracer._scope_type(node) if node is not None else '?'})" if scope else "the model's own forward"
        op = f" after op '{op_label(node)}'" if node is not None else ""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = f" Pass unprunable=['{scope}'] to keep it as an opaque block." if scope else ""
        raise ConfigError(f"cannot capture {type(model).__name__} for pruning: {type(e).__name__} in {where}{op}: {msg}.{hint}") from None
    finally:
        model.train(was_training)
    gm = fx.GraphModule(model, graph)
    values = {n: tracer.values[n] for n in gm.graph.nodes if n in tracer.values}
    scopes = {n: tracer.scopes.get(n, "") for n in gm.graph.nodes}
    opaque_info = {name: "marked unprunable" for name in opaque}
    _drop_dead_metadata(gm)
    return CapturedGraph(model=model, graph_module=gm, example_inputs=inputs, values=values, scopes=scopes,
                         opaque=opaque_info)


def _drop_dead_metadata(gm: fx.GraphModule) -> None:
    """Remove shape checks whose results fed only Python control flow (they have no users)."""
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
        elif node.op in ("call_function", "call_method") and not node.users:
            name = op_label(node)
            if node.target is operator.setitem or name.endswith("_") or node.kwargs.get("inplace"):
                continue  # in-place operations have effects
            gm.graph.erase_node(node)
    gm.recompile()
