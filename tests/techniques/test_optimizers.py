"""Tests every registered optimizer (trainlab.techniques.optimizers.all_optimizers): a new optimizer
is covered by registering its OptimizerSpec. Compilation is off here (the fused path then runs
eagerly on its flat buffers, the same function); one slow test covers the compiled kernels."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from trainlab.techniques.optimizers import HyperparameterError, all_optimizers
from trainlab.techniques.optimizers import fastpath

SPECS = all_optimizers()
NAMES = sorted(SPECS)
HAND = [(n, i) for n in NAMES for i in range(len(SPECS[n].hand_cases))]
FAST = [(n, i) for n in NAMES for i in range(len(SPECS[n].fast_paths))]
INVALID = [(n, i) for n in NAMES for i in range(len(SPECS[n].invalid))]


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINLAB_OPTIM_COMPILE", "0")


def test_registry_has_the_family() -> None:
    assert {"adamp", "sgdp", "diffgrad", "noise-adaptive-muon"} <= set(NAMES)


@pytest.mark.parametrize("name,index", HAND)
def test_hand_computed_steps(name: str, index: int) -> None:
    spec = SPECS[name]
    case = spec.hand_cases[index]
    p = nn.Parameter(torch.tensor(case.p0))
    opt = spec.make([p], **case.settings, **spec.reference)
    for _ in range(case.steps):
        p.grad = torch.tensor(case.grad)
        opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor(case.expected), rtol=1e-5, atol=1e-6, msg=case.note)


def _rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    x, y = xy[0], xy[1]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_rosenbrock(name: str) -> None:
    spec = SPECS[name]
    xy = nn.Parameter(torch.tensor([-0.5, 1.5]))
    opt = spec.make([xy], **spec.example)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.rosenbrock_steps)
    for _ in range(spec.rosenbrock_steps):
        opt.zero_grad()
        _rosenbrock(xy).backward()
        opt.step()
        sched.step()
    assert torch.allclose(xy.detach(), torch.ones(2), atol=spec.rosenbrock_tol), xy


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_quadratic(name: str) -> None:
    spec = SPECS[name]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g) / 2 + torch.eye(6, 4)
    target = torch.randn(4, 3, generator=g)
    b = a @ target
    w = nn.Parameter(torch.zeros(4, 3))
    opt = spec.make([w], **spec.example)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.quadratic_steps)
    for _ in range(spec.quadratic_steps):
        opt.zero_grad()
        (a @ w - b).pow(2).sum().mul(0.5).backward()
        opt.step()
        sched.step()
    assert (w.detach() - target).abs().max() < spec.quadratic_tol * (1 + target.abs().max())


class _Net(nn.Module):
    """A conv with BatchNorm (scale-invariant weights), an MLP part and 1-D parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 2, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _optimizer_paths(spec) -> list[dict]:
    return [dict(spec.reference)] + [dict(f) for f in spec.fast_paths]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_resumes_identically(name: str) -> None:
    spec = SPECS[name]
    batches = _batches(8)
    for flags in _optimizer_paths(spec):
        torch.manual_seed(0)
        model = _Net()
        opt = spec.make(model.parameters(), **spec.example, **flags)
        _train(model, opt, batches[:4])
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
        _train(model, opt, batches[4:])

        torch.manual_seed(123)  # different init: everything must come from the checkpoint
        resumed = _Net()
        opt2 = spec.make(resumed.parameters(), **spec.example, **flags)
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
        resumed.load_state_dict(ck["model"])
        opt2.load_state_dict(ck["opt"])
        _train(resumed, opt2, batches[4:])
        for a, b in zip(model.parameters(), resumed.parameters()):
            assert torch.equal(a, b), f"{name} {flags}: resumed training differs"


def _reference_and_fast_pair(spec, **flags):
    """Two copies of one seeded _Net: one stepped by the reference path, one by the path `flags` pick."""
    torch.manual_seed(0)
    ref_model = _Net()
    fast_model = copy.deepcopy(ref_model)
    ref = spec.make(ref_model.parameters(), **spec.example, **spec.reference)
    fast = spec.make(fast_model.parameters(), **spec.example, **flags)
    return ref_model, fast_model, ref, fast


@pytest.mark.parametrize("name,index", FAST)
def test_fast_path_matches_single_tensor_reference(name: str, index: int) -> None:
    spec = SPECS[name]
    flags = spec.fast_paths[index]
    ref_model, fast_model, ref, fast = _reference_and_fast_pair(spec, **flags)
    for x, y in _batches(6):
        for model, opt in ((ref_model, ref), (fast_model, fast)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (n, a), b in zip(ref_model.named_parameters(), fast_model.parameters()):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-6, msg=f"{name} {flags}: {n}")
    for p_ref, p_fast in zip(ref_model.parameters(), fast_model.parameters()):
        for key, v in ref.state[p_ref].items():
            if torch.is_tensor(v):
                torch.testing.assert_close(fast.state[p_fast][key].reshape(v.shape).float(), v.float(),
                                           rtol=2e-5, atol=1e-6, msg=f"{name} {flags}: state {key}")


@pytest.mark.parametrize("name,index", INVALID)
def test_bad_hyperparameters_raise_value_error(name: str, index: int) -> None:
    spec = SPECS[name]
    p = nn.Parameter(torch.zeros(2, 2))
    settings = {**spec.example, **spec.invalid[index]}
    with pytest.raises(ValueError) as info:
        spec.make([p], **settings)
    assert isinstance(info.value, HyperparameterError) or "foreach" in str(info.value)
    assert str(info.value)


# ---- the fused path's invariants (flat buffers) ------------------------------------------------------
FUSED = [n for n in NAMES if any(f.get("fused") for f in SPECS[n].fast_paths)]


