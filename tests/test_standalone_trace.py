"""standalone.trace: the model traced in both modes, through everything but torch.nn layers."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lwdna_plugin.standalone.trace import Traces, is_leaf, trace


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()

    def forward(self, x):
        x.shape[0]  # noqa: B018 - dead reads the trace drops
        self.inner.fc.weight  # noqa: B018
        x = self.inner(x)
        if self.training:
            x = x * 2
        return F.dropout(x, p=0.5, training=self.training)


def call_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op in ("call_module", "call_function")]


def test_traces_go_through_containers_and_keep_nn_layers():
    traces = Traces.of(Net())
    assert traces.called() == {"inner.fc"}
    assert is_leaf(nn.Linear(2, 2)) and not is_leaf(Inner()) and not is_leaf(nn.Sequential())


def test_extra_leaves_are_kept_whole():
    model = Net()
    assert Traces.of(model, frozenset({id(model.inner)})).called() == {"inner"}


def test_the_mode_branch_differs_and_dropout_reads_the_flag():
    model = Net().eval()
    traces = Traces.of(model)
    assert model.training is False  # the model's own mode is left as it was
    assert len(call_targets(traces.train)) == len(call_targets(traces.eval)) + 1  # the `x * 2`
    for gm in traces.both:
        dropout = next(n for n in gm.graph.nodes if n.target is F.dropout)
        assert dropout.kwargs["training"].op == "get_attr" and dropout.kwargs["training"].target == "training"
        assert ".shape" not in gm.code and ".weight" not in gm.code  # the dead reads are gone
    x = torch.randn(3, 4)
    torch.manual_seed(0)
    expected = model.train()(x)
    torch.manual_seed(0)
    assert torch.equal(traces.train.train()(x), expected)


def test_an_untraceable_model_names_the_mode():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(RuntimeError, match="could not trace Branchy in eval mode"):
        trace(Branchy(), False)


class Masked(nn.Module):
    """Hiera's pattern: an optional argument whose default skips a branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, mask=None, scale=2.0, *, tag="x"):
        if mask is not None:
            x = x * mask.view(x.shape[0], 1)
        return self.fc(x) * scale


def test_optional_arguments_are_traced_at_their_defaults_and_left_out():
    model = Masked().eval()
    gm = trace(model, training=False)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert "_assert" not in gm.code and "mask" not in gm.code
    x = torch.randn(3, 4)
    assert torch.equal(gm(x), model(x))
