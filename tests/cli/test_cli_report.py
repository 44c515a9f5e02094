"""`trainlab check` prints a verdict line; `trainlab report` rebuilds the report from the store."""
from __future__ import annotations

import re

import pytest

from trainlab.cli import main


@pytest.mark.slow
def test_check_then_report_from_the_store(capsys, tmp_path):
    assert main(["check", "sanity-placebo", "--seeds", "2", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"sanity-placebo: (inconclusive|reproduced|contradicted)  [+-]\d+\.\d pt test_acc "
                     r"\[95% CI [+-]\d+\.\d, [+-]\d+\.\d\], 2 seeds, overhead \d+\.\d\dx time, \d+\.\d\dx memory", err), err
    out = tmp_path / "rep"
    assert main(["report", "--suite", "quick", "--out", str(out), "--fdr", "0.05"]) == 0
    assert "report of 1 claims" in capsys.readouterr().out
    assert "Benjamini-Hochberg" in (out / "report.md").read_text()
    for name in ("report.md", "report.html", "forest.png", "overhead.png", "curves_sanity-placebo.png"):
        assert (out / name).stat().st_size > 0
    assert main(["list"]) == 0
    assert re.search(r"sanity-placebo: (inconclusive|reproduced|contradicted)", capsys.readouterr().out)


def test_report_without_runs_is_a_clear_error(capsys, tmp_path):
    assert main(["report", "--out", str(tmp_path / "r")]) == 2
    assert "has no runs of the quick suite" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1.5", "abc"])
def test_fdr_outside_0_1_is_one_line(capsys, value):
    assert main(["report", "--fdr", value]) == 2
    err = capsys.readouterr().err
    assert "expected a number in (0, 1)" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
