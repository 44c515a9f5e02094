"""Multi-domain tasks (trainlab.tasks.domains): the bundle convention, rotations, the Colored MNIST
construction, MNIST <-> digits, per-domain metrics and training-domain-validation selection."""
import gzip
import math
import struct

import numpy as np
import pytest
import scipy.ndimage as ndimage
import torch

from trainlab.errors import ConfigError, DataError
from trainlab.tasks import datasets, domains
from trainlab.tasks.domains import (color_mnist, colored_mnist, domain_of, make_domain_bundle, mnist_digits,
                                    rotate_images, rotated_mnist, select_by_validation, to_common_format)
from trainlab.tasks.registry import get_task, task_names
from trainlab.tasks.task import Task


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Small fake IDX files (random images, labels cycling 0..9) at $TRAINLAB_MNIST."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (1200, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(1200) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (600, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": (np.arange(600) % 10).astype(np.uint8)}
    for stem, a in arrays.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx(a)))
    monkeypatch.setenv("TRAINLAB_MNIST", str(folder))
    datasets.clear_memory_cache()
    yield {k: torch.from_numpy(v) for k, v in arrays.items()}
    datasets.clear_memory_cache()


def _toy_domains(n_train=40, n_test=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(["a", "b", "c"]):
        y = torch.randint(0, 3, (n_train + n_test,), generator=g)
        x = torch.randn(n_train + n_test, 4, generator=g) + i
        out[name] = {"train_x": x[:n_train], "train_y": y[:n_train], "test_x": x[n_train:], "test_y": y[n_train:]}
    return out


# --------------------------------------------------------------------------- the bundle convention

def test_make_domain_bundle_layout_indices_and_disjoint_validation():
    doms = _toy_domains()
    b = make_domain_bundle(doms, ["a", "b"], ["c"], num_classes=3, val_fraction=0.25, seed=1)
    info = b.info
    assert info["train_domains"] == ["a", "b"] and info["target_domains"] == ["c"]
    assert info["domain_names"] == ["a", "b", "c"]
    assert len(b.train_y) == 60 and info["train_domain_index"].tolist() == [0] * 30 + [1] * 30
    assert torch.equal(b.test_x, doms["c"]["test_x"]) and torch.equal(b.test_y, doms["c"]["test_y"])
    assert torch.equal(info["target_train_x"], info["domains"]["c"]["train_x"])
    for j, name in enumerate(["a", "b"]):
        d = info["domains"][name]
        # train and validation partition the domain's original training rows
        rows = torch.cat([d["train_x"], d["val_x"]])
        assert len(d["val_y"]) == 10 and len(d["train_y"]) == 30
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, doms[name]["train_x"].tolist()))
        assert not set(map(tuple, d["train_x"].tolist())) & set(map(tuple, d["val_x"].tolist()))
        # the domain index picks exactly this domain's rows out of the pooled training set
        assert torch.equal(b.train_x[info["train_domain_index"] == j], d["train_x"])
        assert torch.equal(info["val_x"][info["val_domain_index"] == j], d["val_x"])
    idx = torch.tensor([0, 35, 59, 3])
    assert domain_of(b, idx).tolist() == [0, 1, 1, 0]
    # the same seed gives the same split; another seed another one
    again = make_domain_bundle(doms, ["a", "b"], ["c"], num_classes=3, val_fraction=0.25, seed=1)
    other = make_domain_bundle(doms, ["a", "b"], ["c"], num_classes=3, val_fraction=0.25, seed=2)
    assert again.fingerprint() == b.fingerprint() and other.fingerprint() != b.fingerprint()


def test_make_domain_bundle_refuses_bad_input():
    doms = _toy_domains()
    with pytest.raises(ConfigError, match="unknown domain"):
        make_domain_bundle(doms, ["a"], ["z"], num_classes=3)
    with pytest.raises(ConfigError, match="both"):
        make_domain_bundle(doms, ["a", "c"], ["c"], num_classes=3)
    with pytest.raises(ConfigError, match=r"\[A-Za-z0-9_\]"):
        make_domain_bundle({"bad-name": doms["a"], "c": doms["c"]}, ["bad-name"], ["c"], num_classes=3)
    with pytest.raises(ConfigError, match="one input shape"):
        make_domain_bundle({"a": doms["a"], "c": {**doms["c"], "test_x": torch.zeros(10, 5)}}, ["a"], ["c"],
                           num_classes=3)
    with pytest.raises(ConfigError, match="validation"):
        make_domain_bundle(doms, ["a"], ["c"], num_classes=3, val_fraction=0.0)


def test_subset_wrapper_is_refused_clearly():
    from trainlab.tasks.wrappers import subset

    b = make_domain_bundle(_toy_domains(), ["a", "b"], ["c"], num_classes=3)
    with pytest.raises(ConfigError, match="train_subset"):
        domain_of(subset(b, 20), torch.arange(3))


