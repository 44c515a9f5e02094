"""Technique requirements: what a technique needs from a task, refused in one line before training."""
import pytest
import torch

from trainlab import DataBundle, Task
from trainlab.errors import ConfigError
from trainlab.techniques.registry import get_technique
from trainlab.training.requirements import data_unmet, technique_unmet, unmet
from trainlab.training.technique import Technique
from trainlab.training.trainer import run_training


def _bundle(x, y, classes=None):
    return DataBundle(x, y, x, y, num_classes=classes, name="d")


TABULAR = _bundle(torch.zeros(8, 5), torch.zeros(8).long(), 2)
IMAGES = _bundle(torch.zeros(8, 3, 4, 4), torch.zeros(8).long(), 2)
SIGNALS = _bundle(torch.zeros(8, 1, 16), torch.zeros(8).long(), 2)
TOKENS = _bundle(torch.zeros(8, 16).long(), torch.zeros(8).long(), 2)
REGRESSION = _bundle(torch.zeros(8, 5), torch.zeros(8, 1))
TASK = Task("t", make_data=lambda: TABULAR, make_model=lambda s, c: torch.nn.Linear(5, 2))
MLP = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
CNN = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_each_requirement_says_what_is_missing():
    assert "classification" in unmet({"classification"}, TASK, REGRESSION)
    assert "shape [1] (float32)" in unmet({"classification"}, TASK, REGRESSION)
    assert unmet({"classification"}, TASK, TABULAR) is None
    own_loss = Task("t", make_data=None, make_model=None, loss_fn=torch.nn.functional.cross_entropy)
    assert "gives its own loss_fn" in unmet({"classification"}, own_loss, TABULAR)
    assert "[N, 5]" in unmet({"spatial"}, TASK, TABULAR)
    assert "[N, 16] (int64)" in unmet({"spatial"}, TASK, TOKENS)
    assert unmet({"spatial"}, TASK, IMAGES) is None and unmet({"spatial"}, TASK, SIGNALS) is None
    assert unmet({"images"}, TASK, IMAGES) is None and "image inputs" in unmet({"images"}, TASK, SIGNALS)
    assert "convolution" in unmet({"conv"}, TASK, TABULAR, MLP) and unmet({"conv"}, TASK, IMAGES, CNN) is None
    assert unmet({"conv"}, TASK, TABULAR, None) is None    # no model yet: decided once it is built
    assert "normalization" in unmet({"norm_layers"}, TASK, TABULAR, MLP)
    assert unmet({"norm_layers"}, TASK, IMAGES, CNN) is None
    with pytest.raises(ConfigError, match="unknown requirement"):
        unmet({"gpu"}, TASK, TABULAR)


def test_registered_techniques_declare_their_needs():
    assert technique_unmet(get_technique("mixup"), TASK, REGRESSION).startswith("mixup needs a classification task")
    for name in ("cutmix", "elr", "ps-kd", "adamixup", "decoupled-mixup"):
        assert technique_unmet(get_technique(name), TASK, REGRESSION) is not None, name
    assert technique_unmet(get_technique("cutmix"), TASK, TABULAR).startswith("cutmix needs image or signal inputs")
    assert technique_unmet(get_technique("cutmix"), TASK, IMAGES) is None
    assert "convolution" in technique_unmet(get_technique("orthogonal-conv"), TASK, TABULAR, MLP)
    assert "normalization" in technique_unmet(get_technique("bn-only"), TASK, TABULAR, MLP)
    assert technique_unmet(get_technique("adamp"), TASK, REGRESSION, MLP) is None   # an optimizer needs nothing


def test_check_applicable_can_be_overridden():
    class NeedsWideInputs(Technique):
        name = "needs-wide"

        @classmethod
        def check_applicable(cls, task, data, model):
            return None if data.input_shape[-1] >= 10 else f"needs at least 10 features, '{task.name}' has {data.input_shape[-1]}"

    assert technique_unmet(NeedsWideInputs, TASK, TABULAR) == "needs-wide needs at least 10 features, 't' has 5"
    assert technique_unmet(NeedsWideInputs(), TASK, _bundle(torch.zeros(8, 12), torch.zeros(8).long(), 2)) is None


def test_data_settings_that_need_classes():
    noisy = TASK.with_overrides({"label_noise": 0.4})
    assert data_unmet(noisy, TABULAR) is None
    assert "label_noise=0.4 needs class labels" in data_unmet(noisy, REGRESSION)
    assert "imbalance" in data_unmet(TASK.with_overrides({"imbalance": 0.1}), REGRESSION)
    assert "shift=rotate needs image or signal inputs" in data_unmet(TASK.with_overrides({"shift": "rotate"}), TOKENS)


def regression_data():
    return _bundle(torch.randn(64, 5), torch.randn(64, 1))


def test_the_trainer_refuses_a_classification_technique_on_a_regression_task():
    task = Task("reg", make_data=regression_data, make_model=lambda s, c: torch.nn.Linear(5, 1), epochs=1,
                loss_fn=torch.nn.functional.mse_loss)
    with pytest.raises(ConfigError, match="task 'reg': mixup needs a classification task"):
        run_training(task, [("mixup", {})])
    with pytest.raises(ConfigError, match="orthogonal-conv needs convolution layers"):
        run_training("blobs-mlp", [("orthogonal-conv", {})])
