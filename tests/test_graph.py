"""The group graph (`lwdna_plugin.graph`): channel groups, member layouts, tracing, equal-piece
splits, cached widths, the bounded search, on small real models."""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.graph import CachedWidth, search
from lwdna_plugin.graph.reasons import Fixed, Why
from lwdna_plugin.graph.search import BoundedSearch, SearchStalled
from lwdna_plugin.graph.tracing import trace

# Batch 2: torch-pruning first calls `model(*X)`, which a batch of one unpacks into one unbatched image.
X = torch.zeros(2, 3, 8, 8)


def _member(group, name):
    return next(m for m in group.members if m.name == name)


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


class EqualSplit(nn.Module):
    """CSPNet-like: a conv's output split in halves by one number kept on the block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.half = 4
        self.left = nn.Conv2d(4, 5, 1)
        self.right = nn.Conv2d(4, 5, 1)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        a, b = self.stem(x).split(self.half, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1))


def test_equal_pieces_get_a_group_each_tied_to_one_width():
    model = EqualSplit()
    graph = lw.GroupGraph(model, X)
    assert "stem" not in [g.key for g in graph.groups]
    first, second = graph.group("stem#0"), graph.group("stem#1")
    assert first.tie == second.tie == "stem#0" and first.prunable and second.prunable
    assert _member(second, "stem").positions == [4, 5, 6, 7]
    assert _member(second, "stem").root_idxs == [0, 1, 2, 3]
    assert _member(second, "right").positions == [0, 1, 2, 3]
    assert [pieces for _, pieces in second.splits] == [(1,)]
    # The split's size lives on the block in Python, found and kept in step.
    assert [(c.module, c.attr, c.kind) for c in graph.cached_widths] == [(model, "half", "piece")]
    lw.resize(graph, {"stem#0": 6, "stem#1": 6})
    assert model.half == 6 and model.stem.out_channels == 12 and model.right.in_channels == 6
    assert model(X).shape == (2, 2, 8, 8)


class Ghost(nn.Module):
    """GhostNet-like: a tensor concatenated with its depthwise copy, sliced to a width on the block."""

    def __init__(self):
        super().__init__()
        self.out_chs = 8
        self.primary = nn.Conv2d(3, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.out_chs]


class GhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.ghost = Ghost()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.ghost(x))


def test_concatenation_width_cached_on_a_block_follows_a_resize():
    model = GhostNet()
    graph = lw.GroupGraph(model, X)
    (cached,) = graph.cached_widths
    assert isinstance(cached, CachedWidth) and (cached.module, cached.attr, cached.kind) == (
        model.ghost,
        "out_chs",
        "width",
    )
    head = _member(graph.group("ghost.primary"), "head")
    assert head.repeat == 2 and sorted(zip(head.root_idxs, head.positions, strict=True))[:2] == [(0, 0), (0, 4)]
    lw.resize(graph, {"ghost.primary": 6})
    assert model.ghost.out_chs == 12 and model.head.in_channels == 12
    assert graph.sync_cached_widths() == []  # already in step
    assert model(X).shape == (2, 2, 8, 8)


class Blur(nn.Module):
    """A layer torch-pruning does not know: a per-channel filter applied with F.conv2d."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.register_buffer("filt", torch.ones(channels, 1, 3, 3) / 9)

    def forward(self, x):
        return F.conv2d(x, self.filt, padding=1, groups=self.channels)


class BlurNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.blur = Blur(4)
        self.gamma = nn.Parameter(torch.ones(4, 1, 1))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.blur(self.conv(x)) * self.gamma)


def test_trace_records_block_widths_and_unknown_leaves():
    model = GhostNet().train()
    traced = trace(model, X)
    assert (model.ghost, 8) in traced.block_widths and model.head not in [m for m, _ in traced.block_widths]
    assert model.training
    blur = BlurNet()
    assert [(m, width) for m, _, width in trace(blur, X).leaves] == [(blur.blur, 4)]


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


class PartialSum(nn.Module):
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


def test_bounded_search_notes_indices_past_a_layer():
    model = PartialSum()
    dg = trace(model, X).dg
    bounded = BoundedSearch(dg)
    pruner = dg.get_pruner_of_module(model.conv2)
    tp_group, overflow = bounded.run(model.conv2, pruner.prune_out_channels, list(range(6)))
    assert [(node.module, width) for node, width in overflow] == [(model.conv2, 6)]
    assert max(max(item.idxs) for item in tp_group) < 6
    # Each search notes its own overflow only: channel 0 of conv1 stays inside conv2's channels.
    _, overflow = bounded.run(model.conv1, dg.get_pruner_of_module(model.conv1).prune_out_channels, [0])
    assert overflow == []
    graph = lw.GroupGraph(PartialSum(), X)
    assert graph.group("conv2").fixed == Fixed(Why.IRREGULAR, "channel mapping at conv2 points past its 6 channels")


