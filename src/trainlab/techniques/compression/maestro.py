"""Maestro: trainable low-rank layers W = U V^T with low-rank ordered dropout and progressive shrinking.

Paper: Samuel Horváth, Stefanos Laskaridis, Shashank Rajput, Hongyi Wang, "Maestro: Uncovering
Low-Rank Structures via Trainable Decomposition", ICML 2024, arXiv:2308.14929. Official code:
github.com/SamuelHorvath/Maestro-LoD (``maestro/layers/{linear,conv}.py``, ``maestro/samplers``,
``cifar_mnist_main.py``).

Claims: (1) on linear models LoD (low-rank ordered decomposition) recovers the SVD of a linear map
and PCA for a linear autoencoder, with the components in order of importance; (2) on networks,
Maestro finds per-layer ranks that give a smaller model at the same accuracy than fixed-rank
factorizations (paper: ResNet-18/VGG-19 on CIFAR-10, LeNet on MNIST, ResNet-50 on ImageNet,
Transformers on Multi30k; compared with Pufferfish, Cuttlefish, IMP, XNOR, spectral
initialization ...).

What happens (as the official code):

* Decomposition: each ``nn.Linear`` (out x in) becomes ``U V^T`` with U: out x R, V: in x R and
  R = min(in, out); a ``ConvNd`` with C_out x C_in x k kernel becomes a ConvNd with R = min(C_out,
  C_in * prod(k)) output channels (the rows of V^T reshaped to kernels) followed by a 1x1 ConvNd
  (U). Initialization: the SVD of the layer's (initialized) dense weight, W = A S B^T,
  U = A sqrt(S), V = B sqrt(S), so at the start the layer computes exactly what the dense one did.
* Low-rank ordered dropout: each step one (layer, rank b) pair is drawn and the network is run
  with that layer cut to its first b components (U[:, :b], V[:, :b]) and every other layer whole.
  The official "per_layer" sampler enumerates all pairs {(l, b): b = 1..R_l}, shuffles them, and
  walks through the shuffled list (so over a pass each pair comes once: layers with more
  components are picked more often); ``RankSampler`` does the same with the run's generator.
* Loss per step: L(full network) + L(sampled network) + lambda_gp * group lasso. With the full
  pass on (the official default) the sampled network of a classifier is fitted to the full
  network's detached softmax (self-distillation, as ``cifar_mnist_main.py``); regression targets
  are used as they are (as the linear-model notebook). ``full_pass=False`` trains the sampled
  network alone on the labels (``--no-full-pass``).
* Hierarchical group lasso (``hierarchical=True``, the official training scripts): for component b
  the penalty is ||V[:, b:]||_F + ||U[:, b:]||_F (the norm of the tail from b on), summed over b
  and layers, so later components are pushed to zero before earlier ones. The plain group lasso
  (``hierarchical=False``) is ||v_b|| + ||u_b||.
* Importance of component b: ||V[:, b:]||_F * ||U[:, b:]||_F (hierarchical; non-increasing in b,
  so thresholding keeps a prefix) or ||v_b|| ||u_b||. Progressive shrinking: after every epoch
  the components with importance below ``threshold`` are removed. Here they are cut out of the
  parameters in place (the optimizer's state is cut alike), so the layer and the optimizer step
  shrink during training; the official code masks them during training and cuts them at export.

Plain PyTorch::

    import torch, torch.nn.functional as F
    from trainlab.techniques.compression.maestro import maestro_decompose, RankSampler, group_lasso, shrink

    model = maestro_decompose(torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    opt, sampler = torch.optim.SGD(model.parameters(), lr=0.05), RankSampler(model)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    for epoch in range(3):
        out = model(x)
        with sampler.sampled():                     # one layer cut to a random rank b
            partial = model(x)
        loss = F.cross_entropy(out, y) + F.cross_entropy(partial, out.detach().softmax(1)) + 5e-3 * group_lasso(model)
        opt.zero_grad(); loss.backward(); opt.step()
        shrink(model, 1e-5, optimizer=opt); sampler.reset()   # progressive shrinking, then new pairs

The fixed-rank comparison (technique "low-rank") factorizes the same layers at rank
ceil(rank_ratio * R) from the truncated SVD of the dense initialization and trains them at that rank.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Paper, Technique, TrainState

PAPER = Paper("Maestro: Uncovering Low-Rank Structures via Trainable Decomposition",
              "Horváth, Laskaridis, Rajput, Wang", 2024, "2308.14929")
ARTIFACT_METHOD = "low-rank-factors"
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# --------------------------------------------------------------------------- the layer

class LowRankLayer(nn.Module):
    """A Linear or ConvNd layer stored as U V^T (see the module docstring).

    weight_v: [R, in_features] (Linear) or [R, C_in, *kernel] (conv): the input-side factor, one row
    per component. weight_u: [out_features, R]: the output-side factor, one column per component.
    sample_rank: when set (ordered dropout), the forward uses only the first `sample_rank` components.
    """

    def __init__(self, weight_u: torch.Tensor, weight_v: torch.Tensor, bias: torch.Tensor | None,
                 conv: dict[str, Any] | None = None) -> None:
        super().__init__()
        if weight_u.dim() != 2 or weight_u.shape[1] != weight_v.shape[0]:
            raise ConfigError(f"low-rank layer: U {list(weight_u.shape)} and V {list(weight_v.shape)} do not match")
        self.weight_u = nn.Parameter(weight_u.detach().clone())
        self.weight_v = nn.Parameter(weight_v.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.conv = None if conv is None else dict(conv)  # dims, stride, padding, dilation
        self.sample_rank: int | None = None

    # ---- shapes
    @property
    def rank(self) -> int:
        return self.weight_v.shape[0]

    @property
    def out_features(self) -> int:
        return self.weight_u.shape[0]

    @property
    def fan_in(self) -> int:
        """Inputs per output: in_features, or C_in * prod(kernel)."""
        return int(self.weight_v[0].numel()) if self.rank else int(math.prod(self.weight_v.shape[1:]))

    @property
    def full_rank(self) -> int:
        return min(self.out_features, self.fan_in)

    def factor_params(self, rank: int | None = None) -> int:
        """Weights of the two factors at `rank` (default: the current rank); the bias is not counted."""
        return (self.fan_in + self.out_features) * (self.rank if rank is None else rank)

    def dense_params(self) -> int:
        """Weights of the dense layer it stands for."""
        return self.fan_in * self.out_features

    # ---- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.rank if self.sample_rank is None else min(self.sample_rank, self.rank)
        v, u = self.weight_v[:r], self.weight_u[:, :r]
        if self.conv is None:
            return F.linear(F.linear(x, v), u, self.bias)
        c = self.conv
        conv = _CONV_FN[c["dims"]]
        inner = conv(x, v, None, c["stride"], c["padding"], c["dilation"])
        return conv(inner, u.reshape(*u.shape, *([1] * c["dims"])), self.bias)

    def dense_weight(self) -> torch.Tensor:
        """U V^T, shaped as the dense layer's weight."""
        w = self.weight_u @ self.weight_v.reshape(self.rank, -1)
        return w if self.conv is None else w.reshape(self.out_features, *self.weight_v.shape[1:])

    # ---- group lasso and importance
    def group_norms(self, hierarchical: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(norms of V's rows, norms of U's columns), one per component; hierarchical: the Frobenius
        norm of the tail from the component on (||V[b:]||_F, ||U[:, b:]||_F)."""
        v2 = self.weight_v.reshape(self.rank, -1).pow(2).sum(1)
        u2 = self.weight_u.pow(2).sum(0)
        if hierarchical:
            v2, u2 = v2.flip(0).cumsum(0).flip(0), u2.flip(0).cumsum(0).flip(0)
        return v2.sqrt(), u2.sqrt()

    def group_lasso(self, hierarchical: bool = True) -> torch.Tensor:
        v, u = self.group_norms(hierarchical)
        return (v + u).sum()

    @torch.no_grad()
    def importance(self, hierarchical: bool = True) -> torch.Tensor:
        v, u = self.group_norms(hierarchical)
        return v * u

    # ---- shrinking
    @torch.no_grad()
    def keep_components(self, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Cut the layer to the components where `keep` is True. The factors become new, smaller
        Parameters; an optimizer given here has them swapped into its parameter groups, with its
        per-parameter state (momentum, Adam moments) cut alike. Returns the number removed."""
        keep = keep.to(torch.bool).cpu()
        if keep.shape != (self.rank,):
            raise ConfigError(f"keep_components: expected a mask of {self.rank} entries, got {list(keep.shape)}")
        removed = int((~keep).sum())
        if removed == 0:
            return 0
        idx = torch.nonzero(keep).flatten().to(self.weight_v.device)
        for attr, dim in (("weight_v", 0), ("weight_u", 1)):
            old = getattr(self, attr)
            new = nn.Parameter(old.detach().index_select(dim, idx).contiguous(), requires_grad=old.requires_grad)
            setattr(self, attr, new)
            if optimizer is not None:
                _swap_in_optimizer(optimizer, old, new, dim, idx)
        return removed

    @torch.no_grad()
    def shrink(self, threshold: float, hierarchical: bool = True, optimizer: torch.optim.Optimizer | None = None,
               min_rank: int = 1) -> int:
        """Remove the components whose importance is below `threshold` (keeping at least `min_rank`,
        the most important ones). Returns the number removed."""
        imp = self.importance(hierarchical).cpu()
        keep = imp >= threshold
        if int(keep.sum()) < min(min_rank, self.rank):
            keep = torch.zeros_like(keep)
            keep[imp.argsort(descending=True)[:min_rank].sort().values] = True
        return self.keep_components(keep, optimizer)

    def truncate(self, rank: int) -> int:
        """Keep the first `rank` components (in place)."""
        keep = torch.arange(self.rank) < rank
        return self.keep_components(keep)

    # ---- conversion
    @classmethod
    def from_dense(cls, layer: nn.Module, rank: int | None = None) -> "LowRankLayer":
        """Factorize a Linear or ConvNd (groups=1) by the SVD of its weight: U = A sqrt(S), V = B sqrt(S),
        truncated to the first `rank` singular components (default: all, R = min(out, fan_in))."""
        w = layer.weight.detach()
        conv = None
        if type(layer) in _CONVS:
            if layer.groups != 1 or not isinstance(layer.padding, (tuple, int)) or layer.padding_mode != "zeros":
                raise ConfigError("low-rank: only convolutions with groups=1, numeric padding and zero padding mode "
                                  "can be factorized")
            conv = {"dims": _CONVS[type(layer)], "stride": tuple(layer.stride), "padding": tuple(layer.padding),
                    "dilation": tuple(layer.dilation)}
        elif not isinstance(layer, nn.Linear):
            raise ConfigError(f"low-rank: cannot factorize a {type(layer).__name__} (Linear, Conv1d/2d/3d only)")
        out = w.shape[0]
        a, s, bh = torch.linalg.svd(w.reshape(out, -1).double(), full_matrices=False)
        full = s.numel()
        r = full if rank is None else int(rank)
        if not 1 <= r <= full:
            raise ConfigError(f"low-rank: rank must be in 1..{full} for a {out}x{w[0].numel()} weight, got {rank}")
        root = s[:r].sqrt()
        u = (a[:, :r] * root).to(w.dtype)
        v = (bh[:r].T * root).T.to(w.dtype).reshape(r, *w.shape[1:])
        return cls(u, v, layer.bias, conv)

    def to_dense(self) -> nn.Module:
        """The equivalent dense Linear / ConvNd."""
        with torch.no_grad():
            w = self.dense_weight()
            if self.conv is None:
                layer = nn.Linear(w.shape[1], w.shape[0], bias=self.bias is not None)
            else:
                c = self.conv
                cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[c["dims"]]
                layer = cls(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=c["stride"], padding=c["padding"],
                            dilation=c["dilation"], bias=self.bias is not None)
            layer = layer.to(device=w.device, dtype=w.dtype)
            layer.weight.copy_(w)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def extra_repr(self) -> str:
        kind = "linear" if self.conv is None else f"conv{self.conv['dims']}d"
        return f"{kind}, fan_in={self.fan_in}, out={self.out_features}, rank={self.rank}/{self.full_rank}"


def _swap_in_optimizer(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, dim: int,
                       idx: torch.Tensor) -> None:
    # a new Parameter (not old.data resized): autograd keeps the shape a leaf had when a live graph saw it
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {k: (v.index_select(dim, idx.to(v.device)).contiguous()
                                    if torch.is_tensor(v) and v.shape == old.shape else v) for k, v in state.items()}


# --------------------------------------------------------------------------- model transforms

def low_rank_layers(model: nn.Module) -> list[tuple[str, LowRankLayer]]:
    """(name, layer) of every LowRankLayer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLayer)]


def _candidates(model: nn.Module, skip_first: int, skip_last: bool) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or
             (type(m) in _CONVS and m.groups == 1)]
    names = names[skip_first:]
    if skip_last and names:
        names = names[:-1]
    return names


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def maestro_decompose(model: nn.Module, skip_first: int = 0, skip_last: bool = False,
                      rank_ratio: float | None = None, layers: Sequence[str] | None = None) -> nn.Module:
    """Replace the model's Linear / ConvNd layers by LowRankLayers initialized from their SVD, in place.

    skip_first / skip_last: leave the first k / the last such layer dense (the official
    ``ignore_k_first_layers``, ``ignore_last_layer``). layers: the module names to factorize
    instead. rank_ratio: keep ceil(rank_ratio * R) components of each (a fixed-rank factorization);
    None keeps all (Maestro's start: the layer equals the dense one). Returns the model."""
    if model.__class__ in (nn.Linear, *_CONVS):
        raise ConfigError("maestro_decompose: the model itself is a layer; wrap it in a module first")
    names = list(layers) if layers is not None else _candidates(model, skip_first, skip_last)
    if not names:
        raise ConfigError(f"maestro_decompose: {type(model).__name__} has no Linear or Conv layer to factorize")
    for name in names:
        layer = model.get_submodule(name)
        rank = None
        if rank_ratio is not None:
            rank = fixed_rank(layer, rank_ratio)
        _set(model, name, LowRankLayer.from_dense(layer, rank))
    return model


def fixed_rank(layer: nn.Module, rank_ratio: float) -> int:
    """ceil(rank_ratio * min(out, fan_in)) for a dense layer or a LowRankLayer (full rank R)."""
    if not 0 < rank_ratio <= 1:
        raise ConfigError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
    if isinstance(layer, LowRankLayer):
        full = layer.full_rank
    else:
        full = min(layer.weight.shape[0], layer.weight[0].numel())
    return max(1, math.ceil(rank_ratio * full))


def factor_params(model: nn.Module) -> int:
    """Weights of all factors U, V (biases not counted)."""
    return sum(m.factor_params() for _, m in low_rank_layers(model))


def dense_params_of_factorized(model: nn.Module) -> int:
    """Weights the factorized layers would have as dense layers."""
    return sum(m.dense_params() for _, m in low_rank_layers(model))


def group_lasso(model: nn.Module, hierarchical: bool = True) -> torch.Tensor:
    """Sum of every LowRankLayer's group lasso (the official ``group_lasso_criterion``)."""
    terms = [m.group_lasso(hierarchical) for _, m in low_rank_layers(model)]
    if not terms:
        raise ConfigError("group_lasso: the model has no low-rank layers (call maestro_decompose first)")
    return torch.stack(terms).sum()


def shrink(model: nn.Module, threshold: float, hierarchical: bool = True,
           optimizer: torch.optim.Optimizer | None = None, min_rank: int = 1) -> int:
    """Progressive shrinking: remove every component whose importance is below `threshold` from
    every LowRankLayer, in place (optimizer state cut alike). Returns the number removed."""
    return sum(m.shrink(threshold, hierarchical, optimizer, min_rank) for _, m in low_rank_layers(model))


def densify_if_larger(model: nn.Module) -> nn.Module:
    """Turn back into dense layers the LowRankLayers whose factors hold more weights than the dense
    layer would (the official ``model_to_full``), in place. Returns the model."""
    for name, m in low_rank_layers(model):
        if m.factor_params() > m.dense_params():
            _set(model, name, m.to_dense())
    return model


@torch.no_grad()
def truncate_to_budget(model: nn.Module, budget: int, hierarchical: bool = True) -> int:
    """Cut the LowRankLayers to at most `budget` factor weights in all, keeping the components of
    highest importance across layers (each layer keeps a prefix, at least one component). Returns
    the factor weights kept. This is Maestro's deployment-time truncation: no retraining."""
    layers = [m for _, m in low_rank_layers(model)]
    if not layers:
        raise ConfigError("truncate_to_budget: the model has no low-rank layers")
    if factor_params(model) <= budget:
        return factor_params(model)
    keep = [1] * len(layers)
    used = sum(m.factor_params(1) for m in layers)
    # hierarchical importances are non-increasing within a layer: taking them in global order keeps prefixes
    items = sorted(((float(imp), -li, b) for li, m in enumerate(layers)
                    for b, imp in enumerate(_monotone(m.importance(hierarchical).cpu())) if b > 0), reverse=True)
    for _, neg_li, b in items:
        li = -neg_li
        m = layers[li]
        if keep[li] != b:       # a later component of a layer whose prefix stopped
            continue
        cost = m.fan_in + m.out_features
        if used + cost > budget:
            continue
        keep[li], used = b + 1, used + cost
    for m, r in zip(layers, keep):
        m.truncate(r)
    return used


def _monotone(imp: torch.Tensor) -> torch.Tensor:
    # running minimum: a prefix order even for non-hierarchical importances
    return torch.cummin(imp, 0).values


class RankSampler:
    """Low-rank ordered dropout's sampler ("per_layer" in the official code): all (layer, rank b)
    pairs, b = 1..R_l, in a shuffled order, drawn one per step; a new shuffle after each pass.

    ``with sampler.sampled():`` runs the block with one layer cut to its first b components."""

    def __init__(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        self.model, self.generator = model, generator
        self.reset()

    def reset(self) -> None:
        """Rebuild the pairs (after shrinking changed the ranks)."""
        self.layers = [m for _, m in low_rank_layers(self.model)]
        if not self.layers:
            raise ConfigError("RankSampler: the model has no low-rank layers (call maestro_decompose first)")
        self.pairs = [(li, b) for li, m in enumerate(self.layers) for b in range(1, m.rank + 1)]
        self._order: list[int] = []

    def draw(self) -> tuple[LowRankLayer, int]:
        if not self._order:
            self._order = torch.randperm(len(self.pairs), generator=self.generator).tolist()
        li, b = self.pairs[self._order.pop()]
        return self.layers[li], b

    @contextlib.contextmanager
    def sampled(self) -> Iterator[tuple[LowRankLayer, int]]:
        layer, b = self.draw()
        layer.sample_rank = b
        try:
            yield layer, b
        finally:
            layer.sample_rank = None


# --------------------------------------------------------------------------- probes of the factors

def principal_directions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k principal directions [d, k] of the rows of x (eigenvectors of the centered
    covariance, largest eigenvalue first)."""
    x = x.reshape(len(x), -1).double()
    x = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x / max(1, len(x) - 1))
    return evecs[:, evals.argsort(descending=True)[:k]]


def prefix_alignment(directions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """For j = 1..k: ||Q_j^T B_j||_F^2 / j, with B_j an orthonormal basis of the span of the first j
    columns of `directions` [d, >=k] and Q_j the first j columns of `reference` [d, k] (orthonormal).
    1 for every j iff each prefix spans the matching reference subspace (so the order matches too)."""
    k = reference.shape[1]
    if directions.shape[1] < k:
        raise ConfigError(f"prefix_alignment: {directions.shape[1]} learned directions for k={k}")
    out = []
    for j in range(1, k + 1):
        basis, _ = torch.linalg.qr(directions[:, :j].double())
        out.append((reference[:, :j].double().T @ basis).pow(2).sum() / j)
    return torch.stack(out)


def output_directions(layer: LowRankLayer) -> torch.Tensor:
    """The layer's output-side directions [out_features, R] (the columns of U): its rank-b output
    lies in the span of the first b of them."""
    return layer.weight_u.detach()


# --------------------------------------------------------------------------- artifact

def export_factors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a model with LowRankLayers: per layer its factors U, V and bias, and every
    other state_dict entry as it is."""
    tensors: dict[str, torch.Tensor] = {}
    layers = {}
    for name, m in low_rank_layers(model):
        tensors[f"lr.{name}.u"], tensors[f"lr.{name}.v"] = m.weight_u.detach(), m.weight_v.detach()
        if m.bias is not None:
            tensors[f"lr.{name}.bias"] = m.bias.detach()
        layers[name] = {"rank": m.rank, "conv": None if m.conv is None else
                        {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.conv.items()}}
    prefixes = tuple(f"{n}." for n in layers)
    for key, val in model.state_dict().items():
        if not key.startswith(prefixes):
            tensors[f"sd.{key}"] = val
    return tensors, {"layers": layers}


def save_factors(path: Any, model: nn.Module) -> int:
    """Write the low-rank model's compressed file (trainlab.techniques.compression.artifact);
    returns its size in bytes."""
    from trainlab.techniques.compression.artifact import save_artifact

    tensors, meta = export_factors(model)
    if not meta["layers"]:
        raise ConfigError("save_factors: the model has no low-rank layers")
    return save_artifact(path, ARTIFACT_METHOD, tensors, meta)


def load_factors(path: Any, model: nn.Module) -> nn.Module:
    """Rebuild a saved low-rank model into `model` (a freshly built model of the same architecture,
    dense or factorized): its named layers become LowRankLayers with the stored factors, and the
    rest of its state is loaded. Returns the model (in place)."""
    from trainlab.errors import CheckpointError
    from trainlab.techniques.compression.artifact import load_artifact

    tensors, meta = load_artifact(path, ARTIFACT_METHOD)
    for name, info in meta["layers"].items():
        try:
            model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"compressed model '{path}': the model has no layer '{name}'") from None
        conv = info["conv"]
        if conv is not None:
            conv = {k: (tuple(v) if isinstance(v, list) else v) for k, v in conv.items()}
        _set(model, name, LowRankLayer(tensors[f"lr.{name}.u"], tensors[f"lr.{name}.v"],
                                       tensors.get(f"lr.{name}.bias"), conv))
    rest = {k[3:]: v for k, v in tensors.items() if k.startswith("sd.")}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    factor_keys = {k for k, _ in model.state_dict().items() if k.startswith(tuple(f"{n}." for n in meta["layers"]))}
    if set(missing) - factor_keys or unexpected:
        raise CheckpointError(f"compressed model '{path}' does not fit this model (missing "
                              f"{sorted(set(missing) - factor_keys)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model


# --------------------------------------------------------------------------- techniques

@torch.no_grad()
def _test_accuracy(model: nn.Module, state: TrainState) -> float:
    from trainlab.training.metrics import batched_outputs

    data = state.data
    was = model.training
    model.eval()
    correct = 0
    for out, target in batched_outputs(model, data.test_x, data.test_y):
        correct += int((out.argmax(1) == target).sum())
    model.train(was)
    return correct / max(1, len(data.test_y))


def _budget(model: nn.Module, rank_ratio: float) -> int:
    """Factor weights of the model's LowRankLayers at the fixed rank ceil(rank_ratio * R) each."""
    return sum(m.factor_params(fixed_rank(m, rank_ratio)) for _, m in low_rank_layers(model))


class _LowRankBase(Technique):
    family = "compression"
    modifies = frozenset({"model"})
    order = 5

    def __init__(self, skip_first: int = 0, skip_last: bool = False, pca_k: int = 0,
                 budget_rank_ratio: float | None = None, **settings: Any) -> None:
        if not isinstance(pca_k, int) or pca_k < 0:
            raise ConfigError(f"{self.name}: pca_k must be a whole number >= 0, got {pca_k!r}")
        if budget_rank_ratio is not None and not 0 < budget_rank_ratio <= 1:
            raise ConfigError(f"{self.name}: budget_rank_ratio must be in (0, 1], got {budget_rank_ratio}")
        super().__init__(skip_first=skip_first, skip_last=skip_last, pca_k=pca_k,
                         budget_rank_ratio=budget_rank_ratio, **settings)
        self.skip_first, self.skip_last, self.pca_k = skip_first, skip_last, pca_k
        self.budget_rank_ratio = budget_rank_ratio
        self.dense_weights = 0
        self.budget: int | None = None
        self._pcs: torch.Tensor | None = None

    def _decompose(self, model: nn.Module, rank_ratio: float | None) -> nn.Module:
        model = maestro_decompose(model, self.skip_first, self.skip_last, rank_ratio=rank_ratio)
        self.dense_weights = dense_params_of_factorized(model)
        if self.budget_rank_ratio is not None:
            self.budget = _budget(model, self.budget_rank_ratio)
        return model

    def _log(self, model: nn.Module, state: TrainState) -> None:
        layers = low_rank_layers(model)
        m = state.epoch_metrics
        m["factor_params"] = float(factor_params(model))
        m["factor_param_ratio"] = factor_params(model) / max(1, self.dense_weights)
        for i, (_, layer) in enumerate(layers):
            m[f"rank_l{i}"] = float(layer.rank)
        if self.pca_k:
            last = layers[-1][1]
            if self._pcs is None:
                y = state.data.train_y
                if y.dtype == torch.long:
                    raise ConfigError(f"{self.name}: pca_k compares the last factorized layer's output directions "
                                      "with the principal directions of the targets; the task's targets are labels")
                self._pcs = principal_directions(y, self.pca_k)
            if last.rank >= self.pca_k:
                align = prefix_alignment(output_directions(last), self._pcs.to(last.weight_u.device))
                m["pca_alignment"] = float(align.mean())
                m[f"pca_alignment_k{self.pca_k}"] = float(align[-1])
        if self.budget is not None and state.epoch == state.epochs - 1:
            if not state.data.is_classification:
                raise ConfigError(f"{self.name}: budget_rank_ratio reports test accuracy; "
                                  "the task is not classification")
            trimmed = copy.deepcopy(model)
            kept = truncate_to_budget(trimmed, self.budget)
            m["budget_target"] = float(self.budget)
            m["budget_params"] = float(kept)
            m["budget_test_acc"] = _test_accuracy(trimmed, state)


@register
class Maestro(_LowRankBase):
    """Trainable low-rank layers with ordered dropout over rank and progressive shrinking."""

    name = "maestro"
    paper = PAPER
    fidelity = "exact"
    fidelity_evidence = (
        "tests/techniques/compression/test_maestro.py against the official maestro/layers and samplers: the SVD "
        "initialization U = A sqrt(S), V = B sqrt(S) (decompose_linear; test_svd_initialization_is_balanced_and_"
        "truncation_is_eckart_young, test_full_rank_factorization_equals_the_dense_layer for Linear and conv), the "
        "prefix forward weight[:inner_dim] (test_ordered_dropout_keeps_exactly_the_first_r_components), the plain "
        "and hierarchical (flip-cumsum-flip) group lasso and importance of _compute_lasso "
        "(test_group_lasso_and_importance_by_hand), the per_layer sampler's shuffled pass over all (layer, rank) pairs "
        "(test_sampler_draws_every_layer_rank_pair_once_per_pass), assign_low_rank's importance >= threshold "
        "(test_shrinking_removes_small_components_and_the_layer_shrinks); the training step (full loss + sampled loss "
        "on the full model's softmax + lambda_gp * group lasso, shrinking after every epoch) follows "
        "cifar_mnist_main.py")
    deviations = (
        "pruned components are cut out of the parameters (and the optimizer state) after each epoch; the official "
        "code masks them during training and cuts them when exporting; outputs are the same",
        "a layer keeps at least one component (the official Linear may reach rank 0 and output its bias)",
        "the sampler's shuffle uses the run's generator instead of numpy's global random state",
        "BatchNorm statistics are not recalibrated before evaluation (the official script re-estimates them when the "
        "model has BatchNorm); the claims' models have none",
    )
    summary = "factorize layers as U V^T, ordered dropout over rank, hierarchical group lasso, progressive shrinking"

    def __init__(self, gp_lambda: float = 5e-3, threshold: float = 1e-5, hierarchical: bool = True,
                 full_pass: bool = True, distill: bool = True, progressive: bool = True, skip_first: int = 0,
                 skip_last: bool = False, pca_k: int = 0, budget_rank_ratio: float | None = None) -> None:
        if gp_lambda < 0 or threshold < 0:
            raise ConfigError("maestro: gp_lambda and threshold must be >= 0")
        super().__init__(skip_first=skip_first, skip_last=skip_last, pca_k=pca_k,
                         budget_rank_ratio=budget_rank_ratio, gp_lambda=gp_lambda, threshold=threshold,
                         hierarchical=hierarchical, full_pass=full_pass, distill=distill, progressive=progressive)
        self.gp_lambda, self.threshold, self.hierarchical = float(gp_lambda), float(threshold), hierarchical
        self.full_pass, self.distill, self.progressive = full_pass, distill, progressive
        self.sampler: RankSampler | None = None
        self.model: nn.Module | None = None

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        self.model = self._decompose(model, None)
        return self.model

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        if self.progressive and state.task.grad_clip:
            raise ConfigError("maestro: progressive shrinking replaces the factor parameters, which the task's "
                              "grad_clip would no longer see; use progressive=False or no grad_clip")
        self.sampler = RankSampler(model, state.generator)

    def transform_batch(self, batch, state: TrainState):
        if not self.full_pass:   # the step's one forward pass is the sampled network's
            layer, b = self.sampler.draw()
            layer.sample_rank = b
            batch.meta["maestro_layer"] = layer
        return batch

    def loss(self, outputs: torch.Tensor, batch, state: TrainState, base_loss: torch.Tensor) -> torch.Tensor:
        model = state.model
        if self.full_pass:
            target = batch.targets
            if self.distill and state.data.is_classification:
                target = outputs.detach().softmax(1)
            with self.sampler.sampled():
                partial = model(batch.inputs)
            base_loss = base_loss + state.loss_fn(partial, target)
        else:
            batch.meta.pop("maestro_layer").sample_rank = None
        if self.gp_lambda:
            base_loss = base_loss + self.gp_lambda * group_lasso(model, self.hierarchical)
        return base_loss

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        if self.progressive and shrink(model, self.threshold, self.hierarchical, state.optimizer):
            self.sampler.reset()
        self._log(model, state)


@register
class FixedLowRank(_LowRankBase):
    """Factorized layers trained at a fixed rank from the start (Maestro's fixed-rank comparison)."""

    name = "low-rank"
    paper = PAPER
    fidelity = "control"
    summary = "factorize layers as U V^T at fixed rank ceil(rank_ratio * R) from the SVD of the init; train there"

    def __init__(self, rank_ratio: float | None = 0.25, skip_first: int = 0, skip_last: bool = False, pca_k: int = 0,
                 budget_rank_ratio: float | None = None) -> None:
        if rank_ratio is not None and not 0 < rank_ratio <= 1:
            raise ConfigError(f"low-rank: rank_ratio must be in (0, 1] or None, got {rank_ratio}")
        super().__init__(skip_first=skip_first, skip_last=skip_last, pca_k=pca_k,
                         budget_rank_ratio=budget_rank_ratio, rank_ratio=rank_ratio)
        self.rank_ratio = rank_ratio

    def prepare(self, model: nn.Module, task: Any) -> nn.Module:
        # the dense sizes come from the full factorization, then each layer is cut to its fixed rank
        model = self._decompose(model, None)
        if self.rank_ratio is not None:
            for _, m in low_rank_layers(model):
                m.truncate(fixed_rank(m, self.rank_ratio))
        return model

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        self._log(model, state)


# --------------------------------------------------------------------------- the linear-autoencoder task

def pca_data(dim: int = 16, n_train: int = 2000, n_test: int = 500, decay: float = 0.6, seed: int = 0,
             data_seed: int = 1234) -> Any:
    """Gaussian inputs x = Q diag(s) z (z standard normal, s_i = decay**i, Q a fixed random rotation),
    target x itself (a linear autoencoder). The covariance's eigenvectors are Q's columns, in order."""
    from trainlab.tasks.task import DataBundle

    g = torch.Generator().manual_seed(data_seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    scales = decay ** torch.arange(dim, dtype=torch.float64)
    gs = torch.Generator().manual_seed(data_seed + 1 + seed)
    z = torch.randn(n_train + n_test, dim, generator=gs, dtype=torch.float64)
    x = ((z * scales) @ q.T).float()
    return DataBundle(x[:n_train], x[:n_train].clone(), x[n_train:], x[n_train:].clone(), num_classes=None,
                      name="pca-gaussian", info={"decay": decay, "dim": dim})


def linear_autoencoder(input_shape: Sequence[int], num_classes: int | None, **_: Any) -> nn.Module:
    """One bias-free Linear d -> d (in a Sequential, so it can be factorized)."""
    d = int(math.prod(input_shape))
    return nn.Sequential(nn.Linear(d, d, bias=False))


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over examples and coordinates (the official notebook's nn.MSELoss)."""
    return F.mse_loss(outputs, targets)


def pca_task() -> Any:
    """The task "pca-linear-ae": 16-d Gaussian data with variances 0.36**i, a linear autoencoder,
    Adam, MSE, 60 epochs of 20 steps."""
    from trainlab.tasks.task import Task

    return Task(name="pca-linear-ae", make_data=pca_data, make_model=linear_autoencoder, loss_fn=mse, epochs=60,
                batch_size=100, optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant",
                description="16-d Gaussian inputs with variances 0.36**i along a random rotation, target = input, "
                            "one bias-free Linear 16 -> 16: the linear autoencoder whose optimum at rank k is PCA")


# --------------------------------------------------------------------------- claims

_PCA_SETTING = PaperSetting(
    text="linear maps on synthetic data: a rank-3 9x6 matrix on uniform data (SVD), a 10-d linear autoencoder on "
         "3 points (PCA), 2,000-10,000 full-batch SGD steps (official notebook linear_models.ipynb); Theorem: the "
         "LoD objective's minimizer is the SVD / PCA, in order")
_NET_SETTING = PaperSetting(
    train_size=50_000, epochs=300,
    text="ResNet-18 and VGG-19 on CIFAR-10, LeNet on MNIST, ResNet-50 on ImageNet, Transformer on Multi30k; "
         "compared with Pufferfish, Cuttlefish, spectral init., IMP, RareGems, XNOR at their model sizes")
_PCA_NOTES = (
    "Ours: 16-d Gaussian inputs with variances 0.36**i along a fixed random rotation, target = input, one bias-free "
    "Linear 16 -> 16 factorized at full rank 16, Adam lr 1e-2, batch 100, 60 epochs (1,200 steps), no group "
    "lasso (the theorem's objective: full pass + one sampled rank per step). pca_alignment = mean over j = 1..4 of "
    "||Q_j^T B_j||_F^2 / j, B_j an orthonormal basis of the first j columns of U (the output directions), Q_j the "
    "top-j principal directions of the training targets; 1 iff every prefix spans its principal subspace. The input "
    "side V is not compared: directions of variance ~0.36**15 leave it almost unconstrained. Pilot (seeds 0-1) "
    "before the setting was fixed: SGD lr 0.2 momentum 0.9 for 30 epochs reached 0.92 and 0.91, still rising; "
    "plain factorized training 0.27 and 0.52. Adam for 60 epochs was chosen so that training converges (the theorem "
    "is about the minimizer).")
_PCA_ARM = ("maestro", {"gp_lambda": 0.0, "pca_k": 4})
_BUDGET = 0.125
_NET_QUOTE = ("Maestro ... enables the extraction of lower footprint models that preserve performance ... "
              "allows selecting ranks at a layer granularity")

CLAIMS: list[Claim] = [
    Claim(
        id="maestro-pca-order", technique="maestro", task="pca-linear-ae", metric="pca_alignment",
        direction="higher", reference=0.95, treatment=arm(_PCA_ARM, label="maestro (LoD, no group lasso)"),
        seeds=5, suites=("quick", "full"),
        paper_quote="Our theoretical analysis demonstrates that in special cases LoD recovers the SVD decomposition "
                    "and PCA",
        paper_number="linear autoencoder: the learned importances match the PCA spectrum, in order (notebook)",
        paper_scale="linear maps and linear autoencoders on small synthetic data", paper_setting=_PCA_SETTING,
        preconditions=(Precondition("test_loss", "<=", 1e-3, arm="treatment", over="max",
                                    why="the full factorized model reconstructs the data (the ordering is then "
                                        "what ordered dropout adds)"),),
        notes=_PCA_NOTES + " Reference 0.95: every prefix of the first four learned output directions within 5% of "
                           "its principal subspace on average. Measured (5 seeds): 0.970-0.997 (the 4-d prefix "
                           "alone 0.889-0.992); test reconstruction loss below 1e-4.",
    ),
    Claim(
        id="maestro-pca-order-vs-plain", technique="maestro", task="pca-linear-ae", metric="pca_alignment",
        direction="higher", treatment=arm(_PCA_ARM, label="maestro (LoD)"),
        baseline=arm(("low-rank", {"rank_ratio": None, "pca_k": 4}), label="U V^T at full rank, no ordered dropout"),
        seeds=5, suites=("full",),
        paper_quote="Not only is this the first time importance ordering via sampling is applied on the decomposed "
                    "DNN structure",
        paper_number="(control: the ordering comes from the rank sampling, not from the factorization)",
        paper_scale="linear maps and linear autoencoders on small synthetic data", paper_setting=_PCA_SETTING,
        notes=_PCA_NOTES + " Control: the same factorization (SVD of the same initialization, full rank) trained on "
                           "the plain loss reconstructs as well but its component order is arbitrary. Measured "
                           "(5 seeds): plain 0.208-0.247, Maestro 0.970-0.997.",
    ),
    Claim(
        id="maestro-mnist1d-budget", technique="maestro", task="mnist1d-mlp", metric="budget_test_acc",
        direction="higher",
        treatment=arm(("maestro", {"gp_lambda": 1e-3, "skip_last": True, "budget_rank_ratio": _BUDGET}),
                      label="maestro (lambda_gp 1e-3), truncated to the budget"),
        baseline=arm(("low-rank", {"rank_ratio": _BUDGET, "skip_last": True, "budget_rank_ratio": _BUDGET}),
                     label=f"fixed rank ceil({_BUDGET} R) per layer"),
        seeds=5, suites=("full",),
        paper_quote=_NET_QUOTE,
        paper_number="smaller models at comparable accuracy than fixed-rank factorizations such as Pufferfish "
                     "(CIFAR-10, ImageNet; per-layer ranks found by training)",
        paper_scale="CIFAR-10/ImageNet CNNs, Multi30k Transformer", paper_setting=_NET_SETTING,
        preconditions=(
            Precondition("factor_params - budget_target", ">=", 0.0, arm="treatment", over="min",
                         why="Maestro's own shrunk model is at least the budget, so the comparison is at equal "
                             "factor weights (the budget, reached by truncating in importance order)"),
            Precondition("test_acc", ">=", 0.2, arm="baseline", relative_to="chance", over="min",
                         why="the fixed-rank network learns"),
        ),
        notes="Ours: MNIST-1D (4,000 training signals), MLP 40-256-256-10, Adam lr 2e-3, 20 epochs; the two hidden "
              "Linear layers factorized, the classifier kept dense (Pufferfish's convention, the official "
              "ignore_last_layer). Budget fixed by rule before any run: the factor weights of the fixed-rank "
              f"baseline at rank ceil({_BUDGET} x R) per layer (R = min(in, out): ranks 5 and 32, 17,864 weights, "
              "24% of the dense 75,776). Maestro (full pass + one sampled rank per step with self-distillation, "
              "hierarchical group lasso lambda_gp = 1e-3, threshold 1e-5, shrinking every epoch) ends larger "
              "than the budget and is then cut to it without retraining, keeping the components of highest "
              "importance across both layers (budget_test_acc). lambda_gp was chosen from Maestro-only pilot "
              "runs (seed 0: lambda 0 / 1e-4 / 1e-3 / 5e-3 ended at 189% / 120% / 35% / 8% of the dense weights) "
              "as the strongest that stays above the budget; the official default 5e-3 shrinks below it. "
              "Pilot (seed 0): dense MLP 62.2% test accuracy; fixed rank 0.25 -> 50.1%, 0.125 -> 46.1%. "
              "Measured (5 seeds): Maestro ended at 32-36% of the dense weights with ranks 37-39 (of 40) in the "
              "first layer and 25-31 (of 256) in the second, test accuracy 56.8-60.0%, and 56.5-59.7% when cut to "
              "the budget; the fixed-rank baseline (ranks 5 and 32) reached 39.8-48.6%. Maestro keeps almost the "
              "whole 40-d input layer and cuts the 256 x 256 layer hard, where a uniform rank ratio does the "
              "opposite: this is the per-layer rank selection the paper credits. Not separated here: Maestro "
              "also trains two forward passes per step and starts at full rank.",
    ),
]
