"""`graph.tracing`: torch-pruning's graph built on the batch as given, with hook records, sizes
read off autograd for concatenations, and reshapes torch-pruning sizes at zero."""

import timm
import torch
import torch.nn as nn
import torch_pruning as tp
from graph_models import BlurNet, GhostNet, X
from torch_pruning import ops

import lwdna_plugin as lw
from lwdna_plugin.graph import Depth
from lwdna_plugin.graph.tracing import trace


def test_trace_records_block_widths_and_unknown_leaves():
    model = GhostNet().train()
    traced = trace(model, X)
    assert (model.ghost, 8) in traced.block_widths and model.head not in [m for m, _ in traced.block_widths]
    assert model.training
    blur = BlurNet()
    assert [(m, width) for m, _, width in trace(blur, X).leaves] == [(blur.blur, 4)]


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


def test_reshapes_torch_pruning_sizes_at_zero_leave_the_other_groups_free():
    # SHViT's attention: torch-pruning infers 0 channels past its `bmm`s, and it re-derives every
    # reshape's mapping before each group search, so one such reshape failed every search.
    model = timm.create_model("shvit_s1", pretrained=False, num_classes=10)
    example = torch.zeros(1, 3, 64, 64)
    graph = lw.GroupGraph(model, example)
    assert graph.dg.zero_sized_reshapes
    assert all(node.type == ops.OPTYPE.ELEMENTWISE for node in graph.dg.zero_sized_reshapes)
    assert graph.group("patch_embed.0.c").prunable and Depth.of(graph.groups).free_share > 0.8
    # A group through one that no probe maps keeps its width, and says why.
    assert str(graph.group("stages.1.blocks.0.mixer.m.qkv.c").fixed) == (
        "passes through a reshape whose channels could not be mapped"
    )
    wide, _ = lw.widen(model, example, 2.0)
    assert wide.patch_embed[0].c.out_channels == 32 and wide.eval()(example).shape == (1, 10)


class DualPath(nn.Module):
    """DPN's block: a residual sum of slices, and slices of two tensors, concatenated."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.conv = nn.Conv2d(6, 7, 1)
        self.head = nn.Conv2d(9, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.conv(s)
        return self.head(torch.cat([s[:, :4] + y[:, :4], s[:, 4:], y[:, 4:]], 1))


def test_concatenations_of_slices_are_sized_from_autograd():
    (concat,) = [n for n in trace(DualPath(), X).dg.module2node.values() if n.type == ops.OPTYPE.CONCAT]
    assert concat.module.concat_sizes == [4, 2, 3]
    # torch-pruning's own walk sizes each slice at its tensor's full width.
    plain = tp.DependencyGraph().build_dependency(DualPath(), example_inputs=X)
    assert [n.module.concat_sizes for n in plain.module2node.values() if n.type == ops.OPTYPE.CONCAT] == [[7, 6, 7]]
    # So the head reads conv's channels where they are: the sum's 4, then past the stem's 2.
    group = lw.GroupGraph(DualPath(), X).group("conv")
    assert next(m for m in group.members if m.name == "head").positions == [0, 1, 2, 3, 6, 7, 8]


def test_an_expand_that_repeats_nothing_is_not_read_as_grouped_query_attention():
    # Hiera's windowed attention expands q, k and v (5-d) to the shape they have; torch-pruning
    # read it as key/value heads repeated 0 times and every search through qkv divided by zero.
    from timm.models.hiera import Hiera

    model = Hiera(img_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), num_classes=10).eval()
    traced = trace(model, torch.zeros(1, 3, 64, 64))
    expands = [
        n for n in traced.dg.module2node.values() if n.grad_fn is not None and n.grad_fn.name() == "ExpandBackward0"
    ]
    assert expands and all(n.type == ops.OPTYPE.ELEMENTWISE for n in expands)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 64, 64))
    assert not graph.stalls
    assert [g.key for g in graph.groups if not g.prunable] == ["head.fc"]
