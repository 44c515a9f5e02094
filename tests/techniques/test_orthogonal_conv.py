"""Orthogonal convolutions: FFT singular values equal those of the explicit circular-convolution
matrix, L_orth vanishes on orthogonal kernels and equals the spectral formula, and the probe logs
per-epoch statistics."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.models import build_model
from trainlab.tasks.synthetic import blobs
from trainlab.tasks.task import DataBundle, Task
from trainlab.techniques.regularization.orthogonal_conv import (OrthogonalConv, conv_singular_values,
                                                                orthogonality_loss)
from trainlab.training.trainer import run_training


def explicit_singular_values(weight: torch.Tensor, n: int, stride: int) -> torch.Tensor:
    """Singular values of the circular convolution written out as a matrix (one column per basis input)."""
    dims = weight.dim() - 2
    c, p = weight.shape[1], weight.shape[-1] // 2
    size = c * n ** dims
    basis = torch.eye(size, dtype=weight.dtype).reshape(size, c, *([n] * dims))
    conv = F.conv1d if dims == 1 else F.conv2d
    out = conv(F.pad(basis, (p, p) * dims, mode="circular"), weight, stride=stride)
    return torch.linalg.svdvals(out.reshape(size, -1).T).sort(descending=True).values


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels", [(3, 2), (2, 5), (4, 4)])
def test_fft_singular_values_equal_the_explicit_matrix(dims, stride, channels):
    torch.manual_seed(dims * 10 + stride)
    m, c = channels
    n = 6 if dims == 2 else 8
    weight = torch.randn(m, c, *([3] * dims), dtype=torch.float64)
    torch.testing.assert_close(conv_singular_values(weight, n, stride), explicit_singular_values(weight, n, stride))


def test_accepts_a_conv_module_and_checks_sizes():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    expected = explicit_singular_values(conv.weight.detach().double(), 6, 2)
    torch.testing.assert_close(conv_singular_values(conv, (6, 6)).double(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        conv_singular_values(conv, 5)  # not divisible by the stride
    with pytest.raises(ConfigError):
        conv_singular_values(nn.Linear(3, 3), 4)


@pytest.mark.parametrize("dims,stride", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_lorth_is_the_spectral_distance_to_orthogonality(dims, stride):
    # with the autocorrelation inside the input, Parseval gives L_orth = (S/n)^d * sum (sigma^2 - 1)^2,
    # in both the row-orthogonal (M <= C S^d) and column-orthogonal (M > C S^d, minus delta) cases
    torch.manual_seed(1)
    n = 12
    for m, c in [(3, 2), (2, 5), (8, 2)]:
        w = torch.randn(m, c, *([3] * dims), dtype=torch.float64)
        sigma = conv_singular_values(w, n, stride)
        spectral = ((sigma ** 2 - 1) ** 2).sum() / (n // stride) ** dims
        torch.testing.assert_close(orthogonality_loss(w, stride), spectral, rtol=1e-8, atol=1e-8)


def test_orthogonal_kernels_have_zero_loss_and_unit_singular_values():
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    delta = torch.zeros(4, 4, 3, 3, dtype=torch.float64)
    delta[:, :, 1, 1] = q  # an orthogonal matrix at the centre: an orthogonal convolution
    assert float(orthogonality_loss(delta)) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(conv_singular_values(delta, 5), torch.ones(4 * 25, dtype=torch.float64))
    # a column-orthogonal 1x... case: 8 outputs from 2 inputs, a Haar-like pair of filters per input
    haar = torch.zeros(2, 1, 3, dtype=torch.float64)
    haar[0, 0, 1:] = torch.tensor([1.0, 1.0]) / 2 ** 0.5
    haar[1, 0, 1:] = torch.tensor([1.0, -1.0]) / 2 ** 0.5
    assert float(orthogonality_loss(haar, stride=2)) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(conv_singular_values(haar, 8, stride=2), torch.ones(8, dtype=torch.float64))


def _image_blobs() -> DataBundle:
    b = blobs(n_train=128, n_test=64, dim=64, classes=3)
    return DataBundle(b.train_x.view(-1, 1, 8, 8), b.train_y, b.test_x.view(-1, 1, 8, 8), b.test_y, num_classes=3)


def test_regularizer_and_probe_through_the_trainer():
    task = Task("tiny-images", make_data=_image_blobs, make_model=functools.partial(build_model, "cnn"),
                model_kwargs={"channels": (4, 8)}, epochs=3, batch_size=32, lr=0.05)
    base = run_training(task, ["conv-spectrum"], seed=0)
    reg = run_training(task, ["conv-spectrum", ("orthogonal-conv", {"lam": 1.0})], seed=0)
    for r in (base, reg):
        assert {"conv_sigma_dev", "conv_sigma_max", "conv_sigma_min"} <= set(r.epochs[-1])
    assert reg.final["conv_sigma_dev"] < base.final["conv_sigma_dev"]
    tech = OrthogonalConv(lam=0.5)
    model = build_model("cnn", (1, 8, 8), 3, channels=(4, 8))
    tech.on_train_start(model, None, None)
    expected = sum(orthogonality_loss(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(tech.loss(None, None, None, torch.tensor(1.0)), 1.0 + 0.5 * expected)
    with pytest.raises(ConfigError):
        OrthogonalConv(lam=0.1).on_train_start(nn.Linear(2, 2), None, None)


def _official_lorth_2d(w_tf: torch.Tensor, stride: int) -> torch.Tensor:
    # The authors' L_orth (deel-ai/deel-lip, deel/lip/regularizers.py: Lorth.compute_lorth, Lorth2D),
    # transcribed with explicit sums for a channels-last kernel w_tf [R, R, C, M]: the M filters are
    # a batch of M images [R, R, C] (transpose [3, 0, 1, 2]), zero-padded by ((R - 1) // S) * S on
    # both spatial sides, then correlated ("VALID", stride S) with w_tf itself; the target holds
    # eye(M) at position (floor(W'/2), floor(W'/2)); result: sum of squares - max(0, M - S^2 C).
    r, _, c, m = w_tf.shape
    pad = ((r - 1) // stride) * stride
    images = F.pad(w_tf.permute(3, 0, 1, 2), (0, 0, pad, pad, pad, pad))  # [M, R + 2P, R + 2P, C]
    size = (images.shape[1] - r) // stride + 1
    out = torch.zeros(m, size, size, m, dtype=w_tf.dtype)
    for i in range(size):
        for j in range(size):
            patch = images[:, i * stride:i * stride + r, j * stride:j * stride + r, :]   # [M, R, R, C]
            out[:, i, j, :] = torch.einsum("nabc,abcm->nm", patch, w_tf)
    target = torch.zeros_like(out)
    ct = size // 2
    target[:, ct, ct, :] = torch.eye(m, dtype=w_tf.dtype)
    return (out - target).pow(2).sum() - max(0, m - stride ** 2 * c)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("m,c,k", [(4, 3, 3), (6, 2, 3), (3, 5, 5), (9, 2, 3)])
def test_lorth_equals_a_transcription_of_the_authors_code(stride, m, c, k):
    torch.manual_seed(m * 10 + c + stride)
    weight = torch.randn(m, c, k, k, dtype=torch.double) * 0.4
    expected = _official_lorth_2d(weight.permute(2, 3, 1, 0), stride)  # torch [M, C, k, k] -> TF [k, k, C, M]
    torch.testing.assert_close(orthogonality_loss(weight, stride=stride), expected)
