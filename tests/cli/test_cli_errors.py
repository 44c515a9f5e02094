"""Every user mistake gives one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from trainlab.cli import main, parse_technique
from trainlab.errors import CheckpointError, ConfigError


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "no-such-task"], "unknown task 'no-such-task'"),
    (["train", "--task", "blobs-mlp", "--technique", "no-such-technique"], "unknown technique 'no-such-technique'"),
    (["train", "--task", "blobs-mlp", "--epochs", "abc"], "expected a whole number, got 'abc'"),
    (["train", "--task", "blobs-mlp", "--lr", "-1"], "expected a number > 0"),
    (["train", "--task", "blobs-mlp", "--technique", "placebo:seed_offset"], "bad technique setting"),
    (["train", "--task", "blobs-mlp", "--technique", "placebo:colour=3"], "bad settings for technique 'placebo'"),
    (["train", "--task", "missing_file.py:task"], "task file 'missing_file.py' does not exist"),
    (["train", "--task", "blobs-mlp", "--resume"], "--resume needs --checkpoint"),
    (["check", "no-such-claim"], "unknown technique or claim 'no-such-claim'"),
    (["bench", "--suite", "huge"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_exit_2_with_one_line(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("trainlab: error: ") and message in lines[0]


def test_corrupt_checkpoint_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage")
    code, _, err = _run(capsys, "train", "--task", "blobs-mlp", "--checkpoint", str(bad), "--resume", "--quiet")
    assert code == 2
    errors = [line for line in err.strip().splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and errors[0].startswith("trainlab: error: checkpoint") and "unreadable or corrupt" in errors[0]
    assert "Traceback" not in err


def test_unreadable_data_path_exits_2(capsys, tmp_path):
    task_file = tmp_path / "tasks.py"
    task_file.write_text(
        "from trainlab import Task\n"
        "from trainlab.errors import DataError\n"
        "def data():\n"
        "    raise DataError('cannot read /nowhere/data.npz')\n"
        "def model(shape, n):\n"
        "    raise AssertionError('not reached')\n"
        "mine = Task('mine', make_data=data, make_model=model)\n"
    )
    code, _, err = _run(capsys, "train", "--task", f"{task_file}:mine", "--quiet")
    assert code == 2 and "cannot read /nowhere/data.npz" in err


def test_train_runs_and_is_stored(capsys):
    code, out, err = _run(capsys, "train", "--task", "blobs-mlp", "--epochs", "2", "--quiet")
    assert code == 0
    assert "blobs-mlp: finished  test_acc" in out
    code, out, _ = _run(capsys, "runs")
    assert code == 0 and "blobs-mlp" in out and "finished" in out


def test_help_everywhere():
    for cmd in ([], ["train"], ["check"], ["bench"], ["report"], ["runs"], ["tasks"], ["list"], ["prune"], ["data"]):
        proc = subprocess.run([sys.executable, "-m", "trainlab.cli", *cmd, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: trainlab" in proc.stdout


def test_parse_technique_settings():
    assert parse_technique("mixup:alpha=0.2,cutmix=true,mode=fast") == ("mixup", {"alpha": 0.2, "cutmix": True, "mode": "fast"})
    with pytest.raises(ConfigError):
        parse_technique("mixup:=3")


# A user's task file with every kind of broken task (data that raises, labels past num_classes,
# a model function that returns no module), and one good task.
BAD_TASKS = textwrap.dedent("""
    import torch
    from trainlab import DataBundle, Task

    def _xy(top):
        g = torch.Generator().manual_seed(0)
        return torch.randn(64, 4, generator=g), torch.randint(0, top, (64,), generator=g)

    def labels_past_classes():
        x, y = _xy(5)
        return DataBundle(x, y, x, y, num_classes=3, name="five-labels")

    def good_data():
        x, y = _xy(3)
        return DataBundle(x, y, x, y, num_classes=3, name="three-labels")

    def read_my_csv():
        raise FileNotFoundError("features.csv not found")

    def mlp(input_shape, num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], num_classes))

    def returns_a_function(input_shape, num_classes):
        return lambda x: x

    bad_labels = Task("bad-labels", make_data=labels_past_classes, make_model=mlp, epochs=1, batch_size=16)
    data_raises = Task("data-raises", make_data=read_my_csv, make_model=mlp, epochs=1, batch_size=16)
    not_a_module = Task("not-a-module", make_data=good_data, make_model=returns_a_function, epochs=1, batch_size=16)
    good = Task("good", make_data=good_data, make_model=mlp, epochs=1, batch_size=16)
