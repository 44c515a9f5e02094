"""The Peri-LN probe: residual-stream variance growth on a hand-made model, loss-spike counting."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.normalization.peri_ln import (LossSpikeCounter, PeriLNProbe, residual_variances,
                                                        variance_growth)
from trainlab.training.technique import Batch, TrainState


class ScaledStream(nn.Module):
    """A fake residual stream: the embedding is x, block l multiplies the stream by scales[l]."""

    def __init__(self, scales):
        super().__init__()
        self.scales = scales

    def hidden_states(self, x):
        states = [x]
        for s in self.scales:
            states.append(states[-1] * s)
        return states

    def forward(self, x):
        return self.hidden_states(x)[-1].mean(dim=(1, 2)).unsqueeze(1).repeat(1, 2)


def test_variance_growth_on_hand_made_model():
    x = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])  # variance of all entries: 1
    model = ScaledStream([2.0, 3.0, 0.5])
    v = residual_variances(model, x)
    assert v == pytest.approx([1.0, 4.0, 36.0, 9.0])
    assert variance_growth(v) == pytest.approx(9.0 / 4.0)  # last block over first block
    with pytest.raises(ConfigError):
        variance_growth([1.0])
    with pytest.raises(ConfigError):
        residual_variances(nn.Linear(2, 2), x)


def test_spike_counter_definition():
    c = LossSpikeCounter(factor=2.0, window=4, min_history=3, min_jump=0.1)
    assert [c.update(v) for v in (1.0, 1.0, 5.0)] == [False, False, False]  # not enough history yet
    assert c.update(2.5) is True            # median(1, 1, 5) = 1: 2.5 > 2 and > 1.1
    assert c.update(2.0) is False           # median(1, 1, 5, 2.5) = 1.75: 2.0 < 3.5
    assert c.update(float("nan")) is True   # non-finite counts, and is not added to the history
    assert list(c.history) == [1.0, 5.0, 2.5, 2.0]
    tiny = LossSpikeCounter(factor=2.0, window=4, min_history=1, min_jump=0.1)
    tiny.update(0.001)
    assert tiny.update(0.05) is False       # 50x the median but a jump below min_jump
    assert c.total == 2
    restored = LossSpikeCounter(factor=2.0, window=4, min_history=3, min_jump=0.1)
    restored.load_state_dict(c.state_dict())
    assert restored.total == 2 and list(restored.history) == list(c.history)
    assert restored.update(100.0) == c.update(100.0)


def test_probe_logs_metrics_and_changes_nothing():
    model = ScaledStream([2.0, 2.0])
    probe = PeriLNProbe(eval_samples=2, window=5, min_history=2)
    state = TrainState(device=torch.device("cpu"))
    x = torch.randn(4, 3, 2)
    batch = Batch(inputs=x, targets=torch.zeros(4, dtype=torch.long), indices=torch.arange(4))
    out = probe.transform_batch(batch, state)
    assert out is batch and torch.equal(probe.fixed_inputs, x[:2])
    for v in (1.0, 1.0, 1.0, 10.0):
        loss = torch.tensor(v)
        assert probe.loss(None, batch, state, loss) is loss
    probe.on_epoch_end(model, state)
    m = state.epoch_metrics
    assert m["loss_spikes"] == 1 and m["loss_spikes_total"] == 1
    assert m["hidden_var_growth"] == pytest.approx(4.0)
    assert m["hidden_var_last"] == pytest.approx(16 * float(x[:2].var(unbiased=False)), rel=1e-5)
    fresh = PeriLNProbe(eval_samples=2, window=5, min_history=2)
    fresh.load_state_dict(probe.state_dict())
    assert torch.equal(fresh.fixed_inputs, probe.fixed_inputs) and fresh.spikes.total == 1


def test_probe_on_tiny_transformer_placements():
    from trainlab.tasks.models import TinyTransformer

    torch.manual_seed(0)
    x = torch.randint(0, 10, (8, 6))
    for placement in ("pre", "peri", "post"):
        model = TinyTransformer((6,), 3, vocab_size=10, dim=16, depth=3, heads=2, norm_placement=placement).eval()
        v = residual_variances(model, x)
        assert len(v) == 4 and all(math.isfinite(a) and a > 0 for a in v)


def test_peri_arm_matches_the_paper_equations():
    """The claims' Peri-LN arm: each block computes x + Norm_out(F(Norm_in(x))) and the embedding output
    is normalized (the paper's y_0 = Norm(x)); the Pre-LN arm leaves the embedding unnormalized."""
    from trainlab.claims.runner import arm_task
    from trainlab.tasks.models import TinyTransformer
    from trainlab.techniques.normalization.peri_ln import CLAIMS

    for claim in CLAIMS:
        peri, pre = arm_task(claim, claim.treatment, None), arm_task(claim, claim.baseline, None)
        assert peri.model_kwargs["norm_placement"] == "peri" and peri.model_kwargs["embed_norm"] is True
        assert pre.model_kwargs["norm_placement"] == "pre" and not pre.model_kwargs.get("embed_norm", False)
        assert peri.model_kwargs["depth"] == pre.model_kwargs["depth"] == 4  # the claim's override is kept

    torch.manual_seed(1)
    model = TinyTransformer((6,), 3, vocab_size=10, dim=16, depth=2, heads=2, norm_placement="peri",
                            embed_norm=True).eval()
    with torch.no_grad():  # non-trivial affine parameters, so the check is not only "mean 0, var 1"
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randint(0, 10, (4, 6))
    raw = model.token_embed(x) + model.pos_embed[:, :6]
    ln = model.embed_norm
    expected0 = (raw - raw.mean(-1, keepdim=True)) / torch.sqrt(raw.var(-1, unbiased=False, keepdim=True) + ln.eps)
    expected0 = expected0 * ln.weight + ln.bias
    states = model.hidden_states(x)
    torch.testing.assert_close(states[0], expected0, rtol=1e-5, atol=1e-5)
    block, h = model.blocks[0], states[0]
    h = h + block.out_norm1(block.attn(block.in_norm1(h)))
    h = h + block.out_norm2(block.mlp(block.in_norm2(h)))
    torch.testing.assert_close(states[1], h)
    # without embed_norm the first state is the raw embedding (the Pre-LN arm)
    torch.manual_seed(1)
    plain = TinyTransformer((6,), 3, vocab_size=10, dim=16, depth=2, heads=2, norm_placement="pre").eval()
    torch.testing.assert_close(plain.hidden_states(x)[0], plain.token_embed(x) + plain.pos_embed[:, :6])
