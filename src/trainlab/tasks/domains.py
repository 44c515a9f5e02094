"""Tasks with several domains: Rotated MNIST, Colored MNIST, MNIST <-> scikit-learn digits, and the
convention any multi-domain task follows (a user's own included).

The multi-domain DataBundle
---------------------------
A domain task's DataBundle is an ordinary one, so every technique and wrapper sees plain tensors:

- `train_x`, `train_y`: the labelled training domains, concatenated in the order of
  `info["train_domains"]` (validation slices left out).
- `test_x`, `test_y`: the target domain's test split (several target domains: concatenated), so
  `test_acc` is out-of-domain accuracy.
- `info["domains"]`: {name: {"train_x", "train_y", "val_x", "val_y", "test_x", "test_y", ...}} for
  every domain, training and target; names match `[A-Za-z0-9_]+` so metric keys built from them
  parse. A target domain's `train_y` is kept for analysis only: adaptation must not use it.
- `info["train_domains"]`, `info["target_domains"]`: lists of names; `info["domain_names"]`: all.
- `info["train_domain_index"]`: LongTensor [len(train_y)], the position in `info["train_domains"]`
  of each training example. The Trainer gives techniques `batch.indices` (rows of train_x), so
  `domain_of(state.data, batch.indices)` is the domain of each example in a batch (a DANN domain
  classifier, per-domain gradients).
- `info["target_train_x"]`: the target domains' unlabelled training inputs (for adaptation).
- `info["val_x"]`, `info["val_y"]`, `info["val_domain_index"]`: the training domains' validation
  slices, pooled (DomainBed's "training-domain validation" set, Gulrajani & Lopez-Paz, "In Search
  of Lost Domain Generalization", 2020, arXiv:2007.01434), disjoint from train_x.

Metrics the Trainer adds every epoch for such a bundle (see `domain_metrics`,
`select_by_validation`):
- `domain_<name>_acc`: accuracy on each domain's test split (the target's equals `test_acc`);
- `source_test_acc`: the mean of `domain_<name>_acc` over the training domains (in-domain accuracy);
- `domain_<name>_val_acc` per training domain and `val_acc`, their mean (DomainBed averages the
  per-environment validation accuracies);
- `selected_test_acc`, `selected_epoch`: the target test accuracy at the epoch, up to this one, with
  the highest `val_acc` (the first such epoch on ties): DomainBed's training-domain-validation
  model selection, which never looks at target labels. Claims read it at the end of the run
  ("selected_test_acc").

A user's own multi-domain task (runnable as it stands):

    import torch
    from trainlab import Task
    from trainlab.tasks.domains import make_domain_bundle

    def two_blobs(n: int = 300, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        def domain(offset):           # the same 3-class problem, shifted by `offset`
            y = torch.randint(0, 3, (n,), generator=g)
            x = torch.randn(n, 2, generator=g) + 3 * torch.nn.functional.one_hot(y, 3)[:, :2] + offset
            return {"train_x": x[:200], "train_y": y[:200], "test_x": x[200:], "test_y": y[200:]}
        return make_domain_bundle({"near": domain(0.0), "mid": domain(0.5), "far": domain(2.0)},
                                  train_domains=["near", "mid"], target_domains=["far"],
                                  num_classes=3, name="two-blobs", val_fraction=0.2, seed=seed)

    shifted = Task("shifted-blobs", make_data=two_blobs,
                   make_model=lambda shape, classes: torch.nn.Linear(shape[0], classes), epochs=5, lr=0.1)

and in a file `my_tasks.py`, `trainlab train my_tasks.py:shifted` reports the per-domain keys.
(Give `make_model` as a module-level function when the task runs in worker processes.)

The named tasks (`trainlab tasks`) need the official MNIST IDX files ($TRAINLAB_MNIST, or
`trainlab data download mnist`); each draws its images with a fixed data seed (`data_seed`), so
every run and every seed of a claim sees the same domains:

- rotated-mnist: MNIST digits rotated by 0, 15, 30, 45, 60, 75 degrees (Ghifary et al., "Domain
  Generalization for Object Recognition with Multi-task Autoencoders", 2015, arXiv:1508.07680;
  DomainBed's RotatedMNIST), each domain its own disjoint images; target 75 degrees by default
  (`data_kwargs={"target": 30}` picks another).
- colored-mnist: Arjovsky et al., "Invariant Risk Minimization", 2019, arXiv:1907.02893, as built
  in DomainBed: binary label digit < 5 flipped with probability 0.25, a colour (which of two
  channels holds the digit) equal to the label with probability 0.9 and 0.8 in the two training
  domains and 0.1 in the target domain; 28x28, values in [0, 1].
- mnist-to-digits / digits-to-mnist: a resolution and style shift between MNIST (28x28 pen
  strokes with a 4-pixel margin) and scikit-learn's digits (8x8, 17 grey levels, the digit filling
  the frame), both mapped to a common size x size format (default 16: MNIST area-downsampled,
  digits bilinearly upsampled), values in [0, 1], then standardized with the training domain's
  mean and std.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError, DataError
from trainlab.tasks.task import DataBundle, Task

SPLITS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
ROTATIONS = (0, 15, 30, 45, 60, 75)
# DomainBed's ColoredMNIST environments, as the probability that the colour AGREES with the label
COLOR_AGREEMENT = {"agree90": 0.9, "agree80": 0.8, "agree10": 0.1}
COLOR_LABEL_NOISE = 0.25


# --------------------------------------------------------------------------- the bundle convention

def make_domain_bundle(domains: Mapping[str, Mapping[str, torch.Tensor]], train_domains: Sequence[str],
                       target_domains: Sequence[str], *, num_classes: int, name: str = "domains",
                       val_fraction: float = 0.2, seed: int = 0, info: Mapping[str, Any] | None = None) -> DataBundle:
    """A multi-domain DataBundle (see the module docstring) from per-domain tensors.

    domains: {name: {"train_x", "train_y", "test_x", "test_y"}} and optionally "val_x"/"val_y";
    a domain without them gets a random `val_fraction` of its training examples as its
    validation slice (drawn with `seed`, disjoint from what stays for training). Other keys in a
    domain's dict (e.g. the indices its images came from) are kept as they are.
    train_domains: the labelled domains; target_domains: the held-out / unlabelled ones (disjoint
    from train_domains; together they need not cover every domain: the rest are evaluated only).
    """
    train_domains, target_domains = list(train_domains), list(target_domains)
    if not train_domains or not target_domains:
        raise ConfigError(f"data '{name}': give at least one training domain and one target domain")
    for d in [*train_domains, *target_domains]:
        if d not in domains:
            raise ConfigError(f"data '{name}': unknown domain '{d}' (known: {', '.join(domains)})")
    if set(train_domains) & set(target_domains):
        raise ConfigError(f"data '{name}': domains {sorted(set(train_domains) & set(target_domains))} are both "
                          f"training and target domains")
    if len(set(train_domains)) != len(train_domains) or len(set(target_domains)) != len(target_domains):
        raise ConfigError(f"data '{name}': a domain is listed twice")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data '{name}': val_fraction must be in [0, 1), got {val_fraction}")
    built: dict[str, dict[str, torch.Tensor]] = {}
    for i, (dname, parts) in enumerate(domains.items()):
        if not isinstance(dname, str) or not _NAME.match(dname):
            raise ConfigError(f"data '{name}': domain name {dname!r} must match [A-Za-z0-9_]+ (it names metric keys)")
        missing = [k for k in ("train_x", "train_y", "test_x", "test_y") if k not in parts]
        if missing:
            raise ConfigError(f"data '{name}': domain '{dname}' lacks {', '.join(missing)}")
        if ("val_x" in parts) != ("val_y" in parts):
            raise ConfigError(f"data '{name}': domain '{dname}' has only one of val_x / val_y")
        d = dict(parts)
        if "val_x" not in d:
            d.update(_split_val(d["train_x"], d["train_y"], val_fraction, seed, i))
        for a, b in (("train_x", "train_y"), ("val_x", "val_y"), ("test_x", "test_y")):
            if len(d[a]) != len(d[b]):
                raise ConfigError(f"data '{name}': domain '{dname}': {a} and {b} differ in length")
        built[dname] = d
    shapes = {tuple(d[k].shape[1:]) for d in built.values() for k in ("train_x", "test_x")}
    if len(shapes) != 1:
        raise ConfigError(f"data '{name}': domains must share one input shape, got {sorted(shapes)}")

    def cat(names: Sequence[str], key: str) -> torch.Tensor:
        return torch.cat([built[n][key] for n in names])

    def index(names: Sequence[str], key: str) -> torch.Tensor:
        return torch.cat([torch.full((len(built[n][key]),), j, dtype=torch.long) for j, n in enumerate(names)])

    for n in train_domains:
        if len(built[n]["train_y"]) == 0 or len(built[n]["val_y"]) == 0:
            raise ConfigError(f"data '{name}': training domain '{n}' needs training and validation examples "
                              f"(raise its size or val_fraction)")
    extra = dict(info or {})
    extra.update({
        "domains": built, "domain_names": list(built), "train_domains": train_domains,
        "target_domains": target_domains,
        "train_domain_index": index(train_domains, "train_y"),
        "target_train_x": cat(target_domains, "train_x"),
        "val_x": cat(train_domains, "val_x"), "val_y": cat(train_domains, "val_y"),
        "val_domain_index": index(train_domains, "val_y"),
    })
    return DataBundle(cat(train_domains, "train_x"), cat(train_domains, "train_y"), cat(target_domains, "test_x"),
                      cat(target_domains, "test_y"), num_classes=num_classes, name=name, info=extra)


def _split_val(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int, stream: int) -> dict[str, torch.Tensor]:
    n_val = int(round(len(y) * fraction))
    perm = torch.from_numpy(np.random.default_rng([seed, 7, stream]).permutation(len(y)))
    val, keep = perm[:n_val].sort().values, perm[n_val:].sort().values
    return {"train_x": x[keep], "train_y": y[keep], "val_x": x[val], "val_y": y[val]}


def is_domain_bundle(data: Any) -> bool:
    """Whether `data` follows the multi-domain convention (has info["domains"])."""
    return isinstance(getattr(data, "info", None), dict) and data.info.get("domains") is not None


def domain_of(data: DataBundle, indices: torch.Tensor) -> torch.Tensor:
    """The training domain (position in info["train_domains"]) of training rows `indices`, e.g. a
    batch's `batch.indices`, on the indices' device."""
    check_domain_bundle(data)
    return data.info["train_domain_index"][indices.cpu()].to(indices.device)


def check_domain_bundle(data: DataBundle) -> None:
    """Raise ConfigError when info["train_domain_index"] no longer lines up with train_y (a
    wrapper that drops training rows, such as train_subset or imbalance, was applied)."""
    if not is_domain_bundle(data):
        raise ConfigError(f"data '{data.name}' is not a multi-domain bundle (no info['domains'])")
    if len(data.info["train_domain_index"]) != len(data.train_y):
        raise ConfigError(f"data '{data.name}': {len(data.train_y)} training examples but "
                          f"{len(data.info['train_domain_index'])} domain indices: train_subset and imbalance "
                          f"do not apply to multi-domain tasks; set the per-domain sizes in data_kwargs instead")


# --------------------------------------------------------------------------- metrics and selection

def domain_metrics(model: torch.nn.Module, data: DataBundle, task: Task, device: torch.device) -> dict[str, float]:
    """Per-domain accuracies of `model` (keys in the module docstring): every domain's test split,
    the training domains' validation slices and their mean."""
    from trainlab.training.metrics import evaluate_task

    check_domain_bundle(data)

    def acc(x: torch.Tensor, y: torch.Tensor) -> float:
        if len(y) == 0:
            return math.nan
        return float(evaluate_task(model, x, y, task, device, True).get("acc", math.nan))

    out: dict[str, float] = {}
    domains = data.info["domains"]
    for name, d in domains.items():
        out[f"domain_{name}_acc"] = acc(d["test_x"], d["test_y"])
    train = data.info["train_domains"]
    out["source_test_acc"] = float(np.mean([out[f"domain_{n}_acc"] for n in train]))
    for name in train:
        out[f"domain_{name}_val_acc"] = acc(domains[name]["val_x"], domains[name]["val_y"])
    out["val_acc"] = float(np.mean([out[f"domain_{n}_val_acc"] for n in train]))
    return out


