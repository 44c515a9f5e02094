"""The HTML report in a real headless browser: no console errors, no horizontal scroll at 1280 px.

Needs Playwright (the `test` extra) and a Chromium binary (Debian: `apt-get install chromium`);
.ci/run installs both. Where no Chromium can be found the test is skipped, and says so.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainlab.claims.claim import Claim, PaperSetting, Precondition, arm
from trainlab.claims.report import write_report
from trainlab.claims.result import ClaimResult
from trainlab.claims.stats import analyze

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)


def _results() -> list[ClaimResult]:
    out = []
    for i in range(12):
        claim = Claim(
            id=f"a-rather-long-claim-identifier-number-{i}-cifar10-resnet", technique="decoupled-mixup",
            task="cifar10-cnn", metric="epochs_to:test_acc>=0.95" if i % 3 == 0 else "test_acc",
            direction="lower" if i % 3 == 0 else "higher", treatment=arm(("decoupled-mixup", {"alpha": 1.0, "eta": 0.1})),
            paper_quote="A long quotation from the paper " * 20, paper_number="+1.2% on CIFAR-100 " * 5,
            paper_scale="CIFAR-100, WRN-28-8, 800 epochs " * 3, notes="notes " * 60,
            preconditions=(Precondition("train_acc - test_acc", ">=", 0.15, why="the baseline overfits " * 5),),
            paper_setting=PaperSetting(train_size=50_000, epochs=800, params=23_000_000, text="CIFAR-100 " * 10),
        )
        base, treat = [0.6, 0.61, 0.62, 0.6, 0.63], [0.62, 0.6, 0.65, 0.61, 0.64]
        r = ClaimResult(claim=claim.to_dict(), seeds=list(range(5)), baseline_values=base, treatment_values=treat,
                        analysis=analyze(treat, base, claim.direction), overhead={"time_ratio": 1.3, "memory_ratio": 1.1,
                                                                                  "load_average_1min": 9.0, "cpu_count": 2},
                        outcome="out of regime" if i % 2 else "", task="my-own-task-with-a-long-name",
                        fidelity={"technique": "decoupled-mixup", "level": "variant", "deviations": ["x " * 40],
                                  "evidence": ""},
                        setting={"train_size": 10_000, "epochs": 30, "params": 100_000})
        r.preconditions = [{**claim.preconditions[0].to_dict(), "per_seed": [0.1] * 5, "seeds": list(range(5)),
                            "value": 0.1, "effective_threshold": 0.15, "passed": False, "reason": ""}]
        out.append(r)
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary on this machine (apt-get install chromium)")
def test_report_page_fits_1280px_and_has_no_console_errors(tmp_path: Path):
    page_path = write_report(_results(), tmp_path, fdr=0.05)["html"]
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            client_width = page.evaluate("document.documentElement.clientWidth")
            n_images = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
            colored = page.evaluate("document.querySelectorAll('span.v-out-of-regime').length")
        finally:
            browser.close()
    assert errors == []
    assert scroll_width <= client_width, f"horizontal scroll: content {scroll_width} px wide in a {client_width} px window"
    assert n_images >= 2  # forest and overhead plots decode (embedded data: URIs)
    assert colored > 0
