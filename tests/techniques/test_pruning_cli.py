"""`trainlab prune`: train with HESSO, build, report and save the subnet; load it back."""
from __future__ import annotations

import textwrap

import pytest
import torch

from trainlab.errors import CheckpointError, ConfigError
from trainlab.techniques.pruning.cli import load_subnet, prune_command

TASK_FILE = textwrap.dedent('''
    import torch
    from torch import nn
    import torch.nn.functional as F
    from trainlab.tasks.task import DataBundle, Task

    def make_data(**_):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 3, 4, 4, generator=g)
        y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
        return DataBundle(x[:64], y[:64], x[64:], y[64:], num_classes=4, name="tiny-images")

    class Net(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
            self.c2, self.b2 = nn.Conv2d(width, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
            self.fc = nn.Linear(12, 4)

        def forward(self, x):
            x = F.relu(self.b1(self.c1(x)))
            x = F.relu(self.b2(self.c2(x)))
            return self.fc(x.mean(dim=(2, 3)))

    def make_model(input_shape, num_classes, width=8):
        return Net(width)

    tiny = Task("tiny-prune-cli", make_data=make_data, make_model=make_model, epochs=4, batch_size=16, lr=0.05,
                model_kwargs={"width": 10})
''')


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task_ref(tmp_path):
    path = tmp_path / "tiny_prune_task.py"
    path.write_text(TASK_FILE)
    return f"{path}:tiny"


def test_prune_command_reports_saves_and_reloads(task_ref, tmp_path, capsys):
    out = tmp_path / "sub.pt"
    report = prune_command(task_ref, 0.5, epochs=4, out=out)
    printed = capsys.readouterr().out
    for word in ("parameters", "FLOPs", "test accuracy", "CPU latency", "saved"):
        assert word in printed
    assert report["group_sparsity"] == 0.5 and report["removed_groups"] == report["groups"] // 2
    assert report["params_subnet"] < report["params_full"] and report["flops_subnet"] < report["flops_full"]
    assert report["test_acc_subnet"] == report["test_acc_full"]  # removal is exact: same predictions
    assert report["latency_full_s"] > 0 and report["latency_subnet_s"] > 0
    payload = torch.load(out, weights_only=True)
    assert payload["task"] == "tiny-prune-cli" and payload["model_kwargs"] == {"width": 10}

    subnet = load_subnet(out, task=task_ref)
    assert sum(p.numel() for p in subnet.parameters()) == report["params_subnet"]
    from trainlab.tasks.registry import get_task

    data = get_task(task_ref).make_data()
    acc = float((subnet(data.test_x).argmax(1) == data.test_y).float().mean())
    assert acc == pytest.approx(report["test_acc_subnet"])


def test_main_cli_prune_and_errors(task_ref, tmp_path, capsys):
    from trainlab.cli import main

    out = tmp_path / "cli.pt"
    code = main(["prune", "--task", task_ref, "--sparsity", "0.25", "--epochs", "3", "--out", str(out)])
    assert code in (0, None) and out.exists()
    assert "subnet" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        prune_command(task_ref, 1.5)
    with pytest.raises(CheckpointError):
        load_subnet(tmp_path / "missing.pt")
