"""Optimization trajectory distillation for taxonomy-adaptive cross-domain adaptation.

Paper: Jianan Fan, Dongnan Liu, Hang Chang, Heng Huang, Mei Chen, Weidong Cai. "Taxonomy Adaptive
Cross-Domain Adaptation in Medical Imaging via Optimization Trajectory Distillation". ICCV 2023,
arXiv:2307.14709. Official code: github.com/camwew/TADA-MI (models/hovernet/run_desc.py,
run_train.py), from which the mechanism below is read; the paper's method section was not available
here, only its abstract ("exploits the low-rank nature of gradient space and devises a dual-stream
distillation algorithm to regularize the learning dynamics of insufficiently annotated domain and
classes with the external guidance obtained from reliable sources").

Setting (taxonomy-adaptive domain adaptation): a labelled source domain, a target domain whose
label set differs (new classes, or finer classes) with a few labelled examples per target class
and many unlabelled ones. The official code trains on PanNuke (3 classes) -> Lizard (6 classes).

Mechanism, as the official code implements it (one training step):

1. Per-sample gradients of the classification loss with respect to the classifier layer, for a
   source batch and for a target batch (labelled few-shot target examples combined with
   confidently pseudo-labelled unlabelled target examples), each the example's term of one mean
   loss over the pass (BackPACK's BatchGrad). Their per-domain mean and diagonal
   variance over the batch are smoothed over steps by an exponential moving average (0.95, from a
   zero start; the current step's term keeps its graph, the history is detached).
2. The low-rank subspace: the smoothed source statistics of the last steps are kept as columns of
   a bank; every `refresh` updates the bank's SVD gives U_r, r the smallest rank holding 98% of
   the squared singular values, and statistics are compared after the projection U_r U_r^T.
3. Cross-domain distillation: 1000 x [MSE(P m_src, P m_tgt) + MSE(P v_src, P v_tgt)] (m mean, v
   variance), differentiated through both domains' gradients (second order).
4. Cross-class distillation: on the target batch, the classifier gradient's row of each class;
   the average row over the classes the source knows (detached) is the reference, banked and
   projected like (2); each new class's projected row, averaged to a scalar, is pulled to the
   reference's scalar: 1000 x sum_c [(a_ref - a_c)^2 + (b_ref - b_c)^2] (a of the mean rows, b of
   the variance rows).
5. Historical self-distillation: after backward, each weight matrix of the feature extractor keeps
   a bank of its recent flattened gradients (at most 300 columns, 0.8 x its size when smaller);
   every time the bank fills, its SVD gives U_r (98% energy); the gradient becomes
   g + 0.1 U_r U_r^T g, amplifying the component that lies in the trajectory's principal subspace.
6. Losses: source CE (weight 1) + few-shot target CE (0.1) + target-batch CE (0.1) + the
   distillation terms (from the second epoch on: one warm-up epoch without them).

Claim (abstract): the approach "resolves the issue of inadequate navigation along network
optimization" and improves over previous methods; Table (nuclei recognition PanNuke -> Lizard)
reports higher target-domain F1 on both shared and new classes than fine-tuning on the few target
labels and than TADA baselines.

Two ways to use it:

* plain PyTorch, the pieces in any loop::

      import torch
      from trainlab.techniques.domain.trajectory_distillation import (
          per_sample_head_grads, gradient_moments, statistics_matching_loss, GradientBank, amplify_in_subspace)

      h = torch.randn(8, 5, requires_grad=True); head = torch.nn.Linear(5, 3)
      y = torch.randint(0, 3, (8,))
      g = per_sample_head_grads(h, head(h), y)          # [8, 3 * (5 + 1)]: exact CE gradients per row
      m, v = gradient_moments(g[:4])                    # source rows
      mt, vt = gradient_moments(g[4:])                  # target rows
      loss = statistics_matching_loss(m, mt, v, vt)     # differentiable in h and head
      bank = GradientBank(dim=18, columns=4, refresh=4)
      for _ in range(4):
          bank.update(m.detach())
      P = bank.projector()                              # U_r U_r^T (None until the first refresh)
      w = torch.randn(18); w2 = amplify_in_subspace(w, bank.basis, 0.1)

* with trainlab's Trainer: the "trajectory-distillation" technique on a multi-domain task whose
  training domains are a labelled source and a few-shot labelled target domain
  (info["few_shot_domain"]) and whose target domain carries unlabelled inputs
  (info["target_train_x"]); `digits-taxonomy` (below) is such a task.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.diagnostics.features import LayerCapture
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper(
    title="Taxonomy Adaptive Cross-Domain Adaptation in Medical Imaging via Optimization Trajectory Distillation",
    authors="Fan, Liu, Chang, Huang, Chen, Cai", year=2023, arxiv="2307.14709",
    url="https://github.com/camwew/TADA-MI",
)

#: the official code's constants
EMA = 0.95
ENERGY = 0.98
GRAD_WEIGHT = 1000.0
FEW_WEIGHT = 0.1
MIX_WEIGHT = 0.1
HISTORY_BETA = 0.1
HISTORY_COLUMNS = 300


# --------------------------------------------------------------------------- gradient statistics

def per_sample_head_grads(features: Tensor, logits: Tensor, targets: Tensor, bias: bool = True) -> Tensor:
    """Per-example gradients of cross_entropy(logits_i, y_i) with respect to a linear classifier
    (logits = features @ W^T + b), in closed form: dW_i = (softmax_i - onehot_i) h_i^T,
    db_i = softmax_i - onehot_i. Returns [N, C * D (+ C)], each row W's gradient flattened
    row-major then b's; differentiable in features and logits (the statistics built on it are
    trained through, as the official code's create_graph backward is)."""
    if features.dim() != 2 or logits.dim() != 2 or len(features) != len(logits) or len(targets) != len(logits):
        raise ConfigError(f"per-sample gradients: need features [N, D], logits [N, C], targets [N]; got "
                          f"{list(features.shape)}, {list(logits.shape)}, {list(targets.shape)}")
    delta = logits.softmax(1) - F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    w = (delta[:, :, None] * features[:, None, :]).flatten(1)
    return torch.cat([w, delta], 1) if bias else w


