"""Three execution paths for one optimizer update rule, chosen like torch.optim's flags.

* single-tensor (``foreach=False``): a loop over parameters, one small op at a time. The
  reference: it is written to read like the paper's algorithm.
* foreach (``foreach=True``): ``torch._foreach_*`` ops over the lists of parameters, gradients and
  state, so each elementwise op is one call for all tensors.
* fused (``fused=True``): the group's parameters are re-homed as views into ONE flat buffer
  (``p.data`` becomes a slice of it), and so are their gradients and every state tensor. The update
  then runs on a handful of large 1-D tensors; it is compiled once with ``torch.compile`` into a few
  fused loops and cached. Where compilation is unavailable (no C++ compiler, unsupported Python) the
  same function runs eagerly on the flat buffers, after one warning.

Default (both flags None): fused where a group holds at least ``FUSED_MIN_NUMEL`` elements and
``torch.compile`` works on the device, else foreach. Small models stay on foreach because compiling
costs seconds that a few thousand cheap steps never pay back. ``TRAINLAB_OPTIM_COMPILE=0`` turns
compilation off (the fused path then runs eagerly).

Correctness of the fused path rests on a few invariants, checked every step and repaired by
rebuilding the flat buffers when broken: the parameters are the same objects and still views of the
buffers (``model.to(...)`` replaces them), every parameter has a gradient (else the step falls back
to foreach, which skips missing gradients like torch does), and no state was loaded since the
buffers were built. Parameters that have taken different numbers of steps (one missed a gradient)
get separate flat buffers, one set per step count, since their bias corrections differ. Gradients that
autograd produced in fresh tensors (``zero_grad(set_to_none=True)``) are copied into the flat
gradient buffer once per step, and ``p.grad`` is pointed at its slice, so a loop that zeroes
gradients in place accumulates straight into the buffer. An optimizer whose state is this step's
gradient (diffGrad's previous gradient, ``flat_grad_state``) double-buffers it with the gradient
buffer instead: the copied-in gradient becomes that state after the step (no separate write of
it), and ``p.grad`` is left as it is, so such an optimizer copies the gradients every step.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from trainlab.techniques.optimizers import HyperparameterError

#: Smallest group (in elements) for which the compiled fused path is the default.
FUSED_MIN_NUMEL = 1 << 19

_COMPILED: dict[Callable, Callable] = {}
_COMPILE_BROKEN = False


def compile_enabled() -> bool:
    return not _COMPILE_BROKEN and os.environ.get("TRAINLAB_OPTIM_COMPILE", "1") not in ("0", "false", "no")


def run_kernel(fn: Callable, *args: Any) -> Any:
    """Run `fn` compiled (compiled lazily once per function, cached), or eagerly if compile fails."""
    global _COMPILE_BROKEN
    if compile_enabled():
        compiled = _COMPILED.get(fn)
        if compiled is None:
            compiled = _COMPILED[fn] = torch.compile(fn, fullgraph=True, dynamic=False)
        try:
            return compiled(*args)
        except Exception as e:  # compilation fails before any in-place update runs
            _COMPILE_BROKEN = True
            warnings.warn(f"torch.compile is unavailable here ({type(e).__name__}: {str(e)[:200]}); "
                          "the fused optimizer path runs eagerly", RuntimeWarning, stacklevel=3)
    return fn(*args)


def check_range(name: str, value: float, low: float, high: float | None = None, *,
                high_inclusive: bool = False) -> None:
    """Raise HyperparameterError unless low <= value (< or <=) high."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise HyperparameterError(f"invalid {name}: {value!r} (must be a number)")
    ok = value >= low and (high is None or (value <= high if high_inclusive else value < high))
    if not ok:
        upper = "" if high is None else (f", {high}]" if high_inclusive else f", {high})")
        raise HyperparameterError(f"invalid {name}: {value} (must be in [{low}{upper or ', inf)'}")


def check_betas(betas: Any) -> None:
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise HyperparameterError(f"invalid betas: {betas!r} (must be a pair of floats in [0, 1))") from None
    check_range("beta1", b1, 0.0, 1.0)
    check_range("beta2", b2, 0.0, 1.0)


