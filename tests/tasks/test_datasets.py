"""Loaders in trainlab.tasks.datasets, on small files written by the tests (plus one real-data test)."""
import gzip
import hashlib
import io
import os
import pickle
import random
import struct
import tarfile
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainlab.errors import ConfigError, DataError
from trainlab.tasks import datasets
from trainlab.tasks.datasets import Remote

CIFAR_JPEG_SHA256 = "e3cac064e6704c4aee4b0becbd9ff0f6abc27ecbbaa1342d10c20bf3026cc8d4"


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    """Every test gets its own data and cache directories and an empty in-process cache."""
    monkeypatch.setenv("TRAINLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("TRAINLAB_CIFAR10", "TRAINLAB_MNIST", "TRAINLAB_FASHION_MNIST"):
        monkeypatch.delenv(var, raising=False)
    datasets.clear_memory_cache()
    yield
    datasets.clear_memory_cache()


def _unnormalize(x: torch.Tensor, info: dict) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * torch.tensor(info["channel_std"]).view(shape) + torch.tensor(info["channel_mean"]).view(shape)


# --------------------------------------------------------------------------- directories

def test_user_dirs_follow_env(tmp_path):
    assert datasets.user_data_dir() == tmp_path / "data"
    assert datasets.user_cache_dir() == tmp_path / "cache"


def test_default_dirs_are_outside_the_package(monkeypatch):
    monkeypatch.delenv("TRAINLAB_DATA_DIR")
    monkeypatch.delenv("TRAINLAB_CACHE_DIR")
    package = Path(datasets.__file__).resolve().parent.parent
    for d in (datasets.user_data_dir(), datasets.user_cache_dir()):
        assert package not in d.resolve().parents and "trainlab" in str(d)


# --------------------------------------------------------------------------- digits

def test_digits_split_and_standardization():
    b = datasets.digits()
    assert b.train_x.shape == (1437, 1, 8, 8) and b.test_x.shape == (360, 1, 8, 8)
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.long and b.num_classes == 10
    assert abs(b.train_x.mean().item()) < 1e-5 and abs(b.train_x.std(unbiased=False).item() - 1) < 1e-4
    # pixels were scaled to [0, 1] before standardizing: undoing it gives exactly that range
    raw = _unnormalize(torch.cat([b.train_x, b.test_x]), b.info)
    assert raw.min().item() == pytest.approx(0, abs=1e-5) and raw.max().item() == pytest.approx(1, abs=1e-5)
    # stratified: each class's share of the test set matches its share of all data within one example
    all_y = torch.cat([b.train_y, b.test_y])
    expected = torch.bincount(all_y).double() * 360 / len(all_y)
    assert (torch.bincount(b.test_y).double() - expected).abs().max() <= 1


def test_digits_is_deterministic_and_seeded():
    a = datasets.digits()
    datasets.clear_memory_cache()
    assert a.fingerprint() == datasets.digits().fingerprint()
    assert a.fingerprint() != datasets.digits(seed=1).fingerprint()
    with pytest.raises(ConfigError):
        datasets.digits(test_fraction=1.5)


def test_repeated_calls_reuse_memory_but_return_separate_bundles():
    a, b = datasets.digits(), datasets.digits()
    assert a is not b and a.train_x is b.train_x
    a.info["x"] = 1
    assert "x" not in b.info


# --------------------------------------------------------------------------- MNIST-1D

def test_mnist1d_generates_caches_and_keeps_global_rng(tmp_path):
    np.random.seed(123)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(7)
    b = datasets.mnist1d(num_samples=1000, seed=3)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert b.train_x.shape == (800, 1, 40) and b.test_x.shape == (200, 1, 40)
    assert abs(b.train_x.mean().item()) < 1e-5 and abs(b.train_x.std(unbiased=False).item() - 1) < 1e-4
    cached = list((tmp_path / "cache" / "mnist1d").glob("*.npz"))
    assert len(cached) == 1
    # labels are the package's own generator output
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 1000, 3
    assert torch.equal(b.train_y, torch.from_numpy(make_dataset(args)["y"]).long())
    datasets.clear_memory_cache()
    assert datasets.mnist1d(num_samples=1000, seed=3).fingerprint() == b.fingerprint()   # from the .npz
    assert datasets.mnist1d(num_samples=1000, seed=4).fingerprint() != b.fingerprint()


# --------------------------------------------------------------------------- CIFAR-10: image folders

CLASSES = ["cat", "dog", "frog"]


def _color(split: str, c: int, i: int) -> tuple[int, int, int]:
    return (40 + 60 * c, 30 + 20 * i, 200 if split == "train" else 100)


def _image_tree(root: Path, n_train: int = 4, n_test: int = 2, fmt: str = "JPEG") -> Path:
    """train/<class>/NNNN.jpg and test/<class>/NNNN.jpg holding flat-coloured 32x32 images."""
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                ext = "jpg" if fmt == "JPEG" else "png"
                Image.new("RGB", (32, 32), _color(split, c, i)).save(folder / f"{i:04d}.{ext}", fmt, quality=95)
    return root


def _tar_gz(folder: Path, out: Path, arcname: str = "") -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(folder, arcname=arcname or folder.name)
    return out


def _check_tiny_cifar(b, n_train=4, n_test=2):
    assert b.train_x.shape == (3 * n_train, 3, 32, 32) and b.test_x.shape == (3 * n_test, 3, 32, 32)
    assert b.train_x.dtype == torch.float32 and b.info["classes"] == CLASSES and b.num_classes == 3
    assert b.train_y.tolist() == [c for c in range(3) for _ in range(n_train)]
    pixels = _unnormalize(b.train_x, b.info) * 255
    for row, (c, i) in enumerate((c, i) for c in range(3) for i in range(n_train)):
        mean_colour = pixels[row].mean(dim=(1, 2))
        assert torch.allclose(mean_colour, torch.tensor(_color("train", c, i), dtype=torch.float32), atol=3)


def test_cifar10_from_image_folder_directory(tmp_path):
    _check_tiny_cifar(datasets.cifar10(_image_tree(tmp_path / "tiny")))


def test_cifar10_png_folders_decode_exactly(tmp_path):
    b = datasets.cifar10(_image_tree(tmp_path / "tiny", fmt="PNG"))
    pixels = (_unnormalize(b.test_x, b.info) * 255).round()
    assert torch.equal(pixels[-1, :, 0, 0], torch.tensor(_color("test", 2, 1), dtype=torch.float32))


def test_cifar10_from_tarball_matches_directory_and_caches(tmp_path, monkeypatch):
    tree = _image_tree(tmp_path / "tiny")
    archive = _tar_gz(tree, tmp_path / "cifar10-tiny.tar.gz", arcname="some-prefix")
    from_dir = datasets.cifar10(tree)
    from_tar = datasets.cifar10(archive)
    _check_tiny_cifar(from_tar)
    assert from_tar.fingerprint() == from_dir.fingerprint()
    assert len(list((tmp_path / "cache" / "cifar10").glob("*/train_x.npy"))) == 2
    # a second load reads the cached arrays and never decodes again
    datasets.clear_memory_cache()
    monkeypatch.setattr(datasets, "_decode_cifar", lambda source: pytest.fail("decoded twice"))
    assert datasets.cifar10(archive).fingerprint() == from_dir.fingerprint()


def test_cifar10_default_locations(tmp_path, monkeypatch):
    tree = _image_tree(tmp_path / "tiny")
    monkeypatch.setenv("TRAINLAB_CIFAR10", str(tree))
    _check_tiny_cifar(datasets.cifar10())
    monkeypatch.delenv("TRAINLAB_CIFAR10")
    default = tmp_path / "data" / "cifar10"
    default.mkdir(parents=True)
    _tar_gz(tree, default / "cifar10-small.tar.gz")
    _check_tiny_cifar(datasets.cifar10())


def test_cifar10_missing_names_env_var_and_download(tmp_path):
    with pytest.raises(DataError, match="TRAINLAB_CIFAR10.*trainlab data download cifar10"):
        datasets.cifar10()
    with pytest.raises(DataError, match="not found"):
        datasets.cifar10(tmp_path / "nowhere")


def test_cifar10_train_subset_is_stratified(tmp_path):
    b = datasets.cifar10(_image_tree(tmp_path / "tiny", n_train=6), train_subset=9)
    assert torch.bincount(b.train_y).tolist() == [3, 3, 3] and len(b.test_y) == 6


def test_cifar10_known_archive_name_is_checksummed(tmp_path):
    fake = _tar_gz(_image_tree(tmp_path / "tiny"), tmp_path / "cifar10-jpeg.tar.gz")
    with pytest.raises(DataError, match="sha256"):
        datasets.cifar10(fake)


def test_cifar10_bad_images_name_the_file(tmp_path):
    tree = _image_tree(tmp_path / "tiny")
    (tree / "train" / "dog" / "0001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="0001.jpg: not a readable image"):
        datasets.cifar10(tree)
    tree2 = _image_tree(tmp_path / "tiny2")
    Image.new("RGB", (16, 16)).save(tree2 / "test" / "cat" / "0000.jpg")
    with pytest.raises(DataError, match="0000.jpg: image is 16x16"):
        datasets.cifar10(tree2)


def test_cifar10_truncated_archive(tmp_path):
    archive = _tar_gz(_image_tree(tmp_path / "tiny"), tmp_path / "cifar10-tiny.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read the archive"):
        datasets.cifar10(archive)


# --------------------------------------------------------------------------- CIFAR-10: python batches

def _batches(folder: Path, per_batch: int = 5, protocol: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Files shaped like the official release: pickled dicts with b'data' [N, 3072] uint8, b'labels'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (data, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in datasets.CIFAR10_CLASSES]}))
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_python_batches_exact(tmp_path, protocol):
    written = _batches(tmp_path / "cifar-10-batches-py", protocol=protocol)
    b = datasets.cifar10(tmp_path)
    assert b.train_x.shape == (25, 3, 32, 32) and b.test_x.shape == (5, 3, 32, 32)
    assert b.info["classes"] == list(datasets.CIFAR10_CLASSES)
    pixels = (_unnormalize(b.train_x, b.info) * 255).round().to(torch.uint8)
    first = torch.from_numpy(written["data_batch_1"][0]).view(-1, 3, 32, 32)
    assert torch.equal(pixels[:5], first)   # row layout: 1024 red, then green, then blue, row-major
    assert b.train_y[5:10].tolist() == written["data_batch_2"][1]
    assert b.test_y.tolist() == written["test_batch"][1]