def select_by_validation(rows: Sequence[Mapping[str, float]], selector: str = "val_acc",
                         target: str = "test_acc") -> dict[str, float]:
    """Training-domain-validation model selection over epoch rows: `target` at the first row with
    the largest `selector` -> {"selected_test_acc", "selected_epoch"} ({} when no row has both)."""
    best: Mapping[str, float] | None = None
    for row in rows:
        v = row.get(selector)
        if v is None or target not in row or math.isnan(v):
            continue
        if best is None or v > best[selector]:
            best = row
    if best is None:
        return {}
    return {"selected_test_acc": float(best[target]), "selected_epoch": float(best["epoch"])}


# --------------------------------------------------------------------------- image transforms

def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Images [N, C, H, W] turned by `degrees` counter-clockwise (as displayed, rows downward)
    about the image centre, bilinear interpolation, zeros outside: torchvision's
    `rotate(img, degrees, interpolation=BILINEAR, fill=0)`, which DomainBed's RotatedMNIST uses.
    Rotate images whose background is 0 (before normalization)."""
    if x.ndim != 4:
        raise ConfigError(f"rotate_images needs images [N, C, H, W], got {list(x.shape)}")
    if degrees % 360 == 0:
        return x.clone()
    t = math.radians(degrees)
    h, w = x.shape[-2:]
    # grid_sample reads output pixel (u, v) (u right, v down, normalized to [-1, 1]) from the input at
    # R(-t) applied in pixel units; the H/W aspect enters because normalized units differ per axis
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_mnist(images: torch.Tensor, digits: torch.Tensor, agreement: float, generator: torch.Generator,
                label_noise: float = COLOR_LABEL_NOISE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The IRM / DomainBed Colored MNIST construction for one environment.

    images [N, H, W] in [0, 1], digits [N] (0..9). label = (digit < 5), flipped with probability
    `label_noise`; colour = label, flipped with probability 1 - `agreement`; the image goes to
    channel `colour` of a 2-channel image (the other channel is 0). Returns (x [N, 2, H, W], label,
    colour)."""
    label = (digits < 5).long() ^ (torch.rand(len(digits), generator=generator) < label_noise).long()
    colour = label ^ (torch.rand(len(digits), generator=generator) < 1.0 - agreement).long()
    x = torch.stack([images, images], dim=1)
    x[torch.arange(len(x)), 1 - colour] = 0.0
    return x, label, colour