class FlatGroup:
    """One parameter group re-homed into flat buffers: params, grads and named state tensors.

    The buffers are split into segments. With `by_shape`, every run of equal-shaped >1-D tensors is
    one segment, viewed as [count, C, L] (C = first dimension), and all <=1-D tensors form one more
    segment: an update can then do per-row and per-tensor reductions with plain reshapes, and a
    compiled update gets separate (non-aliasing) inputs that it mutates whole. Without `by_shape`
    there is a single segment. `segments` holds, per segment, a dict with "param", "grad", each state
    key, "count" and "shape" (the tensor shape in the segment, or None for the mixed <=1-D segment).
    """

    def __init__(self, params: Sequence[Tensor], state: dict, state_keys: Sequence[str], step: float,
                 by_shape: bool = False, grad_state: str | None = None) -> None:
        self.state = state
        self.grad_state = grad_state
        order = sorted(range(len(params)), key=lambda i: (params[i].dim() > 1, tuple(params[i].shape)))
        self.params = [params[i] for i in order]
        first = self.params[0]
        kw = dict(dtype=first.dtype, device=first.device)
        self.numel = sum(p.numel() for p in self.params)
        runs: list[list[Tensor]] = []
        for p in self.params:
            key = tuple(p.shape) if (by_shape and p.dim() > 1) else None
            if runs and (tuple(runs[-1][0].shape) if (by_shape and runs[-1][0].dim() > 1) else None) == key:
                runs[-1].append(p)
            else:
                runs.append([p])
        self.steps = torch.full((len(self.params),), float(step), dtype=torch.float32, device=first.device)
        self.step = float(step)
        self.segments: list[dict[str, Any]] = []
        self.grad_views: list[Tensor] = []
        self.state_views: list[Tensor] = []  # views of the `grad_state` buffers, if any
        index = 0
        for run in runs:
            n_seg = sum(p.numel() for p in run)
            shape = tuple(run[0].shape) if (by_shape and run[0].dim() > 1) else None
            seg: dict[str, Any] = {"count": len(run), "shape": shape}
            for k in ("param", "grad", *state_keys):
                buf = torch.zeros(n_seg, **kw)
                seg[k] = buf.view(len(run), shape[0], -1) if shape is not None else buf
            off = 0
            for p in run:
                n = p.numel()
                view = seg["param"].view(-1)[off:off + n].view_as(p)
                view.copy_(p.detach())
                p.data = view
                self.grad_views.append(seg["grad"].view(-1)[off:off + n].view_as(p))
                st = state[p]
                for k in state_keys:
                    sview = seg[k].view(-1)[off:off + n].view_as(p)
                    if k in st:
                        sview.copy_(st[k])
                    st[k] = sview
                    if k == grad_state:
                        self.state_views.append(sview)
                st["step"] = self.steps[index]
                index += 1
                off += n
            self.segments.append(seg)
        self.has_matrices = any(seg["shape"] is not None for seg in self.segments)
        self.param_ptrs = [p.data_ptr() for p in self.params]
        self.grad_ptrs = [g.data_ptr() for g in self.grad_views]

    def tensors(self, key: str) -> list[Tensor]:
        """The segment tensors of `key` ("param", "grad" or a state key), one per segment."""
        return [seg[key] for seg in self.segments]

    def intact(self) -> bool:
        """The parameters are still views of this group's buffers."""
        return all(p.data_ptr() == ptr for p, ptr in zip(self.params, self.param_ptrs))

    def gather_grads(self) -> bool:
        """Make the flat gradient buffers hold this step's gradients; False if one is missing.

        Gradients that are already views of the buffers (a loop that zeroes them in place) are not
        copied. Otherwise the gradients are copied in and (unless
        the buffers are double-buffered with a state, see `swap`) `p.grad` is pointed at its slice."""
        grads: list[Tensor] = []
        stale = False
        for p, ptr in zip(self.params, self.grad_ptrs):
            g = p.grad
            if g is None or g.is_sparse:
                return False
            grads.append(g)
            stale = stale or g.data_ptr() != ptr
        if not stale:
            return True
        torch._foreach_copy_(self.grad_views, grads)
        if self.grad_state is None:
            for p, gview in zip(self.params, self.grad_views):
                p.grad = gview
        return True

    def swap(self) -> None:
        """Double buffering for an optimizer whose state `grad_state` is (a function of) this step's
        gradient (diffGrad's previous gradient): after the update, the gradient buffers become that
        state and the state's old buffers receive the next step's gradients. This saves writing the
        state separately. `p.grad` never points into these buffers (a loop that zeroes gradients
        in place would otherwise wipe the state), so every step copies the gradients in."""
        key = self.grad_state
        for seg in self.segments:
            seg["grad"], seg[key] = seg[key], seg["grad"]
        self.grad_views, self.state_views = self.state_views, self.grad_views
        self.grad_ptrs = [g.data_ptr() for g in self.grad_views]
        for p, view in zip(self.params, self.state_views):
            self.state[p][key] = view


class FusedGroup:
    """A parameter group on the fused path: one FlatGroup per distinct step count (parameters that
    missed a gradient on some step have taken fewer steps, hence other bias corrections)."""

    def __init__(self, params: Sequence[Tensor], state: dict, state_keys: Sequence[str], by_shape: bool,
                 grad_state: str | None = None) -> None:
        self.ids = tuple(id(p) for p in params)
        by_step: dict[float, list[Tensor]] = {}
        for p in params:
            by_step.setdefault(float(state[p]["step"]) if "step" in state[p] else 0.0, []).append(p)
        self.flats = [FlatGroup(ps, state, state_keys, step, by_shape, grad_state) for step, ps in sorted(by_step.items())]

    def matches(self, params: Sequence[Tensor]) -> bool:
        if len(params) != len(self.ids) or any(id(p) != i for p, i in zip(params, self.ids)):
            return False
        return all(f.intact() for f in self.flats)


