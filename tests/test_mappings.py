"""Index mappings (`lwdna_plugin.graph.index_mapping`) and where the graph installs them
(`splits`, `rearrange`): unit cases, then small models with a split, a concatenation, a
channels-last patch merge and selective-kernel attention."""

import timm
import torch
import torch.nn as nn
from torch_pruning import ops
from torch_pruning._helpers import _HybridIndex

import lwdna_plugin as lw
from lwdna_plugin.graph.index_mapping import Chain, RearrangeMapping, ReorderMapping, SegmentMapping, between
from lwdna_plugin.graph.tracing import trace

# Batch 2: torch-pruning first calls `model(*X)`, which a batch of one unpacks into one unbatched image.
X = torch.zeros(2, 3, 8, 8)


def _idx(*values, root=None):
    return [_HybridIndex(idx=v, root_idx=v if root is None else root) for v in values]


def _plain(idxs):
    return [i.idx for i in idxs]


class _Op(nn.Module):
    """Stands in for torch-pruning's split or concatenation op: only its sizes are read."""

    def __init__(self, **sizes):
        super().__init__()
        self.__dict__.update(sizes)


def test_segment_mapping_moves_indices_into_and_out_of_a_segment():
    op = _Op(split_sizes=[3, 5])
    # From the whole into piece 1 (offset 3): only indices inside the piece survive.
    assert _plain(SegmentMapping(op, "split_sizes", 1, to_whole=False)(_idx(2, 3, 7, 8))) == [0, 4]
    # From piece 1 back into the whole: an index past the piece is dropped, not carried on.
    assert _plain(SegmentMapping(op, "split_sizes", 1, to_whole=True)(_idx(0, 4, 5))) == [3, 7]
    # Root indices travel unchanged.
    assert [i.root_idx for i in SegmentMapping(op, "split_sizes", 1, to_whole=False)(_idx(4))] == [4]


def test_segment_mapping_reads_live_sizes():
    op = _Op(concat_sizes=[4, 2])
    into = SegmentMapping(op, "concat_sizes", 1, to_whole=True)
    assert _plain(into(_idx(0, 1))) == [4, 5]
    op.concat_sizes = [6, 2]  # the first input grew
    assert _plain(into(_idx(0, 1))) == [6, 7]
    assert _plain(SegmentMapping(op, "concat_sizes", 0, to_whole=False)(_idx(5, 6))) == [5]


def test_rearrange_mapping_block_and_cyclic_layouts():
    block = RearrangeMapping("block", 2, lambda: 8, reverse=False)
    assert _plain(block(_idx(1))) == [2, 3]
    # Back from the output, the positions of one root channel collapse into one index.
    assert _plain(RearrangeMapping("block", 2, lambda: 8, reverse=True)(_idx(2, 3, root=1))) == [1]
    # Cyclic: C = width / repeat = 4, channel c lands at c and C + c.
    assert _plain(RearrangeMapping("cyclic", 2, lambda: 8, reverse=False)(_idx(1))) == [1, 5]
    assert _plain(RearrangeMapping("cyclic", 2, lambda: 8, reverse=True)(_idx(5, 1, root=1))) == [1]
    assert _plain(RearrangeMapping("cyclic", 2, lambda: 8, reverse=True)(_idx(6, root=2))) == [2]
    # The width is read at each call, so the layout follows a resized consumer.
    assert _plain(RearrangeMapping("cyclic", 2, lambda: 12, reverse=False)(_idx(1))) == [1, 7]


def test_reorder_mapping_moves_positions_between_cyclic_and_block_order():
    # Two copies of C = 4 channels: copy j of channel c is at j*4 + c (cyclic), c*2 + j (block).
    to_block = ReorderMapping(2, lambda: 8, to_block=True)
    assert _plain(to_block(_idx(1, 5, 7))) == [2, 3, 7]
    assert _plain(ReorderMapping(2, lambda: 8, to_block=False)(_idx(2, 3, 7))) == [1, 5, 7]
    assert [i.root_idx for i in to_block(_idx(5, root=1))] == [1]
    assert _plain(ReorderMapping(2, lambda: 12, to_block=True)(_idx(7))) == [3]  # C = 6, read at the call