def test_a_search_past_its_step_limit_stalls(monkeypatch, resnet):
    model, _ = resnet
    monkeypatch.setattr(search, "SEARCH_STEPS", 20)
    dg = trace(model, torch.zeros(1, 3, IMG, IMG)).dg
    pruner = dg.get_pruner_of_module(model.conv1)
    with pytest.raises(SearchStalled, match="from conv1 did not settle within 20 steps") as stalled:
        BoundedSearch(dg).run(model.conv1, pruner.prune_out_channels, list(range(64)))
    assert model.bn1 in stalled.value.reached
    graph = lw.GroupGraph(model, torch.zeros(1, 3, IMG, IMG))
    assert graph.group("conv1").fixed.why is Why.STALLED and "did not settle" in str(graph.group("conv1").fixed)
    # Layers a stalled search reached are not roots of groups of their own.
    assert "layer1.0.conv1" not in [g.key for g in graph.groups]


def test_a_search_past_its_index_budget_stalls_before_a_flatten_expands(monkeypatch):
    """A flatten maps each channel to every pixel of its feature map: with a budget of 1,000
    indices, the search of a conv whose output is flattened into a linear layer stops before
    building its 16 x 64 indices, and the group is left at its width, saying why."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    example = torch.zeros(1, 3, 8, 8)
    dg = trace(model, example).dg
    pruner = dg.get_pruner_of_module(model[0])
    BoundedSearch(dg).run(model[0], pruner.prune_out_channels, list(range(16)))  # within the default budget
    monkeypatch.setattr(search, "SEARCH_INDICES", 1_000)
    monkeypatch.setattr(search, "SEARCH_INDICES_PER_CHANNEL", 10)
    bounded = BoundedSearch(dg)
    with pytest.raises(SearchStalled, match="from 0 did not settle"):
        bounded.run(model[0], pruner.prune_out_channels, list(range(16)))
    assert bounded.indices <= 1_001 + 16  # the flatten's 1,024 indices were never built
    assert "did not settle" in str(lw.GroupGraph(model, example).group("0").fixed)


def test_attention_heads_are_rooted_at_the_projection_input():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    heads = graph.group("blocks.0.attn.proj:in")
    assert heads.prunable and heads.divisor == 3 and heads.size == 192
    assert _member(heads, "blocks.0.attn.qkv").repeat == 3
    lw.resize(graph, {heads.key: 120})
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.qkv.out_features) == (3, 40, 360)
    assert attn.scale == 40**-0.5
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_tracing_runs_the_model_on_the_batch_as_given():
    """torch-pruning tries `model(*inputs)` first: for a batch of one that is a single unbatched
    image, which a model without batch norm accepts, so it would be traced with channels on the
    wrong axis. Every forward during tracing must see the batch."""
    seen = []

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            seen.append(x.dim())
            return self.fc(self.block(x).mean((-2, -1)))

    model = Plain()
    assert model(torch.zeros(3, 8, 8)).shape == (10,)  # it does take an unbatched image
    seen.clear()
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 8, 8))
    assert seen and set(seen) == {4}
    assert graph.group("block.0").size == 16


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


def test_a_piece_whose_search_stalls_is_left_at_its_width(monkeypatch):
    monkeypatch.setattr(search, "SEARCH_STEPS", 1)
    graph = lw.GroupGraph(EqualSplit(), X)
    assert "did not settle" in str(graph.group("stem#0").fixed)
    assert "did not settle" in str(graph.group("stem#1").fixed)


def test_a_reshape_torch_pruning_sizes_at_zero_is_mapped_by_probing():
    # SHViT's attention: torch-pruning infers 0 channels past its `bmm`s and divides by them.
    model = timm.create_model("shvit_s1", pretrained=False, num_classes=10)
    example = torch.zeros(1, 3, 64, 64)
    graph = lw.GroupGraph(model, example)
    assert graph.dg.zero_sized_reshapes
    assert all(node.type == tp.ops.OPTYPE.RESHAPE for node in graph.dg.zero_sized_reshapes)
    wide, _ = lw.widen(model, example, 2.0)
    assert wide.eval()(example).shape == (1, 10)
