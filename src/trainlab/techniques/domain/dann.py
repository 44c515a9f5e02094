"""Domain-adversarial training (DANN) with a gradient reversal layer.

Papers: Yaroslav Ganin, Evgeniya Ustinova, Hana Ajakan, Pascal Germain, Hugo Larochelle, Francois
Laviolette, Mario Marchand, Victor Lempitsky. "Domain-Adversarial Training of Neural Networks".
JMLR 17, 2016, arXiv:1505.07818; first as Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation", ICML 2015, arXiv:1409.7495.

Method: a feature extractor G_f feeds a label predictor G_y (trained on labelled source examples)
and, through a gradient reversal layer (GRL), a domain classifier G_d that tells source (label 0)
from target (label 1) features. The GRL is the identity going forward and multiplies the gradient
by -lambda going backward, so one backward pass of  L_y + L_d  trains G_d to separate the domains
while it pushes G_f to make them indistinguishable (the saddle point of the paper's Eq. 10).
Each step sees a source batch and an equal-size batch of unlabelled target inputs. lambda rises
from 0 to 1 as lambda_p = 2 / (1 + exp(-gamma p)) - 1, gamma = 10, p the fraction of training
done (Section 5.2.2), so the domain classifier's noisy early signal is damped; the paper's SGD
(momentum 0.9) anneals the learning rate as mu_p = mu_0 / (1 + alpha p)^beta, alpha = 10,
beta = 0.75.
Claim: "the approach promotes the emergence of features that are (i) discriminative for the main
learning task on the source domain and (ii) indiscriminate with respect to the shift between the
domains", raising target accuracy over a source-only model: MNIST -> MNIST-M 52.25% (source only)
-> 76.66% (DANN), SVHN -> MNIST 54.90% -> 73.85%, Syn Numbers -> SVHN 86.74% -> 91.09%,
Syn Signs -> GTSRB 79.00% -> 88.65% (JMLR Table 2).

Two ways to use it:

* plain PyTorch: ``GradientReversal`` (a module with a settable ``lambda_``), ``DomainClassifier``
  (an MLP giving one domain logit per feature row) and ``domain_adversarial_loss``::

      import torch
      from trainlab.techniques.domain.dann import DomainClassifier, GradientReversal, dann_lambda
      from trainlab.techniques.domain.dann import domain_adversarial_loss

      features = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU())
      head, disc = torch.nn.Linear(32, 3), DomainClassifier(32, width=100, depth=1)
      grl = GradientReversal()
      opt = torch.optim.SGD([*features.parameters(), *head.parameters(), *disc.parameters()], lr=0.01)
      for step in range(10):
          xs, ys, xt = torch.randn(16, 8), torch.randint(0, 3, (16,)), torch.randn(16, 8) + 1
          fs, ft = features(xs), features(xt)
          grl.lambda_ = dann_lambda(step / 10)
          loss = torch.nn.functional.cross_entropy(head(fs), ys) + domain_adversarial_loss(disc, grl(fs), grl(ft))
          opt.zero_grad(); loss.backward(); opt.step()

* with trainlab's Trainer: the "dann" technique, on any task whose DataBundle carries
  ``info["target_train_x"]`` (the multi-domain tasks of trainlab.tasks.domains). The features are
  ``model.features(x)`` when the model has such a submodule (DomainCNN), otherwise the input of
  its classifier layer (the last nn.Linear with num_classes outputs), captured by a forward hook
  during the Trainer's own forward pass. With several training domains all are "source".
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.diagnostics.features import LayerCapture, classifier_layer
from trainlab.errors import ConfigError
from trainlab.techniques.registry import register
from trainlab.training.technique import Batch, Paper, Technique, TrainState

PAPER = Paper(
    title="Domain-Adversarial Training of Neural Networks",
    authors="Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand, Lempitsky", year=2016,
    arxiv="1505.07818",
)


# --------------------------------------------------------------------------- the reversal layer

class _ReverseGrad(torch.autograd.Function):
    """Identity forward; the incoming gradient times -lambda backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float) -> Tensor:  # type: ignore[override]
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)   # a view, so autograd records this node (returning x itself would skip it)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * -ctx.lambda_, None