def test_select_by_validation_takes_the_first_best_row():
    rows = [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.1}, {"epoch": 2, "val_acc": 0.8, "test_acc": 0.3},
            {"epoch": 3, "val_acc": 0.8, "test_acc": 0.9}, {"epoch": 4, "val_acc": math.nan, "test_acc": 1.0},
            {"epoch": 5, "val_acc": 0.7, "test_acc": 0.95}]
    assert select_by_validation(rows) == {"selected_test_acc": 0.3, "selected_epoch": 2.0}
    assert select_by_validation([{"epoch": 1, "test_acc": 0.5}]) == {}


# --------------------------------------------------------------------------- transforms

def test_rotate_images_matches_rot90_and_scipy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 9, 9, generator=g)
    assert torch.allclose(rotate_images(x, 90), torch.rot90(x, 1, dims=(2, 3)), atol=1e-6)   # counter-clockwise
    assert torch.allclose(rotate_images(x, -90), torch.rot90(x, -1, dims=(2, 3)), atol=1e-6)
    assert torch.equal(rotate_images(x, 0), x)
    img = torch.rand(1, 1, 12, 12, generator=g)
    for angle in (15.0, 30.0, 75.0):
        # scipy: bilinear about the centre, zeros outside the grid: an independent implementation
        ref = ndimage.rotate(img[0, 0].numpy(), angle, reshape=False, order=1, mode="grid-constant", cval=0.0)
        assert np.abs(rotate_images(img, angle)[0, 0].numpy() - ref).max() < 1e-5


def test_color_mnist_rates():
    n = 20_000
    g = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 10, (n,), generator=g)
    images = torch.rand(n, 4, 4, generator=g)
    for p in (0.9, 0.8, 0.1):
        x, label, colour = color_mnist(images, digits, p, g)
        # binomial sd at n = 20,000: <= 0.0035, so 0.015 is over 4 sd
        assert abs((label != (digits < 5).long()).float().mean().item() - 0.25) < 0.015
        assert abs((colour == label).float().mean().item() - p) < 0.015
        # the image sits in channel `colour`, the other channel is blank
        rows = torch.arange(n)
        assert torch.equal(x[rows, colour], images) and x[rows, 1 - colour].abs().sum() == 0


def test_to_common_format_area_and_bilinear():
    x = torch.rand(3, 28, 28)
    small = to_common_format(x, 14)
    assert torch.allclose(small, torch.nn.functional.avg_pool2d(x[:, None], 2), atol=1e-6)   # 28 -> 14: 2x2 means
    d = torch.rand(2, 8, 8)
    up = to_common_format(d, 16)
    assert up.shape == (2, 1, 16, 16)
    # bilinear x2 (align_corners=False): output pixel 5 sits at input coordinate 2.25
    expect = (0.75 * 0.75 * d[:, 2, 2] + 0.75 * 0.25 * d[:, 2, 3] + 0.25 * 0.75 * d[:, 3, 2] + 0.25 * 0.25 * d[:, 3, 3])
    assert torch.allclose(up[:, 0, 5, 5], expect, atol=1e-6)
    assert torch.equal(to_common_format(d, 8), d[:, None])


# --------------------------------------------------------------------------- MNIST-based domains (fake files)

def test_rotated_mnist_domains_are_rotations_of_their_source_images(fake_mnist):
    b = rotated_mnist(per_domain=100, val_per_domain=20, test_per_domain=50)
    assert b.info["train_domains"] == ["rot0", "rot15", "rot30", "rot45", "rot60"]
    assert b.info["target_domains"] == ["rot75"] and len(b.train_y) == 500 and len(b.test_y) == 50
    raw_train = fake_mnist["train-images-idx3-ubyte"].float() / 255
    raw_test = fake_mnist["t10k-images-idx3-ubyte"].float() / 255
    mean, std = datasets.MNIST_STATS["mnist"]
    sources = []
    for name, angle in zip(b.info["domain_names"], domains.ROTATIONS):
        d = b.info["domains"][name]
        for split, raw in (("train", raw_train), ("val", raw_train), ("test", raw_test)):
            want = (rotate_images(raw[d[f"{split}_source"]][:, None], angle) - mean) / std
            assert torch.allclose(d[f"{split}_x"], want, atol=1e-5)
            labels = fake_mnist["train-labels-idx1-ubyte" if raw is raw_train else "t10k-labels-idx1-ubyte"].long()
            assert torch.equal(d[f"{split}_y"], labels[d[f"{split}_source"]])
        sources += [("train", i) for i in d["train_source"].tolist() + d["val_source"].tolist()]
        sources += [("test", i) for i in d["test_source"].tolist()]
    assert len(sources) == len(set(sources))   # every image belongs to one domain and one split
    assert torch.equal(b.test_x, b.info["domains"]["rot75"]["test_x"])
    other = rotated_mnist(per_domain=100, val_per_domain=20, test_per_domain=50, target=30)
    assert other.info["target_domains"] == ["rot30"] and "rot75" in other.info["train_domains"]
    with pytest.raises(ConfigError, match="target angle"):
        rotated_mnist(per_domain=10, val_per_domain=2, test_per_domain=5, target=90)
    with pytest.raises(ConfigError, match="available"):
        rotated_mnist(per_domain=1000)


