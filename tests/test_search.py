"""`graph.search`: torch-pruning's group search, bounded by each layer's channels, a step
limit and an index budget; what the graph does with a search that stalls."""

import pytest
import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.graph import search
from lwdna_plugin.graph.reasons import Fixed, Why
from lwdna_plugin.graph.search import BoundedSearch, SearchStalled
from lwdna_plugin.graph.tracing import trace

# Batch 2: torch-pruning first calls `model(*X)`, which a batch of one unpacks into one unbatched image.
X = torch.zeros(2, 3, 8, 8)


@pytest.fixture(scope="module")
def resnet():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return model, lw.GroupGraph(model, torch.zeros(1, 3, IMG, IMG))


class SplitHeads(nn.Module):
    """LeViT-like attention: `qkv` viewed per head and split along each head's dimension, which
    torch-pruning maps as if the split were along the channels."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.proj = nn.Linear(8, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 2, 6).split([1, 1, 4], dim=3)
        return self.head(self.proj(((q * k).softmax(-1) * v).reshape(b, n, 8)))


def test_bounded_search_notes_indices_past_a_layer():
    model = SplitHeads()
    tokens = torch.zeros(2, 5, 4)
    dg = trace(model, tokens).dg
    bounded = BoundedSearch(dg)
    tp_group, overflow = bounded.run(model.qkv, dg.get_pruner_of_module(model.qkv).prune_out_channels, list(range(12)))
    assert [(node.module, width) for node, width in overflow] == [(model.proj, 8)]
    # The indices past proj's 8 inputs were noted, not handed on to it.
    assert max(max(item.idxs) for item in tp_group if item.dep.target.module is model.proj) < 8
    # Each search notes its own overflow only: proj's outputs stay inside every layer they reach.
    _, overflow = bounded.run(model.proj, dg.get_pruner_of_module(model.proj).prune_out_channels, [0])
    assert overflow == []
    graph = lw.GroupGraph(SplitHeads(), tokens)
    assert graph.group("qkv").fixed == Fixed(Why.IRREGULAR, "channel mapping at proj points past its 8 channels")


def test_a_search_past_its_step_limit_stalls(monkeypatch, resnet):
    model, _ = resnet
    monkeypatch.setattr(search, "SEARCH_STEPS", 20)
    dg = trace(model, torch.zeros(1, 3, IMG, IMG)).dg
    pruner = dg.get_pruner_of_module(model.conv1)
    with pytest.raises(SearchStalled, match="from conv1 did not settle within 20 steps") as stalled:
        BoundedSearch(dg).run(model.conv1, pruner.prune_out_channels, list(range(64)))
    # It reached the output channels of the stem's BN and of the first blocks' second convs
    # (the residual stream), and the first blocks' first convs at their input only.
    assert {model.bn1, model.layer1[0].conv2} <= stalled.value.reached
    assert model.layer1[0].conv1 not in stalled.value.reached
    graph = lw.GroupGraph(model, torch.zeros(1, 3, IMG, IMG))
    assert graph.group("conv1").fixed.why is Why.STALLED and "did not settle" in str(graph.group("conv1").fixed)
    # A layer whose output channels the stalled search reached roots no group of its own; one it
    # reached at its input does, and that group resizes on its own.
    keys = [g.key for g in graph.groups]
    assert "layer1.0.conv2" not in keys
    assert graph.group("layer1.0.conv1").prunable


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


def test_a_transformer_whose_residual_stream_stalls_still_resizes_its_mlps():
    """CoaT's residual stream (factorised attention with convolutional position encodings) is a
    search that does not settle at 64 px; every block's MLP reads that stream at `fc1`'s input
    only, so each `fc1` is a group of its own that resizes."""
    model = timm.create_model("coat_tiny", pretrained=False, num_classes=10, img_size=64)
    graph = lw.GroupGraph(model.eval(), torch.zeros(1, 3, 64, 64))
    assert graph.group("parallel_blocks.5.mlp2.fc2").fixed.why is Why.STALLED
    assert "parallel_blocks.0.mlp2.fc2" in graph.stalls["parallel_blocks.5.mlp2.fc2"].reached
    mlps = [graph.group(f"parallel_blocks.{i}.mlp2.fc1") for i in range(6)]
    assert all(g.prunable and g.size == 608 for g in mlps)
    assert lw.graph.Depth.of(graph.groups).free_share > 0.9


def test_a_graph_of_a_copy_takes_the_stalls_it_is_given_instead_of_searching_again(monkeypatch, resnet):
    """With 20 steps every residual search of ResNet-18 stalls; a graph of a widened copy given
    those stalls keeps them (same keys, same fixed groups) even with the step limit restored,
    so it did not run them again."""
    model, _ = resnet
    monkeypatch.setattr(search, "SEARCH_STEPS", 20)
    stalled = lw.GroupGraph(model, torch.zeros(1, 3, IMG, IMG))
    assert "conv1" in stalled.stalls and "layer1.0.conv2" in stalled.stalls["conv1"].reached
    monkeypatch.setattr(search, "SEARCH_STEPS", 5_000)
    wide, _ = lw.widen(model, torch.zeros(1, 3, IMG, IMG), 1.5)
    again = lw.GroupGraph(wide, torch.zeros(1, 3, IMG, IMG), stalls=stalled.stalls)
    assert [g.key for g in again.groups] == [g.key for g in stalled.groups]
    assert {g.key for g in again.groups if not g.prunable} == {g.key for g in stalled.groups if not g.prunable}
    assert again.stalls == stalled.stalls
    assert lw.GroupGraph(wide, torch.zeros(1, 3, IMG, IMG)).group("conv1").prunable  # searched anew: settles


def test_dissimilate_runs_each_stalled_search_once(monkeypatch):
    """The widened, probed and shrunk copies' graphs reuse the original graph's stalls: GCViT's
    six attention searches (40 s a graph for HaloNet's 38) run once, not once a graph."""
    runs = []
    real = search.BoundedSearch._run  # the search itself; `run` raises a known stall without it

    def counted(self, root, fn, idxs):
        try:
            return real(self, root, fn, idxs)
        except SearchStalled:
            runs.append(root)
            raise

    monkeypatch.setattr(search.BoundedSearch, "_run", counted)
    model = timm.create_model("gcvit_xxtiny", pretrained=False, num_classes=10, img_size=64)
    result = lw.dissimilate(model, input_size=(3, 64, 64), data=None, criterion="random", flops=1.0)
    assert result.report.depth.reasons.get("search stalled", 0) >= 1
    assert len(runs) == result.report.depth.reasons["search stalled"]