@pytest.mark.parametrize("name", FUSED)
def test_fused_path_survives_missing_grads_replaced_params_and_in_place_zeroing(name: str) -> None:
    spec = SPECS[name]
    ref_model, fast_model, ref, fast = _reference_and_fast_pair(spec, fused=True)
    batches = _batches(7)

    def step(i: int, set_to_none: bool = True, skip_fc2: bool = False) -> None:
        x, y = batches[i]
        for model, opt in ((ref_model, ref), (fast_model, fast)):
            opt.zero_grad(set_to_none=set_to_none)
            nn.functional.cross_entropy(model(x), y).backward()
            if skip_fc2:  # a parameter without a gradient: skipped, like torch does
                model.fc2.bias.grad = None
            opt.step()

    step(0)
    assert fast._flat, "the fused path should have built flat buffers"
    step(1, skip_fc2=True)                      # falls back for this step
    step(2)                                     # rebuilds
    step(3, set_to_none=False)                  # grads are views of the flat buffer: no copy needed
    for flat in fast._flat[0].flats:
        if flat.grad_state is None:
            assert all(p.grad.data_ptr() == ptr for p, ptr in zip(flat.params, flat.grad_ptrs))
        else:  # double-buffered: p.grad must not alias a buffer, or in-place zeroing would wipe state
            buffers = {t.untyped_storage().data_ptr() for seg in flat.segments for t in seg.values()
                       if torch.is_tensor(t)}
            assert all(p.grad.untyped_storage().data_ptr() not in buffers for p in flat.params)
    step(4, set_to_none=False)                  # accumulates in place again
    fast_model.fc1.weight.data = fast_model.fc1.weight.data.clone()   # a parameter re-homed elsewhere
    step(5)
    step(6)
    for a, b in zip(ref_model.parameters(), fast_model.parameters()):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-6)


def test_double_buffered_state_survives_state_dict_and_a_missed_gradient() -> None:
    """diffGrad's previous gradient swaps buffers with the flat gradient buffer every fused step:
    the state that state_dict() sees must be the current one after any number of swaps, also around
    a step where one parameter has no gradient (foreach fallback) and after loading it back."""
    spec = SPECS["diffgrad"]
    ref_model, fast_model, ref, fast = _reference_and_fast_pair(spec, fused=True)
    batches = _batches(8)

    def step(models_opts, i: int, skip_fc2: bool = False) -> None:
        x, y = batches[i]
        for model, opt in models_opts:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if skip_fc2:
                model.fc2.bias.grad = None
            opt.step()

    pairs = ((ref_model, ref), (fast_model, fast))
    for i in range(3):                          # an odd number of swaps
        step(pairs, i)
    assert fast._flat and fast._flat[0].flats[0].grad_state == "previous_grad"
    for p_ref, p_fast in zip(ref_model.parameters(), fast_model.parameters()):
        torch.testing.assert_close(fast.state[p_fast]["previous_grad"], ref.state[p_ref]["previous_grad"],
                                   rtol=2e-5, atol=1e-6)
    step(pairs, 3, skip_fc2=True)               # fallback step, then rebuild
    step(pairs, 4)
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    resumed_model = copy.deepcopy(fast_model)
    resumed = spec.make(resumed_model.parameters(), **spec.example, fused=True)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for i in range(5, 8):
        step(pairs + ((resumed_model, resumed),), i)
    for a, b, c in zip(ref_model.parameters(), fast_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-6)
        assert torch.equal(c, b)


def test_default_path_is_foreach_for_small_groups_and_fused_for_large_ones(monkeypatch) -> None:
    spec = SPECS["adamp"]
    small = spec.make([nn.Parameter(torch.zeros(10, 10))])
    assert small._path(0, small.param_groups[0]) == "foreach"
    big = spec.make([nn.Parameter(torch.zeros(fastpath.FUSED_MIN_NUMEL))])
    monkeypatch.setenv("TRAINLAB_OPTIM_COMPILE", "1")
    assert big._path(0, big.param_groups[0]) == "fused"
    monkeypatch.setenv("TRAINLAB_OPTIM_COMPILE", "0")
    assert big._path(0, big.param_groups[0]) == "foreach"
    single = spec.make([nn.Parameter(torch.zeros(3))], foreach=False)
    assert single._path(0, single.param_groups[0]) == "single"


def test_state_bytes_counts_each_storage_once() -> None:
    spec = SPECS["adamp"]
    params = [nn.Parameter(torch.randn(4, 4)) for _ in range(3)]
    opt = spec.make(params, fused=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    # exp_avg + exp_avg_sq + the flat gradient buffer, 48 floats each, and 3 step counters
    assert fastpath.state_bytes(opt) == 3 * 48 * 4 + 3 * 4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamp", "diffgrad", "sgdp"])
def test_compiled_fused_kernel_matches_reference(name: str, monkeypatch) -> None:
    monkeypatch.setenv("TRAINLAB_OPTIM_COMPILE", "1")
    spec = SPECS[name]
    ref_model, fast_model, ref, fast = _reference_and_fast_pair(spec, fused=True)
    for x, y in _batches(3):
        for model, opt in ((ref_model, ref), (fast_model, fast)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    if fastpath._COMPILE_BROKEN:
        pytest.skip("torch.compile is unavailable here")
    for a, b in zip(ref_model.parameters(), fast_model.parameters()):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_step_with_a_closure_returns_its_loss(name: str) -> None:
    spec = SPECS[name]
    w = nn.Parameter(torch.ones(3))
    opt = spec.make([w], **spec.example)
    calls = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        calls.append(1)
        return loss

    loss = opt.step(closure)
    assert calls == [1] and loss.item() == pytest.approx(3.0)
    assert (w.detach() < 1).all()  # stepped downhill with the closure's gradient
