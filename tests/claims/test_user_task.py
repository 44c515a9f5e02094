"""A claim checked on a task defined in the user's own file, by path and as a Task object."""
from __future__ import annotations

import textwrap

import pytest

import trainlab
from trainlab.claims.claim import Claim, arm
from trainlab.tasks.registry import get_task

TASK_FILE = textwrap.dedent("""
    import torch
    from torch import nn
    from trainlab import DataBundle, Task

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(400, 6, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        return DataBundle(x[:300], y[:300], x[300:], y[300:], num_classes=2, name="halfspace")

    def model(input_shape, num_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 16), nn.Tanh(), nn.Linear(16, num_classes))

    halfspace = Task("halfspace", make_data=data, make_model=model, epochs=3, batch_size=30, lr=0.1)

    def make_task():
        return halfspace
""")


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "my_tasks.py"
    path.write_text(TASK_FILE)
    return path


def test_task_file_reference_loads_task_or_factory(task_file):
    assert get_task(f"{task_file}:halfspace").name == "halfspace"
    assert get_task(f"{task_file}:make_task").name == "halfspace"
    with pytest.raises(trainlab.ConfigError, match="has no 'nothing'"):
        get_task(f"{task_file}:nothing")


@pytest.mark.slow
def test_check_on_a_user_task_file_in_worker_processes(task_file, tmp_path):
    claim = Claim(id="u-epochs", technique="none", task="blobs-mlp", metric="test_acc", direction="higher",
                  treatment=arm(epochs=3), baseline=arm(epochs=1, lr=0.001), seeds=3)
    result = trainlab.check(claim, task=f"{task_file}:halfspace", workers=2, overhead=False,
                            store=tmp_path / "s.sqlite")
    assert result.seeds == [0, 1, 2]
    assert result.verdict == "reproduced"
    assert result.provenance["data_fingerprints"] and all(v > 0.5 for v in result.treatment_values)


def test_check_with_a_task_object(tmp_path):
    claim = Claim(id="u-placebo", technique="placebo", task="blobs-mlp", metric="test_acc", direction="higher",
                  treatment=arm("placebo"), seeds=2)
    task = get_task("blobs-mlp").with_overrides({"epochs": 1, "description": "mine"})
    result = trainlab.check(claim, task=task, store=tmp_path / "s.sqlite", workers=1)
    assert len(result.treatment_values) == 2 and result.analysis is not None
    assert result.overhead["params_ratio"] == 1.0
