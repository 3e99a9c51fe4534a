"""`graph.groups`: how a torch-pruning group is described as a channel group: its members, and
what keeps it from resizing."""

import torch
import torch.nn as nn

import lwdna_plugin as lw
from lwdna_plugin.graph import Why


class ClassToken(nn.Module):
    """TNT's outer stream: a class token joined to the tokens, the tokens past it sliced off and
    updated, the class token sliced off for the head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = torch.cat([x[:, :1], x[:, 1:] + self.mix(x[:, 1:])], dim=1)
        return self.head(x[:, 0])


class ChannelSlice(nn.Module):
    """RexNet-like: a shortcut added to the first channels of a wider tensor only."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        s = self.conv1(x)
        y = self.conv2(s)
        return self.head(torch.cat([y[:, :4] + s, y[:, 4:]], 1))


def test_a_slice_of_tokens_keeps_every_channel():
    model = ClassToken()
    tokens = torch.zeros(2, 5, 3)
    stream = lw.GroupGraph(model, tokens).group("mix")
    assert stream.prunable
    assert {m.name for m in stream.members} == {"embed", "mix", "head", "cls_token"}
    graph = lw.GroupGraph(model, tokens)
    lw.resize(graph, {"mix": 12})
    assert model.cls_token.shape == (1, 1, 12) and model(tokens).shape == (2, 2)
    lw.resize(graph, {"mix": 4})
    assert model.mix.weight.shape == (4, 4) and model(tokens).shape == (2, 2)


def test_a_slice_of_channels_keeps_its_group_fixed():
    group = lw.GroupGraph(ChannelSlice(), torch.zeros(2, 3, 8, 8)).group("conv2")
    assert group.fixed.why is Why.IRREGULAR