def test_colored_mnist_construction(fake_mnist):
    b = colored_mnist(per_domain=300, val_per_domain=60, test_per_domain=150)
    assert b.num_classes == 2 and b.input_shape == (2, 28, 28)
    assert b.info["train_domains"] == ["agree90", "agree80"] and b.info["target_domains"] == ["agree10"]
    raw = fake_mnist["train-images-idx3-ubyte"].float() / 255
    for name, d in b.info["domains"].items():
        src = d["train_source"]
        rows = torch.arange(len(src))
        assert torch.allclose(d["train_x"][rows, d["train_colour"]], raw[src], atol=1e-6)
        assert torch.equal(d["train_digit"], fake_mnist["train-labels-idx1-ubyte"].long()[src])
    # pooled over the domains' 300 + 60 + 150 examples each: rates near their targets (sd <= 0.02)
    for name, p in domains.COLOR_AGREEMENT.items():
        d = b.info["domains"][name]
        colour = torch.cat([d["train_colour"], d["val_colour"], d["test_colour"]])
        label = torch.cat([d["train_y"], d["val_y"], d["test_y"]])
        assert abs((colour == label).float().mean().item() - p) < 0.07
    tr = b.info["domains"]["agree90"]
    noise = (tr["train_y"] != (tr["train_digit"] < 5).long()).float().mean().item()
    assert abs(noise - 0.25) < 0.1


def test_mnist_digits_common_format(fake_mnist):
    b = mnist_digits(mnist_train=200, mnist_val=50, mnist_test=100, digits_train=1000, digits_val=200)
    assert b.input_shape == (1, 16, 16) and b.info["train_domains"] == ["mnist"]
    assert b.info["target_domains"] == ["digits"] and len(b.test_y) == 1797 - 1200
    src = b.info["domains"]["mnist"]["train_x"]
    assert abs(src.mean().item()) < 1e-4 and abs(src.std().item() - 1) < 1e-3   # standardized on the source
    rev = mnist_digits(source="digits", mnist_train=200, mnist_val=50, mnist_test=100)
    assert rev.info["train_domains"] == ["digits"] and len(rev.test_y) == 100
    eight = mnist_digits(size=8, mnist_train=200, mnist_val=50, mnist_test=100)
    assert eight.input_shape == (1, 8, 8)


def test_missing_mnist_files_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_MNIST", str(tmp_path / "nowhere"))
    datasets.clear_memory_cache()
    with pytest.raises(DataError, match="rotated-mnist.*TRAINLAB_MNIST.*trainlab data download mnist"):
        rotated_mnist()


def test_domain_tasks_are_registered():
    for name in ("rotated-mnist", "colored-mnist", "mnist-to-digits", "digits-to-mnist"):
        assert name in task_names() and get_task(name).description


# --------------------------------------------------------------------------- per-domain metrics in a run

def _toy_task() -> Task:
    def make_data():
        return make_domain_bundle(_toy_domains(n_train=60, n_test=20), ["a", "b"], ["c"], num_classes=3,
                                  name="toy-domains")

    return Task("toy-domains", make_data=make_data, make_model=lambda shape, k: torch.nn.Linear(shape[0], k),
                epochs=3, batch_size=16, lr=0.1)


def test_run_reports_per_domain_metrics_and_selection():
    from trainlab.training.metrics import evaluate
    from trainlab.training.trainer import dry_run, run_training

    task = _toy_task()
    result = run_training(task, seed=0, keep_state=True)
    keys = {"domain_a_acc", "domain_b_acc", "domain_c_acc", "source_test_acc", "domain_a_val_acc",
            "domain_b_val_acc", "val_acc", "selected_test_acc", "selected_epoch"}
    for row in result.epochs:
        assert keys <= set(row)
        assert "domain_c_val_acc" not in row
        assert row["domain_c_acc"] == row["test_acc"]
        assert row["val_acc"] == pytest.approx((row["domain_a_val_acc"] + row["domain_b_val_acc"]) / 2)
        assert row["source_test_acc"] == pytest.approx((row["domain_a_acc"] + row["domain_b_acc"]) / 2)
    assert result.final["selected_test_acc"] == select_by_validation(result.epochs)["selected_test_acc"]
    # the final metrics are the final model's accuracy on each domain's own test split
    from trainlab.tasks.loading import load_task_data

    data = load_task_data(task, 0)
    model = torch.nn.Linear(4, 3)
    model.load_state_dict(result.state)
    for name, d in data.info["domains"].items():
        acc = evaluate(model, d["test_x"], d["test_y"], 1024, torch.device("cpu"))["acc"]
        assert result.final[f"domain_{name}_acc"] == pytest.approx(acc)
    assert keys <= set(dry_run(task))