# --------------------------------------------------------------------------- MNIST-based domains

def _mnist_uint8(root: str | None, task: str) -> dict[str, torch.Tensor]:
    """The MNIST images in [0, 1] ([N, 28, 28]) and labels, via trainlab's IDX loader."""
    from trainlab.tasks.datasets import MNIST_STATS, mnist

    try:
        b = mnist(root)
    except DataError as e:
        raise DataError(f"{task} needs the official MNIST IDX files: {e}") from None
    mean, std = MNIST_STATS["mnist"]
    # undo the loader's normalization: rotations and colouring act on images with background 0
    pix = lambda t: (t[:, 0] * std + mean).clamp_(0.0, 1.0)  # noqa: E731
    return {"train_x": pix(b.train_x), "train_y": b.train_y, "test_x": pix(b.test_x), "test_y": b.test_y}


def _draw(n_available: int, sizes: Sequence[int], seed: int, stream: int, what: str) -> list[torch.Tensor]:
    """Disjoint random index sets of the given sizes out of range(n_available)."""
    if sum(sizes) > n_available:
        raise ConfigError(f"{what}: {sum(sizes)} images requested, only {n_available} available "
                          f"(lower the per-domain sizes)")
    perm = torch.from_numpy(np.random.default_rng([seed, stream]).permutation(n_available))
    out, start = [], 0
    for n in sizes:
        out.append(perm[start:start + n].sort().values)
        start += n
    return out


