"""Hessian alignment of the classifier head across training domains (HGP and Hutchinson).

Paper: Sobhan Hemati, Guojun Zhang, Amir Estiri, Xi Chen. "Understanding Hessian Alignment for
Domain Generalization". ICCV 2023, arXiv:2308.11778. Official code:
github.com/huawei-noah/Federated-Learning, folder HessianAlignment (DomainBed's `algorithms.py`,
classes HGP and Hutchinson, and the Colored-MNIST scripts in `cmnist/`).

Method. With training domains e = 1..E, per-domain loss L_e (cross-entropy over the domain's
examples), and w the parameters of the classifier head only (the last linear layer: the
featurizer is not part of w), the paper bounds the transfer measure between domains by the
spectral distance of the head's Hessians H_e = d^2 L_e / dw^2 and aligns both the Hessians and the
gradients g_e = dL_e / dw. Hessians are never formed; two estimates are aligned instead:

* HGP: the Hessian-gradient product H_e g_e = d(||g_e||^2 / 2) / dw (the official code writes it
  as ||g_e|| * d||g_e|| / dw, the same function), one double backward per domain;
* Hutchinson: the Hessian diagonal diag(H_e) ~ mean_s z_s * (H_e z_s), Rademacher z_s.

The loss is mean_e L_e + R with

    R = (1/E) sum_e [ alpha * ||A_e - stopgrad(A_bar)||^2 + beta * ||g_e - stopgrad(g_bar)||^2 ]

where A_e is H_e g_e (HGP) or the estimated diag(H_e) (Hutchinson), g_bar the gradient of the
mean loss mean_e L_e and A_bar the same quantity of the mean loss (H_bar g_bar, or diag(H_bar)).
Official DomainBed defaults: HGP alpha 1e-4, beta 5e-3; Hutchinson alpha 1e-3, beta 5e-3 with
300 probe vectors; Adam, no penalty warm-up. The Colored-MNIST scripts (the paper's "severe
correlation shift" experiment, the IRM / Fishr protocol) use alpha = beta = 1 and IRM's schedule:
the penalty weight is 1 for the first `anneal_steps` steps, then `penalty_weight` (91,257 there),
and the whole loss is divided by the weight when it exceeds 1.

Claim (abstract): "Hessian alignment methods achieve promising performance on various OOD
benchmarks", including severe correlation shift (Colored MNIST) and DomainBed's datasets
(RotatedMNIST, ColoredMNIST, VLCS, PACS, OfficeHome, TerraIncognita, DomainNet) under
training-domain validation model selection.

Two ways to use it:

* plain PyTorch, with any featurizer / head split:
  ``hessian_alignment_penalty(features, labels, domains, head, variant="hgp", alpha=1e-4, beta=5e-3)``
  returns R (differentiable w.r.t. the head and, through `features`, the featurizer);
  ``head_gradient``, ``head_hessian`` (exact, torch.func.hessian), ``hessian_gradient_product`` and
  ``hutchinson_diagonal`` are the per-domain pieces.
* with trainlab's Trainer: the "hessian-alignment" technique. Batches are drawn from the pooled
  training domains (DomainBed draws one equal-sized batch per domain); the domain of each example
  comes from `domain_of(state.data, batch.indices)`, the head's input is captured by a forward
  pre-hook during the Trainer's own forward pass, and domains with fewer than `min_per_domain`
  examples in a batch are left out of that step's penalty.

Plain PyTorch::

    import torch
    import torch.nn.functional as F
    from trainlab.techniques.domain.hessian_alignment import hessian_alignment_penalty

    featurizer = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU())
    head = torch.nn.Linear(16, 3)
    opt = torch.optim.Adam([*featurizer.parameters(), *head.parameters()], lr=1e-3)
    x, y, d = torch.randn(64, 10), torch.randint(0, 3, (64,)), torch.arange(64) % 2   # d: domain ids
    for _ in range(3):
        z = featurizer(x)
        loss = F.cross_entropy(head(z), y) + hessian_alignment_penalty(z, y, d, head, variant="hgp")
        opt.zero_grad(); loss.backward(); opt.step()
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.diagnostics.features import LayerCapture
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper(
    title="Understanding Hessian Alignment for Domain Generalization",
    authors="Hemati, Zhang, Estiri, Chen", year=2023, arxiv="2308.11778",
    url="https://github.com/huawei-noah/Federated-Learning/tree/main/HessianAlignment",
)
VARIANTS = ("hgp", "hutchinson")
LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- per-domain head terms

def _params(head: nn.Module) -> list[nn.Parameter]:
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("hessian alignment: the head has no trainable parameters")
    return params


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def head_gradient(features: Tensor, labels: Tensor, head: nn.Module, loss_fn: LossFn = F.cross_entropy,
                  create_graph: bool = True) -> Tensor:
    """g = d loss_fn(head(features), labels) / d(head parameters), flattened [P] in the order of
    head.parameters(); with create_graph it stays differentiable (w.r.t. the head and features)."""
    params = _params(head)
    loss = loss_fn(head(features), labels)
    return _flat(torch.autograd.grad(loss, params, create_graph=create_graph))


def head_hessian(features: Tensor, labels: Tensor, head: nn.Module, loss_fn: LossFn = F.cross_entropy) -> Tensor:
    """The exact Hessian [P, P] of loss_fn(head(features), labels) w.r.t. the head's flattened
    parameters (torch.func.hessian of a functional call): a reference for small heads."""
    names = [n for n, p in head.named_parameters() if p.requires_grad]
    params = _params(head)
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    flat0 = _flat([p.detach() for p in params])
    feats = features.detach()

    def loss_of(flat: Tensor) -> Tensor:
        pieces = torch.split(flat, sizes)
        values = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return loss_fn(torch.func.functional_call(head, values, (feats,)), labels)

    return torch.func.hessian(loss_of)(flat0)


def hessian_gradient_product(features: Tensor, labels: Tensor, head: nn.Module, loss_fn: LossFn = F.cross_entropy,
                             create_graph: bool = True) -> tuple[Tensor, Tensor]:
    """(g, H g) of the head's loss: H g = d(||g||^2 / 2) / dw, one double backward, no Hessian
    formed. Both differentiable when create_graph (the HGP term of the paper)."""
    params = _params(head)
    loss = loss_fn(head(features), labels)
    g = _flat(torch.autograd.grad(loss, params, create_graph=True))
    hg = _flat(torch.autograd.grad(0.5 * g.pow(2).sum(), params, create_graph=create_graph))
    return (g if create_graph else g.detach()), hg


def rademacher(shape: Sequence[int], generator: torch.Generator | None = None, device: Any = "cpu",
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Independent +-1 entries with probability 1/2 each."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randint(0, 2, tuple(shape), generator=generator, device=gen_device)
    return (2 * z - 1).to(device=device, dtype=dtype)


def _hutchinson_from_grad(g: Tensor, params: Sequence[Tensor], probes: Tensor, create_graph: bool) -> Tensor:
    """mean_s z_s * (H z_s) for probes [S, P], with H the Jacobian of g (one batched HVP)."""
    hz = torch.autograd.grad(g, list(params), grad_outputs=probes, is_grads_batched=True,
                             create_graph=create_graph, retain_graph=True)
    hz = torch.cat([h.reshape(len(probes), -1) for h in hz], dim=1)
    return (probes * hz).mean(0)


def hutchinson_diagonal(features: Tensor, labels: Tensor, head: nn.Module, samples: int = 100,
                        generator: torch.Generator | None = None, loss_fn: LossFn = F.cross_entropy,
                        create_graph: bool = True, probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(g, d) with d = mean_s z_s * (H z_s), Hutchinson's unbiased estimate of diag(H) from
    `samples` Rademacher probes (or the given `probes` [S, P]), by batched Hessian-vector products."""
    params = _params(head)
    loss = loss_fn(head(features), labels)
    g = _flat(torch.autograd.grad(loss, params, create_graph=True))
    if probes is None:
        if samples < 1:
            raise ConfigError(f"hutchinson: samples must be >= 1, got {samples}")
        probes = rademacher((samples, g.numel()), generator, g.device, g.dtype)
    d = _hutchinson_from_grad(g, params, probes, create_graph)
    return (g if create_graph else g.detach()), d


