"""Graph capture and the analysis' handling of what it does not understand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.techniques.pruning.space import PruningSpace


pytestmark = pytest.mark.usefixtures("one_thread")


class ValueGate(nn.Module):
    """A custom layer whose control flow depends on tensor values (cannot be captured)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.lin = nn.Linear(c, c)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return x


class WithGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2, self.head = nn.Linear(4, 8), ValueGate(8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(F.relu(self.fc2(self.gate(F.relu(self.fc1(x))))))


class ShapeChecks(nn.Module):
    """Control flow on shapes only is fine: decided on the example input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        if x.dim() != 2 or x.shape[1] != 4:
            raise ValueError("bad input")
        return self.fc2(F.relu(self.fc1(x)))


class UnknownOp(nn.Module):
    """torch.linalg.vector_norm over features is not a rule of the analysis."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = h / torch.linalg.vector_norm(h, dim=1, keepdim=True)
        return self.fc3(F.relu(self.fc2(h)))


def test_value_dependent_branch_is_a_clear_config_error():
    with pytest.raises(ConfigError) as err:
        PruningSpace(WithGate(), torch.randn(3, 4))
    msg = str(err.value)
    assert "'gate'" in msg and "ValueGate" in msg and "'gt'" in msg and "unprunable=['gate']" in msg


@pytest.mark.parametrize("how", ["name", "module"])
def test_unprunable_module_becomes_opaque_and_is_kept(how):
    model = WithGate()
    space = PruningSpace(model, torch.randn(3, 4), unprunable=["gate"] if how == "name" else [model.gate])
    labels = {g.label.split("[")[0] for g in space.groups}
    assert labels == {"Linear 'fc2'"}  # fc1 feeds the opaque block, the block's output is kept
    assert any("'gate'" in n and "marked unprunable" in n for n in space.notes)
    ids = [g.id for g in space.groups][::2]
    space.zero_(ids)
    x = torch.randn(3, 4).abs()
    subnet = space.construct_subnet(ids)
    assert torch.allclose(subnet(x), model(x), atol=1e-6)
    assert sum(p.numel() for p in subnet.gate.parameters()) == 72


def test_unknown_unprunable_names_are_config_errors():
    with pytest.raises(ConfigError, match="no module named 'nope'"):
        PruningSpace(WithGate(), torch.randn(3, 4), unprunable=["nope"])
    with pytest.raises(ConfigError, match="not part of the model"):
        PruningSpace(WithGate(), torch.randn(3, 4), unprunable=[nn.Linear(2, 2)])


def test_shape_dependent_control_flow_is_captured():
    space = PruningSpace(ShapeChecks(), torch.randn(3, 4))
    assert space.num_groups == 8


def test_unknown_op_keeps_touching_channels_with_note():
    model = UnknownOp()
    space = PruningSpace(model, torch.randn(3, 4))
    labels = {g.label.split("[")[0] for g in space.groups}
    assert labels == {"Linear 'fc2'"}
    assert any("vector_norm" in n and "not understood" in n for n in space.notes)
    assert "vector_norm" in str(space)


def test_strict_mode_names_op_and_module():
    with pytest.raises(ConfigError) as err:
        PruningSpace(UnknownOp(), torch.randn(3, 4), strict=True)
    assert "op 'linalg_vector_norm'" in str(err.value) or "vector_norm" in str(err.value)
    assert "'<root>'" in str(err.value)


def test_values_that_are_not_zero_when_removed_are_kept():
    """A sum over channels is exact only for channels that are zero when removed: after a
    sigmoid they are not, so they must be kept."""

    class SigmoidSum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(4, 5), nn.Linear(1, 2)

        def forward(self, x):
            s = torch.sigmoid(self.a(x)).sum(dim=1, keepdim=True) + F.relu(self.b(x)).sum(dim=1, keepdim=True)
            return self.head(s)

    space = PruningSpace(SigmoidSum(), torch.randn(3, 4))
    labels = {g.label.split("[")[0] for g in space.groups}
    assert labels == {"Linear 'b'"}  # relu(0) = 0 adds nothing; sigmoid(0) = 0.5 would


def test_tied_weights_tie_groups():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            return self.head(self.fc(F.relu(self.fc(x))))

    model = Tied()
    space = PruningSpace(model, torch.randn(2, 5))
    # the shared layer's outputs are its own inputs the second time: rows and columns of one
    # weight must go together, but its first input is the model input (kept), so nothing is prunable
    assert space.num_groups == 0