def _domain_name(angle: float) -> str:
    return f"rot{angle:g}".replace(".", "_").replace("-", "m")


def rotated_mnist(angles: Sequence[float] = ROTATIONS, target: float | Sequence[float] = 75, per_domain: int = 1000,
                  val_per_domain: int = 200, test_per_domain: int = 500, data_seed: int = 0,
                  root: str | None = None) -> DataBundle:
    """Rotated MNIST: one domain per angle ("rot0", "rot15", ...), each with its own disjoint MNIST
    images (training and validation from MNIST's training set, test from its test set), turned by
    `rotate_images`, then normalized with MNIST's mean and std. target: the angle(s) held out."""
    from trainlab.tasks.datasets import MNIST_STATS, _value_range

    angles = [float(a) for a in angles]
    targets = [float(t) for t in (target if isinstance(target, (list, tuple)) else [target])]
    unknown = [t for t in targets if t not in angles]
    if unknown:
        raise ConfigError(f"rotated-mnist: target angle(s) {unknown} not among the domains' angles {angles}")
    names = [_domain_name(a) for a in angles]
    if len(set(names)) != len(names):
        raise ConfigError(f"rotated-mnist: angles must be distinct, got {angles}")
    m = _mnist_uint8(root, "rotated-mnist")
    pools = _draw(len(m["train_y"]), [per_domain + val_per_domain] * len(angles), data_seed, 1, "rotated-mnist")
    tests = _draw(len(m["test_y"]), [test_per_domain] * len(angles), data_seed, 2, "rotated-mnist")
    mean, std = MNIST_STATS["mnist"]
    norm = lambda t: (t - mean) / std  # noqa: E731
    domains = {}
    for name, angle, pool, test in zip(names, angles, pools, tests):
        tr, va = pool[:per_domain], pool[per_domain:]
        rot = lambda x: norm(rotate_images(x[:, None], angle))  # noqa: E731
        domains[name] = {"train_x": rot(m["train_x"][tr]), "train_y": m["train_y"][tr],
                         "val_x": rot(m["train_x"][va]), "val_y": m["train_y"][va],
                         "test_x": rot(m["test_x"][test]), "test_y": m["test_y"][test],
                         "angle": angle, "train_source": tr, "val_source": va, "test_source": test}
    target_names = [_domain_name(t) for t in targets]
    info = {"classes": [str(i) for i in range(10)], "channel_mean": [mean], "channel_std": [std],
            "value_range": _value_range([mean], [std])}
    return make_domain_bundle(domains, [n for n in names if n not in target_names], target_names, num_classes=10,
                              name="rotated-mnist", seed=data_seed, info=info)