# --------------------------------------------------------------------------- the regularizer

def _check(variant: str, alpha: float, beta: float) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"hessian alignment: variant must be one of {VARIANTS}, got {variant!r}")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"hessian alignment: {name} must be a finite number >= 0, got {v!r}")


def hessian_alignment_penalty(features: Tensor, labels: Tensor, domains: Tensor, head: nn.Module,
                              variant: str = "hgp", alpha: float = 1e-4, beta: float = 5e-3, samples: int = 100,
                              generator: torch.Generator | None = None, loss_fn: LossFn = F.cross_entropy,
                              min_per_domain: int = 1, return_terms: bool = False) -> Any:
    """R = (1/E) sum_e [alpha ||A_e - sg(A_bar)||^2 + beta ||g_e - sg(g_bar)||^2] over the E
    domains in `domains` with at least `min_per_domain` examples (see the module docstring).

    features [N, D] (the head's input, differentiable so the featurizer gets gradients), labels [N],
    domains [N] (any integer ids). L_e = loss_fn over domain e's examples; g_bar and A_bar belong to
    the mean loss mean_e L_e: g_bar = mean_e g_e, A_bar = H_bar g_bar (hgp) or the Hutchinson
    estimate of diag(H_bar) from the same probes as the domains' (hutchinson). With fewer than two
    such domains R is 0. return_terms: also a dict of the detached hessian and gradient terms."""
    _check(variant, alpha, beta)
    if min_per_domain < 1:
        raise ConfigError(f"hessian alignment: min_per_domain must be >= 1, got {min_per_domain}")
    if not (len(features) == len(labels) == len(domains)):
        raise ConfigError("hessian alignment: features, labels and domains differ in length")
    params = _params(head)
    ids = [d for d in torch.unique(domains).tolist() if int((domains == d).sum()) >= min_per_domain]
    zero = features.sum() * 0.0
    if len(ids) < 2:
        return (zero, {"hessian": 0.0, "gradient": 0.0, "domains": float(len(ids))}) if return_terms else zero
    grads = []
    for d in ids:
        m = domains == d
        loss = loss_fn(head(features[m]), labels[m])
        grads.append(_flat(torch.autograd.grad(loss, params, create_graph=True)))
    g_bar = torch.stack(grads).mean(0)
    if variant == "hgp":
        terms = [_flat(torch.autograd.grad(0.5 * g.pow(2).sum(), params, create_graph=True)) for g in grads]
        # H_bar g_bar = d(||g_bar||^2 / 2) / dw; a target only (stop-gradient, as in the official code)
        a_bar = _flat(torch.autograd.grad(0.5 * g_bar.pow(2).sum(), params, retain_graph=True)).detach()
    else:
        probes = rademacher((samples, g_bar.numel()), generator, g_bar.device, g_bar.dtype)
        terms = [_hutchinson_from_grad(g, params, probes, True) for g in grads]
        # diag(H_bar) with the same probes = the mean of the domains' estimates (linear in H)
        a_bar = torch.stack(terms).mean(0).detach()
    g_target = g_bar.detach()
    hess = torch.stack([(a - a_bar).pow(2).sum() for a in terms]).mean()
    grad = torch.stack([(g - g_target).pow(2).sum() for g in grads]).mean()
    penalty = alpha * hess + beta * grad
    if return_terms:
        return penalty, {"hessian": float(hess.detach()), "gradient": float(grad.detach()), "domains": float(len(ids))}
    return penalty