def test_cifar10_python_batches_from_tarball(tmp_path):
    _batches(tmp_path / "src" / "cifar-10-batches-py")
    archive = _tar_gz(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar10-batches.tar.gz")
    assert datasets.cifar10(archive).fingerprint() == datasets.cifar10(tmp_path / "src").fingerprint()


_CALLED = []


def _mark_called(*args):
    _CALLED.append(args)


class _Payload:
    def __reduce__(self):
        return (_mark_called, ("pickle ran code",))


def test_cifar10_batches_refuse_arbitrary_objects(tmp_path):
    _batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_3").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [1]}))
    with pytest.raises(DataError, match="data_batch_3.*refusing to load .*_mark_called"):
        datasets.cifar10(tmp_path / "b")
    assert _CALLED == []


def test_cifar10_batches_validated(tmp_path):
    _batches(tmp_path / "missing")
    (tmp_path / "missing" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        datasets.cifar10(tmp_path / "missing")
    _batches(tmp_path / "float")
    bad = {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}
    (tmp_path / "float" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="test_batch: b'data' must be a uint8 array"):
        datasets.cifar10(tmp_path / "float")
    _batches(tmp_path / "labels")
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}
    (tmp_path / "labels" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="labels must be integers 0..9"):
        datasets.cifar10(tmp_path / "labels")


# --------------------------------------------------------------------------- MNIST IDX

def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _mnist_files(folder: Path, compress: bool, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx(a)))
        else:
            (folder / stem).write_bytes(_idx(a))
    return arrays


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("kind", ["mnist", "fashion"])
def test_mnist_reads_idx_exactly(tmp_path, compress, kind):
    arrays = _mnist_files(tmp_path / "m", compress)
    b = datasets.mnist(tmp_path / "m", kind=kind)
    assert b.train_x.shape == (5, 1, 28, 28) and b.test_x.shape == (3, 1, 28, 28) and b.num_classes == 10
    pixels = (_unnormalize(b.test_x, b.info) * 255).round().to(torch.uint8)[:, 0]
    assert torch.equal(pixels, torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert b.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert b.name == ("fashion-mnist" if kind == "fashion" else "mnist")
    assert (b.info["classes"][0] == "T-shirt/top") == (kind == "fashion")


def test_mnist_default_location_and_missing(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="TRAINLAB_FASHION_MNIST.*trainlab data download fashion-mnist"):
        datasets.mnist(kind="fashion")
    _mnist_files(tmp_path / "data" / "mnist", compress=True)
    assert len(datasets.mnist().train_y) == 5
    _mnist_files(tmp_path / "elsewhere", compress=False, n_train=7)
    monkeypatch.setenv("TRAINLAB_MNIST", str(tmp_path / "elsewhere"))
    assert len(datasets.mnist().train_y) == 7
    with pytest.raises(ConfigError):
        datasets.mnist(kind="kmnist")


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x00\x00\x08\x01" + raw[4:], "train-images-idx3-ubyte.gz: not an IDX file.*0x00000801"),
    (lambda raw: raw[:-10], "train-images-idx3-ubyte.gz: header promises 3920 bytes .* but 3910 follow"),
    (lambda raw: raw[:2], "train-images-idx3-ubyte.gz: not an IDX file.*truncated header"),
])
def test_mnist_corrupt_idx(tmp_path, damage, message):
    _mnist_files(tmp_path / "m", compress=True)
    path = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes()))))
    with pytest.raises(DataError, match=message):
        datasets.mnist(tmp_path / "m")


