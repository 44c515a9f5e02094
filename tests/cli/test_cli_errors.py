"""Every user mistake gives one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from trainlab.cli import main, parse_technique
from trainlab.errors import ConfigError


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
