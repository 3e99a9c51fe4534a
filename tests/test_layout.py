"""`graph.layout`: how a member holds a group's channels, and where growing inserts new ones."""

from lwdna_plugin.graph import growth_slots
from lwdna_plugin.graph.layout import member_layout


def test_member_layout_block_cyclic_and_irregular():
    assert member_layout([0, 1, 2, 3], [0, 0, 1, 1], 2) == (2, None)  # block: c*2 + j
    assert member_layout([0, 1, 2, 3], [0, 1, 0, 1], 2) == (2, None)  # cyclic: j*2 + c
    assert member_layout([0, 1, 3], [0, 1, 2], 3) == (1, "positions are not one contiguous block")
    assert member_layout([0, 1, 2, 3], [0, 0, 0, 1], 2) == (2, "channels map unevenly")
    assert member_layout([0, 1, 2], [0, 1, 2], 2) == (1, "3 positions for 2 channels")
    assert member_layout([], [], 2) == (1, "no channels mapped")


def test_growth_slots_keep_each_layout():
    # One copy: new channels go after the block.
    assert growth_slots([4, 5, 6], [0, 1, 2], 3, 2) == [(7, 2)]
    # Block layout, two positions per channel: two positions per new channel, at the end.
    assert growth_slots([0, 1, 2, 3], [0, 0, 1, 1], 2, 1) == [(4, 2)]
    # Cyclic: one new channel at the end of each copy, the last copy first.
    assert growth_slots([0, 1, 2, 3], [0, 1, 0, 1], 2, 1) == [(4, 1), (2, 1)]
    # Read in two blocks (a grouped conv): each block grows at its end, the last block first.
    assert growth_slots([0, 1, 2, 3], [0, 1, 2, 3], 4, 2, blocks=2) == [(4, 1), (2, 1)]
    assert growth_slots([0, 1, 2, 3], [0, 0, 1, 1], 2, 2, blocks=2) == [(4, 2), (2, 2)]
    assert growth_slots([0, 1, 2, 3], [0, 1, 0, 1], 2, 2, blocks=2) == [(4, 1), (3, 1), (2, 1), (1, 1)]
    # Growth that the blocks cannot share evenly stays at the end.
    assert growth_slots([0, 1, 2, 3], [0, 1, 2, 3], 4, 3, blocks=2) == [(4, 3)]
