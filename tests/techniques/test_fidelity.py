"""Every registered technique says how close it is to its paper (see FIDELITY_LEVELS)."""
from __future__ import annotations

import pytest

from trainlab.techniques.registry import all_techniques
from trainlab.training.technique import FIDELITY_LEVELS, Paper

TECHNIQUES = all_techniques()
NAMES = sorted(TECHNIQUES)


def test_the_registry_is_not_empty() -> None:
    assert len(NAMES) > 10


@pytest.mark.parametrize("name", NAMES)
def test_fidelity_is_a_known_level(name: str) -> None:
    assert TECHNIQUES[name].fidelity in FIDELITY_LEVELS, (
        f"{name}: fidelity {TECHNIQUES[name].fidelity!r} is not one of {FIDELITY_LEVELS}")


@pytest.mark.parametrize("name", NAMES)
def test_variants_and_stand_ins_list_their_deviations(name: str) -> None:
    cls = TECHNIQUES[name]
    if cls.fidelity in ("variant", "stand-in"):
        assert isinstance(cls.deviations, tuple) and cls.deviations, f"{name}: a {cls.fidelity} lists no deviations"
        assert all(isinstance(d, str) and d.strip() for d in cls.deviations), f"{name}: an empty deviation"


@pytest.mark.parametrize("name", NAMES)
def test_exact_names_its_evidence(name: str) -> None:
    cls = TECHNIQUES[name]
    if cls.fidelity == "exact":
        assert isinstance(cls.fidelity_evidence, str) and cls.fidelity_evidence.strip(), (
            f"{name}: 'exact' without fidelity_evidence (which test compares with the official code?)")


@pytest.mark.parametrize("name", NAMES)
def test_every_method_cites_its_paper(name: str) -> None:
    cls = TECHNIQUES[name]
    if cls.fidelity != "control":
        assert isinstance(cls.paper, Paper), f"{name}: fidelity {cls.fidelity!r} but no paper"


def test_trainlab_list_shows_the_fidelity_column(capsys, monkeypatch, tmp_path) -> None:
    from trainlab.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("TRAINLAB_STORE", str(tmp_path / "none.sqlite"))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fidelity" in out.splitlines()[1]
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│") and
            line.split("│")[1].strip()}
    for name in ("adamp", "placebo", "weight-standardization"):
        cells = [c.strip() for c in rows[name].split("│")]
        assert cells[3] == TECHNIQUES[name].fidelity, rows[name]
    # the number of deviations is shown under a variant's level
    ws = out.splitlines()[out.splitlines().index(rows["weight-standardization"]) + 1]
    assert f"({len(TECHNIQUES['weight-standardization'].deviations)} deviations)" in ws