def colored_mnist(per_domain: int = 2000, val_per_domain: int = 400, test_per_domain: int = 1000,
                  agreement: Mapping[str, float] | None = None, target: str | Sequence[str] = "agree10",
                  data_seed: int = 0, root: str | None = None) -> DataBundle:
    """Colored MNIST (IRM's construction, as in DomainBed): domains "agree90", "agree80" (training)
    and "agree10" (target), see `color_mnist`; 2 channels, 28x28, values in [0, 1]. Each domain
    has its own disjoint MNIST images (training/validation from MNIST's training set, test from its
    test set), and its colours and label noise are drawn per domain with `data_seed`."""
    agreement = dict(COLOR_AGREEMENT if agreement is None else agreement)
    targets = [target] if isinstance(target, str) else list(target)
    m = _mnist_uint8(root, "colored-mnist")
    names = list(agreement)
    pools = _draw(len(m["train_y"]), [per_domain + val_per_domain] * len(names), data_seed, 3, "colored-mnist")
    tests = _draw(len(m["test_y"]), [test_per_domain] * len(names), data_seed, 4, "colored-mnist")
    domains = {}
    for i, (name, pool, test) in enumerate(zip(names, pools, tests)):
        g = torch.Generator().manual_seed(int(data_seed) * 1000 + i)
        p = float(agreement[name])
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"colored-mnist: colour agreement of '{name}' must be in [0, 1], got {p}")
        x_pool, y_pool, c_pool = color_mnist(m["train_x"][pool], m["train_y"][pool], p, g)
        x_te, y_te, c_te = color_mnist(m["test_x"][test], m["test_y"][test], p, g)
        tr, va = slice(0, per_domain), slice(per_domain, None)
        domains[name] = {"train_x": x_pool[tr], "train_y": y_pool[tr], "val_x": x_pool[va], "val_y": y_pool[va],
                         "test_x": x_te, "test_y": y_te, "agreement": p,
                         "train_colour": c_pool[tr], "val_colour": c_pool[va], "test_colour": c_te,
                         "train_digit": m["train_y"][pool][tr], "test_digit": m["test_y"][test],
                         "train_source": pool[tr], "val_source": pool[va], "test_source": test}
    unknown = [t for t in targets if t not in domains]
    if unknown:
        raise ConfigError(f"colored-mnist: target domain(s) {unknown} not among {names}")
    info = {"classes": ["digit>=5", "digit<5"], "value_range": ([0.0, 0.0], [1.0, 1.0])}
    return make_domain_bundle(domains, [n for n in names if n not in targets], targets, num_classes=2,
                              name="colored-mnist", seed=data_seed, info=info)