def test_mnist_corrupt_gzip_and_label_mismatch(tmp_path):
    _mnist_files(tmp_path / "gz", compress=True)
    path = tmp_path / "gz" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        datasets.mnist(tmp_path / "gz")
    _mnist_files(tmp_path / "n", compress=False)
    (tmp_path / "n" / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: 4 labels for 5 images"):
        datasets.mnist(tmp_path / "n")


# --------------------------------------------------------------------------- downloads (fake server)

class FakeServer:
    """Serves bytes by URL; an Exception value is raised instead (a dead mirror)."""

    def __init__(self, files):
        self.files, self.requests = files, []

    def __call__(self, url):
        self.requests.append(url)
        value = self.files[url]
        if isinstance(value, Exception):
            raise value
        return io.BytesIO(value)


def _fake_mnist_remotes(tmp_path, monkeypatch):
    _mnist_files(tmp_path / "origin", compress=True)
    remotes, served = [], {}
    for path in sorted((tmp_path / "origin").iterdir()):
        blob = path.read_bytes()
        urls = (f"https://dead.example/{path.name}", f"https://mirror.example/{path.name}")
        remotes.append(Remote(path.name, urls, len(blob), hashlib.sha256(blob).hexdigest()))
        served[urls[0]] = urllib.error.URLError("unreachable")
        served[urls[1]] = blob
    monkeypatch.setitem(datasets.DOWNLOADS, "mnist", tuple(remotes))
    return FakeServer(served)


def test_download_uses_mirrors_checks_and_loads(tmp_path, monkeypatch):
    server = _fake_mnist_remotes(tmp_path, monkeypatch)
    folder = datasets.download("mnist", opener=server)
    assert folder == tmp_path / "data" / "mnist" and len(server.requests) == 8
    assert len(datasets.mnist().train_y) == 5
    datasets.download("mnist", opener=server)   # files already there and verified: nothing fetched
    assert len(server.requests) == 8


def test_download_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    server = _fake_mnist_remotes(tmp_path, monkeypatch)
    first = datasets.DOWNLOADS["mnist"][0]
    server.files[first.urls[1]] = b"tampered" + server.files[first.urls[1]][8:]
    with pytest.raises(DataError, match=f"could not download {first.filename}:.*sha256 checksum mismatch"):
        datasets.download("mnist", tmp_path / "dl", opener=server)
    assert not any((tmp_path / "dl").iterdir())


def test_download_refuses_oversized_response(tmp_path, monkeypatch):
    server = _fake_mnist_remotes(tmp_path, monkeypatch)
    first = datasets.DOWNLOADS["mnist"][0]
    server.files[first.urls[1]] += b"x" * 10
    with pytest.raises(DataError, match="more than the expected"):
        datasets.download("mnist", tmp_path / "dl", opener=server)


def test_download_default_opener_is_urllib(tmp_path, monkeypatch):
    server = _fake_mnist_remotes(tmp_path, monkeypatch)
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: server(url))
    datasets.download("mnist", tmp_path / "dl")
    assert len(datasets.mnist(tmp_path / "dl").test_y) == 3


