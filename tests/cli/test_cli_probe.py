"""`trainlab train TASK --probe NAME`, probes in `trainlab list`, `trainlab check` on a one-arm claim."""
from __future__ import annotations

import re

import pytest
import torch

from trainlab.claims.claim import Claim, Precondition, arm
from trainlab.cli import check_setting_types, main
from trainlab.diagnostics.probe import Probe
from trainlab.errors import ConfigError
from trainlab.techniques import registry
from trainlab.training.technique import Paper

NAME = "cli-test-weight-norm"


class WeightNorm(Probe):
    """Test probe: the model's parameter norm."""

    name = NAME
    paper = Paper(title="a test probe", authors="none", year=2000)
    fidelity = "control"
    metric_keys = ("cli_weight_norm",)

    def __init__(self, scale: float = 1.0, **settings):
        super().__init__(scale=scale, **settings)
        self.scale = scale

    def measure(self, model, state):
        return {"cli_weight_norm": self.scale * float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))}


@pytest.fixture
def probe():
    registry.register(WeightNorm)
    yield NAME
    registry._REGISTRY.pop(NAME, None)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("spec, says", [
    (f"{NAME}:every=abc", f"probe '{NAME}': setting 'every' must be a number, got 'abc'"),
    (f"{NAME}:every=0", f"probe '{NAME}': every must be a whole number >= 1, got 0"),
    (f"{NAME}:scale=big", f"probe '{NAME}': setting 'scale' must be a number, got 'big'"),
    ("placebo", "'placebo' is not a probe"),
    ("no-such-probe", "unknown probe 'no-such-probe' (probes: "),
])
def test_bad_probe_is_one_line(capsys, probe, spec, says):
    code, _, err = _run(capsys, "train", "blobs-mlp", "--probe", spec, "--no-store", "--quiet")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_every_is_checked_from_the_probe_base_class(probe):
    # the subclass passes `every` on through **settings: its type still comes from Probe.__init__
    with pytest.raises(ConfigError, match="setting 'every' must be a number"):
        check_setting_types(NAME, {"every": "abc"})
    check_setting_types(NAME, {"every": 2, "scale": 0.5})


def test_train_with_a_probe_prints_its_values_and_cost(capsys, probe):
    code, out, err = _run(capsys, "train", "blobs-mlp", "--epochs", "3", "--probe", f"{NAME}:every=2", "--no-store")
    assert code == 0, err
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3
    # measured at epoch 2 (every 2) and at the last epoch, not at epoch 1
    assert ["cli_weight_norm" in line for line in epoch_lines] == [False, True, True]
    assert "probe_seconds_cli_test_weight_norm" in epoch_lines[1]
    assert re.search(rf"probe {NAME}: \d+\.\d\d s measuring \(2 measurements\) vs \d+\.\d\d s training", out), out


def test_task_by_name_or_option(capsys):
    code, _, err = _run(capsys, "train", "blobs-mlp", "--task", "digits-mlp", "--quiet", "--no-store")
    assert code == 2 and "two tasks given" in err
    code, _, err = _run(capsys, "train", "--quiet")
    assert code == 2 and "train needs a task" in err


def test_list_shows_probes_with_their_keys(capsys, probe, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside cells
    code, out, _ = _run(capsys, "list", "--store", str(tmp_path / "none.sqlite"))
    assert code == 0
    probes_part = out[out.index("Probes"):]
    assert NAME in probes_part and "cli_weight_norm, probe_seconds_cli_test_weight_norm" in probes_part
    assert NAME not in out[:out.index("Probes")]


def test_check_a_one_arm_claim(capsys, probe, monkeypatch, tmp_path):
    claim = Claim(id="t-cli-one-arm", technique=NAME, task="blobs-mlp", metric="cli_weight_norm",
                  reference="mean_last2:cli_weight_norm", direction="higher", seeds=2,
                  treatment=arm((NAME, {"every": 1}), epochs=2),
                  preconditions=(Precondition("train_acc", ">=", 0.3, arm="treatment"),))
    monkeypatch.setattr("trainlab.claims.registry.resolve", lambda name: [claim])
    code, _, err = _run(capsys, "check", "t-cli-one-arm", "--workers", "1", "--store", str(tmp_path / "s.sqlite"))
    assert code == 0, err
    assert re.search(r"t-cli-one-arm: \w+.*cli_weight_norm - mean_last2:cli_weight_norm \[95% CI", err), err
    assert f"{NAME} measuring" in err and "2 seeds" in err
    assert "treatment seed 1" in err and "baseline seed" not in err
