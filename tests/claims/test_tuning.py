"""Per-arm hyper-parameter selection on a held-out validation split (trainlab.claims.tuning)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainlab.claims.api import check
from trainlab.claims.claim import Claim, arm
from trainlab.claims.runner import RunSpec, plan, verdict_line
from trainlab.claims.store import Store
from trainlab.claims.tuning import (Tuning, apply_point, choose, chosen_text, grid_edges, plan_tuning, tuned_claim,
                                    tuning_specs)
from trainlab.errors import ConfigError
from trainlab.tasks.loading import load_task_data
from trainlab.tasks.registry import get_task
from trainlab.tasks.task import DataBundle
from trainlab.tasks.wrappers import holdout_split

SMALL = dict(task="blobs-mlp", metric="test_acc", direction="higher", seeds=2)


def _bundle(n: int = 50) -> DataBundle:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)   # row i holds the value i: rows are traceable
    y = torch.arange(n) % 3
    return DataBundle(x, y, -x[:10], y[:10], num_classes=3, name="toy", clean_train_y=(y + 1) % 3)


# --------------------------------------------------------------------------- the split

def test_holdout_split_is_disjoint_complete_and_drops_the_test_set():
    b = holdout_split(_bundle(50), 0.2, seed=3)
    train, val = b.train_x[:, 0].long().tolist(), b.test_x[:, 0].long().tolist()
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(50))
    assert min(train + val) >= 0  # the real test rows (negative values) are gone
    # labels travel with their rows; the clean labels of the kept rows are kept
    assert torch.equal(b.test_y, torch.tensor(val) % 3)
    assert torch.equal(b.clean_train_y, (torch.tensor(train) % 3 + 1) % 3)
    assert train == sorted(train)  # the training rows stay in their original order


def test_holdout_split_is_fixed_by_the_seed():
    a, again, other = (holdout_split(_bundle(), 0.3, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.test_x, again.test_x) and torch.equal(a.train_x, again.train_x)
    assert not torch.equal(a.test_x, other.test_x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001, True])
def test_holdout_split_refuses_fractions_that_leave_an_empty_split(fraction):
    with pytest.raises(ConfigError):
        holdout_split(_bundle(50), fraction)


def test_task_holdout_validation_loads_the_split_of_the_task_data():
    task = get_task("blobs-mlp")
    full = load_task_data(task, seed=4)
    held = load_task_data(task.with_overrides({"holdout_validation": 0.25}), seed=4)
    assert len(held.test_y) == round(0.25 * len(full.train_y))
    assert len(held.train_y) + len(held.test_y) == len(full.train_y)
    rows = {tuple(r.tolist()) for r in full.train_x}
    assert all(tuple(r.tolist()) in rows for r in held.test_x)  # validation rows come from the training set


def test_unset_holdout_leaves_budget_and_existing_run_keys_unchanged():
    task = get_task("blobs-mlp")
    assert "holdout_validation" not in task.budget()
    assert task.with_overrides({"holdout_validation": 0.2}).budget()["holdout_validation"] == 0.2
    # keys of this spec as computed before tuning existed (the same code without the field)
    claim = Claim(id="k", technique="placebo", treatment=arm("placebo", lr=0.1), **SMALL)
    assert [s.key for s in plan(claim)] == ['dbe321d352519bacceef7633', '967c45112fe6107954e50b16',
                                            'a7189a3a9d664ac4fc6a1a2a', 'b795ae5821d3c82a99969818']
    assert "tune" not in claim.to_dict()["treatment"]


# --------------------------------------------------------------------------- the grid and the choice

def test_tuning_validates_its_settings():
    for bad in ({}, {"lr": ()}, {"lr": "0.1"}, {"lr": (0.1, 0.1)}, {"technique:lora": (1,)}):
        with pytest.raises(ConfigError):
            Tuning(bad)
    with pytest.raises(ConfigError):
        Tuning({"lr": (0.1,)}, validation=1.0)
    with pytest.raises(ConfigError):
        Tuning({"lr": (0.1,)}, direction="up")
    with pytest.raises(ConfigError):
        Tuning({"lr": (0.1,)}, metric="best:")
    assert Tuning({"lr": (0.1,)}, metric="best:val_acc").run_metric == "best:test_acc"


def test_points_are_the_product_in_grid_order():
    t = Tuning({"lr": (1, 2), "weight_decay": (0, 5, 6)})
    assert t.points() == [{"lr": 1, "weight_decay": 0}, {"lr": 1, "weight_decay": 5}, {"lr": 1, "weight_decay": 6},
                          {"lr": 2, "weight_decay": 0}, {"lr": 2, "weight_decay": 5}, {"lr": 2, "weight_decay": 6}]


def test_apply_point_sets_task_fields_and_technique_settings():
    task, techs = apply_point(get_task("blobs-mlp"), [("placebo", {"a": 1})],
                              {"lr": 0.3, "technique:placebo.a": 7, "technique:placebo.b": 8})
    assert task.lr == 0.3 and techs == [("placebo", {"a": 7, "b": 8})]
    with pytest.raises(ConfigError, match="no technique 'lora'"):
        apply_point(get_task("blobs-mlp"), [("placebo", {})], {"technique:lora.rank": 2})
    with pytest.raises(ConfigError, match="no setting"):
        apply_point(get_task("blobs-mlp"), [], {"learning_rate": 0.1})


class _FakeStore:
    """get_run by key from a list of (status, test_acc) in grid order."""

    path = "fake"

    def __init__(self, specs, rows):
        self.rows = {s.key: {"status": st, "final": {"test_acc": v} if v is not None else {}, "epochs": []}
                     for s, (st, v) in zip(specs, rows)}

    def get_run(self, key):
        return self.rows.get(key)


def _specs(t: Tuning):
    return tuning_specs("c", "baseline", t, get_task("blobs-mlp"), [], 0)


@pytest.mark.parametrize("rows, direction, chosen", [
    ([("finished", 0.5), ("finished", 0.7), ("finished", 0.7)], "higher", 0.002),   # tie: the first of the best
    ([("finished", 0.5), ("finished", 0.7), ("finished", 0.6)], "lower", 0.001),
    ([("diverged", 0.99), ("finished", 0.3), ("failed", None)], "higher", 0.002),   # diverged/failed rank last
    ([("failed", None), ("diverged", 0.9), ("failed", None)], "higher", 0.001),     # nothing finished: the first
    ([("finished", float("nan")), ("finished", 0.1), ("finished", 0.2)], "lower", 0.002),
])
def test_choose_picks_the_best_validation_score_ties_to_the_first(rows, direction, chosen):
    t = Tuning({"lr": (0.001, 0.002, 0.003)}, direction=direction)
    specs = _specs(t)
    picked = choose(t, specs, _FakeStore(specs, rows))
    assert picked["chosen"] == {"lr": chosen}
    assert [s["status"] for s in picked["scores"]] == [r[0] for r in rows]
    assert [s["score"] for s in picked["scores"]] == [v if r == "finished" and v is not None and math.isfinite(v)
                                                      else None for r, v in rows]


def test_choose_waits_for_missing_tuning_runs():
    t = Tuning({"lr": (0.001, 0.002)})
    specs = _specs(t)
    store = _FakeStore(specs[:1], [("finished", 0.5)])
    assert choose(t, specs, store) is None


def test_tuning_specs_hold_out_the_split_and_differ_only_by_the_grid():
    t = Tuning({"lr": (0.01, 0.1)}, validation=0.3)
    specs = _specs(t)
    assert [s.task.lr for s in specs] == [0.01, 0.1]
    assert all(s.task.holdout_validation == 0.3 and s.arm == "baseline-tune" for s in specs)
    assert len({s.key for s in specs}) == 2


def test_plan_of_a_tuned_claim_needs_the_store():
    claim = Claim(id="t-needs", technique="none", treatment=arm(label="t", tune={"lr": (0.01, 0.1)}), **SMALL)
    with pytest.raises(ConfigError, match="give plan\\(\\) the store"):
        plan(claim)
    # untuned arms have no tuning runs; the tuned arm has one per grid point and seed
    assert [(s.arm, s.seed, s.task.lr) for s in plan_tuning(claim)] == [
        ("treatment-tune", 0, 0.01), ("treatment-tune", 0, 0.1), ("treatment-tune", 1, 0.01), ("treatment-tune", 1, 0.1)]


# --------------------------------------------------------------------------- end to end

def test_each_arm_runs_at_its_validation_best_and_tuning_runs_are_reused(tmp_path):
    # lr 1e-6 cannot move a fresh MLP in 4 epochs; lr 0.05 solves the blobs: the grid order differs
    # per arm, so the choice cannot come from the order
    claim = Claim(id="t-tuned", technique="none",
                  baseline=arm(label="b", tune=Tuning({"lr": (1e-6, 0.05)}, validation=0.25)),
                  treatment=arm(label="t", tune=Tuning({"lr": (0.05, 1e-6)}, validation=0.25)), **SMALL)
    path = tmp_path / "s.sqlite"
    result = check(claim, store=path, overhead=False, workers=1)
    st = Store(path)
    runs = st.runs()
    tune_rows = [r for r in runs if r["arm"].endswith("-tune")]
    # the arms' grids hold the same configurations: the store keeps one tuning run per key for both
    assert len(tune_rows) == 4 and all(r["config"]["task"]["holdout_validation"] == 0.25 for r in tune_rows)
    for arm_name in ("baseline", "treatment"):
        for entry in result.tuning[arm_name]["per_seed"]:
            scores = {s["values"]["lr"]: s["score"] for s in entry["scores"]}
            assert scores[0.05] > scores[1e-6] + 0.2
            assert entry["chosen"] == {"lr": 0.05}
            # the stored tuning run's held-out accuracy is the score
            stored = [r for r in tune_rows if r["seed"] == entry["seed"]]
            assert sorted(r["final"]["test_acc"] for r in stored) == sorted(scores.values())
    real = [r for r in runs if not r["arm"].endswith("-tune")]
    # both arms chose the same lr and run the same config: one stored run per seed serves both
    assert {r["seed"] for r in real} == {0, 1}
    assert all(r["config"]["task"]["lr"] == 0.05 and "holdout_validation" not in r["config"]["task"] for r in real)
    assert result.treatment_values == result.baseline_values
    line = verdict_line(result)
    assert "lr chosen per seed (final val_acc on a 25% held-out split): baseline 0.05 x2; treatment 0.05 x2" in line
    # the report shows the choice and every grid point's score per seed
    from trainlab.claims.report import _tuning_blocks

    tables = [b for b in _tuning_blocks(result) if b[0] == "table"]
    assert [row[:2] for row in tables[0][2]] == [["0", "lr=0.05"], ["1", "lr=0.05"]]
    assert tables[0][2][0][2].startswith("1e-06: ")
    # a second check trains nothing: tuning and real runs come from the store
    finished = sorted(r["finished_at"] for r in runs)
    again = check(claim, store=path, overhead=False, workers=1)
    assert sorted(r["finished_at"] for r in Store(path).runs()) == finished
    assert again.tuning == result.tuning and again.treatment_values == result.treatment_values


def test_chosen_text_counts_per_arm_and_names_several_keys():
    rule = {"metric": "best:val_acc", "validation": 0.2}
    tuning = {"baseline": {"tuning": rule,
                           "per_seed": [{"seed": s, "chosen": {"lr": v}} for s, v in enumerate((3e-3, 1e-2, 3e-3))]},
              "treatment": {"tuning": rule, "per_seed": [{"seed": 0, "chosen": {"lr": 0.1, "technique:lora.alpha": 8}}]}}
    assert chosen_text(tuning) == ("lr/lora.alpha chosen per seed (best-epoch val_acc on a 20% held-out split): "
                                   "baseline 0.003 x2, 0.01 x1; treatment lr=0.1, lora.alpha=8 x1")
    tuning["treatment"]["tuning"] = {"metric": "val_acc", "validation": 0.1}
    assert chosen_text(tuning) == ("lr/lora.alpha chosen per seed: baseline 0.003 x2, 0.01 x1 (best-epoch val_acc on "
                                   "a 20% held-out split); treatment lr=0.1, lora.alpha=8 x1 (final val_acc on a 10% "
                                   "held-out split)")
    assert chosen_text({}) == ""


def test_runspec_key_ignores_the_tuning_record():
    task = get_task("blobs-mlp")
    a = RunSpec("c", "baseline", task, [], 0)
    b = RunSpec("c", "baseline", task, [], 0, tuned={"chosen": {"lr": 0.05}, "scores": []})
    assert a.key == b.key and "tuned" not in b.config()
    assert dataclasses.replace(a, task=task.with_overrides({"lr": 0.01})).key != a.key


def test_tuned_claim_tunes_every_arm_and_keeps_the_rest():
    base = Claim(id="c", technique="placebo", treatment=arm("placebo", lr=0.1), **SMALL)
    t = Tuning({"lr": (0.01, 0.1)})
    tuned = tuned_claim(base, t, id="c-tuned", notes="each arm at its own lr")
    assert tuned.id == "c-tuned" and tuned.notes == "each arm at its own lr"
    assert tuned.treatment.tune == t and tuned.baseline.tune == t and base.treatment.tune is None
    assert tuned.treatment.techniques == base.treatment.techniques and tuned.metric == base.metric
    assert tuned.to_dict()["treatment"]["tune"]["grid"] == {"lr": [0.01, 0.1]}
    assert tuned_claim(base, t, id="x", notes="", arms=("treatment",)).baseline.tune is None


def test_choices_at_a_grid_end_are_flagged():
    grid = {"lr": [1e-3, 1e-2, 1e-1], "batch_size": [32, 64]}
    chosen = [{"lr": 1e-1, "batch_size": 32}, {"lr": 1e-1, "batch_size": 64}, {"lr": 1e-3, "batch_size": 64},
              {"lr": 1e-2, "batch_size": 64}]
    # two-value grids are never flagged: every choice is an end
    assert grid_edges(grid, chosen) == {("lr", "upper"): 2, ("lr", "lower"): 1}
    assert grid_edges({"act": ["relu", "gelu", "tanh"]}, [{"act": "tanh"}]) == {}
    info = {"treatment": {"tuning": {"metric": "val_acc", "validation": 0.2, "grid": {"lr": [1, 2, 3]}},
                          "per_seed": [{"seed": s, "chosen": {"lr": 3}} for s in range(5)]}}
    assert chosen_text(info) == ("lr chosen per seed (final val_acc on a 20% held-out split): treatment 3 x5 "
                                 "[lr at the grid's upper end in 5/5 seeds]")