def test_download_table_matches_loaders():
    with pytest.raises(ConfigError, match="unknown dataset"):
        datasets.download("imagenet")
    for name, remotes in datasets.DOWNLOADS.items():
        for r in remotes:
            assert len(r.sha256) == 64 and r.urls and r.size > 0
    stems = {r.filename for r in datasets.DOWNLOADS["mnist"]}
    assert stems == {f"{s}.gz" for s in datasets._IDX_STEMS.values()}
    assert {r.filename for r in datasets.DOWNLOADS["fashion-mnist"]} == stems
    assert datasets.DOWNLOADS["cifar10"][0].filename == "cifar-10-python.tar.gz"


# --------------------------------------------------------------------------- algorithmic tasks

@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_modular_arithmetic_labels(op):
    p = 13
    b = datasets.modular_arithmetic(p=p, op=op, train_fraction=0.3, seed=1)
    x, y = torch.cat([b.train_x, b.test_x]), torch.cat([b.train_y, b.test_y])
    n = p * (p - 1) if op == "/" else p * p
    assert x.shape == (n, 4) and x.dtype == torch.long and len(b.train_y) == round(0.3 * n)
    assert len({tuple(r) for r in x[:, [0, 2]].tolist()}) == n   # every pair exactly once
    assert (x[:, 1] == p).all() and (x[:, 3] == p + 1).all()
    assert b.info["vocab_size"] == p + 2 and b.info["seq_len"] == 4 and b.num_classes == p
    for (a, _, c, _), label in zip(x.tolist(), y.tolist()):
        if op == "/":
            assert (label * c) % p == a
        else:
            assert label == {"+": a + c, "-": a - c, "*": a * c}[op] % p