def reverse_gradient(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """x going forward; d(loss)/dx = -lambda_ * (the gradient arriving from above) going backward."""
    if not math.isfinite(lambda_):
        raise ConfigError(f"gradient reversal: lambda must be finite, got {lambda_!r}")
    return _ReverseGrad.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """The GRL as a module; set `lambda_` between steps (e.g. from `dann_lambda`)."""

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: Tensor) -> Tensor:
        return reverse_gradient(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_:g}"


# --------------------------------------------------------------------------- schedules

def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """lambda_p = 2 / (1 + exp(-gamma p)) - 1 (0 at p = 0, tending to 1): the paper's adaptation
    factor schedule, p the fraction of training done."""
    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0


def dann_lr_factor(progress: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """mu_p / mu_0 = 1 / (1 + alpha p)^beta: the paper's learning-rate annealing."""
    return 1.0 / (1.0 + alpha * float(progress)) ** beta


# --------------------------------------------------------------------------- the domain classifier

class DomainClassifier(nn.Module):
    """MLP on features: `depth` hidden layers of `width` ReLU units -> one logit (source 0,
    target 1). depth=1, width=100 is the paper's MNIST domain classifier (fc 100 -> fc 1);
    depth=0 is logistic regression on the features."""

    def __init__(self, in_features: int, width: int = 100, depth: int = 1) -> None:
        super().__init__()
        if in_features < 1 or width < 1 or depth < 0:
            raise ConfigError(f"DomainClassifier: in_features and width must be >= 1 and depth >= 0, got "
                              f"{in_features}, {width}, {depth}")
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.flatten(1)).squeeze(1)


def domain_logits(classifier: nn.Module, source_features: Tensor, target_features: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, labels) of `classifier` on source rows (label 0) then target rows (label 1)."""
    if source_features.shape[1:] != target_features.shape[1:]:
        raise ConfigError(f"domain loss: source and target features differ in shape "
                          f"({list(source_features.shape)} vs {list(target_features.shape)})")
    logits = classifier(torch.cat([source_features, target_features]))
    labels = torch.cat([logits.new_zeros(len(source_features)), logits.new_ones(len(target_features))])
    return logits, labels


def domain_adversarial_loss(classifier: nn.Module, source_features: Tensor, target_features: Tensor) -> Tensor:
    """Logistic (binary cross-entropy) domain loss of `classifier` on source rows (label 0) and
    target rows (label 1), averaged over all rows. Pass features through a GradientReversal first
    for DANN; on its own this is the domain classifier's plain loss."""
    logits, labels = domain_logits(classifier, source_features, target_features)
    return F.binary_cross_entropy_with_logits(logits, labels)


# --------------------------------------------------------------------------- feature capture

def _featurizer(model: nn.Module, num_classes: int | None) -> tuple[nn.Module, str]:
    """(module, "output") for model.features, else (classifier layer, "input")."""
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Module):
        return feats, "output"
    return classifier_layer(model, num_classes), "input"


# --------------------------------------------------------------------------- the technique

_NO_FEATURES = "dann: the model's forward pass did not call its featurizer"