""")

# the documented bad inputs of issue-level severity: each must be one line and exit 2 through the CLI
NO_GPU = "cuda:99" if torch.cuda.is_available() else "cuda"
BAD_INPUTS = [
    (["train", "--task", "blobs-mlp", "--device", NO_GPU], f"device '{NO_GPU}'"),
    (["check", "sanity-placebo", "--device", NO_GPU], f"device '{NO_GPU}'"),
    (["train", "--task", "blobs-mlp", "--device", "bogus"], "unknown device 'bogus'"),
    (["bench", "--device", "bogus"], "unknown device 'bogus'"),
    (["train", "--task", "{tasks}:bad_labels"], "training label 4 is outside 0..2 (num_classes=3"),
    (["check", "sanity-placebo", "--task", "{tasks}:bad_labels"], "label 4 is outside 0..2"),
    (["train", "--task", "{tasks}:data_raises"],
     "its make_data function read_my_csv() raised FileNotFoundError: features.csv not found"),
    (["check", "mixup", "--task", "{tasks}:data_raises"], "read_my_csv() raised FileNotFoundError"),
    (["train", "--task", "{tasks}:not_a_module"],
     "its make_model function returns_a_function() ({tasks}) returned function, not a torch.nn.Module"),
    (["check", "sanity-placebo", "--task", "{tasks}:not_a_module"], "returned function, not a torch.nn.Module"),
    (["train", "--task", "{tasks}:good", "--store", "{file}/runs.sqlite"], "'{file}' is a file, not a folder"),
    (["runs", "--store", "{file}/sub/runs.sqlite"], "'{file}' is a file, not a folder"),
    (["check", "sanity-placebo", "--store", "{file}/runs.sqlite"], "'{file}' is a file, not a folder"),
    (["runs", "--store", "{tmp}"], "is a folder; give a file name"),
    (["train", "--task", "blobs-mlp", "--technique", "mixup:alpha=abc"],
     "technique 'mixup': setting 'alpha' must be a number, got 'abc'"),
    (["train", "--task", "blobs-mlp", "--technique", "mixup:alpha=true"], "setting 'alpha' must be a number"),
    (["train", "--task", "{tasks}:good", "--checkpoint", "{subnet}", "--resume"],
     "is a pruned subnet file, not a training checkpoint"),
]


@pytest.fixture
def bad_places(tmp_path):
    tasks = tmp_path / "bad_tasks.py"
    tasks.write_text(BAD_TASKS)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    subnet = tmp_path / "subnet.pt"
    torch.save({"format": 1, "task": "good", "input_shape": [4], "num_classes": 3, "model_kwargs": {},
                "removed_groups": [], "state_dict": {}}, subnet)
    return {"tasks": str(tasks), "file": str(a_file), "tmp": str(tmp_path), "subnet": str(subnet)}


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_documented_bad_inputs_exit_2_with_one_line(capsys, bad_places, argv, message):
    argv = [a.format(**bad_places) for a in argv]
    code, out, err = _run(capsys, *argv, *(["--quiet"] if argv[0] == "train" else []))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("trainlab: error: ") and message.format(**bad_places) in lines[0], lines[0]
    assert "Traceback" not in err + out


def test_load_subnet_on_a_training_checkpoint_is_one_clear_error(tmp_path, capsys):
    ckpt = tmp_path / "train.ckpt"
    code, _, err = _run(capsys, "train", "--task", "blobs-mlp", "--epochs", "1", "--quiet", "--no-store",
                        "--checkpoint", str(ckpt))
    assert code == 0 and ckpt.is_file(), err
    from trainlab.techniques.pruning.cli import load_subnet

    with pytest.raises(CheckpointError, match="is not a trainlab subnet file .*it is a training checkpoint"):
        load_subnet(ckpt)


def test_bad_inputs_in_a_fresh_process_print_no_traceback(bad_places):
    # the console script end to end, for two of the cases: exit status and stderr as a user sees them
    for argv in (["train", "--task", f"{bad_places['tasks']}:data_raises", "--quiet"],
                 ["train", "--task", "blobs-mlp", "--technique", "mixup:alpha=abc", "--quiet"]):
        proc = subprocess.run([sys.executable, "-m", "trainlab.cli", *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("trainlab: error: ")
