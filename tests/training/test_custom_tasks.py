"""Tasks beyond classification: a Task's own loss and evaluation, targets of any shape."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainlab import DataBundle, Task
from trainlab.errors import ConfigError
from trainlab.training.metrics import mean_loss
from trainlab.training.trainer import run_training


def regression_data() -> DataBundle:
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[1.5], [-2.0], [0.5], [0.0]])
    x = torch.randn(320, 4, generator=g)
    y = x @ w + 0.05 * torch.randn(320, 1, generator=g)
    return DataBundle(x[:256], y[:256], x[256:], y[256:], name="linear-regression")


def multilabel_data() -> DataBundle:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g)
    y = torch.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < -0.5], dim=1).float()   # 3 labels per example
    return DataBundle(x[:240], y[:240], x[240:], y[240:], name="three-labels")


def linear(input_shape, num_classes, outputs=1):
    assert num_classes is None   # not classification: the model is told so
    return torch.nn.Linear(input_shape[0], outputs)


def mse(outputs, targets):
    return F.mse_loss(outputs, targets)


def regression_metrics(model, x, y):
    pred = model(x)
    resid = ((pred - y) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    return {"mse": float(resid / len(y)), "r2": float(1 - resid / total)}


def bce(outputs, targets):
    return F.binary_cross_entropy_with_logits(outputs, targets)


def multilabel_metrics(model, x, y):
    pred = (model(x) > 0).float()
    return {"exact_match": float((pred == y).all(1).float().mean()), "label_acc": float((pred == y).float().mean())}


def test_regression_task_with_its_own_loss_and_metrics():
    task = Task("reg", make_data=regression_data, make_model=linear, epochs=5, batch_size=32, optimizer="sgd", lr=0.1,
                weight_decay=0.0, loss_fn=mse, evaluate=regression_metrics)
    r = run_training(task, seed=0, keep_state=True)
    assert r.status == "finished"
    row = r.epochs[-1]
    assert "train_acc" not in row and "chance_acc" not in row and "test_acc" not in row
    assert {"test_mse", "test_r2", "train_loss"} <= set(row)
    assert row["test_r2"] > 0.95   # the data is linear with little noise
    # test_mse is the task's own metric of the final model, recomputed here by hand
    model = linear((4,), None)
    model.load_state_dict(r.state)
    data = regression_data()
    with torch.no_grad():
        expected = float(((model(data.test_x) - data.test_y) ** 2).mean())
    assert row["test_mse"] == pytest.approx(expected, rel=1e-5)


def test_without_evaluate_the_test_metric_is_the_mean_loss():
    task = Task("reg-default", make_data=regression_data, make_model=linear, epochs=1, batch_size=32, lr=0.05,
                weight_decay=0.0, loss_fn=mse, eval_batch_size=50)   # 64 test examples: batches of 50 and 14
    r = run_training(task, seed=0, keep_state=True)
    model = linear((4,), None)
    model.load_state_dict(r.state)
    data = regression_data()
    with torch.no_grad():
        expected = float(((model(data.test_x) - data.test_y) ** 2).mean())
    assert set(k for k in r.final if k.startswith("test_")) == {"test_loss"}
    assert r.final["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert mean_loss(model, data.test_x, data.test_y, mse, 50) == pytest.approx(expected, rel=1e-5)


def test_multilabel_task_with_float_targets_of_shape_n_by_3():
    task = Task("multi", make_data=multilabel_data, make_model=linear, model_kwargs={"outputs": 3}, epochs=30,
                batch_size=32, optimizer="adam", lr=0.05, weight_decay=0.0, loss_fn=bce, evaluate=multilabel_metrics)
    r = run_training(task, seed=0)
    assert r.status == "finished"
    assert r.final["test_label_acc"] > 0.85          # three nearly linear labels
    assert 0.0 <= r.final["test_exact_match"] <= r.final["test_label_acc"]


def test_classification_rows_keep_accuracy_chance_and_top_class_share():
    r = run_training("blobs-mlp", seed=0)
    row = r.epochs[-1]
    assert {"train_acc", "test_acc", "test_ece", "chance_acc", "test_top_class_frac"} <= set(row)
    assert row["chance_acc"] == pytest.approx(0.25)


def test_data_without_classes_needs_a_loss():
    task = Task("reg-no-loss", make_data=regression_data, make_model=linear, epochs=1)
    with pytest.raises(ConfigError, match="loss_fn"):
        run_training(task)


def test_label_smoothing_is_refused_with_the_task_own_loss():
    task = Task("reg-smooth", make_data=regression_data, make_model=linear, epochs=1, loss_fn=mse, label_smoothing=0.1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        run_training(task)


def test_evaluate_must_return_numbers():
    task = Task("reg-bad-eval", make_data=regression_data, make_model=linear, epochs=1, loss_fn=mse,
                evaluate=lambda model, x, y: {"mse": "low"})
    with pytest.raises(ConfigError, match="non-number for 'mse'"):
        run_training(task)


def test_databundle_targets():
    x = torch.zeros(4, 2)
    DataBundle(x, torch.zeros(4, 3), x, torch.zeros(4, 3))               # any targets without classes
    with pytest.raises(ConfigError, match="integer class indices"):
        DataBundle(x, torch.zeros(4), x, torch.zeros(4), num_classes=2)   # float labels with classes
    with pytest.raises(ConfigError, match=r"shape \[N\]"):
        DataBundle(x, torch.zeros(4, 3).long(), x, torch.zeros(4, 3).long(), num_classes=2)
    with pytest.raises(ConfigError, match="num_classes"):
        DataBundle(x, torch.zeros(4).long(), x, torch.zeros(4).long(), num_classes=0)
    with pytest.raises(ConfigError, match="differ in length"):
        DataBundle(x, torch.zeros(3, 1), x, torch.zeros(4, 1))
    assert not DataBundle(x, torch.zeros(4, 1), x, torch.zeros(4, 1)).is_classification


def test_new_task_fields_leave_run_keys_unchanged():
    # loss_fn/evaluate are functions (like make_model): not part of the budget, so stored runs keep their keys
    from trainlab.tasks.registry import get_task

    assert "loss_fn" not in get_task("digits-cnn").budget() and "evaluate" not in get_task("digits-cnn").budget()


def test_perplexity_never_overflows():
    from trainlab.tasks.language import lm_evaluate

    class Huge(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(*x.shape, 3)
            out[..., 0] = 1e4   # all mass on a wrong token: loss 1e4 nats
            return out

    m = lm_evaluate(Huge(), torch.zeros(2, 4).long(), torch.ones(2, 4).long())
    assert m["loss"] == pytest.approx(1e4) and math.isfinite(m["ppl"])


REG_FILE = '''
import torch
import torch.nn.functional as F
from trainlab import DataBundle, Task

def data():
    x = torch.linspace(-1, 1, 96).reshape(-1, 1)
    return DataBundle(x[::2], 3 * x[::2], x[1::2], 3 * x[1::2], name="line")

def model(input_shape, num_classes):
    return torch.nn.Linear(1, 1)

def metrics(model, x, y):
    return {"mae": float((model(x) - y).abs().mean())}

line = Task("line", make_data=data, make_model=model, epochs=2, batch_size=16, lr=0.05, loss_fn=F.mse_loss,
            evaluate=metrics)
'''


def test_cli_train_prints_the_task_own_metrics(tmp_path, capsys):
    from trainlab.cli import main

    path = tmp_path / "reg_task.py"
    path.write_text(REG_FILE)
    assert main(["train", "--task", f"{path}:line", "--no-store", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("line: finished  test_mae ") and "test_acc" not in out and "nan" not in out
