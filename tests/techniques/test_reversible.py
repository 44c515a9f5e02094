"""Reversible blocks: exact inverse, gradients equal to stored-activation backprop, RNG and BatchNorm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.registry import get_task
from trainlab.techniques.memory.reversible import (
    CLAIMS, InvertedBottleneck, ReversibleBlock, ReversibleSequence, mlp_branch, reversible_gradient_error,
    reversible_inverted_bottleneck, reversible_mlp, saved_activation_bytes,
)
from trainlab.training.trainer import run_training


def _mlp_stack(depth: int = 5, width: int = 8, dropout: float = 0.0, seed: int = 0) -> ReversibleSequence:
    torch.manual_seed(seed)
    return ReversibleSequence(ReversibleBlock(mlp_branch(width // 2, 12, dropout), mlp_branch(width // 2, 12, dropout))
                              for _ in range(depth))


def _conv_stack(depth: int = 3, channels: int = 8, seed: int = 0) -> ReversibleSequence:
    torch.manual_seed(seed)
    return ReversibleSequence(reversible_inverted_bottleneck(channels, expansion=2) for _ in range(depth))


def _grads(stack: ReversibleSequence, x: torch.Tensor, reversible: bool) -> list[torch.Tensor]:
    stack.reversible = reversible
    x = x.clone().requires_grad_()
    out = stack(x)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + out.square().sum()
    return list(torch.autograd.grad(loss, [x, *stack.parameters()]))


def test_block_matches_the_coupling_equations() -> None:
    f, g = nn.Linear(3, 3), nn.Linear(3, 3)
    x = torch.randn(4, 6)
    y = ReversibleBlock(f, g)(x)
    y1 = x[:, :3] + f(x[:, 3:])
    torch.testing.assert_close(y, torch.cat([y1, x[:, 3:] + g(y1)], 1))


@pytest.mark.parametrize("make,shape", [(_mlp_stack, (6, 8)), (_conv_stack, (3, 8, 5, 5))])
def test_inverse_reconstructs_the_input(make, shape) -> None:
    stack = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        assert (stack.inverse(stack(x)) - x).abs().max() < 1e-12          # float64: rounding only
    stack32 = make()
    x32 = x.float()
    with torch.no_grad():
        assert (stack32.inverse(stack32(x32)) - x32).abs().max() < 1e-4     # float32 tolerance


@pytest.mark.parametrize("make,shape", [(_mlp_stack, (6, 8)), (_conv_stack, (3, 8, 5, 5))])
def test_gradients_equal_stored_activation_backprop(make, shape) -> None:
    # float64: the reversible backward must give autograd's gradients to rounding
    stack = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    state = {k: v.clone() for k, v in stack.state_dict().items()}
    ref = _grads(stack, x, reversible=False)
    stack.load_state_dict(state)
    rev = _grads(stack, x, reversible=True)
    for a, b in zip(ref, rev):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    # float32: stated tolerance
    stack32 = make()
    assert reversible_gradient_error(stack32, torch.randn(*shape)) < 1e-5


def test_reference_is_a_plain_sequential_of_the_same_branches() -> None:
    stack = _mlp_stack().double()
    x = torch.randn(5, 8, dtype=torch.float64)
    plain = nn.Sequential(*stack.blocks)       # ordinary autograd through the same F and G
    xr = x.clone().requires_grad_()
    (plain(xr).square().sum() / 2).backward()
    ref = [xr.grad, *[p.grad.clone() for p in stack.parameters()]]
    stack.zero_grad()
    xs = x.clone().requires_grad_()
    (stack(xs).square().sum() / 2).backward()
    for a, b in zip(ref, [xs.grad, *[p.grad for p in stack.parameters()]]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_only_the_output_is_saved_for_backward() -> None:
    stack = _conv_stack(depth=4)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = stack(x)
    assert len(saved) == 1 and saved[0].shape == out.shape


def test_dropout_masks_are_replayed_and_global_rng_is_untouched() -> None:
    stack = _mlp_stack(dropout=0.5).double()
    x = torch.randn(6, 8, dtype=torch.float64)
    torch.manual_seed(3)
    ref = _grads(stack, x, reversible=False)
    after_ref = torch.rand(1)
    torch.manual_seed(3)
    rev = _grads(stack, x, reversible=True)
    assert torch.equal(torch.rand(1), after_ref)     # backward's replay does not advance the RNG
    for a, b in zip(ref, rev):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_batchnorm_running_stats_update_once() -> None:
    stack = _conv_stack(depth=2).double()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    init = {k: v.clone() for k, v in stack.state_dict().items()}
    with torch.no_grad():
        stack(x)                                         # one plain forward: the expected statistics
    expected = {k: v.clone() for k, v in stack.state_dict().items()}
    stack.load_state_dict(init)
    stack(x.requires_grad_()).sum().backward()            # reversible forward + recomputing backward
    for k, v in stack.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)
    assert stack.blocks[0].f.body[1].num_batches_tracked.item() == 1


def test_inverted_bottleneck_structure() -> None:
    ib = InvertedBottleneck(4, expansion=3)
    convs = [m for m in ib.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in convs] == [
        (4, 12, (1, 1), 1), (12, 12, (3, 3), 12), (12, 4, (1, 1), 1)]
    with pytest.raises(ConfigError):
        reversible_inverted_bottleneck(7)
    with pytest.raises(ConfigError):
        ReversibleBlock(nn.Identity(), nn.Identity())(torch.randn(2, 3))


def test_reversible_mlp_transform_and_trainer_metric() -> None:
    task = get_task("blobs-mlp").with_overrides({"epochs": 1})
    model = reversible_mlp(nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), blocks=3)
    assert isinstance(model[3], ReversibleSequence) and len(model[3].blocks) == 3
    assert reversible_gradient_error(model, torch.randn(5, 16), lambda o: o.logsumexp(1).sum()) < 1e-5
    res = run_training(task, [("reversible", {"blocks": 2})], seed=0)
    assert res.epochs[-1]["reversible_grad_err"] < 1e-5
    with pytest.raises(ConfigError):
        reversible_mlp(nn.Sequential(nn.Linear(4, 2)))


def test_saved_activation_bytes_hand_count() -> None:
    # Linear(8,16) saves its input (4x8 floats); ReLU saves its output (4x16); Linear(16,2) saves its
    # input, the same storage as ReLU's output: 4*8*4 + 4*16*4 bytes, weights excluded
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    assert saved_activation_bytes(net, torch.randn(4, 8, requires_grad=True)) == 4 * 8 * 4 + 4 * 16 * 4
    stack = _mlp_stack(depth=4)
    x = torch.randn(6, 8, requires_grad=True)
    assert saved_activation_bytes(stack, x) == 6 * 8 * 4            # the output only
    stack.reversible = False
    assert saved_activation_bytes(stack, x) > 4 * 6 * 8 * 4


def test_stored_control_trains_the_same_network() -> None:
    task = get_task("blobs-mlp").with_overrides({"epochs": 1})
    rev = run_training(task, [("reversible", {"blocks": 2})], seed=0, keep_state=True)
    sto = run_training(task, [("reversible", {"blocks": 2, "stored": True})], seed=0, keep_state=True)
    for k in rev.state:
        torch.testing.assert_close(rev.state[k], sto.state[k], rtol=1e-4, atol=1e-5)
    assert rev.epochs[-1]["saved_activation_bytes"] < sto.epochs[-1]["saved_activation_bytes"]


def test_claims() -> None:
    exact, memory = CLAIMS
    assert exact.reference == 1e-5 and exact.direction == "lower" and exact.seeds == 5
    assert memory.direction == "lower" and memory.baseline.techniques[0][1].get("stored") is True