@register
class DANN(Technique):
    """Adds the domain-adversarial loss on [source batch, equal-size target batch] through a GRL."""

    name = "dann"
    family = "domain"
    paper = PAPER
    modifies = frozenset({"loss"})
    order = 50
    summary = "domain classifier on the features through a gradient reversal layer, target inputs unlabelled"
    fidelity = "variant"
    deviations = (
        "Optimizer: the task's (the domain tasks: Adam 1e-3, constant, as in DomainBed) for both the model and "
        "the domain classifier; the paper's SGD with momentum 0.9 and mu_p = mu_0 / (1 + 10p)^0.75 is the "
        "setting anneal_lr=True (then the technique sets the schedule).",
        "The domain classifier reads the model's penultimate features (DomainCNN.features: conv layers + "
        "fc 128 + ReLU); the paper's MNIST network attaches it after the convolutional layers, with two "
        "fc layers of the label predictor above.",
        "The domain classifier has its own optimizer of the model optimizer's class and hyperparameters, at "
        "the model's learning rate each step (equal to one optimizer with an extra parameter group for "
        "per-parameter rules such as SGD and Adam); the task's gradient clipping does not apply to it.",
        "Target batches are drawn with replacement from the target's unlabelled training inputs.",
    )
    requires = frozenset({"classification"})

    def __init__(self, gamma: float = 10.0, width: int = 100, depth: int = 1, lam: float | None = None,
                 max_lambda: float = 1.0, anneal_lr: bool = False, alpha: float = 10.0, beta: float = 0.75) -> None:
        for key, v in (("gamma", gamma), ("max_lambda", max_lambda), ("alpha", alpha), ("beta", beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"dann: {key} must be a finite number >= 0, got {v!r}")
        if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam)):
            raise ConfigError(f"dann: lam (a fixed lambda, or None for the schedule) must be a finite number, "
                              f"got {lam!r}")
        if not isinstance(width, int) or not isinstance(depth, int) or width < 1 or depth < 0:
            raise ConfigError(f"dann: width must be an integer >= 1 and depth >= 0, got {width!r}, {depth!r}")
        super().__init__(gamma=gamma, width=width, depth=depth, lam=lam, max_lambda=max_lambda, anneal_lr=anneal_lr,
                         alpha=alpha, beta=beta)
        self.gamma, self.width, self.depth = float(gamma), width, depth
        self.lam, self.max_lambda = (None if lam is None else float(lam)), float(max_lambda)
        self.anneal_lr, self.alpha, self.beta = bool(anneal_lr), float(alpha), float(beta)
        if self.anneal_lr:   # only then does it own the learning-rate schedule
            self.modifies = frozenset({"loss", "schedule"})
        self.classifier: DomainClassifier | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.grl = GradientReversal(0.0)
        self._capture: LayerCapture | None = None
        self._loaded: Mapping[str, Any] | None = None
        self._sums = [0.0, 0.0, 0]   # domain loss, correct domain predictions, rows (this epoch)

    @classmethod
    def check_applicable(cls, task: Any, data: Any, model: nn.Module | None) -> str | None:
        reason = super().check_applicable(task, data, model)
        if reason:
            return reason
        info = getattr(data, "info", None) or {}
        target = info.get("target_train_x")
        if target is None or len(target) == 0:
            return ("needs unlabelled target-domain inputs (the DataBundle's info['target_train_x'], as the "
                    "multi-domain tasks of trainlab.tasks.domains provide); this data has none")
        if model is not None:
            try:
                _featurizer(model, getattr(data, "num_classes", None))
            except ConfigError:
                return "needs a model with a `features` submodule or an nn.Linear classifier layer"
        return None

    def lambda_at(self, progress: float) -> float:
        """The reversal's lambda at training progress p: `lam` if fixed, else max_lambda * lambda_p."""
        return self.lam if self.lam is not None else self.max_lambda * dann_lambda(progress, self.gamma)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, task: Any, total_steps: int) -> Any:
        if not self.anneal_lr:
            return None
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: dann_lr_factor(s / max(1, total_steps), self.alpha, self.beta))

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        data = state.data
        reason = self.check_applicable(state.task, data, model)
        if reason:
            raise ConfigError(f"dann {reason}")
        module, want = _featurizer(model, state.num_classes)
        self._capture = LayerCapture(module, want)
        # the feature width from one eval-mode forward (no dropout draw, no batch-norm update); the
        # classifier's init under its own seed: the global random stream stays the baseline's
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(data.train_x[:1].to(state.device))
        model.train(was_training)
        dim = self._capture.take(_NO_FEATURES).flatten(1).shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(state.seed * 7_919 + 31)
            self.classifier = DomainClassifier(dim, self.width, self.depth).to(state.device)
        # A separate optimizer rather than optimizer.add_param_group: the Trainer builds its optimizer and
        # schedule before the feature width is known, a LambdaLR would miss a group added now, and a
        # resumed run loads the optimizer's state before this hook (a group count mismatch)
        try:
            self.optimizer = type(optimizer)(self.classifier.parameters(), **optimizer.defaults)
        except TypeError as e:
            raise ConfigError(f"dann: cannot build the domain classifier's optimizer as a "
                              f"{type(optimizer).__name__} with the model optimizer's defaults ({e})") from None
        if self._loaded is not None:
            self.classifier.load_state_dict(self._loaded["classifier"])
            self.optimizer.load_state_dict(self._loaded["optimizer"])
            self._loaded = None

    def target_batch(self, state: TrainState, size: int) -> Tensor:
        """`size` unlabelled target inputs drawn (with replacement) with state.generator."""
        pool = state.data.info["target_train_x"]
        idx = torch.randint(len(pool), (size,), generator=state.generator)
        return pool[idx].to(state.device)

    def loss(self, outputs: Tensor, batch: Batch, state: TrainState, base_loss: Tensor) -> Tensor:
        assert self._capture is not None and self.classifier is not None and self.optimizer is not None
        source = self._capture.take(_NO_FEATURES)
        if len(source) != len(outputs):
            raise ConfigError("dann: the captured source features do not match the batch (another technique ran "
                              "the model in between)")
        target_x = self.target_batch(state, len(source))
        feats = getattr(state.model, "features", None)
        if self._capture.want == "output" and isinstance(feats, nn.Module):
            feats(target_x)   # the featurizer alone; the hook captures its output
        else:
            state.model(target_x)
        target = self._capture.take(_NO_FEATURES)
        self.grl.lambda_ = self.lambda_at(state.progress)
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:   # the learning rate the model's step uses now
            group["lr"] = state.optimizer.param_groups[0]["lr"]
        logits, labels = domain_logits(self.classifier, self.grl(source), self.grl(target))
        domain_loss = F.binary_cross_entropy_with_logits(logits, labels)
        with torch.no_grad():
            self._sums[0] += float(domain_loss) * len(labels)
            self._sums[1] += int(((logits > 0).float() == labels).sum())
            self._sums[2] += len(labels)
        return base_loss + domain_loss

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        assert self.optimizer is not None
        self.optimizer.step()

    def on_epoch_end(self, model: nn.Module, state: TrainState) -> None:
        loss, correct, n = self._sums
        if n:
            state.epoch_metrics["dann_domain_loss"] = loss / n
            state.epoch_metrics["dann_domain_acc"] = correct / n
        state.epoch_metrics["dann_lambda"] = self.grl.lambda_
        self._sums = [0.0, 0.0, 0]

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def state_dict(self) -> dict[str, Any]:
        if self.classifier is None or self.optimizer is None:
            return {}
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._loaded = dict(state) if state else None


