"""BatchFormer: the encoder's math, equivariance over the batch, the duplicated-batch loss, eval
bypass, and that its parameters are trained."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.diagnostics.features import classifier_layer
from trainlab.errors import ConfigError
from trainlab.techniques.regularization.batchformer import (BatchFormer, BatchFormerModel, BatchFormerTechnique,
                                                            batchformer_loss)
from trainlab.training.technique import Batch, TrainState
from trainlab.training.trainer import setup_run, train_step


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))


def _hand_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, nhead: int) -> torch.Tensor:
    """Post-norm encoder layer written out: x + MHA(x) -> LN -> + W2 relu(W1 .) -> LN, no dropout.
    x: [N, C], the N samples attend to each other."""
    n, c = x.shape
    d = c // nhead
    w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
    q, k, v = (x @ w[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c] for i in range(3))
    heads = []
    for h in range(nhead):
        s = slice(h * d, (h + 1) * d)
        att = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=1)
        heads.append(att @ v[:, s])
    a = torch.cat(heads, 1) @ layer.self_attn.out_proj.weight.T + layer.self_attn.out_proj.bias
    y = F.layer_norm(x + a, (c,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    ff = F.relu(y @ layer.linear1.weight.T + layer.linear1.bias) @ layer.linear2.weight.T + layer.linear2.bias
    return F.layer_norm(y + ff, (c,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def test_official_hyperparameters() -> None:
    bf = BatchFormer(16)
    (layer,) = bf.layers
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 16 and layer.dropout.p == 0.5
    assert not layer.norm_first and layer.self_attn.batch_first is False
    with pytest.raises(ConfigError):
        BatchFormer(10, nhead=4)


def test_encoder_matches_hand_written_layer() -> None:
    torch.manual_seed(0)
    bf = BatchFormer(16, dropout=0.0).train()
    x = torch.randn(7, 16)
    torch.testing.assert_close(bf(x), _hand_layer(bf.layers[0], x, 4), atol=1e-5, rtol=1e-5)


def test_permutation_equivariant_and_depends_on_the_batch() -> None:
    torch.manual_seed(1)
    bf = BatchFormer(16, dropout=0.0).train()
    x = torch.randn(9, 16)
    perm = torch.randperm(9)
    out = bf(x)
    torch.testing.assert_close(bf(x[perm]), out[perm], atol=1e-5, rtol=1e-5)
    # sample 0's output changes when only the other samples change: it attends to them
    x2 = x.clone()
    x2[1:] = torch.randn(8, 16)
    assert (bf(x2)[0] - out[0]).abs().max() > 1e-3
    # a batch of one: no other sample to attend to, the output is the layer on the sample alone
    torch.testing.assert_close(bf(x[:1]), _hand_layer(bf.layers[0], x[:1], 4), atol=1e-5, rtol=1e-5)


def test_loss_is_the_duplicated_batch_cross_entropy() -> None:
    torch.manual_seed(2)
    head, bf = nn.Linear(16, 5), BatchFormer(16, dropout=0.0).train()
    f, y = torch.randn(8, 16), torch.randint(0, 5, (8,))
    dup = F.cross_entropy(head(torch.cat([f, bf(f)])), torch.cat([y, y]))
    torch.testing.assert_close(batchformer_loss(f, y, head, bf, F.cross_entropy), dup)


def _prepared(dropout: float = 0.0):
    model = _mlp()
    tech = BatchFormerTechnique(dropout=dropout)
    wrapped = tech.prepare(copy.deepcopy(model), None)
    return model, tech, wrapped


def test_eval_outputs_equal_the_plain_model() -> None:
    model, tech, wrapped = _prepared(dropout=0.5)
    assert isinstance(wrapped, BatchFormerModel)
    assert classifier_layer(wrapped) is wrapped.model[-1]   # the encoder's Linears do not hide the classifier
    x = torch.randn(20, 12)
    model.eval(), wrapped.eval()
    torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=0)
    assert tech._features is None                           # nothing captured in eval
    # in training the model's own outputs are unchanged too: the BatchFormer acts in the loss only
    model.train(), wrapped.train()
    torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=0)


def test_technique_loss_hook_through_the_model() -> None:
    model, tech, wrapped = _prepared(dropout=0.0)
    wrapped.train()
    x, y = torch.randn(10, 12), torch.randint(0, 5, (10,))
    state = TrainState(loss_fn=F.cross_entropy)
    out = wrapped(x)
    base = F.cross_entropy(out, y)
    loss = tech.loss(out, Batch(inputs=x, targets=y, indices=torch.arange(10)), state, base)
    with torch.no_grad():  # (no capture without gradients: the hook keeps training forwards only)
        f = model[:-1](x)
        head = wrapped.model[-1]
        expected = F.cross_entropy(head(torch.cat([f, tech.encoder(f)])), torch.cat([y, y]))
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ConfigError):  # the captured features are used once
        tech.loss(out, Batch(inputs=x, targets=y, indices=torch.arange(10)), state, base)


def test_parameters_are_in_the_optimizer_and_get_gradients() -> None:
    run = setup_run("digits-mlp", ["batchformer"], seed=0)
    tech = run.techniques[0]
    owned = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    enc = list(tech.encoder.parameters())
    assert enc and all(id(p) in owned for p in enc)
    tech.on_train_start(run.model, run.optimizer, run.state)
    before = [p.detach().clone() for p in enc]
    idx = torch.arange(64)
    batch = Batch(inputs=run.data.train_x[idx], targets=run.data.train_y[idx], indices=idx)
    loss, outputs, _ = train_step(run.model, run.train_model, run.techniques, run.optimizer, run.scheduler,
                                  run.state, batch, run.params)
    assert loss is not None and outputs.shape == (64, run.data.num_classes)
    assert all(p.grad is not None for p in enc) and sum(float(p.grad.abs().sum()) for p in enc) > 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, enc))