def _digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images / 16.0).float(), torch.from_numpy(d.target).long()


def to_common_format(x: torch.Tensor, size: int) -> torch.Tensor:
    """Grey images [N, H, W] in [0, 1] -> [N, 1, size, size]: area averaging when shrinking
    (MNIST 28 -> 16 or 8), bilinear interpolation when enlarging (digits 8 -> 16)."""
    x = x[:, None].float()
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.clone()
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def mnist_digits(source: str = "mnist", size: int = 16, mnist_train: int = 3000, mnist_val: int = 600,
                 mnist_test: int = 1000, digits_train: int = 1000, digits_val: int = 200, data_seed: int = 0,
                 root: str | None = None) -> DataBundle:
    """Domains "mnist" and "digits" in one size x size format (see `to_common_format`); `source`
    is the labelled training domain, the other is the target. Digits (1,797 images) are split
    into train / validation / test (the rest); MNIST's training and validation images come from its
    training set, its test images from its test set. Both domains are standardized with the
    source domain's training mean and std (one value)."""
    if source not in ("mnist", "digits"):
        raise ConfigError(f"mnist-digits: source must be 'mnist' or 'digits', got {source!r}")
    if size not in (8, 16, 28):
        raise ConfigError(f"mnist-digits: size must be 8, 16 or 28, got {size}")
    m = _mnist_uint8(root, f"{source}-to-{'digits' if source == 'mnist' else 'mnist'}")
    dx, dy = _digits_images()
    mtr, mva = _draw(len(m["train_y"]), [mnist_train, mnist_val], data_seed, 5, "mnist-digits")
    (mte,) = _draw(len(m["test_y"]), [mnist_test], data_seed, 6, "mnist-digits")
    if digits_train + digits_val >= len(dy):
        raise ConfigError(f"mnist-digits: digits_train + digits_val must leave test images out of {len(dy)}")
    dtr, dva, dte = _draw(len(dy), [digits_train, digits_val, len(dy) - digits_train - digits_val], data_seed, 7,
                          "mnist-digits")
    fmt = functools.partial(to_common_format, size=size)
    domains = {
        "mnist": {"train_x": fmt(m["train_x"][mtr]), "train_y": m["train_y"][mtr], "val_x": fmt(m["train_x"][mva]),
                  "val_y": m["train_y"][mva], "test_x": fmt(m["test_x"][mte]), "test_y": m["test_y"][mte],
                  "train_source": mtr, "val_source": mva, "test_source": mte},
        "digits": {"train_x": fmt(dx[dtr]), "train_y": dy[dtr], "val_x": fmt(dx[dva]), "val_y": dy[dva],
                   "test_x": fmt(dx[dte]), "test_y": dy[dte], "train_source": dtr, "val_source": dva,
                   "test_source": dte},
    }
    mean, std = float(domains[source]["train_x"].mean()), float(domains[source]["train_x"].std())
    for d in domains.values():
        for k in ("train_x", "val_x", "test_x"):
            d[k] = (d[k] - mean) / std
    target = "digits" if source == "mnist" else "mnist"
    info = {"classes": [str(i) for i in range(10)], "channel_mean": [mean], "channel_std": [std],
            "value_range": ([-mean / std], [(1 - mean) / std]), "size": size}
    return make_domain_bundle(domains, [source], [target], num_classes=10, name=f"{source}-to-{target}",
                              seed=data_seed, info=info)