# --------------------------------------------------------------------------- claims

_QUOTE = ("As the training progresses, the approach promotes the emergence of features that are (i) discriminative "
          "for the main learning task on the source domain and (ii) indiscriminate with respect to the shift between "
          "the domains.")
_NUMBER = ("JMLR Table 2, target accuracy source-only -> DANN: MNIST -> MNIST-M 52.25% -> 76.66%, Syn Numbers -> SVHN "
           "86.74% -> 91.09%, SVHN -> MNIST 54.90% -> 73.85%, Syn Signs -> GTSRB 79.00% -> 88.65%")
_SETTING = PaperSetting(
    train_size=60_000,
    text="MNIST (60,000 labelled) -> MNIST-M (unlabelled training images), 28x28; conv 5x5x32 - pool - conv 5x5x48 - "
         "pool, label predictor fc100-fc100-fc10, domain classifier fc100-fc1 on the conv features; SGD momentum 0.9, "
         "mu_0 0.01 annealed as mu_0/(1+10p)^0.75, lambda_p schedule gamma 10, batches of 64 source + 64 target")
_GAP = 0.05
_REGIME = (
    Precondition("source_test_acc", ">=", 0.9, arm="baseline", over="min",
                 why="source-only training learns the source domain(s) (in-domain test accuracy >= 90% in every "
                     "seed): the adaptation question presumes a working source classifier"),
    Precondition("source_test_acc - test_acc", ">=", _GAP, arm="baseline", over="min",
                 why=f"a real domain gap: the source-only model loses at least {_GAP:.0%} accuracy on the target in "
                     f"every seed (the paper's benchmarks lose 8-46 points); without a gap there is nothing to adapt"),
)
_COMMON_NOTES = (
    "Both arms use the task's recipe (DomainCNN, Adam 1e-3 constant, batch 64, as DomainBed's MNIST datasets); DANN "
    "adds 64 target inputs a step (drawn from the target's unlabelled training images), the 100-unit domain "
    "classifier on the 128-d penultimate features, and lambda_p with gamma 10 over the run's steps; the paper's "
    "SGD + lr annealing is not used, so both arms share one optimizer recipe. Metric: the target test accuracy "
    "at the end of the run (the paper reports the target accuracy of the trained network; its hyperparameters were "
    "chosen by reverse validation, not by target labels); the training-domain-validation selected accuracy "
    "(selected_test_acc, DomainBed's protocol) is stored beside it. ")
