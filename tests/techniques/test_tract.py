"""TrAct: the transformed first-layer gradient equals the closed form grad_W (X^T X / b + lambda I)^-1."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task
from trainlab.techniques.gradients.tract import TrAct, first_layer, input_rows, tract_gradient
from trainlab.training.trainer import run_training


def test_hand_case_linear() -> None:
    # x = [[1, 0], [0, 2]], loss = sum of outputs: grad_W = [1, 2];
    # X^T X / 2 + 0.1 I = diag(0.6, 2.1), so the TrAct gradient is [1 / 0.6, 2 / 2.1].
    layer = nn.Linear(2, 1)
    tract = TrAct(layer, lam=0.1)
    layer(torch.tensor([[1.0, 0.0], [0.0, 2.0]])).sum().backward()
    assert tract.transform_()
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[1 / 0.6, 2 / 2.1]]))
    torch.testing.assert_close(layer.bias.grad, torch.tensor([2.0]))  # the bias gradient is unchanged


def test_whitened_inputs_only_rescale_the_gradient() -> None:
    # X^T X / b = I  =>  the transform is grad / (1 + lambda)
    q, _ = torch.linalg.qr(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)))
    x = q * 4.0  # 16 rows, X^T X = 16 I
    grad = torch.randn(3, 4)
    torch.testing.assert_close(tract_gradient(grad, x, 0.5), grad / 1.5)


def _patches_by_hand(x: torch.Tensor, k: int, pad: int, stride: int) -> torch.Tensor:
    x = nn.functional.pad(x, (pad, pad, pad, pad))
    rows = []
    for n in range(x.shape[0]):
        for i in range(0, x.shape[2] - k + 1, stride):
            for j in range(0, x.shape[3] - k + 1, stride):
                rows.append(x[n, :, i:i + k, j:j + k].reshape(-1))
    return torch.stack(rows)


def test_conv2d_matches_the_closed_form_on_explicit_patches() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    tract = TrAct(conv, lam=0.1)
    x = torch.randn(4, 2, 5, 5)
    conv(x).pow(2).mean().backward()
    raw = conv.weight.grad.clone()
    tract.transform_()
    rows = _patches_by_hand(x, 3, 1, 2).double()
    gram = rows.T @ rows / rows.shape[0] + 0.1 * torch.eye(18, dtype=torch.double)
    expected = raw.reshape(3, -1).double() @ torch.linalg.inv(gram)
    torch.testing.assert_close(conv.weight.grad, expected.float().reshape(raw.shape), rtol=1e-5, atol=1e-6)
    # the rows are exactly what produces the usual weight gradient
    torch.testing.assert_close(input_rows(conv, x), _patches_by_hand(x, 3, 1, 2))


def test_conv1d_rows_are_its_receptive_fields() -> None:
    conv = nn.Conv1d(2, 4, 3, padding=1)
    x = torch.randn(2, 2, 6)
    rows = input_rows(conv, x)
    assert rows.shape == (2 * 6, 2 * 3)
    y = conv(x)
    grad_out = torch.randn_like(y)
    (gw,) = torch.autograd.grad(y, conv.weight, grad_out)
    torch.testing.assert_close(gw.reshape(4, -1), grad_out.transpose(1, 2).reshape(-1, 4).T @ rows,
                               rtol=1e-5, atol=1e-5)


def test_first_layer_and_eval_forwards_are_not_recorded() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    tract = TrAct(model)
    assert tract.layer is model[1] and first_layer(model) is model[1]
    model.eval()
    model(torch.randn(2, 2, 2))
    assert tract._input is None
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 2, 2))
    assert tract._input is None
    assert not tract.transform_()
    tract.remove()


def test_bad_settings() -> None:
    with pytest.raises(ConfigError):
        TrAct(nn.Linear(2, 2), lam=0.0)
    with pytest.raises(ConfigError):
        first_layer(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError):
        input_rows(nn.Conv2d(4, 4, 3, groups=2), torch.randn(1, 4, 5, 5))


def test_technique_in_the_trainer_changes_training_and_is_deterministic() -> None:
    task = get_task("blobs-mlp").with_overrides({"epochs": 1})
    a = run_training(task, ["tract"], seed=3, keep_state=True)
    b = run_training(task, ["tract"], seed=3, keep_state=True)
    base = run_training(task, [], seed=3, keep_state=True)
    assert a.status == "finished"
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert any(not torch.equal(a.state[k], base.state[k]) for k in a.state)


def test_matches_the_values_printed_by_the_official_package() -> None:
    # The authors' torch_tract 1.0.0 (Felix-Petersen/tract, torch_tract/tract.py) ends with a self-test
    # that prints, to 4 decimals, the weight and bias gradients of its TrActLinear(8, 5, 0.1) and
    # TrActConv2d(2, 5, 3, 1, 0, 0.1) layers for this seed, these inputs and an MSE loss. The same
    # nn.Linear / nn.Conv2d, transformed here after backward, must give the same numbers.
    torch.manual_seed(0)
    x, y = torch.randn(30, 8), torch.randn(30, 5)
    lin = nn.Linear(8, 5)
    tract = TrAct(lin, lam=0.1)
    (y - lin(x)).pow(2).mean().backward()
    tract.transform_()
    official_w = torch.tensor([
        [0.0741, 0.0949, -0.0559, -0.0398, -0.1364, 0.0013, 0.1603, -0.0468],
        [-0.0994, -0.1061, -0.1781, 0.1479, 0.1114, -0.0374, 0.0324, -0.1329],
        [0.0303, 0.0484, 0.1385, -0.1675, 0.0778, -0.0854, -0.0592, 0.0526],
        [-0.0726, 0.1049, 0.0998, 0.0420, -0.1409, -0.0031, -0.0432, -0.1150],
        [0.1438, -0.0729, -0.0261, -0.1015, -0.0902, 0.1821, -0.1520, 0.0950]])
    torch.testing.assert_close(lin.weight.grad, official_w, rtol=0, atol=6e-5)
    torch.testing.assert_close(lin.bias.grad, torch.tensor([-0.1162, 0.1062, -0.1275, -0.0206, -0.1149]),
                               rtol=0, atol=6e-5)

    torch.manual_seed(0)
    x, y = torch.randn(30, 2, 6, 4), torch.randn(30, 5, 4, 2)
    conv = nn.Conv2d(2, 5, 3, 1, 0)
    tract = TrAct(conv, lam=0.1)
    (y - conv(x)).pow(2).mean().backward()
    tract.transform_()
    official_first = torch.tensor([[[-0.0501, -0.0166, 0.0214], [-0.0230, 0.0324, 0.0655], [0.0010, 0.0600, 0.0290]],
                                   [[-0.0144, 0.0254, 0.0484], [0.0741, -0.0920, 0.0260], [-0.0109, -0.0480, -0.0420]]])
    official_last = torch.tensor([[[-0.0896, 0.0370, -0.0823], [-0.0971, -0.0723, -0.0460], [0.0048, -0.0286, -0.0452]],
                                  [[0.0912, -0.0151, 0.0588], [-0.0053, -0.0359, -0.0247], [-0.0263, -0.0650, 0.0599]]])
    torch.testing.assert_close(conv.weight.grad[0], official_first, rtol=0, atol=6e-5)
    torch.testing.assert_close(conv.weight.grad[4], official_last, rtol=0, atol=6e-5)
    torch.testing.assert_close(conv.bias.grad, torch.tensor([0.0052, -0.0397, 0.1093, 0.0464, -0.1079]),
                               rtol=0, atol=6e-5)
    # the transform is not the identity here: the raw gradient differs from these values
    raw = nn.Conv2d(2, 5, 3, 1, 0)
    raw.load_state_dict(conv.state_dict())
    (y - raw(x)).pow(2).mean().backward()
    assert (raw.weight.grad[0] - official_first).abs().max() > 1e-2