# --------------------------------------------------------------------------- named tasks

class DomainCNN(torch.nn.Module):
    """The domain tasks' model: [conv3x3 -> ReLU -> MaxPool(2)] per entry of `channels` -> flatten
    -> Linear(hidden) -> ReLU (together `features`, the featurizer) -> Linear (`head`, the
    classifier). No normalization layers, so per-example gradients, Hessians and weight averages
    need no batch statistics; `features(x)` gives the representation a domain classifier reads."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32),
                 hidden: int = 128) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"DomainCNN needs images [C, H, W], got input shape {list(input_shape)}")
        if not channels or min(channels) < 1 or hidden < 1:
            raise ConfigError(f"DomainCNN: channels must be positive widths and hidden >= 1, got {channels}, {hidden}")
        layers: list[torch.nn.Module] = []
        cin, h, w = input_shape
        for c in channels:
            layers += [torch.nn.Conv2d(cin, c, 3, padding=1), torch.nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(torch.nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            cin = c
        layers += [torch.nn.Flatten(), torch.nn.Linear(cin * h * w, hidden), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _cnn(input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> torch.nn.Module:
    return DomainCNN(input_shape, num_classes, **kwargs)


def domain_tasks() -> list[Task]:
    """The named multi-domain tasks (registered in trainlab.tasks.registry)."""
    # Adam at 1e-3 without weight decay: DomainBed's defaults for its MNIST datasets. suite_seconds: one
    # run's wall time measured here on a shared, loaded 2-core machine (CPU time 7-14 s)
    common = dict(make_model=_cnn, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", batch_size=64)
    return [
        Task(name="rotated-mnist", make_data=rotated_mnist, epochs=6, suite_seconds=57,
             description="Rotated MNIST: 6 domains at 0..75 degrees, 1000 train + 200 val + 500 test images each; "
                         "target 75 degrees (data_kwargs target=<angle>); small CNN; needs MNIST files", **common),
        Task(name="colored-mnist", make_data=colored_mnist, epochs=4, suite_seconds=41,
             description="Colored MNIST (IRM / DomainBed): digit<5 with 25% label noise, colour agrees with the "
                         "label 90% / 80% in the training domains, 10% in the target; small CNN; needs MNIST files",
             **common),
        Task(name="mnist-to-digits", make_data=functools.partial(mnist_digits, source="mnist"), epochs=6,
             suite_seconds=27,
             description="MNIST (3000 labelled) -> scikit-learn digits, both 16x16: a resolution/style shift; "
                         "small CNN; needs MNIST files", **common),
        Task(name="digits-to-mnist", make_data=functools.partial(mnist_digits, source="digits"), epochs=15,
             suite_seconds=28,
             description="scikit-learn digits (1000 labelled) -> MNIST, both 16x16: the reverse shift; small CNN; "
                         "needs MNIST files", **common),
    ]