def test_chain_applies_mappings_in_order():
    op = _Op(concat_sizes=[4, 2], split_sizes=[4, 2])
    out_of_concat = SegmentMapping(op, "concat_sizes", 1, to_whole=False)
    into_split = SegmentMapping(op, "split_sizes", 1, to_whole=True)
    # The concatenation's offset comes off first, then the piece's goes on.
    assert _plain(Chain(out_of_concat, into_split)(_idx(4, 5))) == [4, 5]
    # The other order bounds 4 and 5 by the piece's size (2) and loses them.
    assert _plain(Chain(into_split, out_of_concat)(_idx(4, 5))) == []


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


def _member(group, name):
    return next(m for m in group.members if m.name == name)


def test_split_pieces_map_to_their_consumers():
    graph = lw.GroupGraph(UnequalSplit(), X)
    right = _member(graph.group("stem"), "right")
    assert right.positions == [0, 1, 2, 3, 4] and right.root_idxs == [3, 4, 5, 6, 7]
    assert _member(graph.group("stem"), "left").root_idxs == [0, 1, 2]


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
    stem = _member(group, "stem")
    assert stem.positions == [4, 5, 6, 7] and stem.root_idxs == [0, 1, 2, 3]
    assert _member(group, "head").positions == [3, 4, 5, 6]
    assert group.prunable


def test_a_piece_concatenated_maps_past_the_inputs_before_it():
    model = PieceConcat()
    graph = lw.GroupGraph(model, X)
    assert list(trace(PieceConcat(), X).splits.values()) == [True]  # `chunk(2)`: one number sizes both pieces
    head = _member(graph.group("stem#1"), "head")
    assert head.positions == [6, 7, 8, 9] and head.root_idxs == [0, 1, 2, 3]
    # Offsets are read live: after the conv before it grows, the piece sits further on.
    lw.resize(graph, {"conv": 9})
    head = _member(graph.refresh("stem#1")[0], "head")
    assert head.positions == [9, 10, 11, 12]
    assert model(X).shape == (2, 2, 8, 8)


def test_channels_last_patch_merge_is_mapped_cyclically():
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=10,
        img_size=32,
        window_size=2,
        depths=(1, 1),
        num_heads=(1, 2),
        embed_dim=8,
    )
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    group = graph.group("layers.0.blocks.0.mlp.fc2")
    norm = _member(group, "layers.1.downsample.norm")
    assert norm.repeat == 4 and group.prunable
    assert sorted(p for p, r in zip(norm.positions, norm.root_idxs, strict=True) if r == 3) == [3, 11, 19, 27]
    lw.resize(graph, {group.key: 12})
    assert model.layers[1].downsample.norm.normalized_shape[0] == 48
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_selective_kernel_attention_is_mapped_cyclically():
    # fc_select writes (B, 2C) that `view(B, 2, C, 1, 1)` splits into one weight per path: path j
    # of channel c is at j*C + c. torch-pruning maps the view as a flatten (c at 2c and 2c + 1).
    model = timm.create_model("skresnet18", pretrained=False, num_classes=10).eval()
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    group = graph.group("layer1.0.conv1.paths.0.conv")
    select = _member(group, "layer1.0.conv1.attn.fc_select")
    assert select.repeat == 2 and group.prunable
    assert sorted(p for p, r in zip(select.positions, select.root_idxs, strict=True) if r == 3) == [3, 67]


def test_split_attention_is_mapped_cyclically_through_its_softmax():
    # ResNeSt's split attention: `conv` writes radix paths (B, 2C) that `reshape(B, 2, C, H, W)`
    # splits and `sum(dim=1)` adds; `fc2`'s weights pass `view(B, 1, 2, C).transpose(1, 2)`, a
    # softmax over the paths and three more views before they multiply the paths. Path j of
    # channel c is at j*C + c in both; torch-pruning maps every view as a flatten.
    model = timm.create_model("resnest14d", pretrained=False, num_classes=10).eval()
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    group = graph.group("layer1.0.conv2.fc1:in")  # rooted where the C channels are whole
    assert group.prunable and group.size == 64
    for name in ("layer1.0.conv2.conv", "layer1.0.conv2.bn0", "layer1.0.conv2.fc2"):
        member = _member(group, name)
        assert member.repeat == 2
        assert sorted(p for p, r in zip(member.positions, member.root_idxs, strict=True) if r == 3) == [3, 67]
    assert _member(group, "layer1.0.conv3").repeat == 1
    assert not [g.key for g in graph.groups if g.fixed and g.key != "fc"]
