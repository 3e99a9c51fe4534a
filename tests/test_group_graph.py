"""`graph.group_graph`: a model's channel groups, its torch-pruning groups, frozen layers and
re-rooted irregular groups, on small real models."""

import pytest
import timm
import torch
import torch.nn as nn
from graph_models import BlurNet, X

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.graph.reasons import Fixed, Why
from lwdna_plugin.widen import widen_or_fix


@pytest.fixture(scope="module")
def resnet():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return model, lw.GroupGraph(model, torch.zeros(1, 3, IMG, IMG))


def test_frozen_layers_are_traced_and_stay_frozen(resnet):
    model, graph = resnet
    frozen = timm.create_model("resnet18", pretrained=False, num_classes=10)
    frozen.load_state_dict(model.state_dict())
    frozen.layer1.requires_grad_(False)
    frozen.conv1.requires_grad_(False)
    found = lw.GroupGraph(frozen, torch.zeros(1, 3, IMG, IMG))
    assert [(g.key, g.size, g.prunable) for g in found.groups] == [(g.key, g.size, g.prunable) for g in graph.groups]
    assert [n for n, p in frozen.named_parameters() if not p.requires_grad] == ["conv1.weight"] + [
        n for n, _ in frozen.named_parameters() if n.startswith("layer1.")
    ]


def test_groups_of_a_resnet(resnet):
    _, graph = resnet
    assert len(graph.groups) == 13
    stem = graph.group("conv1")
    assert stem.prunable and stem.size == 64
    # The stem's channels run through every residual sum of the first stage.
    assert {(m.name, m.dim) for m in stem.members} >= {
        ("conv1", "out"),
        ("bn1", "tied"),
        ("layer1.0.conv1", "in"),
        ("layer1.1.bn2", "tied"),
        ("layer2.0.downsample.0", "in"),
    }
    assert graph.group("fc").fixed == Fixed(Why.OUTPUT, "fc produces the model output")
    last = graph.group("layer4.0.downsample.0")
    assert last.classifier_input and not stem.classifier_input
    with pytest.raises(KeyError, match="no channel group rooted at layer 'nope'"):
        graph.group("nope")


def test_tp_group_of_chosen_channels(resnet):
    _, graph = resnet
    tp_group = graph.tp_group("layer1.0.conv1", [1, 5])
    assert [list(item.idxs) for item in tp_group][:2] == [[1, 5], [1, 5]]
    assert len(graph.tp_group("layer1.0.conv1")[0].idxs) == 64


def test_unknown_layers_and_bare_parameters_follow_their_group():
    model = BlurNet()
    graph = lw.GroupGraph(model, X)
    assert list(graph.opaque.values()) == [model.blur]
    assert ("gamma", "parameter") in [(m.name, m.optype) for m in graph.group("conv").members]
    lw.resize(graph, {"conv": 6})
    assert model.blur.filt.shape[0] == model.blur.channels == 6 and model.gamma.shape[0] == 6
    # The grown parameter replaced the old one in the graph too: a second resize finds it.
    assert graph.dg.module2node[model.gamma].module is model.gamma
    lw.resize(graph, {"conv": 3})
    assert model.gamma.shape[0] == 3 and model(X).shape == (2, 2, 8, 8)


class _CrossStage(nn.Module):
    """CSPNeXt's layer: two convs concatenated, squeeze-excited as a whole, then mixed."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.short = nn.Conv2d(8, 4, 1)
        self.main = nn.Conv2d(8, 4, 1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.final = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.main(x), self.short(x)], dim=1)
        y = y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        return self.final(y)


def test_a_layer_spanning_a_concatenation_leaves_each_input_its_group():
    # The squeeze-excite conv reaches both inputs of the concatenation (an irregular group); it is
    # re-rooted at one input, and the other input's channels get a group of their own.
    model = _CrossStage()
    graph = lw.GroupGraph(model, X)
    owners = {m.name for g in graph.groups if g.prunable for m in g.members if m.dim == "out"}
    assert {"stem", "short", "main"} <= owners
    wide, _ = lw.widen(model, X, 2.0)
    assert (wide.short.out_channels, wide.main.out_channels, wide.fc.in_channels, wide.final.in_channels) == (
        8,
        8,
        16,
        16,
    )
    assert wide(X).shape == (2, 6, 8, 8)


def test_a_group_a_stalled_search_only_reached_stays_free():
    # HaloNet's attention folds channels into the batch; the searches from `q` and `kv` walk on
    # through its reshapes until they stall, reaching the block's `conv1_1x1`, whose own group's
    # search settles without their channels. One stage keeps the graph small.
    model = timm.create_model("halonet_h1", pretrained=False, num_classes=10)
    model.stages = model.stages[:1]
    model.final_conv, model.head.fc = nn.Identity(), nn.Linear(64, 10)
    example = torch.zeros(1, 3, 256, 256)
    graph = lw.GroupGraph(model, example)
    assert graph.group("stages.0.0.self_attn.kv").fixed.why is Why.STALLED
    assert graph.group("stages.0.0.conv1_1x1.conv").prunable and graph.group("stem.conv1.conv").prunable
    wide = widen_or_fix(model, example, 2.0)
    assert wide.unwidenable == {} and wide.model.stages[0][0].conv1_1x1.conv.out_channels == 128
    assert wide.model.eval()(example).shape == (1, 10)


class GatedMlpNet(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.inp, self.mlp, self.out = nn.Linear(8, 32), mlp, nn.Linear(32, 10)

    def forward(self, x):
        x = self.inp(x)
        return self.out(x + self.mlp(x))


@pytest.mark.parametrize("layer", ["GluMlp", "SwiGLUPacked"])
def test_a_gated_mlp_is_one_group_of_channel_pairs(layer):
    """A gated MLP splits `fc1`'s output in halves joined channel by channel (`x1 * act(x2)`):
    rooted at `fc2`'s input, each channel holds one channel of each half. It was fixed as an
    irregular mapping (64 channels at 32 positions)."""
    import timm.layers

    model = GatedMlpNet(getattr(timm.layers, layer)(32, 64))
    x = torch.randn(2, 5, 8)
    graph = lw.GroupGraph(model, x)
    group = graph.group("mlp.fc2:in")
    assert group.prunable and group.size == 32
    fc1 = next(m for m in group.members if m.name == "mlp.fc1")
    assert sorted(fc1.positions) == list(range(64))
    lw.resize(graph, {group.key: 24})
    assert model.mlp.fc1.out_features == 48 and model.mlp.fc2.in_features == 24
    assert model(x).shape == (2, 5, 10)