def penalty_weight_at(step: int, penalty_weight: float, anneal_steps: int) -> float:
    """IRM's schedule as in the official Colored-MNIST scripts: 1 before `anneal_steps`, then
    `penalty_weight`."""
    return float(penalty_weight) if step >= anneal_steps else 1.0


# --------------------------------------------------------------------------- the technique

def _find_head(model: nn.Module, name: str | None, num_classes: int | None) -> nn.Module:
    if name:
        modules = dict(model.named_modules())
        if name not in modules:
            raise ConfigError(f"hessian-alignment: the model has no submodule '{name}' (give head=<name of the "
                              f"classifier layer>)")
        return modules[name]
    if isinstance(getattr(model, "head", None), nn.Module):
        return model.head
    from trainlab.diagnostics.features import classifier_layer

    return classifier_layer(model, num_classes)


@register
class HessianAlignment(Technique):
    """Adds the HGP / Hutchinson alignment penalty of the classifier head's per-domain Hessians
    and gradients to the loss (multi-domain tasks)."""

    name = "hessian-alignment"
    family = "domain"
    paper = PAPER
    modifies = frozenset({"loss"})
    order = 50
    requires = frozenset({"classification"})
    summary = "aligns the head's per-domain Hessian-gradient products (or Hessian diagonals) and gradients"
    fidelity = "variant"
    deviations = (
        "Batches are drawn from the pooled training domains (per-domain counts vary around batch/E); the official "
        "DomainBed code draws one equal-sized batch per domain. Domains with fewer than min_per_domain examples in "
        "a batch are left out of that step's penalty.",
        "The data term is the Trainer's pooled mean cross-entropy, not the mean of per-domain means (equal for "
        "equal per-domain counts).",
        "Hutchinson: the mean-loss target diag(H_bar) uses the domains' probe vectors (= the mean of their "
        "estimates) instead of an independent draw. The technique's default is 100 probes (the official code uses 300, "
        "as the Hutchinson claim does).",
        "H g is computed as d(||g||^2/2)/dw (the official ||g|| d||g||/dw is the same function, there with a "
        "1e-16 added to each gradient tensor).",
    )
    fidelity_evidence = ("tests/techniques/test_hessian_alignment.py checks each term against torch.func.hessian "
                         "and the penalty against a direct transcription of the official formula")

    def __init__(self, variant: str = "hgp", alpha: float | None = None, beta: float = 5e-3,
                 penalty_weight: float = 1.0, anneal_steps: int = 0, samples: int = 100, min_per_domain: int = 2,
                 head: str | None = None) -> None:
        alpha = (1e-4 if variant == "hgp" else 1e-3) if alpha is None else alpha
        _check(variant, alpha, beta)
        if not (isinstance(penalty_weight, (int, float)) and math.isfinite(penalty_weight) and penalty_weight >= 0):
            raise ConfigError(f"hessian-alignment: penalty_weight must be a finite number >= 0, got {penalty_weight!r}")
        if int(anneal_steps) < 0 or int(samples) < 1 or int(min_per_domain) < 1:
            raise ConfigError("hessian-alignment: anneal_steps must be >= 0, samples and min_per_domain >= 1")
        super().__init__(variant=variant, alpha=alpha, beta=beta, penalty_weight=penalty_weight,
                         anneal_steps=anneal_steps, samples=samples, min_per_domain=min_per_domain, head=head)
        self.variant, self.alpha, self.beta = variant, float(alpha), float(beta)
        self.penalty_weight, self.anneal_steps = float(penalty_weight), int(anneal_steps)
        self.samples, self.min_per_domain, self.head_name = int(samples), int(min_per_domain), head
        self._head: nn.Module | None = None
        self._capture: LayerCapture | None = None
        self._sums = {"hessian": 0.0, "gradient": 0.0, "n": 0}

    @classmethod
    def check_applicable(cls, task: Any, data: Any, model: nn.Module | None) -> str | None:
        from trainlab.tasks.domains import is_domain_bundle

        reason = super().check_applicable(task, data, model)
        if reason:
            return reason
        if data is not None and not is_domain_bundle(data):
            return "needs a multi-domain task (info['train_domain_index']), e.g. colored-mnist or rotated-mnist"
        return None

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        from trainlab.tasks.domains import check_domain_bundle

        check_domain_bundle(state.data)
        self._head = _find_head(model, self.head_name, state.num_classes)

        # the Trainer's training forward; evaluation passes are not kept
        self._capture = LayerCapture(self._head, "input", training_only=True)

    def loss(self, outputs: Tensor, batch: Batch, state: TrainState, base_loss: Tensor) -> Tensor:
        from trainlab.tasks.domains import domain_of

        feats = self._capture.take() if self._capture is not None else None
        if feats is None or self._head is None or len(feats) != len(batch.labels):
            raise ConfigError("hessian-alignment: could not read the head's input in this step (is the head used "
                              "once per forward pass? give head=<layer name>)")
        domains = domain_of(state.data, batch.indices)
        penalty, terms = hessian_alignment_penalty(
            feats, batch.labels, domains, self._head, self.variant, self.alpha, self.beta, self.samples,
            state.generator, min_per_domain=self.min_per_domain, return_terms=True)
        self._sums["hessian"] += terms["hessian"]
        self._sums["gradient"] += terms["gradient"]
        self._sums["n"] += 1
        weight = penalty_weight_at(state.step, self.penalty_weight, self.anneal_steps)
        loss = base_loss + weight * penalty
        return loss / weight if weight > 1.0 else loss

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        n = max(1, self._sums["n"])
        state.epoch_metrics["ha_hessian_term"] = self._sums["hessian"] / n
        state.epoch_metrics["ha_gradient_term"] = self._sums["gradient"] / n
        self._sums = {"hessian": 0.0, "gradient": 0.0, "n": 0}

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None


