"""`graph.splits`: each consumer of a split maps to the piece autograd names, and each piece
concatenated later maps past the inputs before it, at offsets read live."""

import torch
import torch.nn as nn
from graph_models import X, member
from torch_pruning import ops

import lwdna_plugin as lw
from lwdna_plugin.graph.index_mapping import SegmentMapping, between
from lwdna_plugin.graph.tracing import trace


class UnequalSplit(nn.Module):
    """A split with sizes listed in Python; each piece feeds its own conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(3, 5, 1)
        self.right = nn.Conv2d(5, 5, 1)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        a, b = self.stem(x).split([3, 5], dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1))


class PieceTwice(nn.Module):
    """CSPNet's `xb`: the second piece feeds a conv and a residual sum."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.side = nn.Conv2d(4, 3, 1)
        self.mid = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        a, b = self.stem(x).split([4, 4], dim=1)
        return self.head(torch.cat([self.side(a), self.mid(b) + b], 1))


class PieceConcat(nn.Module):
    """Res2Net's last scale: a chunk's piece concatenated after a conv's output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(4, 6, 1)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(torch.cat([self.conv(a), b], 1))


def test_split_pieces_map_to_their_consumers():
    graph = lw.GroupGraph(UnequalSplit(), X)
    right = member(graph.group("stem"), "right")
    assert right.positions == [0, 1, 2, 3, 4] and right.root_idxs == [3, 4, 5, 6, 7]
    assert member(graph.group("stem"), "left").root_idxs == [0, 1, 2]


def test_split_mappings_are_wired_both_ways():
    traced = trace(PieceTwice(), X)
    (split,) = [n for n in traced.dg.module2node.values() if n.type == ops.OPTYPE.SPLIT]
    assert traced.splits == {split.module: False}  # sizes listed in Python: not one number for all
    for out in split.outputs:
        assert all(isinstance(d.index_mapping[0], SegmentMapping) for d in between(split, out))
        assert all(isinstance(d.index_mapping[0], SegmentMapping) for d in between(out, split))
    assert not split.enable_index_mapping


def test_a_piece_read_twice_keeps_its_offset():
    group = lw.GroupGraph(PieceTwice(), X).group("mid")
    stem = member(group, "stem")
    assert stem.positions == [4, 5, 6, 7] and stem.root_idxs == [0, 1, 2, 3]
    assert member(group, "head").positions == [3, 4, 5, 6]
    assert group.prunable


def test_a_piece_concatenated_maps_past_the_inputs_before_it():
    model = PieceConcat()
    graph = lw.GroupGraph(model, X)
    assert list(trace(PieceConcat(), X).splits.values()) == [True]  # `chunk(2)`: one number sizes both pieces
    head = member(graph.group("stem#1"), "head")
    assert head.positions == [6, 7, 8, 9] and head.root_idxs == [0, 1, 2, 3]
    # Offsets are read live: after the conv before it grows, the piece sits further on.
    lw.resize(graph, {"conv": 9})
    head = member(graph.refresh("stem#1")[0], "head")
    assert head.positions == [9, 10, 11, 12]
    assert model(X).shape == (2, 2, 8, 8)


def _cosine_xcit():
    """XCiT: cosine attention (`F.normalize` reads q and k twice), so torch-pruning counted five
    pieces in `q, k, v = qkv.unbind(0)` and every qkv group was fixed as irregular."""
    from timm.models.xcit import Xcit

    return Xcit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, cls_attn_layers=1, num_classes=10)


def test_an_unbind_piece_read_twice_keeps_its_offset():
    graph = lw.GroupGraph(_cosine_xcit().eval(), torch.zeros(1, 3, 32, 32))
    assert [g.key for g in graph.groups if not g.prunable] == ["head"]
    for block in ("blocks.0", "blocks.1"):
        group = graph.group(f"{block}.attn.proj:in")
        qkv = next(m for m in group.members if m.name == f"{block}.attn.qkv")
        assert len(qkv.positions) == 96  # q, k and v of every head, not 20 of them


def test_dissimilate_resizes_the_pieces_of_an_unbind():
    result = lw.dissimilate(_cosine_xcit(), criterion="synflow", input_size=(3, 32, 32), flops=1.0, round_to=1)
    groups = {k: g for k, g in result.spec["groups"].items() if k.endswith("attn.proj:in")}
    assert len(groups) == 2 and all(g["widened"] == 64 for g in groups.values())
    model = lw.build(result.spec, base=_cosine_xcit()).eval()
    for key, group in groups.items():
        # q, k and v pieces at the kept width each: the unbind's three pieces resized together.
        assert model.get_submodule(key.replace("proj:in", "qkv")).out_features == 3 * group["kept"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert lw.count_flops(model, torch.zeros(1, 3, 32, 32)) <= result.spec["target"]["flops"]
