"""`graph.index_mapping`: the index mappings torch-pruning lacks, checked against the tensors they
describe (a real split, reshape or concatenation) at sizes read live."""

from types import SimpleNamespace

import torch

from lwdna_plugin.graph.index_mapping import Chain, RearrangeMapping, ReorderMapping, SegmentMapping
from lwdna_plugin.graph.internals import HybridIndex


def _idx(values, root=None):
    return [HybridIndex(idx=v, root_idx=v if root is None else root) for v in values]


def _plain(idxs):
    return [i.idx for i in idxs]


def test_segment_mapping_moves_indices_between_a_whole_and_its_segment_at_the_live_offset():
    op = SimpleNamespace(split_sizes=[3, 4, 5])
    whole = torch.arange(12)
    middle = whole.split(op.split_sizes)[1]
    into_whole = SegmentMapping(op, "split_sizes", 1, to_whole=True)
    into_segment = SegmentMapping(op, "split_sizes", 1, to_whole=False)
    assert _plain(into_whole(_idx([0, 3]))) == [int(whole[3]), int(whole[6])] == [int(middle[0]), int(middle[3])]
    # Past the segment's size: dropped, not walked on into the next segment.
    assert _plain(into_whole(_idx([4]))) == []
    assert _plain(into_segment(_idx([2, 3, 6, 7]))) == [0, 3]
    # Sizes are read at each call: the segment grew after the mapping was made.
    op.split_sizes = [5, 4, 5]
    assert _plain(into_whole(_idx([0]))) == [5]


def test_root_indices_travel_with_the_indices():
    op = SimpleNamespace(concat_sizes=[2, 2])
    mapped = SegmentMapping(op, "concat_sizes", 1, to_whole=True)(_idx([1], root=7))
    assert mapped == [HybridIndex(idx=3, root_idx=7)]


def test_block_rearrangement_is_the_nchw_flatten():
    x = torch.arange(2 * 3 * 2).reshape(1, 3, 2, 2)  # value = c * 4 + position, 3 channels of 4
    flat = x.flatten(1)
    forward = RearrangeMapping("block", 4, lambda: 12, reverse=False)
    channel = 1
    assert _plain(forward(_idx([channel]))) == [i for i in range(12) if int(flat[0, i]) // 4 == channel]
    backward = RearrangeMapping("block", 4, lambda: 12, reverse=True)
    # The four positions of one channel carry its root index: they map back to it once.
    assert _plain(backward(_idx([4, 5, 6, 7], root=1))) == [1]


def test_cyclic_rearrangement_is_the_channels_last_flatten():
    x = torch.arange(3).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # value = channel
    flat = x.permute(0, 2, 3, 1).flatten(1)  # channels last: position-major
    forward = RearrangeMapping("cyclic", 4, lambda: 12, reverse=False)
    assert sorted(_plain(forward(_idx([2])))) == [i for i in range(12) if int(flat[0, i]) == 2]
    backward = RearrangeMapping("cyclic", 4, lambda: 12, reverse=True)
    assert _plain(backward(_idx([2, 5, 8, 11], root=2))) == [2]
    # The width is read at each call, so the layout follows a resized consumer: 4 channels now.
    assert _plain(RearrangeMapping("cyclic", 4, lambda: 16, reverse=False)(_idx([2]))) == [2, 6, 10, 14]


def test_reorder_mapping_moves_between_cyclic_and_block_orders_and_back():
    channels, repeat = 3, 4
    cyclic = torch.arange(channels).repeat(repeat)  # copy j of channel c at j * C + c
    block = torch.arange(channels).repeat_interleave(repeat)  # at c * repeat + j
    to_block = ReorderMapping(repeat, lambda: channels * repeat, to_block=True)
    to_cyclic = ReorderMapping(repeat, lambda: channels * repeat, to_block=False)
    positions = _idx(range(channels * repeat))
    for i, j in zip(_plain(positions), _plain(to_block(positions)), strict=True):
        assert int(cyclic[i]) == int(block[j])
    assert _plain(to_cyclic(to_block(positions))) == _plain(positions)
    # Read at each call: with 6 channels, cyclic position 7 (copy 1 of channel 1) is block position 3.
    assert _plain(ReorderMapping(2, lambda: 12, to_block=True)(_idx([7]))) == [3]


def test_chain_applies_its_mappings_in_order():
    op = SimpleNamespace(split_sizes=[2, 6])
    segment = SegmentMapping(op, "split_sizes", 1, to_whole=False)
    halve = RearrangeMapping("block", 2, lambda: 6, reverse=True)
    pairs = lambda idxs: [(i.idx, i.root_idx) for i in idxs]  # noqa: E731
    # Into the second piece (2, 3, 7 -> 0, 1, 5), then halved: 0, 0 (two roots), 2.
    assert pairs(Chain(segment, halve)(_idx([2, 3, 7]))) == [(0, 2), (0, 3), (2, 7)]
    # Halved first (1, 1, 3), then into the piece: only 3 lies in it, at 1.
    assert pairs(Chain(halve, segment)(_idx([2, 3, 7]))) == [(1, 7)]