# --------------------------------------------------------------------------- claims

_QUOTE = ("We validate the OOD generalization ability of proposed methods in different scenarios, including "
          "transferability, severe correlation shift, label shift and diversity shift. Our results show that Hessian "
          "alignment methods achieve promising performance on various OOD benchmarks.")
_SETTING = PaperSetting(
    train_size=None, epochs=None, params=None,
    text="DomainBed (Gulrajani & Lopez-Paz 2020): ColoredMNIST (3 domains of ~23k 2x28x28 images, colour-label "
         "agreement 90/80/10%) and RotatedMNIST (6 domains of ~11.7k images at 0..75 degrees), DomainBed's MNIST "
         "CNN (4 conv layers with GroupNorm), Adam lr 1e-3, batch 64 per domain, 5,000 steps, leave-one-domain-out, "
         "training-domain validation selection, random hyperparameter search (20 x 3 trials); HGP defaults alpha 1e-4, "
         "beta 5e-3")
_CMNIST_REGIME = (
    Precondition("source_test_acc - test_acc", ">=", 0.3, arm="baseline", over="min",
                 why="the spurious-correlation failure: ERM is far better on the training domains (colour agrees "
                     "with the label 90/80%) than on the target domain (10%), in every seed"),
)
_RMNIST_REGIME = (
    Precondition("source_test_acc", ">=", 0.8, arm="baseline", over="min",
                 why="ERM learns the digits on the training rotations (in-domain accuracy >= 80%) in every seed"),
)
_DOMAINBED_HGP = ("hessian-alignment", {"variant": "hgp", "alpha": 1e-4, "beta": 5e-3})
_DOMAINBED_HUTCHINSON = ("hessian-alignment",
                         {"variant": "hutchinson", "alpha": 1e-3, "beta": 5e-3, "samples": 300})