class MultiPathOptimizer(Optimizer):
    """Base class: subclasses give the update rule once per path.

    Subclasses set `state_keys` (per-parameter state tensors, zero-initialized) and implement
    `_single_update` (reference), optionally `_foreach_update` (default: the single-tensor loop)
    and `_flat_update` (default: None, meaning no fused path).
    """

    state_keys: ClassVar[tuple[str, ...]] = ()
    has_fused: ClassVar[bool] = True
    #: fused path: one flat segment per run of equal-shaped >1-D tensors (see FlatGroup)
    flat_by_shape: ClassVar[bool] = False
    #: fused path: a state key whose buffers are double-buffered with the gradient buffers (see
    #: FlatGroup.swap); `_flat_update` must then leave that state's new value in the gradient buffers
    flat_grad_state: ClassVar[str | None] = None

    def __init__(self, params: Any, defaults: dict[str, Any], *, foreach: bool | None, fused: bool | None) -> None:
        if foreach and fused:
            raise HyperparameterError("foreach and fused cannot both be True")
        if fused and not self.has_fused:
            raise HyperparameterError(f"{type(self).__name__} has no fused implementation")
        self._flat: dict[int, FusedGroup] = {}
        super().__init__(params, dict(defaults, foreach=foreach, fused=fused))

    # ---- torch.optim plumbing ---------------------------------------------------------------
    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flat = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_flat"):
            self._flat.clear()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flat.clear()  # loaded state lives in new tensors: rebuild the flat buffers

    # ---- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            path = self._path(index, group)
            if path == "fused" and self._fused_step(index, group):
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            self._flat.pop(index, None)  # steps now differ between paths: re-check before fusing again
            grads = [p.grad for p in params]
            states = [self._state_for(p) for p in params]
            steps = []
            for st in states:
                st["step"] += 1
                steps.append(float(st["step"]))
            if path == "single":
                for p, g, st, s in zip(params, grads, states, steps):
                    self._single_update(group, p, g, st, s)
            else:
                self._foreach_update(group, params, grads, states, steps)
        return loss

    def _state_for(self, p: Tensor) -> dict[str, Any]:
        st = self.state[p]
        if "step" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            for k in self.state_keys:
                st[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    def _path(self, index: int, group: dict[str, Any]) -> str:
        if group.get("fused"):
            return "fused"
        foreach = group.get("foreach")
        if foreach is False:
            return "single"
        if foreach is None and self.has_fused and compile_enabled():
            numel = sum(p.numel() for p in group["params"])
            if numel >= FUSED_MIN_NUMEL and group["params"][0].device.type in ("cpu", "cuda"):
                return "fused"
        return "foreach"

    def _fused_step(self, index: int, group: dict[str, Any]) -> bool:
        """Step the group on its flat buffers; False if a precondition fails (use foreach)."""
        params = group["params"]
        fused = self._flat.get(index)
        if fused is None or not fused.matches(params):
            fused = self._build_fused(index, params)
            if fused is None:
                return False
        if not all(flat.gather_grads() for flat in fused.flats):
            return False
        for flat in fused.flats:
            flat.step += 1
            flat.steps.add_(1)
            self._flat_update(group, flat, flat.step)
            if flat.grad_state is not None:
                flat.swap()
        return True

    def _build_fused(self, index: int, params: list[Tensor]) -> FusedGroup | None:
        if not params or any(p.grad is None or p.grad.is_sparse for p in params):
            return None
        first = params[0]
        if not first.is_floating_point() or any(p.dtype != first.dtype or p.device != first.device for p in params):
            return None
        fused = FusedGroup(params, self.state, self.state_keys, self.flat_by_shape, self.flat_grad_state)
        self._flat[index] = fused
        return fused

    # ---- the update rule, per path (subclasses) ---------------------------------------------
    def _single_update(self, group: dict[str, Any], p: Tensor, grad: Tensor, state: dict[str, Any],
                       step: float) -> None:
        raise NotImplementedError

    def _foreach_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                        states: list[dict[str, Any]], steps: list[float]) -> None:
        for p, g, st, s in zip(params, grads, states, steps):
            self._single_update(group, p, g, st, s)

    def _flat_update(self, group: dict[str, Any], flat: FlatGroup, step: float) -> None:
        raise NotImplementedError


def scalars(values: Iterable[float], like: Tensor) -> Tensor:
    """Per-step hyper-parameters as one small tensor, so a compiled update never recompiles when
    the learning rate or the bias correction changes."""
    return torch.tensor(list(values), dtype=like.dtype, device=like.device)


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes held by an optimizer's state tensors (each storage counted once), plus any flat
    gradient buffers it owns."""
    seen: dict[int, int] = {}
    for st in optimizer.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                s = v.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
    for fused in getattr(optimizer, "_flat", {}).values():
        for g in (t for flat in fused.flats for t in flat.tensors("grad")):
            s = g.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())
