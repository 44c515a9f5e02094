"""MDGF / SDGF schedules against the official formulas, and the technique's effect on the model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.compression.nm_sparsity import apply_nm, is_nm, nm_mask, nm_parametrizations
from trainlab.techniques.compression.progressive_nm import NMDecay, NMDecaySchedule, mdgf_alpha, sdgf_frames


def _official_decay_config(n: int, m: int, kind: str, total: int, dense: int, fine: int) -> dict[int, str]:
    """The official get_decay_config, restated: {start epoch: "N:M"}."""
    if kind == "sparsify":
        frames = int(math.log2(m / n)) + 1
        size = (total - dense - fine) / frames
        return {dense + int(i * size): f"{(m - 1) if i == 0 else int(m / 2 ** i)}:{m}" for i in range(frames)}
    size = (total - dense - fine) / 4
    return {dense + int(i * size): f"{int(n * 2 ** (4 - i - 1))}:{int(m * 2 ** (4 - i - 1))}" for i in range(4)}


@pytest.mark.parametrize("n,m,total,dense,fine", [(1, 16, 15, 0, 0), (1, 8, 20, 2, 3), (2, 4, 10, 0, 0),
                                                  (1, 4, 7, 1, 0), (1, 32, 350, 0, 0)])
@pytest.mark.parametrize("structure,kind", [("stepwise", "sparsify"), ("geometric", "fine")])
def test_schedules_match_the_official_formulas(n, m, total, dense, fine, structure, kind):
    frames = sdgf_frames(n, m, structure, total, dense, fine)
    official = _official_decay_config(n, m, kind, total, dense, fine)
    assert {e: f"{a}:{b}" for e, (a, b) in frames.items()} == official


def test_sdgf_hand_cases():
    # the paper's example: 1:16 over five equal frames 15:16, 8:16, 4:16, 2:16, 1:16
    assert sdgf_frames(1, 16, "stepwise", 15) == {0: (15, 16), 3: (8, 16), 6: (4, 16), 9: (2, 16), 12: (1, 16)}
    # SDGF-geometric 1:8: 8:64, 4:32, 2:16, 1:8
    assert sdgf_frames(1, 8, "geometric", 8) == {0: (8, 64), 2: (4, 32), 4: (2, 16), 6: (1, 8)}
    with pytest.raises(ConfigError):
        sdgf_frames(3, 8, "stepwise", 10)      # M/N not a power of two
    with pytest.raises(ConfigError):
        sdgf_frames(1, 8, "stepwise", 4, 2, 2)  # no sparse epochs


def test_mdgf_alpha_formulas():
    assert mdgf_alpha(0, "linear", 0.01) == 1.0
    assert mdgf_alpha(30, "linear", 0.01) == pytest.approx(0.7)
    assert mdgf_alpha(250, "linear", 0.01) == 0.0
    assert mdgf_alpha(500, "exp", 2e-3) == pytest.approx(math.exp(-1.0))
    with pytest.raises(ConfigError):
        mdgf_alpha(1, "cosine", 0.1)


def test_schedule_phases_at_chosen_steps():
    # 10 epochs of 20 steps, 2 dense epochs, 2 fine-tuning epochs: sparse phase = 120 steps
    s = NMDecaySchedule(1, 8, method="mdgf", decay="linear", decay_span=0.5, epochs=10, steps_per_epoch=20,
                        dense_frac=0.2, fine_tune_frac=0.2)
    assert s.decay_coef == pytest.approx(1 / 60)                    # reaches 0 after half the sparse phase
    assert not s.at(39).enabled                                     # epoch 1: dense
    assert s.at(40).alpha == pytest.approx(1.0)                     # first sparse step
    assert s.at(70).alpha == pytest.approx(1 - 30 / 60)
    assert s.at(100).alpha == 0.0 and s.at(159).alpha == 0.0
    assert s.at(160).enabled and s.at(160).alpha == 0.0             # fine-tuning: hard mask
    e = NMDecaySchedule(1, 8, method="mdgf", decay="exp", decay_span=0.25, epochs=10, steps_per_epoch=20)
    assert e.at(50).alpha == pytest.approx(0.01)                    # exp reaches 0.01 at a quarter of 200 steps
    assert e.at(10).alpha == pytest.approx(math.exp(-math.log(100) / 50 * 10))
    explicit = NMDecaySchedule(1, 8, method="mdgf", decay="exp", decay_coef=1e-4, epochs=10, steps_per_epoch=20)
    assert explicit.at(100).alpha == pytest.approx(math.exp(-1e-2))
    g = NMDecaySchedule(1, 16, method="sdgf", structure="stepwise", epochs=15, steps_per_epoch=10)
    assert [(g.at(k).n, g.at(k).m) for k in (0, 29, 30, 65, 95, 149)] == [(15, 16), (15, 16), (8, 16), (4, 16),
                                                                            (2, 16), (1, 16)]
    assert g.max_m == 16 and NMDecaySchedule(1, 8, method="sdgf", structure="geometric", epochs=8).max_m == 64


def test_bad_settings_are_config_errors():
    for kwargs in ({"method": "x"}, {"decay": "x"}, {"dense_frac": 0.6, "fine_tune_frac": 0.5},
                   {"decay_span": 0.0}, {"method": "sdgf", "structure": "x"}):
        with pytest.raises(ConfigError):
            NMDecay(n=1, m=8, **kwargs)


def test_set_step_puts_the_phase_into_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    apply_nm(model, 1, 8, decay=0.0)
    s = NMDecaySchedule(1, 8, method="mdgf", decay="linear", decay_coef=0.25, epochs=2, steps_per_epoch=4)
    phase = s.set_step(model, 2)
    assert phase.alpha == pytest.approx(0.5)
    w = model[0].parametrizations.weight.original
    mask = nm_mask(w, 1, 8)
    assert torch.allclose(model[0].weight, w * (mask + 0.5 * (1 - mask)))   # forward: W (mask + alpha (1 - mask))
    model.eval()
    assert is_nm(model[0].weight, 1, 8)                                     # eval: the hard mask
    sd = NMDecaySchedule(1, 8, method="sdgf", structure="geometric", epochs=8, steps_per_epoch=1)
    model.train()
    sd.set_step(model, 0)
    assert nm_parametrizations(model)["0"].m == 64 and is_nm(model[0].weight, 8, 64)


@pytest.mark.parametrize("settings", [{"method": "mdgf", "decay": "exp"}, {"method": "sdgf", "structure": "stepwise"}])
def test_technique_ends_n_m_and_logs_its_phase(settings):
    from trainlab.training.trainer import run_training

    result = run_training("blobs-mlp", [("nm-decay", {"n": 1, "m": 4, **settings})], seed=0, keep_state=True)
    last = result.epochs[-1]
    assert last["nm_n"] == 1 and last["nm_m"] == 4
    assert last["nm_alpha"] == pytest.approx(0.0, abs=1e-6)
    assert result.final["test_acc"] > 0.5
    if settings["method"] == "sdgf":
        assert [r["nm_n"] for r in result.epochs] == [3, 2, 1, 1]          # blobs-mlp: 4 epochs, frames at 0, 1, 2
