"""Built-in datasets, returned as in-memory DataBundles and read from local files only.

- `digits`: scikit-learn's 8x8 digits (1,797 images, shipped inside scikit-learn).
- `mnist1d`: MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", 2020,
  arXiv:2011.14439), generated locally by the `mnist1d` package.
- `cifar10`: CIFAR-10 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009),
  from an image-folder tree / .tar.gz of it, or from the official python batches / their tarball.
- `mnist`: MNIST (LeCun et al., 1998) or Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747)
  from the standard IDX files.
- `modular_arithmetic`: the algorithmic task of Power et al., "Grokking: Generalization Beyond
  Overfitting on Small Algorithmic Datasets", 2022, arXiv:2201.02177.
- `synthetic_sequence`: "which token occurs most often?", a task that needs attention.
- `stdlib_text`: character-level language modelling on the Python standard library's own source
  files (not classification: next-character targets per position).

Nothing here touches the network except `download`, which only the `trainlab data download`
command calls. Decoded arrays are cached under `user_cache_dir()` (never inside the package), and
each loader keeps its last results in memory, so repeated runs in one process do not reload.
Tensors returned by the loaders are shared with that in-memory cache: treat them as read-only.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import struct
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np
import torch

from trainlab.errors import ConfigError, DataError
from trainlab.tasks.task import DataBundle

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_STATS = {"mnist": (0.1307, 0.3081), "fashion": (0.2860, 0.3530)}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
# Files whose content is known: a file with this name must have this sha256.
KNOWN_SHA256 = {
    "cifar10-jpeg.tar.gz": "e3cac064e6704c4aee4b0becbd9ff0f6abc27ecbbaa1342d10c20bf3026cc8d4",
    "cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_FORMAT = 1   # bump when the cached arrays' layout changes


# --------------------------------------------------------------------------- directories

def user_data_dir() -> Path:
    """Where datasets live: $TRAINLAB_DATA_DIR, else the platform's user data directory."""
    env = os.environ.get("TRAINLAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("trainlab"))


def user_cache_dir() -> Path:
    """Where decoded arrays are cached: $TRAINLAB_CACHE_DIR, else the platform's user cache directory."""
    env = os.environ.get("TRAINLAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("trainlab"))


def clear_memory_cache() -> None:
    """Forget the in-process copies (the on-disk cache stays)."""
    for fn in (_digits, _mnist1d, _cifar10, _mnist, _modular_arithmetic, _synthetic_sequence, _stdlib_text):
        fn.cache_clear()


# --------------------------------------------------------------------------- small helpers

def _fresh(bundle: DataBundle) -> DataBundle:
    """A new DataBundle object over the cached tensors, so callers can replace fields freely."""
    return dataclasses.replace(bundle, info=dict(bundle.info))


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Scale both splits with the train split's mean and std (one value for all features)."""
    mean, std = float(train.mean()), float(train.std())
    f = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    return f(train), f(test), mean, std


def _value_range(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per channel, where underlying values 0 and 1 land after (v - mean) / std."""
    return [-m / s for m, s in zip(mean, std)], [(1 - m) / s for m, s in zip(mean, std)]


def _normalize_uint8(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 (x / 255 - mean) / std per channel."""
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int]:
    """Identifies a file's current version without reading it (for the in-process cache)."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write to a temporary name and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- digits

def digits(test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn's digits as [N, 1, 8, 8] images: pixels scaled to [0, 1], then standardized
    with the train split's mean/std. The split is stratified and fixed by `seed`."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    return _fresh(_digits(float(test_fraction), int(seed)))


@functools.lru_cache(maxsize=4)
def _digits(test_fraction: float, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(images, data.target, test_size=test_fraction,
                                              stratify=data.target, random_state=seed)
    train_x, test_x, mean, std = _standardize(x_tr, x_te)
    info = {"classes": [str(i) for i in range(10)], "channel_mean": [mean], "channel_std": [std],
            "value_range": _value_range([mean], [std])}
    return DataBundle(train_x, torch.from_numpy(y_tr).long(), test_x, torch.from_numpy(y_te).long(),
                      num_classes=10, name="digits", info=info)


# --------------------------------------------------------------------------- MNIST-1D

def mnist1d(num_samples: int = 5000, seed: int = 42) -> DataBundle:
    """MNIST-1D signals as [N, 1, 40], standardized with the train split's mean/std.

    Generated locally with `mnist1d.data.make_dataset` (80/20 train/test split, as the package does);
    the arrays are cached as .npz in the user cache directory, keyed by the generation settings."""
    if num_samples < 20:
        raise ConfigError(f"mnist1d: num_samples must be at least 20, got {num_samples}")
    return _fresh(_mnist1d(int(num_samples), int(seed)))


@functools.lru_cache(maxsize=4)
def _mnist1d(num_samples: int, seed: int) -> DataBundle:
    arrays = _mnist1d_arrays(num_samples, seed)
    train_x, test_x, mean, std = _standardize(arrays["x"][:, None, :], arrays["x_test"][:, None, :])
    info = {"classes": [str(i) for i in range(10)], "channel_mean": [mean], "channel_std": [std]}
    return DataBundle(train_x, torch.from_numpy(arrays["y"]).long(), test_x, torch.from_numpy(arrays["y_test"]).long(),
                      num_classes=10, name="mnist1d", info=info)


def _mnist1d_arrays(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    from importlib.metadata import version

    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=seed)
    args.pop("url", None)
    key = hashlib.sha256(json.dumps([args, version("mnist1d")], sort_keys=True).encode()).hexdigest()[:16]
    path = user_cache_dir() / "mnist1d" / f"mnist1d-{key}.npz"
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError):   # absent or damaged: generate again
        pass
    arrays = _generate_mnist1d(args)
    _write_atomic(path, lambda f: np.savez(f, **arrays))
    return arrays


def _generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    np_state, py_state = np.random.get_state(), random.getstate()
    try:   # make_dataset reseeds the global RNGs; put them back so callers are unaffected
        data = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64)}


# --------------------------------------------------------------------------- CIFAR-10

def cifar10(root: str | os.PathLike[str] | None = None, train_subset: int | None = None) -> DataBundle:
    """CIFAR-10 as float32 [N, 3, 32, 32], normalized with the standard channel mean/std.

    `root` is a directory or .tar.gz holding either the image-folder layout (`train/<class>/*.jpg`,
    `test/<class>/*.jpg`) or the official python batches (`cifar-10-batches-py/`). `root=None`
    means $TRAINLAB_CIFAR10, else `<user_data_dir()>/cifar10` (a directory, or one holding a
    cifar10*.tar.gz / cifar-10-python.tar.gz). The first load decodes and caches uint8 arrays in
    the user cache directory. `train_subset`: keep a stratified subset of that many training images.
    """
    source = _find_cifar_source(root)
    bundle = _fresh(_cifar10(_stat_key(source)))
    if train_subset is not None:
        from trainlab.tasks.wrappers import subset

        bundle = subset(bundle, train_subset, seed=0)
    return bundle


@functools.lru_cache(maxsize=2)
def _cifar10(source_key: tuple[str, int, int]) -> DataBundle:
    source = Path(source_key[0])
    arrays, classes = _cifar10_uint8(source)
    info = {"classes": classes, "channel_mean": list(CIFAR10_MEAN), "channel_std": list(CIFAR10_STD),
            "value_range": _value_range(CIFAR10_MEAN, CIFAR10_STD), "source": str(source)}
    return DataBundle(_normalize_uint8(arrays["train_x"], CIFAR10_MEAN, CIFAR10_STD),
                      torch.from_numpy(arrays["train_y"]).long(),
                      _normalize_uint8(arrays["test_x"], CIFAR10_MEAN, CIFAR10_STD),
                      torch.from_numpy(arrays["test_y"]).long(), num_classes=len(classes), name="cifar10", info=info)


def _find_cifar_source(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        env = os.environ.get("TRAINLAB_CIFAR10")
        path = Path(env).expanduser() if env else user_data_dir() / "cifar10"
    else:
        path = Path(root).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if _cifar_dir_layout(path):
            return path
        archives = sorted({*path.glob("cifar10*.tar.gz"), *path.glob("cifar-10*.tar.gz")})
        if archives:
            return archives[0]
    raise DataError(f"CIFAR-10 not found at {path} (need train/<class>/*.jpg and test/<class>/*.jpg, "
                    "cifar-10-batches-py/, or a .tar.gz of either): set TRAINLAB_CIFAR10 to its location "
                    "or run `trainlab data download cifar10`")


def _cifar_dir_layout(path: Path) -> str | None:
    if (path / "train").is_dir() and (path / "test").is_dir():
        return "folders"
    if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py" / "data_batch_1").is_file():
        return "batches"
    return None


def _cifar10_uint8(source: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decoded uint8 arrays, from the disk cache when the source has not changed."""
    if source.is_file():
        digest = _sha256(source)
        expected = KNOWN_SHA256.get(source.name)
        if expected and digest != expected:
            raise DataError(f"{source}: sha256 is {digest}, expected {expected} (damaged or different file)")
        key = digest[:24]
    else:
        key = "dir-" + hashlib.sha256(repr(_tree_signature(source)).encode()).hexdigest()[:20]
    cache = user_cache_dir() / "cifar10" / f"v{_CACHE_FORMAT}-{key}"
    names = ("train_x", "train_y", "test_x", "test_y")
    try:
        classes = json.loads((cache / "classes.json").read_text())
        return {n: np.load(cache / f"{n}.npy") for n in names}, classes
    except (OSError, ValueError):   # not cached yet (or damaged): decode
        pass
    arrays, classes = _decode_cifar(source)
    _save_dir_atomic(cache, arrays, classes)
    return arrays, classes


def _tree_signature(root: Path) -> list[tuple[str, int, int]]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


def _save_dir_atomic(target: Path, arrays: dict[str, np.ndarray], classes: list[str]) -> None:
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", a)
    (tmp / "classes.json").write_text(json.dumps(classes))
    try:
        os.replace(tmp, target)
    except OSError:   # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)


def _decode_cifar(source: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    if source.is_dir():
        layout = _cifar_dir_layout(source)
        if layout == "batches":
            base = source / "cifar-10-batches-py" if (source / "cifar-10-batches-py").is_dir() else source
            files = {p.name: (str(p), p.read_bytes()) for p in base.iterdir() if p.is_file()}
            return _from_batches(files)
        items = [(str(p), p.read_bytes()) for p in sorted(source.glob("*/*/*"))
                 if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
        return _from_images(items, source)
    images, batches = _read_cifar_archive(source)
    if batches:
        return _from_batches(batches)
    return _from_images(images, source)


def _read_cifar_archive(path: Path) -> tuple[list[tuple[str, bytes]], dict[str, tuple[str, bytes]]]:
    """Image members (name, bytes) and python-batch members {basename: (name, bytes)} of a tarball."""
    images: list[tuple[str, bytes]] = []
    batches: dict[str, tuple[str, bytes]] = {}
    batch_names = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if not m.isfile() or base.startswith("."):
                    continue
                if base in batch_names:
                    batches[base] = (m.name, tf.extractfile(m).read())
                elif base.lower().endswith(_IMAGE_SUFFIXES):
                    images.append((m.name, tf.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the archive ({e})") from None
    return images, batches


def _from_images(items: list[tuple[str, bytes]], source: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Image-folder layout: `.../<train|test>/<class>/<file>`; classes sorted by name."""
    splits: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    for name, blob in items:
        parts = name.replace(os.sep, "/").split("/")
        if len(parts) >= 3 and parts[-3] in splits:
            splits[parts[-3]].append((parts[-2], name, blob))
    classes = sorted({c for c, _, _ in splits["train"]})
    if not splits["train"] or not splits["test"]:
        raise DataError(f"{source}: no train/<class>/ and test/<class>/ images found")
    unknown = {c for c, _, _ in splits["test"]} - set(classes)
    if unknown:
        raise DataError(f"{source}: test classes {sorted(unknown)} do not occur in train/")
    index = {c: i for i, c in enumerate(classes)}
    arrays: dict[str, np.ndarray] = {}
    for split, rows in splits.items():
        rows.sort(key=lambda r: (index[r[0]], r[1]))
        arrays[f"{split}_x"] = _decode_images([(name, blob) for _, name, blob in rows])
        arrays[f"{split}_y"] = np.array([index[c] for c, _, _ in rows], dtype=np.int64)
    return arrays, classes


def _decode_images(items: list[tuple[str, bytes]]) -> np.ndarray:
    """Decode 32x32 images with Pillow into uint8 [N, 3, 32, 32].

    One process: on a busy 2-core machine a 2-process pool decoded the 60k CIFAR JPEGs no faster
    (about 9 s either way), so the pool was not worth its pickling and start-up."""
    from PIL import Image

    out = np.empty((len(items), 32, 32, 3), np.uint8)
    for i, (name, blob) in enumerate(items):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                a = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{name}: not a readable image ({e})") from None
        if a.shape != (32, 32, 3):
            raise DataError(f"{name}: image is {a.shape[1]}x{a.shape[0]}, CIFAR-10 images are 32x32")
        out[i] = a
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _from_batches(files: dict[str, tuple[str, bytes]]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The official python batches: data_batch_1..5 and test_batch."""
    missing = [n for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if n not in files]
    if missing:
        raise DataError(f"CIFAR-10 python batches incomplete: missing {', '.join(missing)}")
    train = [_read_batch(*files[f"data_batch_{i}"]) for i in range(1, 6)]
    test_x, test_y = _read_batch(*files["test_batch"])
    arrays = {"train_x": np.concatenate([x for x, _ in train]), "train_y": np.concatenate([y for _, y in train]),
              "test_x": test_x, "test_y": test_y}
    return arrays, list(CIFAR10_CLASSES)


def _read_batch(name: str, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{name}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(b"data"), _RawArray) or not isinstance(obj.get(b"labels"), list):
        raise DataError(f"{name}: not a CIFAR-10 python batch (needs b'data' array and b'labels' list)")
    labels = obj[b"labels"]
    data = obj[b"data"].to_uint8(name)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{name}: expected data [N, 3072] and N labels, got {list(data.shape)} and {len(labels)}")
    if not all(isinstance(v, int) and 0 <= v < 10 for v in labels):
        raise DataError(f"{name}: labels must be integers 0..9")
    return data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


class _RawArray:
    """Stands in for a pickled numpy array: keeps shape, dtype code and raw bytes; runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: _RawDtype | None = None
        self.data: bytes = b""
        self.fortran = False

    def __setstate__(self, state: tuple) -> None:   # ndarray state: (version, shape, dtype, fortran, raw)
        _, self.shape, self.dtype, self.fortran, self.data = state

    def to_uint8(self, name: str) -> np.ndarray:
        if not isinstance(self.dtype, _RawDtype) or self.dtype.code not in ("u1", "|u1", "B"):
            raise DataError(f"{name}: b'data' must be a uint8 array")
        if not isinstance(self.data, (bytes, bytearray)) or len(self.data) != int(np.prod(self.shape)):
            raise DataError(f"{name}: b'data' holds {len(self.data)} bytes for shape {list(self.shape)}")
        a = np.frombuffer(bytes(self.data), dtype=np.uint8)
        return a.reshape(self.shape, order="F" if self.fortran else "C").copy()


class _RawDtype:
    def __init__(self, code: Any, *args: Any) -> None:
        self.code = code.decode() if isinstance(code, bytes) else str(code)

    def __setstate__(self, state: Any) -> None:
        pass


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _RawArray:   # numpy's pickle protocol 5 path
    arr = _RawArray()
    arr.__setstate__((1, tuple(shape), dtype, order == "F", bytes(buf)))
    return arr


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:   # how protocol 2 stores bytes
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing encoding {encoding!r}")
    return text.encode("latin1")


_PICKLE_STANDINS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _RawArray for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _RawArray,
    ("numpy", "dtype"): _RawDtype,
    ("_codecs", "encode"): _encode_latin1,
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves no real class or function: numpy's array-rebuilding names map to inert local
    stand-ins that only collect bytes; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_STANDINS:
            return _PICKLE_STANDINS[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)

_IDX_STEMS = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
_MNIST_DIRS = {"mnist": ("TRAINLAB_MNIST", "mnist"), "fashion": ("TRAINLAB_FASHION_MNIST", "fashion-mnist")}


def mnist(root: str | os.PathLike[str] | None = None, kind: str = "mnist") -> DataBundle:
    """MNIST or Fashion-MNIST (kind="fashion") from the four IDX files (.gz or not) in `root`
    (default: $TRAINLAB_MNIST / $TRAINLAB_FASHION_MNIST, else `<user_data_dir()>/mnist` or
    `/fashion-mnist`), as [N, 1, 28, 28] float32 normalized with the usual mean/std."""
    if kind not in _MNIST_DIRS:
        raise ConfigError(f"mnist: kind must be 'mnist' or 'fashion', got {kind!r}")
    env, sub = _MNIST_DIRS[kind]
    if root is None:
        root = os.environ.get(env) or user_data_dir() / sub
    root = Path(root).expanduser()
    paths = {k: _find_idx(root, stem, env, sub) for k, stem in _IDX_STEMS.items()}
    return _fresh(_mnist(tuple(sorted((k, _stat_key(p)) for k, p in paths.items())), kind))


def _find_idx(root: Path, stem: str, env: str, name: str) -> Path:
    for folder in (root, root / "raw"):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{stem}[.gz] not found in {root}: set {env} to the folder holding the IDX files "
                    f"or run `trainlab data download {name}`")


@functools.lru_cache(maxsize=2)
def _mnist(files: tuple[tuple[str, tuple[str, int, int]], ...], kind: str) -> DataBundle:
    paths = {k: Path(key[0]) for k, key in files}
    a = {k: _read_idx(p, 3 if k.endswith("_x") else 1) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = a[f"{split}_x"], a[f"{split}_y"]
        if len(x) != len(y):
            raise DataError(f"{paths[split + '_y'].name}: {len(y)} labels for {len(x)} images")
        if y.size and y.max() >= 10:
            raise DataError(f"{paths[split + '_y'].name}: label {int(y.max())} out of range 0..9")
    mean, std = MNIST_STATS[kind]
    classes = list(FASHION_CLASSES) if kind == "fashion" else [str(i) for i in range(10)]
    info = {"classes": classes, "channel_mean": [mean], "channel_std": [std],
            "value_range": _value_range([mean], [std])}
    return DataBundle(_normalize_uint8(a["train_x"][:, None], [mean], [std]), torch.from_numpy(a["train_y"]).long(),
                      _normalize_uint8(a["test_x"][:, None], [mean], [std]), torch.from_numpy(a["test_y"]).long(),
                      num_classes=10, name="fashion-mnist" if kind == "fashion" else "mnist", info=info)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file: magic 0x0000 08 <ndim>, ndim big-endian sizes, then the bytes."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path.name}: cannot read ({e})") from None
    header = 4 + 4 * ndim
    expected_magic = 0x0800 + ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != expected_magic:
        got = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "a truncated header"
        raise DataError(f"{path.name}: not an IDX file of {ndim}-d unsigned bytes "
                        f"(magic number {got}, expected 0x{expected_magic:08x})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"{path.name}: header promises {size} bytes {list(dims)} but {len(raw) - header} follow")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()   # writable, for torch


# --------------------------------------------------------------------------- downloads (opt-in, CLI only)

@dataclass(frozen=True)
class Remote:
    """One file to download: its name, mirrors tried in order, size and sha256."""

    filename: str
    urls: tuple[str, ...]
    size: int
    sha256: str


def _mirrors(bases: Sequence[str], filename: str) -> tuple[str, ...]:
    return tuple(b + filename for b in bases)


_MNIST_BASES = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/")
_FASHION_BASES = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                  "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/")
# sha256 values as published with each dataset's standard download scripts; the CIFAR-10 tarball's
# md5 on its home page is c58f30108f718f92721af3b95e74349a, its sha256 is the one below.
DOWNLOADS: dict[str, tuple[Remote, ...]] = {
    "mnist": tuple(Remote(f, _mirrors(_MNIST_BASES, f), n, h) for f, n, h in [
        ("train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        ("train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        ("t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        ("t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ]),
    "fashion-mnist": tuple(Remote(f, _mirrors(_FASHION_BASES, f), n, h) for f, n, h in [
        ("train-images-idx3-ubyte.gz", 26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz", 29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz", 4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz", 5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ]),
    "cifar10": (Remote("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                       170498071, KNOWN_SHA256["cifar-10-python.tar.gz"]),),
}
_DOWNLOAD_ALIASES = {"fashion": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10"}


def download(name: str, dest: str | os.PathLike[str] | None = None, *,
             opener: Callable[[str], Any] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Download a dataset's official files into `dest` (default: where the loader looks,
    `<user_data_dir()>/<name>`), checking each file's sha256. Files already present with the right
    checksum are kept. Returns the folder. `opener(url)` returns a readable binary stream
    (default: urllib's urlopen)."""
    key = _DOWNLOAD_ALIASES.get(name, name)
    if key not in DOWNLOADS:
        raise ConfigError(f"unknown dataset {name!r} to download (known: {', '.join(sorted(DOWNLOADS))})")
    folder = Path(dest).expanduser() if dest is not None else user_data_dir() / key
    folder.mkdir(parents=True, exist_ok=True)
    open_url = opener or (lambda url: urllib.request.urlopen(url, timeout=60))
    for remote in DOWNLOADS[key]:
        target = folder / remote.filename
        if target.is_file() and _sha256(target) == remote.sha256:
            continue
        _fetch(remote, target, open_url, log or (lambda msg: None))
    return folder


def _fetch(remote: Remote, target: Path, open_url: Callable[[str], Any], log: Callable[[str], None]) -> None:
    """Try each mirror; keep the file only if its size and sha256 match."""
    errors = []
    for url in remote.urls:
        log(f"downloading {url}")
        tmp = target.with_name(target.name + ".part")
        try:
            digest = _stream_to(open_url(url), tmp, remote.size)
        except (OSError, ValueError) as e:   # URLError and HTTPError are OSErrors
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {e}")
            continue
        if digest != remote.sha256:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: sha256 checksum mismatch (got {digest}, expected {remote.sha256})")
            continue
        os.replace(tmp, target)
        return
    raise DataError(f"could not download {remote.filename}: " + "; ".join(errors))


def _stream_to(response: Any, path: Path, max_size: int) -> str:
    h, total = hashlib.sha256(), 0
    with response as r, open(path, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            total += len(chunk)
            if total > max_size:
                raise ValueError(f"more than the expected {max_size} bytes")
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- algorithmic tasks

_MOD_OPS = ("+", "-", "*", "/")


def modular_arithmetic(p: int = 97, op: str = "+", train_fraction: float = 0.4, seed: int = 0) -> DataBundle:
    """All pairs (a, b) in [0, p)^2 as token sequences [a, op, b, =] (long [N, 4]; the op token is p,
    "=" is p + 1, so the vocabulary has p + 2 tokens), labelled (a op b) mod p. "/" multiplies by
    b's modular inverse, needs p prime, and leaves out b = 0. A random `train_fraction` of the pairs
    (fixed by `seed`) is the training set, the rest the test set."""
    if op not in _MOD_OPS:
        raise ConfigError(f"modular_arithmetic: op must be one of {' '.join(_MOD_OPS)}, got {op!r}")
    if p < 2 or (op == "/" and not _is_prime(p)):
        raise ConfigError(f"modular_arithmetic: p must be >= 2{' and prime for /' if op == '/' else ''}, got {p}")
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"modular_arithmetic: train_fraction must be in (0, 1), got {train_fraction}")
    return _fresh(_modular_arithmetic(int(p), op, float(train_fraction), int(seed)))


@functools.lru_cache(maxsize=4)
def _modular_arithmetic(p: int, op: str, train_fraction: float, seed: int) -> DataBundle:
    a, b = (t.reshape(-1) for t in torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"))
    if op == "/":
        a, b = a[b != 0], b[b != 0]
    if op == "+":
        y = (a + b) % p
    elif op == "-":
        y = (a - b) % p
    elif op == "*":
        y = (a * b) % p
    else:
        inverse = torch.tensor([0] + [pow(v, -1, p) for v in range(1, p)])
        y = (a * inverse[b]) % p
    x = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], dim=1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = max(1, min(len(x) - 1, round(train_fraction * len(x))))
    tr, te = order[:n_train], order[n_train:]
    info = {"vocab_size": p + 2, "seq_len": 4, "p": p, "op": op}
    return DataBundle(x[tr], y[tr], x[te], y[te], num_classes=p, name=f"modarith{op}{p}", info=info)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def synthetic_sequence(n_train: int = 4000, n_test: int = 1000, seq_len: int = 16, vocab: int = 8,
                       seed: int = 0) -> DataBundle:
    """Majority-token classification: label = the token that occurs most often in the sequence.

    Tokens are uniform over [0, vocab); sequences whose most frequent token is tied are redrawn, so
    the label is always unique and classes are balanced in expectation. No single position tells
    the answer: a model reading one position's state must gather counts from all positions."""
    if min(n_train, n_test) < 1 or seq_len < 2 or vocab < 2:
        raise ConfigError("synthetic_sequence: need n_train, n_test >= 1, seq_len >= 2 and vocab >= 2")
    return _fresh(_synthetic_sequence(int(n_train), int(n_test), int(seq_len), int(vocab), int(seed)))


@functools.lru_cache(maxsize=4)
def _synthetic_sequence(n_train: int, n_test: int, seq_len: int, vocab: int, seed: int) -> DataBundle:
    x, y = _majority_sequences(n_train + n_test, seq_len, vocab, np.random.default_rng(seed))
    x, y = torch.from_numpy(x).long(), torch.from_numpy(y).long()
    info = {"vocab_size": vocab, "seq_len": seq_len, "rule": "majority token (unique by construction)"}
    return DataBundle(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=vocab,
                      name="majority-sequence", info=info)


def _majority_sequences(n: int, seq_len: int, vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xs: list[np.ndarray] = []
    kept = 0
    while kept < n:
        x = rng.integers(0, vocab, size=(2 * (n - kept) + 64, seq_len))
        counts = np.zeros((len(x), vocab), np.int64)
        np.add.at(counts, (np.arange(len(x))[:, None], x), 1)
        unique = (counts == counts.max(1, keepdims=True)).sum(1) == 1
        xs.append(x[unique])
        kept += int(unique.sum())
    x = np.concatenate(xs)[:n]
    counts = np.zeros((n, vocab), np.int64)
    np.add.at(counts, (np.arange(n)[:, None], x), 1)
    return x, counts.argmax(1)



# --------------------------------------------------------------------------- character-level text

#: Characters of the character-level vocabulary: tab, newline and printable ASCII. Id 0 stands for
#: any other character, so the vocabulary has len(TEXT_CHARS) + 1 = 98 ids.
TEXT_CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))
TEXT_VOCAB_SIZE = len(TEXT_CHARS) + 1
#: Standard-library source files read by `stdlib_text`: fixed lists (train, test), so the corpus is
#: the same on every machine with the same Python version (files that a Python lacks are skipped,
#: and the fingerprint of every run records the exact text).
STDLIB_TRAIN_FILES = ("textwrap.py", "string.py", "heapq.py", "calendar.py", "shlex.py", "queue.py", "fnmatch.py",
                      "glob.py", "copy.py", "sched.py", "bisect.py", "colorsys.py", "abc.py", "random.py")
STDLIB_TEST_FILES = ("fractions.py",)


def encode_text(text: str) -> torch.Tensor:
    """Characters -> ids in [0, TEXT_VOCAB_SIZE): TEXT_CHARS[i] -> i + 1, anything else -> 0."""
    table = np.zeros(128, np.int64)
    table[[ord(c) for c in TEXT_CHARS]] = np.arange(1, len(TEXT_CHARS) + 1)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where(codes < 128, table[np.minimum(codes, 127)], 0)
    return torch.from_numpy(ids)


def decode_text(ids: torch.Tensor) -> str:
    """Ids -> characters (id 0 becomes "?")."""
    chars = "?" + TEXT_CHARS
    return "".join(chars[int(i)] for i in ids.reshape(-1))


def stdlib_text(seq_len: int = 64, train_files: Sequence[str] = STDLIB_TRAIN_FILES,
                test_files: Sequence[str] = STDLIB_TEST_FILES, stdlib_dir: str | None = None) -> DataBundle:
    """Character-level language modelling on the Python standard library's own source files
    (read from `sysconfig.get_paths()["stdlib"]`, always present, nothing downloaded).

    The train files and the test files are concatenated separately and cut into non-overlapping
    windows of seq_len + 1 characters: inputs are a window's first seq_len ids [N, seq_len] (long),
    targets the next character at each position [N, seq_len] (long). Not a classification task
    (num_classes=None): the task gives its own loss and metrics (trainlab.tasks.language)."""
    if seq_len < 2:
        raise ConfigError(f"stdlib_text: seq_len must be >= 2, got {seq_len}")
    if not train_files or not test_files or set(train_files) & set(test_files):
        raise ConfigError("stdlib_text: give non-empty, disjoint lists of train and test files")
    return _fresh(_stdlib_text(int(seq_len), tuple(train_files), tuple(test_files), stdlib_dir))


@functools.lru_cache(maxsize=2)
def _stdlib_text(seq_len: int, train_files: tuple[str, ...], test_files: tuple[str, ...],
                 stdlib_dir: str | None) -> DataBundle:
    import sysconfig

    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    splits, used = [], {}
    for names in (train_files, test_files):
        texts = []
        for name in names:
            path = root / name
            if path.is_file():
                texts.append(path.read_text(encoding="utf-8"))
                used[name] = len(texts[-1])
        ids = encode_text("\n".join(texts))
        n = (len(ids) - 1) // (seq_len + 1)
        if n < 1:
            raise DataError(f"stdlib_text: none of {', '.join(names)} could be read under {root}")
        windows = ids[:n * (seq_len + 1)].reshape(n, seq_len + 1)
        splits.append((windows[:, :-1].contiguous(), windows[:, 1:].contiguous()))
    (train_x, train_y), (test_x, test_y) = splits
    info = {"vocab_size": TEXT_VOCAB_SIZE, "seq_len": seq_len, "files": used, "stdlib_dir": str(root)}
    return DataBundle(train_x, train_y, test_x, test_y, num_classes=None, name="stdlib-text", info=info)
