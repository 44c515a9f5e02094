"""Every test gets its own store, data and cache folders, so nothing leaks between tests or into
the user's folders."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("trainlab-home")
    monkeypatch.setenv("TRAINLAB_STORE", str(base / "runs.sqlite"))
    monkeypatch.setenv("TRAINLAB_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(_shared_cache(tmp_path_factory)))


def _shared_cache(factory: pytest.TempPathFactory) -> Path:
    # decoded datasets are cached once per test session (decoding CIFAR-10 takes a while)
    path = factory.getbasetemp() / "trainlab-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny tensors: thread-pool waits dominate them on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
