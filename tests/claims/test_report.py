"""The claim report: files written, self-contained HTML, valid PNGs, awkward results handled."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from trainlab.claims.claim import Claim, arm
from trainlab.claims.report import write_report
from trainlab.claims.result import ClaimResult
from trainlab.claims.stats import analyze

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _curve(values: list[float], key: str = "test_acc") -> list[dict[str, float]]:
    return [{"epoch": float(e + 1), key: v, "lr": 0.1} for e, v in enumerate(values)]


def _result(claim: Claim, baseline: list[float], treatment: list[float], curves=None, overhead=None,
            status=None, analyzed: bool = True) -> ClaimResult:
    analysis = analyze(treatment, baseline, claim.direction, claim.min_effect) if analyzed else None
    return ClaimResult(
        claim=claim.to_dict(), seeds=list(range(len(baseline))), baseline_values=baseline,
        treatment_values=treatment, analysis=analysis, curves=curves or {}, overhead=overhead or {},
        status_counts=status or {}, provenance={"code_version": "abc123", "data_fingerprint": "f00d"},
    )


@pytest.fixture
def results() -> list[ClaimResult]:
    good = Claim(
        id="mixup-digits", technique="mixup", task="digits-mlp", metric="test_acc", direction="higher",
        treatment=arm(("mixup", {"alpha": 0.2})), paper_quote="Mixup improves generalization.",
        paper_number="+1.1% on CIFAR-10", paper_scale="CIFAR-10, PreAct ResNet-18, 200 epochs",
        min_effect=0.001, suites=("quick",), notes="small task",
    )
    base = [0.90, 0.91, 0.905, 0.895, 0.9]
    treat = [0.92, 0.925, 0.915, 0.91, 0.93]
    good_curves = {
        "baseline": [_curve([0.5, 0.8, b]) for b in base],
        "treatment": [_curve([0.55, 0.85, t]) for t in treat],
    }
    good_r = _result(good, base, treat, good_curves,
                     {"time_ratio": 1.08, "memory_ratio": 1.01, "optimizer_state_bytes": {"baseline": 10, "treatment": 20}},
                     {"baseline": {"finished": 5, "diverged": 0, "failed": 0},
                      "treatment": {"finished": 5, "diverged": 0, "failed": 0}})

    failed = Claim(id="adamp-cnn", technique="adamp", task="digits-cnn", metric="test_loss",
                   direction="lower", treatment=arm("adamp"))
    failed_r = _result(failed, [], [], analyzed=False,
                       status={"baseline": {"failed": 5}, "treatment": {"failed": 5}})

    # diverged runs: NaN values, curves of different lengths, NaN inside a curve
    diverging = Claim(id="lr-warmup|odd/name", technique="warmup", task="mnist1d-mlp", metric="train_loss",
                      direction="lower", treatment=arm(lr=1.0, label="lr 1.0"))
    div_curves = {
        "baseline": [_curve([2.0, 1.5, 1.2], "train_loss") for _ in range(3)],
        "treatment": [_curve([2.0, NAN], "train_loss"), _curve([2.1], "train_loss"), _curve([1.9, 1.4, 1.1], "train_loss")],
    }
    div_r = _result(diverging, [1.2, 1.2, 1.2], [NAN, NAN, 1.1], div_curves, {"time_ratio": NAN},
                    {"baseline": {"finished": 3}, "treatment": {"finished": 1, "diverged": 2}})

    # single-epoch curves, epochs_to metric with censoring, no overhead
    single = Claim(id="bn-epochs", technique="bn", task="digits-mlp", metric="epochs_to:test_acc>=0.95",
                   direction="lower", treatment=arm("bn"))
    single_curves = {"baseline": [_curve([0.9]) for _ in range(4)], "treatment": [_curve([0.96]) for _ in range(4)]}
    single_r = _result(single, [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0], single_curves,
                       status={"baseline": {"finished": 4, "censored": 4}, "treatment": {"finished": 4, "censored": 0}})

    no_curves = Claim(id="noop", technique="noop", task="digits-mlp", metric="test_acc", direction="higher",
                      treatment=arm("noop"))
    noop_r = _result(no_curves, [0.9, 0.91, 0.92], [0.91, 0.9, 0.92])
    return [good_r, failed_r, div_r, single_r, noop_r]


def test_report_files(results: list[ClaimResult], tmp_path: Path):
    paths = write_report(results, tmp_path / "out", title="test report",
                         provenance={"code_version": "abc123", "torch": "2.x", "device": "cpu",
                                     "threads": 2, "data": {"digits": "f00d"}})
    assert {"markdown", "html", "forest", "overhead"} <= set(paths)
    curve_keys = {k for k in paths if k.startswith("curves_")}
    assert curve_keys == {"curves_mixup-digits", "curves_lr-warmup|odd/name", "curves_bn-epochs"}
    assert paths["curves_lr-warmup|odd/name"].name == "curves_lr-warmup_odd_name.png"
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
        assert p.parent == tmp_path / "out"
    for key, p in paths.items():
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC, key
            with Image.open(p) as im:
                im.verify()


def test_markdown_content(results: list[ClaimResult], tmp_path: Path):
    md = write_report(results, tmp_path, provenance={"code_version": "abc123", "device": "cpu"})["markdown"].read_text()
    for r in results:
        assert r.claim["id"].replace("|", "\\|") in md
    assert "| claim (on task) | fidelity | metric | diff [95% CI] | outcome |" in md
    assert "+1.8 pt [" in md  # accuracy differences in points, as on the console
    assert "Mixup improves generalization." in md
    assert "CIFAR-10, PreAct ResNet-18, 200 epochs" in md
    assert "+1.1% on CIFAR-10" in md
    assert "small task" in md
    for verdict in ("reproduced", "failed", "inconclusive"):
        assert verdict in md
    assert "## Provenance" in md and "code_version" in md and "f00d" in md
    assert "dropped 2 of 3 pairs" in md  # the diverged claim's analysis note
    assert "![" in md and "(forest.png)" in md and "(curves_mixup-digits.png)" in md
    assert "mixup(alpha=0.2)" in md  # the treatment arm, described
    assert "| censored |" in md or "censored" in md


def test_html_is_self_contained(results: list[ClaimResult], tmp_path: Path):
    paths = write_report(results, tmp_path)
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "<style>" in page
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    pngs = [p for p in paths.values() if p.suffix == ".png"]
    assert len(srcs) == len(pngs)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert embedded == {p.read_bytes() for p in pngs}
    assert "Mixup improves generalization." in page and "mixup-digits" in page


def test_empty_report(tmp_path: Path):
    paths = write_report([], tmp_path)
    assert "0 claim(s)" in paths["markdown"].read_text()
    for key in ("forest", "overhead"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC


def test_matplotlib_untouched_by_import_and_backend_kept(tmp_path: Path):
    # importing trainlab never loads matplotlib; writing a report keeps the caller's backend
    code = (
        "import sys, trainlab.claims.report, trainlab.claims.stats; "
        "loaded = 'matplotlib' in sys.modules; "
        "import matplotlib; matplotlib.use('svg'); from pathlib import Path; "
        "trainlab.claims.report.write_report([], Path(r'%s')); "
        "print(loaded, matplotlib.get_backend())" % tmp_path
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "svg"]


def test_regime_fidelity_setting_and_fdr_are_reported(tmp_path: Path):
    from trainlab.claims.claim import PaperSetting, Precondition

    claim = Claim(id="mixup-small", technique="mixup", task="digits-mlp", metric="test_acc", direction="higher",
                  treatment=arm("mixup"), paper_quote="Mixup improves generalization.",
                  preconditions=(Precondition("train_acc", ">=", 0.99, why="the baseline overfits"),),
                  paper_setting=PaperSetting(train_size=50_000, epochs=200, params=11_000_000, text="CIFAR-10"))
    r = _result(claim, [0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
    r.outcome = "out of regime"
    r.preconditions = [{**claim.preconditions[0].to_dict(), "per_seed": [0.70, 0.72, 0.71], "seeds": [0, 1, 2],
                        "value": 0.71, "effective_threshold": 0.99, "passed": False, "reason": ""}]
    r.fidelity = {"technique": "mixup", "level": "variant", "deviations": ["our own mixing schedule"], "evidence": ""}
    r.setting = {"train_size": 1000, "epochs": 10, "params": 11_000}
    r.task = "my-digits"
    paths = write_report([r], tmp_path, fdr=0.05)
    md = paths["markdown"].read_text()
    assert "1 out of regime" in md and "0 contradicted" in md
    assert "out of regime (interval alone: contradicted)" in md
    assert "baseline mean train_acc 0.71 (needs >= 0.99; per seed 0.7, 0.72, 0.71): FAILED" in md
    assert "not what was tested: this claim tests a variant" in md and "our own mixing schedule" in md
    assert "mixup-small (on my-digits)" in md
    # compute ratio: (1000 * 10 * 11e3) / (5e4 * 200 * 1.1e7) = 1e-6
    assert "| 1e-06 |" in md
    assert "Benjamini-Hochberg" in md and "Chance alone" in md
    page = paths["html"].read_text()
    assert 'class="v v-out-of-regime"' in page