def test_modular_arithmetic_split_is_seeded_and_validated():
    a = datasets.modular_arithmetic()
    assert a.num_classes == 97 and a.info["vocab_size"] == 99
    assert a.fingerprint() == datasets.modular_arithmetic().fingerprint()
    assert a.fingerprint() != datasets.modular_arithmetic(seed=1).fingerprint()
    with pytest.raises(ConfigError, match="prime"):
        datasets.modular_arithmetic(p=12, op="/")
    with pytest.raises(ConfigError):
        datasets.modular_arithmetic(op="^")


def test_synthetic_sequence_label_is_unique_majority_token():
    b = datasets.synthetic_sequence(n_train=600, n_test=200, seq_len=12, vocab=5, seed=3)
    assert b.train_x.shape == (600, 12) and b.test_x.shape == (200, 12) and b.train_x.dtype == torch.long
    assert b.info["vocab_size"] == 5 and b.info["seq_len"] == 12 and b.num_classes == 5
    for seq, label in zip(torch.cat([b.train_x, b.test_x]).tolist(), torch.cat([b.train_y, b.test_y]).tolist()):
        (top, n_top), *rest = Counter(seq).most_common()
        assert top == label and all(n < n_top for _, n in rest)
    # no single position gives the label away (chance is 1/5)
    agree = [(b.train_x[:, i] == b.train_y).float().mean().item() for i in range(12)]
    assert max(agree) < 0.45
    assert torch.bincount(b.train_y).min() > 80   # balanced in expectation (120 each)
    assert b.fingerprint() == datasets.synthetic_sequence(600, 200, 12, 5, seed=3).fingerprint()


# --------------------------------------------------------------------------- the real CIFAR-10 archive

def _shared_cifar() -> Path:
    env = os.environ.get("TRAINLAB_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return base if base.is_file() else base / "cifar10-jpeg.tar.gz"


@pytest.mark.slow
def test_real_cifar10_jpeg_archive():
    path = _shared_cifar()
    if not path.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {path} (set TRAINLAB_SHARED_DATA to the shared/data folder)")
    b = datasets.cifar10(path)
    assert b.train_x.shape == (50000, 3, 32, 32) and b.test_x.shape == (10000, 3, 32, 32)
    assert b.info["classes"] == list(datasets.CIFAR10_CLASSES)
    assert torch.bincount(b.train_y).tolist() == [5000] * 10 and torch.bincount(b.test_y).tolist() == [1000] * 10
    means = _unnormalize(b.train_x, b.info).mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-4)
    assert datasets._sha256(path) == CIFAR_JPEG_SHA256