def test_techniques_read_the_domain_of_each_batch_example():
    from trainlab.training.technique import Technique
    from trainlab.training.trainer import run_training

    seen = []

    class Spy(Technique):
        name = "spy"
        family = "test"
        modifies = frozenset({"batch"})

        def transform_batch(self, batch, state):
            dom = domain_of(state.data, batch.indices)
            # the domain index matches the rows: domain j's inputs have mean near j (offsets 0 and 1)
            seen.append((dom.clone(), batch.inputs.mean(1)))
            return batch

    run_training(_toy_task(), [Spy()], seed=0)
    dom = torch.cat([d for d, _ in seen])
    means = torch.cat([m for _, m in seen])
    assert set(dom.tolist()) == {0, 1}
    assert means[dom == 1].mean() - means[dom == 0].mean() > 0.5


def test_plain_tasks_keep_their_keys():
    from trainlab.training.trainer import run_training

    result = run_training("blobs-mlp", seed=0)
    assert not any(k.startswith(("domain_", "selected_", "val_acc")) for k in result.final)


def test_domain_cnn_splits_features_and_head():
    from trainlab.tasks.domains import DomainCNN

    for shape in [(1, 28, 28), (2, 28, 28), (1, 16, 16), (1, 8, 8)]:
        model = DomainCNN(shape, 10, hidden=32)
        x = torch.randn(3, *shape)
        feats = model.features(x)
        assert feats.shape == (3, 32) and torch.equal(model(x), model.head(feats))
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with pytest.raises(ConfigError):
        DomainCNN((28, 28), 10)


def test_report_shows_per_domain_accuracy(tmp_path):
    from trainlab.claims.claim import Claim, arm
    from trainlab.claims.report import domain_names, write_report
    from trainlab.claims.result import ClaimResult
    from trainlab.claims.stats import analyze

    def run(a, b, c, val):   # two training domains a, b and the target c; 2 epochs
        rows = []
        for e in (1, 2):
            rows.append({"epoch": float(e), "test_acc": c * e / 2, "domain_a_acc": a * e / 2, "domain_b_acc": b * e / 2,
                         "domain_c_acc": c * e / 2, "domain_a_val_acc": val, "domain_b_val_acc": val,
                         "val_acc": val * e / 2, "selected_test_acc": c * e / 2})
        return rows

    claim = Claim(id="dom-claim", technique="mixup", task="rotated-mnist", metric="test_acc", direction="higher",
                  treatment=arm("mixup"))
    curves = {"baseline": [run(0.9, 0.8, 0.3, 0.85), run(0.9, 0.8, 0.5, 0.85)],
              "treatment": [run(0.9, 0.9, 0.6, 0.9), run(0.9, 0.9, 0.6, 0.9)]}
    r = ClaimResult(claim=claim.to_dict(), seeds=[0, 1], baseline_values=[0.3, 0.5], treatment_values=[0.6, 0.6],
                    analysis=analyze([0.6, 0.6], [0.3, 0.5], "higher", 0.0), curves=curves)
    assert domain_names(r) == {"a": "training", "b": "training", "c": "target"}
    paths = write_report([r], tmp_path)
    md = paths["markdown"].read_text()
    assert "Per-domain accuracy" in md
    # target c: baseline mean of the final values 0.3 and 0.5 = 40 %, treatment 60 %, +20 points
    line = next(ln for ln in md.splitlines() if ln.startswith("| c (target)"))
    assert "40" in line and "60" in line and "+20" in line
    assert paths["domains_dom-claim"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docstring_user_task_runs_from_a_file(tmp_path):
    """The module docstring's own-task snippet, saved as a file and named as file.py:shifted."""
    from trainlab.training.trainer import run_training

    doc = domains.__doc__
    start = doc.index("    import torch\n", doc.index("A user's own multi-domain task"))
    end = doc.index("\nand in a file", start)
    code = "\n".join(line[4:] for line in doc[start:end].splitlines())
    (tmp_path / "my_tasks.py").write_text(code)
    task = get_task(f"{tmp_path / 'my_tasks.py'}:shifted")
    result = run_training(task.with_overrides({"epochs": 2}), seed=0)
    assert {"domain_near_acc", "domain_mid_acc", "domain_far_acc", "domain_near_val_acc", "val_acc",
            "selected_test_acc"} <= set(result.final)
    assert result.final["domain_far_acc"] == result.final["test_acc"]