_CMNIST_STEPS = 4 * (4000 // 64)          # colored-mnist: 4 epochs of 2 x 2,000 training images, batch 64
# the official Colored-MNIST script: penalty weight 91,257 after 190 of 501 steps, alpha = beta = 1
_IRM_HGP = ("hessian-alignment", {"variant": "hgp", "alpha": 1.0, "beta": 1.0, "penalty_weight": 91257.18613115903,
                                  "anneal_steps": round(_CMNIST_STEPS * 190 / 501)})
_OURS = ("Here: the project's colored-mnist / rotated-mnist tasks (DomainBed's constructions at a smaller scale: "
         "2,000 / 1,000 training images per domain, a 2-conv DomainCNN without normalization, Adam 1e-3, pooled "
         "batches of 64, 4 / 6 epochs), the official DomainBed default hyperparameters (no search), training-domain "
         "validation selection per epoch. ")
CLAIMS = [
    Claim(
        id="hessian-alignment-cmnist", technique="hessian-alignment", task="colored-mnist",
        metric="selected_test_acc", direction="higher", treatment=arm(_DOMAINBED_HGP, label="ERM + HGP (DomainBed)"),
        baseline=arm(label="ERM"), seeds=5, suites=("full",), paper_quote=_QUOTE,
        paper_number="DomainBed ColoredMNIST column (test domain -90%, training-domain validation): HGP and "
                     "Hutchinson reported against ERM (number not transcribed here)",
        paper_scale="DomainBed ColoredMNIST, 5,000 steps, hyperparameter search", paper_setting=_SETTING,
        preconditions=_CMNIST_REGIME,
        notes=_OURS + "Target domain: agree10 (colour agrees with the label 10% of the time). Selection by "
                      "training-domain validation accuracy favours the colour-reliant model, which is why DomainBed "
                      "reports CMNIST accuracies near 50% for almost every method; the claim is that HGP's selected "
                      "target accuracy is above ERM's. Measured (seeds 0-4, means): ERM agree90 / agree80 / agree10 "
                      "accuracy 0.902 / 0.806 / 0.091, selected target 0.087; HGP (alpha 1e-4, beta 5e-3) 0.904 / "
                      "0.806 / 0.089, selected 0.087: at the DomainBed defaults the penalty does not move the model "
                      "in 248 steps (the penalty, 2.7e-4 to 5e-4 per epoch, is ~1e-3 of the training loss).",
    ),
    Claim(
        id="hessian-alignment-cmnist-irm-protocol", technique="hessian-alignment", task="colored-mnist",
        metric="test_acc", direction="higher", treatment=arm(_IRM_HGP, label="ERM + HGP (CMNIST protocol)"),
        baseline=arm(label="ERM"), seeds=5, suites=("full",), paper_quote=_QUOTE,
        paper_number="Colored MNIST under severe correlation shift (the IRM / Fishr protocol of the official "
                     "cmnist scripts): HGP and Hutchinson above ERM in final test accuracy (number not transcribed "
                     "here)",
        paper_scale="IRM's Colored MNIST (25,000 14x14 images per training domain, 3-layer MLP, full batch, 501 steps)",
        paper_setting=PaperSetting(train_size=50_000, epochs=501, text="IRM's Colored MNIST, MLP 390 hidden units, "
                                   "full-batch Adam lr 4.9e-4, L2 1.1e-3, penalty weight 91,257 after 190 steps"),
        preconditions=_CMNIST_REGIME,
        notes=_OURS + f"The official Colored-MNIST script's penalty schedule scaled to this run's {_CMNIST_STEPS} "
                      f"steps: alpha = beta = 1, weight 1 for the first {round(_CMNIST_STEPS * 190 / 501)} steps "
                      "(190/501 of training), then 91,257 with the loss divided by it. The metric is the final "
                      "target accuracy, as that script reports; the ERM arm is the same as hessian-alignment-cmnist's. "
                      "Measured (seeds 0-4): final target accuracy ERM 0.084-0.098 (mean 0.091), HGP 0.102-0.285 "
                      "(mean 0.207; agree90 / agree80 0.843 / 0.774 against ERM's 0.902 / 0.806): the penalty moves "
                      "the model off the colour, though far from an invariant predictor (~0.75 on every domain).",
    ),
    Claim(
        id="hessian-alignment-cmnist-irm-protocol-selected", technique="hessian-alignment", task="colored-mnist",
        metric="selected_test_acc", direction="higher", treatment=arm(_IRM_HGP, label="ERM + HGP (CMNIST protocol)"),
        baseline=arm(label="ERM"), seeds=5, suites=("full",), paper_quote=_QUOTE,
        paper_number="as hessian-alignment-cmnist-irm-protocol, read with DomainBed's training-domain validation "
                     "selection",
        paper_scale="IRM's Colored MNIST (25,000 14x14 images per training domain, 3-layer MLP, full batch, 501 steps)",
        paper_setting=PaperSetting(train_size=50_000, epochs=501, text="IRM's Colored MNIST, MLP 390 hidden units, "
                                   "full-batch Adam lr 4.9e-4, L2 1.1e-3, penalty weight 91,257 after 190 steps"),
        preconditions=_CMNIST_REGIME,
        notes=_OURS + "The runs of hessian-alignment-cmnist-irm-protocol, with the target accuracy at the epoch of "
                      "highest training-domain validation accuracy. That selection prefers the colour-reliant epochs "
                      "before the penalty's weight rises. Measured (seeds 0-4): selected epoch 1 in four seeds, "
                      "selected target accuracy HGP 0.084-0.101 (mean 0.087), ERM 0.084-0.092 (mean 0.087).",
    ),
    Claim(
        id="hessian-alignment-cmnist-hutchinson", technique="hessian-alignment", task="colored-mnist",
        metric="selected_test_acc", direction="higher", treatment=arm(_DOMAINBED_HUTCHINSON,
                                                                      label="ERM + Hutchinson (DomainBed)"),
        baseline=arm(label="ERM"), seeds=5, suites=("full",), paper_quote=_QUOTE,
        paper_number="DomainBed ColoredMNIST column (test domain -90%, training-domain validation): Hutchinson "
                     "reported against ERM (number not transcribed here)",
        paper_scale="DomainBed ColoredMNIST, 5,000 steps, hyperparameter search", paper_setting=_SETTING,
        preconditions=_CMNIST_REGIME,
        notes=_OURS + "The Hutchinson variant with the official defaults (alpha 1e-3, beta 5e-3, 300 Rademacher "
                      "probes per step); otherwise as hessian-alignment-cmnist, whose ERM runs it shares. Measured "
                      "(seeds 0-4, means): agree90 / agree80 / agree10 accuracy 0.903 / 0.807 / 0.090, selected "
                      "target 0.088 (ERM 0.087).",
    ),
    Claim(
        id="hessian-alignment-rmnist", technique="hessian-alignment", task="rotated-mnist",
        metric="selected_test_acc", direction="higher", treatment=arm(_DOMAINBED_HGP, label="ERM + HGP (DomainBed)"),
        baseline=arm(label="ERM"), seeds=5, suites=("full",), paper_quote=_QUOTE,
        paper_number="DomainBed RotatedMNIST column (training-domain validation): HGP / Hutchinson within about a "
                     "point of ERM, as nearly every DomainBed method (number not transcribed here)",
        paper_scale="DomainBed RotatedMNIST, 5,000 steps, hyperparameter search", paper_setting=_SETTING,
        preconditions=_RMNIST_REGIME,
        notes=_OURS + "Target domain: 75 degrees. Expected result: no separation from ERM (in DomainBed barely any "
                      "method separates from ERM on RotatedMNIST); inconclusive or contradicted is the expected "
                      "verdict, not a failure of the implementation. Measured (seeds 0-4, means): in-domain accuracy "
                      "0.945 (ERM) / 0.946 (HGP), selected target (75 degrees) 0.817 / 0.824, per seed ERM "
                      "0.786-0.838, HGP 0.806-0.834.",
    ),
]