def gradient_moments(grads: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (biased, 1/N) variance over rows of per-sample gradients [N, P]."""
    if grads.dim() != 2 or len(grads) == 0:
        raise ConfigError(f"gradient moments: need per-sample gradients [N >= 1, P], got {list(grads.shape)}")
    mean = grads.mean(0)
    return mean, (grads - mean).pow(2).mean(0)


class MovingAverage:
    """ema * previous (detached) + (1 - ema) * current, from a zero start; the returned value
    keeps the current term's graph."""

    def __init__(self, ema: float = EMA) -> None:
        if not 0.0 <= ema < 1.0:
            raise ConfigError(f"moving average: ema must be in [0, 1), got {ema}")
        self.ema = float(ema)
        self.value: Tensor | None = None

    def update(self, x: Tensor) -> Tensor:
        prev = torch.zeros_like(x) if self.value is None else self.value
        out = self.ema * prev + (1.0 - self.ema) * x
        self.value = out.detach().clone()
        return out


def energy_rank(singular_values: Tensor, threshold: float = ENERGY) -> int:
    """The official rule: r = #{k : cumsum(s^2)_k / sum(s^2) < threshold} + 1 (at most len(s))."""
    s2 = singular_values.double().pow(2)
    total = float(s2.sum())
    if total <= 0:
        return 1
    return min(int((torch.cumsum(s2, 0) / total < threshold).sum()) + 1, len(s2))


class GradientBank:
    """A ring buffer of `columns` gradient vectors of size `dim`; after every `refresh` updates
    (counted from the first) it recomputes `basis` = U_r, the left singular vectors of the bank
    holding `threshold` of its energy. `basis` is None until the first refresh."""

    def __init__(self, dim: int, columns: int, refresh: int | None = None, threshold: float = ENERGY) -> None:
        if dim < 1 or columns < 1:
            raise ConfigError(f"gradient bank: dim and columns must be >= 1, got {dim}, {columns}")
        self.dim, self.columns = int(dim), int(columns)
        self.refresh = int(refresh) if refresh is not None else self.columns
        if self.refresh < 1:
            raise ConfigError(f"gradient bank: refresh must be >= 1, got {refresh}")
        self.threshold = float(threshold)
        self.bank = torch.zeros(self.dim, self.columns)
        self.basis: Tensor | None = None
        self.count = 0

    def update(self, vector: Tensor) -> None:
        v = vector.detach().reshape(-1)
        if v.numel() != self.dim:
            raise ConfigError(f"gradient bank: expected {self.dim} values, got {v.numel()}")
        self.bank[:, self.count % self.columns] = v.to(self.bank)
        # the official order: the refresh test sees the count before this update is counted
        if self.count > 0 and self.count % self.refresh == 0:
            self.recompute()
        self.count += 1

    def recompute(self) -> None:
        u, s, _ = torch.linalg.svd(self.bank, full_matrices=False)
        self.basis = u[:, :energy_rank(s, self.threshold)].contiguous()

    def projector(self) -> Tensor | None:
        """U_r U_r^T, or None before the first refresh."""
        return None if self.basis is None else self.basis @ self.basis.T

    def project(self, x: Tensor) -> Tensor:
        """U_r U_r^T x (x itself before the first refresh), differentiable in x."""
        if self.basis is None:
            return x
        b = self.basis.to(x)
        return b @ (b.T @ x)

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.clone(), "basis": None if self.basis is None else self.basis.clone(),
                "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bank = state["bank"].clone()
        self.basis = None if state["basis"] is None else state["basis"].clone()
        self.count = int(state["count"])


def amplify_in_subspace(grad: Tensor, basis: Tensor | None, beta: float = HISTORY_BETA) -> Tensor:
    """Historical self-distillation's update: g + beta U U^T g (g unchanged without a basis)."""
    if basis is None:
        return grad
    flat = grad.reshape(-1)
    b = basis.to(flat)
    return (flat + beta * (b @ (b.T @ flat))).reshape(grad.shape)


def statistics_matching_loss(mean_a: Tensor, mean_b: Tensor, var_a: Tensor, var_b: Tensor) -> Tensor:
    """MSE(mean_a, mean_b) + MSE(var_a, var_b): the official grad_pair for two streams."""
    return F.mse_loss(mean_a, mean_b) + F.mse_loss(var_a, var_b)


def class_rows(grads: Tensor, num_classes: int, width: int) -> Tensor:
    """The weight part of per-sample classifier gradients [N, C*D (+C)] as rows [N, C, D]."""
    return grads[:, :num_classes * width].reshape(len(grads), num_classes, width)


# --------------------------------------------------------------------------- the technique

@register
class TrajectoryDistillation(Technique):
    """Cross-domain and cross-class gradient-statistics distillation in low-rank gradient subspaces,
    plus historical self-distillation of the feature extractor's gradients."""

    name = "trajectory-distillation"
    family = "domain"
    paper = PAPER
    # 2: per-sample gradients scaled as terms of the batch-mean loss (the official BackPACK convention)
    version = 2
    modifies = frozenset({"loss", "gradients"})
    order = 60
    summary = ("per-sample classifier-gradient mean/variance matched across domains and from shared to new "
               "classes in a low-rank source subspace; gradients amplified in their historical subspace")
    fidelity = "variant"
    deviations = (
        "Classification instead of HoVer-Net nuclei segmentation: one classifier head over the target taxonomy "
        "(the official code has a source-taxonomy head and a target-taxonomy head, with a nuclei-pixel branch); "
        "the cross-domain stream uses that head, the cross-class stream its rows.",
        "The official ClassMix of labelled few-shot target images with pseudo-labelled unlabelled ones "
        "(pixels of labelled classes pasted in) becomes the concatenation of a few-shot labelled target batch and "
        "the unlabelled target examples whose pseudo-label confidence reaches `threshold` (0.7, the official "
        "nuclei-pixel threshold); low-confidence examples are dropped rather than labelled background.",
        "The source batch is the Trainer's batch (source and few-shot target rows mixed, plain CE on both, as the "
        "fine-tuning baseline); the technique adds the official 0.1 x CE on a separate few-shot batch and 0.1 x CE "
        "on the target batch.",
        "Bank sizes and refresh intervals are settings: the official ones (statistics banks of 0.8 x dim columns "
        "refreshed every 10 x columns steps; per-layer histories of min(300, 0.8 x size) columns refreshed when "
        "full) never refresh within a run of a few hundred steps, so claims scale them to the run length.",
        "Historical self-distillation acts on every weight tensor (ndim >= 2) of the feature extractor (the "
        "official code: the type branch's decoder), after the task's loss and before the optimizer step.",
        "Per-sample gradients in closed form for CE with a linear head (the official code uses BackPACK); as there, "
        "each is the example's term of one mean loss over the pass (divided by the rows in it); "
        "batch_mean_grads=False uses each example's own loss gradient instead.",
        "The cross-class stream's reference rows are the classes the source knows (the official code averages "
        "target classes 2, 3, 6 of Lizard and pulls classes 1, 4, 5 toward them).",
    )
    requires = frozenset({"classification"})

    def __init__(self, grad_weight: float = GRAD_WEIGHT, few_weight: float = FEW_WEIGHT,
                 mix_weight: float = MIX_WEIGHT, history_beta: float = HISTORY_BETA, ema: float = EMA,
                 threshold: float = 0.7, energy: float = ENERGY, stats_bank: int | None = None,
                 stats_refresh: int | None = None, history: int = HISTORY_COLUMNS, history_refresh: int | None = None,
                 warmup_epochs: int = 1, target_batch: int | None = None, cross_domain: bool = True,
                 cross_class: bool = True, historical: bool = True, batch_mean_grads: bool = True) -> None:
        for key, v in (("grad_weight", grad_weight), ("few_weight", few_weight), ("mix_weight", mix_weight),
                       ("history_beta", history_beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"trajectory-distillation: {key} must be a finite number >= 0, got {v!r}")
        if not 0.0 <= ema < 1.0 or not 0.0 <= threshold <= 1.0 or not 0.0 < energy <= 1.0:
            raise ConfigError(f"trajectory-distillation: need 0 <= ema < 1, 0 <= threshold <= 1, 0 < energy <= 1; got "
                              f"{ema}, {threshold}, {energy}")
        for key, v in (("stats_bank", stats_bank), ("stats_refresh", stats_refresh), ("history_refresh",
                                                                                     history_refresh),
                       ("target_batch", target_batch)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"trajectory-distillation: {key} must be an integer >= 1 or None, got {v!r}")
        if not isinstance(history, int) or history < 1 or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ConfigError(f"trajectory-distillation: history must be an integer >= 1 and warmup_epochs >= 0, got "
                              f"{history!r}, {warmup_epochs!r}")
        super().__init__(grad_weight=grad_weight, few_weight=few_weight, mix_weight=mix_weight,
                         history_beta=history_beta, ema=ema, threshold=threshold, energy=energy,
                         stats_bank=stats_bank, stats_refresh=stats_refresh, history=history,
                         history_refresh=history_refresh, warmup_epochs=warmup_epochs, target_batch=target_batch,
                         cross_domain=cross_domain, cross_class=cross_class, historical=historical,
                         batch_mean_grads=batch_mean_grads)
        self.grad_weight, self.few_weight, self.mix_weight = float(grad_weight), float(few_weight), float(mix_weight)
        self.history_beta, self.ema, self.threshold, self.energy = float(history_beta), ema, threshold, energy
        self.stats_bank, self.stats_refresh = stats_bank, stats_refresh
        self.history, self.history_refresh = history, history_refresh
        self.warmup_epochs, self.target_batch = warmup_epochs, target_batch
        self.cross_domain, self.cross_class, self.historical = bool(cross_domain), bool(cross_class), bool(historical)
        self.batch_mean_grads = bool(batch_mean_grads)
        self._head: nn.Linear | None = None
        self._capture: LayerCapture | None = None
        self._banks: dict[str, GradientBank] = {}
        self._avgs: dict[str, MovingAverage] = {}
        self._layers: list[tuple[str, nn.Parameter]] = []
        self._loaded: Mapping[str, Any] | None = None
        self._sums: dict[str, float] = {}

    # ---- applicability ------------------------------------------------------------------
    @classmethod
    def check_applicable(cls, task: Any, data: Any, model: nn.Module | None) -> str | None:
        reason = super().check_applicable(task, data, model)
        if reason:
            return reason
        info = getattr(data, "info", None) or {}
        few = info.get("few_shot_domain")
        if info.get("domains") is None or few not in info.get("train_domains", []):
            return ("needs a multi-domain task whose training domains are a labelled source and a few-shot labelled "
                    "target domain named by info['few_shot_domain'] (e.g. the task digits-taxonomy)")
        if info.get("target_train_x") is None or len(info["target_train_x"]) == 0:
            return "needs unlabelled target inputs (info['target_train_x'])"
        if model is not None:
            from trainlab.diagnostics.features import classifier_layer

            try:
                classifier_layer(model, getattr(data, "num_classes", None))
            except Exception:
                return "needs a model whose last nn.Linear is the classifier layer"
        return None

    # ---- setup ----------------------------------------------------------------------------
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        from trainlab.diagnostics.features import classifier_layer
        from trainlab.tasks.domains import check_domain_bundle

        reason = self.check_applicable(state.task, state.data, model)
        if reason:
            raise ConfigError(f"trajectory-distillation {reason}")
        data = state.data
        check_domain_bundle(data)
        info = data.info
        self._head = classifier_layer(model, state.num_classes)
        self._capture = LayerCapture(self._head, "input")
        self._few_index = info["train_domains"].index(info["few_shot_domain"])
        dom = info["train_domain_index"]
        self._few_rows = torch.nonzero(dom == self._few_index).flatten()
        source_y = data.train_y[dom != self._few_index]
        known = set(int(c) for c in source_y.unique())
        self._shared = sorted(known)
        self._new = sorted(set(range(state.num_classes)) - known)
        if not self._shared:
            raise ConfigError("trajectory-distillation: the source domain has no labelled classes")
        width = self._head.in_features
        dim = state.num_classes * width + (state.num_classes if self._head.bias is not None else 0)
        cols = self.stats_bank or max(1, int(dim * 0.8))
        refresh = self.stats_refresh or cols * 10
        self._banks = {k: GradientBank(d, cols, refresh, self.energy)
                       for k, d in (("mean", dim), ("var", dim), ("row_mean", width), ("row_var", width))}
        self._avgs = {k: MovingAverage(self.ema) for k in ("src_mean", "src_var", "tgt_mean", "tgt_var",
                                                            "row_mean", "row_var")}
        head_params = {id(p) for p in self._head.parameters()}
        self._layers = [(n, p) for n, p in model.named_parameters()
                        if p.requires_grad and p.dim() >= 2 and id(p) not in head_params]
        for n, p in self._layers:
            cols_l = min(self.history, max(1, int(p.numel() * 0.8)))
            self._banks["hist:" + n] = GradientBank(p.numel(), cols_l, self.history_refresh or cols_l, self.energy)
        if self._loaded is not None:
            for k, s in self._loaded.get("banks", {}).items():
                if k in self._banks:
                    self._banks[k].load_state_dict(s)
            for k, v in self._loaded.get("avgs", {}).items():
                self._avgs[k].value = None if v is None else v.clone()
            self._loaded = None
        self._sums = {}

    def _forward(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        feats = self._capture.take("trajectory-distillation: the model's forward pass did not call its classifier "
                                   "layer").flatten(1)
        return feats, logits

    def _add(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value

    # ---- the step ---------------------------------------------------------------------------
    def loss(self, outputs: Tensor, batch: Batch, state: TrainState, base_loss: Tensor) -> Tensor:
        from trainlab.tasks.domains import domain_of

        model = state.model
        assert model is not None and self._head is not None
        feats = self._capture.take("trajectory-distillation: no classifier input captured for the batch").flatten(1)
        info = state.data.info
        n = self.target_batch or len(batch.targets)
        dev = state.device
        # a few-shot labelled target batch and an unlabelled target batch (with replacement)
        few_idx = self._few_rows[torch.randint(len(self._few_rows), (n,), generator=state.generator)]
        pool = info["target_train_x"]
        unl_idx = torch.randint(len(pool), (n,), generator=state.generator)
        few_x, few_y = state.data.train_x[few_idx].to(dev), state.data.train_y[few_idx].to(dev)
        unl_x = pool[unl_idx].to(dev)
        with torch.no_grad():   # pseudo-labels from the current model, as the official code's target pass
            probs = model(unl_x).softmax(1)
            self._capture.clear()
        conf, pseudo = probs.max(1)
        keep = conf >= self.threshold
        tgt_x = torch.cat([few_x, unl_x[keep]])
        tgt_y = torch.cat([few_y, pseudo[keep]])
        tgt_feats, tgt_logits = self._forward(model, tgt_x)
        few_loss = F.cross_entropy(tgt_logits[:n], few_y)
        mix_loss = F.cross_entropy(tgt_logits, tgt_y)
        total = base_loss + self.few_weight * few_loss + self.mix_weight * mix_loss
        self._add("steps", 1.0)
        self._add("pseudo_frac", float(keep.float().mean()))
        if state.epoch < self.warmup_epochs or not (self.cross_domain or self.cross_class):
            return total
        width = self._head.in_features
        bias = self._head.bias is not None
        tgt_g = per_sample_head_grads(tgt_feats, tgt_logits, tgt_y, bias)
        if self.cross_domain:
            src = domain_of(state.data, batch.indices) != self._few_index
            labels = batch.labels if batch.labels is not None else batch.targets
            if labels.dim() == 1 and int(src.sum()) >= 2:
                src_g = per_sample_head_grads(feats[src], outputs[src], labels[src], bias)
                # the official per-sample gradients are BackPACK's terms of ONE mean loss over the joint
                # [source; target] pass, i.e. each example's gradient / (rows in the pass)
                scale = 1.0 / (len(src_g) + len(tgt_g)) if self.batch_mean_grads else 1.0
                sm, sv = gradient_moments(src_g * scale)
                tm, tv = gradient_moments(tgt_g * scale)
                sm, sv = self._avgs["src_mean"].update(sm), self._avgs["src_var"].update(sv)
                tm, tv = self._avgs["tgt_mean"].update(tm), self._avgs["tgt_var"].update(tv)
                self._banks["mean"].update(sm)
                self._banks["var"].update(sv)
                pm, pv = self._banks["mean"], self._banks["var"]
                cd = statistics_matching_loss(pm.project(sm), pm.project(tm), pv.project(sv), pv.project(tv))
                total = total + self.grad_weight * cd
                self._add("cross_domain", float(cd.detach()))
        if self.cross_class and self._new:
            # the official new-class stream: the mean loss over the target rows alone
            scale = 1.0 / len(tgt_g) if self.batch_mean_grads else 1.0
            rows = class_rows(tgt_g * scale, state.num_classes, width)   # [N, C, D]
            rm, rv = rows.mean(0), (rows - rows.mean(0)).pow(2).mean(0)  # [C, D]
            rm, rv = self._avgs["row_mean"].update(rm), self._avgs["row_var"].update(rv)
            ref_m, ref_v = rm[self._shared].mean(0), rv[self._shared].mean(0)
            self._banks["row_mean"].update(ref_m)
            self._banks["row_var"].update(ref_v)
            bm, bv = self._banks["row_mean"], self._banks["row_var"]
            a_ref, b_ref = bm.project(ref_m).mean().detach(), bv.project(ref_v).mean().detach()
            cc = sum((a_ref - bm.project(rm[c]).mean()) ** 2 + (b_ref - bv.project(rv[c]).mean()) ** 2
                     for c in self._new)
            total = total + self.grad_weight * cc
            self._add("cross_class", float(cc.detach()))
        return total

    def after_backward(self, model: nn.Module, state: TrainState) -> None:
        if not self.historical or state.epoch < self.warmup_epochs:
            return
        for name, p in self._layers:
            if p.grad is None:
                continue
            bank = self._banks["hist:" + name]
            bank.update(p.grad)
            if bank.basis is not None:
                p.grad.copy_(amplify_in_subspace(p.grad, bank.basis, self.history_beta))

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        steps = self._sums.get("steps", 0.0)
        if steps:
            state.epoch_metrics["td_pseudo_frac"] = self._sums.get("pseudo_frac", 0.0) / steps
            for key in ("cross_domain", "cross_class"):
                if key in self._sums:
                    state.epoch_metrics[f"td_{key}"] = self._sums[key] / steps
        ranks = [b.basis.shape[1] for k, b in self._banks.items() if k.startswith("hist:") and b.basis is not None]
        if ranks:
            state.epoch_metrics["td_history_rank"] = float(np.mean(ranks))
        if self._banks.get("mean") is not None and self._banks["mean"].basis is not None:
            state.epoch_metrics["td_stats_rank"] = float(self._banks["mean"].basis.shape[1])
        self._sums = {}

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def state_dict(self) -> dict[str, Any]:
        return {"banks": {k: b.state_dict() for k, b in self._banks.items()},
                "avgs": {k: a.value for k, a in self._avgs.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._loaded = dict(state) if state else None


# --------------------------------------------------------------------------- a taxonomy-shift task

def digits_taxonomy(source_classes: Sequence[int] = (0, 1, 2, 3, 4), shots: int = 5, val_shots: int = 2,
                    angle: float = 30.0, size: int = 16, test_fraction: float = 0.4,
                    data_seed: int = 0) -> Any:
    """scikit-learn digits in two domains with different taxonomies.

    The 1,797 images are split in half (drawn with `data_seed`): "source" keeps only the digits in
    `source_classes` (all labelled; 20% of them held out as its validation and test splits);
    "target" is the other half rotated by `angle` degrees (a style shift) with all ten classes;
    `test_fraction` of it is the target test split, `shots` labelled images per class form the
    training domain "target_few" (`val_shots` more per class its validation slice; its test split is
    the target's), and the rest are the unlabelled target inputs (info["target_train_x"]). Images are
    upsampled to size x size and standardized with the source's mean and std.
    info["few_shot_domain"] = "target_few"; info["new_classes"]: the classes the source lacks.
    """
    from trainlab.tasks.domains import _digits_images, make_domain_bundle, rotate_images, to_common_format

    classes = sorted(set(int(c) for c in source_classes))
    if not classes or classes[0] < 0 or classes[-1] > 9 or len(classes) == 10:
        raise ConfigError(f"digits-taxonomy: source_classes must be a proper subset of 0..9, got {source_classes}")
    if shots < 1 or val_shots < 1 or not 0 < test_fraction < 1:
        raise ConfigError("digits-taxonomy: shots and val_shots must be >= 1 and test_fraction in (0, 1)")
    x, y = _digits_images()
    x = to_common_format(x, size)
    rng = np.random.default_rng([data_seed, 41])
    perm = torch.from_numpy(rng.permutation(len(y)))
    src_i, tgt_i = perm[:len(y) // 2], perm[len(y) // 2:]
    src_i = src_i[torch.isin(y[src_i], torch.tensor(classes))]
    n_hold = len(src_i) // 5
    s_val, s_test, s_train = src_i[:n_hold // 2], src_i[n_hold // 2:n_hold], src_i[n_hold:]
    tx = rotate_images(x[tgt_i], angle).clamp_(0.0, 1.0)
    ty = y[tgt_i]
    n_test = int(round(len(ty) * test_fraction))
    test = torch.arange(n_test)
    few, val, rest = [], [], []
    for c in range(10):
        rows = torch.nonzero(ty[n_test:] == c).flatten() + n_test
        if len(rows) < shots + val_shots + 1:
            raise ConfigError(f"digits-taxonomy: class {c} has {len(rows)} target images, too few for "
                              f"{shots} + {val_shots} shots")
        few.append(rows[:shots])
        val.append(rows[shots:shots + val_shots])
        rest.append(rows[shots + val_shots:])
    few_t, val_t, rest_t = torch.cat(few), torch.cat(val), torch.cat(rest).sort().values
    mean, std = float(x[s_train].mean()), float(x[s_train].std())
    norm = lambda t: (t - mean) / std  # noqa: E731
    domains = {
        "source": {"train_x": norm(x[s_train]), "train_y": y[s_train], "val_x": norm(x[s_val]), "val_y": y[s_val],
                   "test_x": norm(x[s_test]), "test_y": y[s_test]},
        "target_few": {"train_x": norm(tx[few_t]), "train_y": ty[few_t], "val_x": norm(tx[val_t]),
                       "val_y": ty[val_t], "test_x": norm(tx[test]), "test_y": ty[test]},
        "target": {"train_x": norm(tx[rest_t]), "train_y": ty[rest_t], "val_x": norm(tx[val_t]),
                   "val_y": ty[val_t], "test_x": norm(tx[test]), "test_y": ty[test]},
    }
    new = sorted(set(range(10)) - set(classes))
    # evaluation-only domains: the target test split's new and shared classes (domain_<name>_acc each epoch)
    empty = {"train_x": x[:0], "train_y": y[:0], "val_x": x[:0], "val_y": y[:0]}
    is_new = torch.isin(ty[test], torch.tensor(new))
    domains["target_new"] = {**empty, "test_x": norm(tx[test][is_new]), "test_y": ty[test][is_new]}
    domains["target_shared"] = {**empty, "test_x": norm(tx[test][~is_new]), "test_y": ty[test][~is_new]}
    info = {"classes": [str(i) for i in range(10)], "few_shot_domain": "target_few", "new_classes": new,
            "shared_classes": classes, "angle": angle, "size": size}
    return make_domain_bundle(domains, ["source", "target_few"], ["target"], num_classes=10,
                              name="digits-taxonomy", seed=data_seed, info=info)


def _taxonomy_cnn(input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    from trainlab.tasks.domains import DomainCNN

    return DomainCNN(input_shape, num_classes, **kwargs)


def taxonomy_tasks() -> list[Any]:
    """The named taxonomy-shift task(s) (registered in trainlab.tasks.registry)."""
    from trainlab.tasks.task import Task

    return [Task(name="digits-taxonomy", make_data=functools.partial(digits_taxonomy), make_model=_taxonomy_cnn,
                 model_kwargs={"channels": (16, 32), "hidden": 64}, optimizer="adam", lr=1e-3, weight_decay=0.0,
                 schedule="constant", batch_size=32, epochs=20,
                 description="scikit-learn digits: source = digits 0-4 (upright), target = all 10 digits rotated 30 "
                             "degrees with 5 labelled images per class; small CNN, Adam")]


# The claims' bank settings: the official sizes never refresh within a few hundred steps (see the deviations);
# 32 columns refreshed every 32 updates give about eight refreshes over a 20-epoch run of about 260 steps
_CLAIM_SETTINGS = {"stats_bank": 32, "stats_refresh": 32, "history": 32}
_TREATMENT = arm(("trajectory-distillation", _CLAIM_SETTINGS), label="trajectory distillation")
_FINETUNE = arm(label="fine-tuning on source + few target labels")
_CONTROL = arm(("trajectory-distillation", {**_CLAIM_SETTINGS, "cross_domain": False, "cross_class": False,
                                            "historical": False}),
               label="few-shot and pseudo-labelled target CE only (distillation off)")
_REGIME = (
    Precondition("domain_source_acc", ">=", 0.9, why="the model learns the labelled source domain"),
    Precondition("domain_source_acc - test_acc", ">=", 0.05,
                 why="a domain/taxonomy gap: the target is harder than the source's own test split"),
    Precondition("domain_target_shared_acc - domain_target_new_acc", ">=", 0.05,
                 why="the new classes are under-learned from their few labels (the regime the cross-class stream targets)"),
)
_SETTING = PaperSetting(text="PanNuke (source, 3 nuclei classes) -> Lizard (target, 6 classes, few labelled images), "
                             "HoVer-Net, nuclei segmentation and classification; also other clinical and open-world tasks")
_NOTES = ("Fidelity variant (see deviations): classification on scikit-learn digits, source = upright digits 0-4, "
          "target = all ten digits rotated 30 degrees with 5 labelled images per class and ~470 unlabelled; "
          "DomainCNN (2 conv + fc 64), Adam 1e-3, 20 epochs, batch 32. The official loss weights (1000 on the "
          "gradient-statistics terms, 0.1 on the few-shot and target-batch CE), EMA 0.95, 98% energy, one warm-up "
          "epoch and beta 0.1 are kept; bank sizes are scaled to the run (32 columns, refreshed every 32 updates). "
          "The task and settings were fixed from the paper's regime and the run length before the claims ran. A first "
          "recorded run (version 1) used each example's own loss gradient instead of the official convention (its "
          "term of the batch-mean loss, i.e. / rows in the pass), which makes the 1000-weighted statistics N (mean) "
          "and N^2 (variance) times larger than the official ones; it measured test_acc -6.3 pt [95% CI -14.8, +2.3], "
          "new-class acc -7.6 pt [-18.8, +3.0], vs the control -7.7 pt [-16.0, +0.7] (5 seeds each). The convention "
          "was then corrected to the official one (version 2, the claims' runs); nothing else was changed.")

CLAIMS: list[Claim] = [
    Claim(
        id="trajectory-distillation-digits-taxonomy",
        technique="trajectory-distillation", task="digits-taxonomy", metric="test_acc", direction="higher",
        treatment=_TREATMENT, baseline=_FINETUNE,
        paper_quote="a dual-stream distillation algorithm to regularize the learning dynamics of insufficiently "
                    "annotated domain and classes with the external guidance obtained from reliable sources ... "
                    "The results demonstrate its effectiveness and improvements over previous methods.",
        paper_number="higher target-domain recognition than fine-tuning on the few target labels (nuclei F1)",
        paper_scale="PanNuke -> Lizard, HoVer-Net", seeds=5, suites=("full",), preconditions=_REGIME,
        paper_setting=_SETTING, notes=_NOTES + " Metric: target test accuracy over all ten classes. Measured "
                                               "(version 2): +1.4 pt [95% CI -0.7, +3.5], inconclusive; the baseline "
                                               "reaches 0.82 on the target vs 0.97 on the source's test split. The "
                                               "distillation terms stay near 1e-8 (x 1000 weight: about 1e-5 against "
                                               "a training loss of 0.01-0.06), so this difference is the extra CE "
                                               "terms' (see the control claim)."),
    Claim(
        id="trajectory-distillation-new-classes",
        technique="trajectory-distillation", task="digits-taxonomy", metric="domain_target_new_acc",
        direction="higher", treatment=_TREATMENT, baseline=_FINETUNE,
        paper_quote="regularize the learning dynamics of insufficiently annotated domain and classes",
        paper_number="higher F1 on the target's new classes than fine-tuning on the few target labels",
        paper_scale="PanNuke -> Lizard, HoVer-Net", seeds=5, suites=("full",), preconditions=_REGIME,
        paper_setting=_SETTING, notes=_NOTES + " Metric: target test accuracy on the five classes the source lacks "
                                               "(the same runs as trajectory-distillation-digits-taxonomy). Measured "
                                               "(version 2): +3.8 pt [95% CI -0.4, +8.0], inconclusive (baseline 0.76 "
                                               "on new classes, 0.89 on shared ones)."),
    Claim(
        id="trajectory-distillation-vs-pseudo-label-control",
        technique="trajectory-distillation", task="digits-taxonomy", metric="test_acc", direction="higher",
        treatment=_TREATMENT, baseline=_CONTROL,
        paper_quote="optimization trajectory distillation ... resolves the issue of inadequate navigation along "
                    "network optimization",
        paper_number="(control) the distillation terms add accuracy over the method's own CE terms alone",
        paper_scale="PanNuke -> Lizard, HoVer-Net", seeds=5, suites=("full",), preconditions=_REGIME[:2],
        paper_setting=_SETTING,
        notes=_NOTES + " Control: the same technique with the cross-domain, cross-class and historical terms off, "
                       "keeping its extra few-shot CE (0.1) and confident-pseudo-label target CE (0.1), so the "
                       "difference is the trajectory distillation itself. Measured (version 2): +0.0 pt [95% CI -0.4, "
                       "+0.4]: at the official weights and per-sample convention the gradient-statistics terms are "
                       "about 1e-8 (cross-domain) and 1e-7 (cross-class) before the x 1000 weight, and the 1.1x "
                       "amplification of the historical subspace under Adam changes little; with each example's own "
                       "gradient (version 1, N and N^2 times larger statistics) the same comparison measured -7.7 pt "
                       "[-16.0, +0.7]."),
]
