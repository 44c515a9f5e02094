"""Reading internal representations by hooks, against calling the layers directly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainlab.diagnostics.features import classifier_layer, layer_inputs_outputs, named_layer, penultimate_features
from trainlab.errors import ConfigError


class Net(nn.Module):
    """conv -> flatten -> hidden linear -> classifier, plus an auxiliary 3-output head that is not last."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
        self.aux = nn.Linear(2 * 4 * 4, 3)
        self.hidden = nn.Sequential(nn.Linear(2 * 4 * 4, 7), nn.Tanh())
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        z = self.body(x)
        return self.head(self.hidden(z)) + 0.0 * self.aux(z)


X = torch.randn(10, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def test_classifier_layer_is_the_last_linear_with_num_classes():
    net = Net()
    assert classifier_layer(net, 3) is net.head
    assert classifier_layer(net) is net.head
    assert classifier_layer(net, 7) is net.hidden[0]


def test_classifier_layer_missing_is_a_config_error():
    with pytest.raises(ConfigError, match="no nn.Linear classifier layer with 5 outputs"):
        classifier_layer(Net(), 5)
    with pytest.raises(ConfigError, match="no nn.Linear classifier layer"):
        classifier_layer(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_penultimate_features_equal_the_hidden_layers_output():
    net = Net().eval()
    with torch.no_grad():
        expected = net.hidden(net.body(X))
    feats = penultimate_features(net, X, 3)
    assert feats.shape == (10, 7) and not feats.requires_grad
    torch.testing.assert_close(feats, expected)
    # batching does not change the features
    torch.testing.assert_close(penultimate_features(net, X, 3, batch_size=3), expected)


def test_layer_inputs_and_outputs_flattened():
    net = Net().eval()
    conv = net.body[0]
    with torch.no_grad():
        out = conv(X)
    torch.testing.assert_close(layer_inputs_outputs(net, conv, X, want="output"), out.flatten(1))
    torch.testing.assert_close(layer_inputs_outputs(net, conv, X, want="input"), X.flatten(1))
    with torch.no_grad():
        logits = net(X)
    torch.testing.assert_close(layer_inputs_outputs(net, net.head, X, want="output", batch_size=4), logits)


def test_features_in_the_models_current_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 2))
    x = torch.randn(32, 4)
    net.eval()
    a, b = penultimate_features(net, x, 2), penultimate_features(net, x, 2)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, net[0](x).detach())
    net.train()  # dropout acts: some features are zeroed
    assert (penultimate_features(net, x, 2) == 0).float().mean() > 0.2
    assert net.training


def test_hook_is_removed_and_bad_arguments_are_config_errors():
    net = Net()
    penultimate_features(net, X, 3)
    assert not net.head._forward_hooks
    with pytest.raises(ConfigError, match="want must be 'input' or 'output'"):
        layer_inputs_outputs(net, net.head, X, want="weights")
    stray = nn.Linear(7, 3)
    with pytest.raises(ConfigError, match="was not called by the model's forward pass"):
        layer_inputs_outputs(net, stray, X)
    assert not stray._forward_hooks


def test_named_layer():
    net = Net()
    assert named_layer(net, "hidden.0") is net.hidden[0]
    assert named_layer(net, "head") is net.head
    with pytest.raises(ConfigError, match="the model has no layer 'tail' \\(layers: body"):
        named_layer(net, "tail")


def test_layer_capture_keeps_input_or_output_with_graph_and_respects_training_only():
    from trainlab.diagnostics.features import LayerCapture

    torch.manual_seed(0)
    body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    model = torch.nn.Sequential(body, head)
    x = torch.randn(5, 3)
    into, out = LayerCapture(head, "input"), LayerCapture(body, "output")
    model(x)
    feats = into.take()
    assert torch.equal(feats, body(x)) and feats.requires_grad  # the graph is kept
    assert torch.equal(out.take(), body(x))
    assert into.take() is None  # take clears
    with pytest.raises(ConfigError, match="nothing seen"):
        into.take("nothing seen")
    only_training = LayerCapture(head, "input", training_only=True)
    model.eval()
    model(x)
    assert only_training.take() is None and into.take() is not None
    for c in (into, out, only_training):
        c.remove()
    model(x)
    assert into.take() is None
    with pytest.raises(ConfigError):
        LayerCapture(head, "weights")