_PAPER_OPT = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
_RECIPE_NOTES = (
    "The paper's optimizer for both arms: SGD with momentum 0.9, mu_0 0.01 annealed as mu_0/(1+10p)^0.75 "
    "(anneal_lr=True), batch 64 source + 64 target, lambda_p with gamma 10; the source-only arm is the same "
    "technique with lambda fixed at 0, whose model equals plain source-only training with this schedule (its "
    "domain classifier trains but no gradient reaches the model). Added after the claims with the task's Adam "
    "recipe (dann-rotated-mnist, dann-mnist-to-digits) were measured, to test the paper's own optimization "
    "regime; those claims stand as measured. Metric: final target test accuracy. ")
_RECIPE_TASKS = (
    ("rotated-mnist", "Rotated MNIST, sources 0-60 degrees (all 'source'), target 75 degrees. Measured before any "
                      "DANN run of this recipe, source-only seed 0: sources 91.6%, 75 degrees 76.6%. Measured, seeds "
                      "0-4: source-only sources 89.3-91.6% (below 90% in one seed: out of regime), 75 degrees "
                      "74.6-77.8%, its (detached) domain classifier 82-83% accurate; DANN sources 88.1-91.2%, "
                      "75 degrees 71.0-76.0%, domain classifier 59-75%: less separable features without a gain "
                      "on the target."),
    ("mnist-to-digits", "MNIST (3,000 labelled) -> scikit-learn digits (1,000 unlabelled), 16x16. Measured before "
                        "any DANN run of this recipe, source-only seed 0: MNIST 91.1%, digits 46.7%. Measured, "
                        "seeds 0-4: source-only MNIST 88.1-91.1% (the annealed SGD reaches 90% in one seed "
                        "only at 6 epochs: out of regime), digits 33.3-47.2%, its domain classifier 97-100% "
                        "accurate; DANN MNIST 84.0-89.4%, digits 26.5-43.2%, domain classifier 75-93%."),
)
CLAIMS = [
    Claim(
        id="dann-rotated-mnist", technique="dann", task="rotated-mnist", metric="test_acc", direction="higher",
        treatment=arm(("dann", {}), label="DANN (source + unlabelled 75-degree inputs)"),
        baseline=arm(label="source-only ERM"), min_effect=0.01, seeds=5, suites=("full",),
        paper_quote=_QUOTE, paper_number=_NUMBER + "; DomainBed (domain generalization, no target inputs) finds "
                    "DANN within a point of ERM on RotatedMNIST",
        paper_scale="MNIST -> MNIST-M, SVHN, GTSRB, Office; 60,000+ labelled source images",
        paper_setting=_SETTING, preconditions=_REGIME,
        notes=_COMMON_NOTES + "Rotated MNIST as a multi-source adaptation problem: the five training angles "
              "(0-60 degrees, 1,000 images each) are all 'source', the 75-degree domain the unlabelled target "
              "(1,000 inputs). Chosen before any DANN run by the paper's regime: source-only target accuracy well "
              "above chance with a gap to close (measured, ERM seed 0: source 94.6%, target 82.8%). A single "
              "source at 0 degrees leaves source-only at 14.8% on 75 degrees (seed 0), near chance: outside the "
              "regime of the paper's benchmarks (source-only 52-87%). Measured, seeds 0-4: source-only sources "
              "94.2-94.9%, 75 degrees 78.8-83.8%; DANN sources 89.6-93.3%, 75 degrees 76.8-80.2%, its domain "
              "classifier's accuracy in the last epoch 61-76%: the features moved toward domain confusion and "
              "the label predictor lost accuracy on every domain."),
    Claim(
        id="dann-mnist-to-digits", technique="dann", task="mnist-to-digits", metric="test_acc", direction="higher",
        treatment=arm(("dann", {}), label="DANN (MNIST + unlabelled digits inputs)"),
        baseline=arm(label="source-only ERM"), min_effect=0.01, seeds=5, suites=("full",),
        paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale="MNIST -> MNIST-M, SVHN, GTSRB, Office; 60,000+ "
                                                              "labelled source images",
        paper_setting=_SETTING, preconditions=_REGIME,
        notes=_COMMON_NOTES + "Single source, single target as in the paper: 3,000 labelled MNIST images -> "
              "scikit-learn digits (1,000 unlabelled training inputs), both 16x16: a resolution and style shift "
              "(measured, ERM seed 0: MNIST 94.8%, digits 60.8%). Measured, seeds 0-4: source-only MNIST 93.4-95.5%, "
              "digits 45.2-60.8%; DANN MNIST 76.0-87.2%, digits 11.7-38.2% (seed 0 collapsed to 11.7%). Once "
              "lambda nears 1 (after about a third of the 276 steps) the domain loss oscillates (epoch means "
              "0.3-3.1) and the label predictor loses source accuracy: with a constant Adam step at this budget "
              "the adversarial game does not settle."),
    # The paper's own optimizer for both arms (Section 5.2.2): SGD, momentum 0.9, mu_0 = 0.01 annealed as
    # mu_0 / (1 + 10 p)^0.75. The source-only arm is DANN with lambda fixed at 0, whose model weights equal
    # plain source-only training bit for bit (tests/techniques/test_dann.py), so both arms share the schedule.
    *[Claim(
        id=f"dann-paper-recipe-{task}", technique="dann", task=task, metric="test_acc", direction="higher",
        treatment=arm(("dann", {"anneal_lr": True}), label="DANN, SGD + annealing"),
        baseline=arm(("dann", {"lam": 0.0, "anneal_lr": True}), label="source-only (lambda 0), SGD + annealing"),
        overrides=_PAPER_OPT, min_effect=0.01, seeds=5, suites=("full",),
        paper_quote=_QUOTE, paper_number=_NUMBER, paper_scale="MNIST -> MNIST-M, SVHN, GTSRB, Office; 60,000+ "
                                                              "labelled source images",
        paper_setting=_SETTING, preconditions=_REGIME,
        notes=_RECIPE_NOTES + note) for task, note in _RECIPE_TASKS],
]
