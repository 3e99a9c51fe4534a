"""How one layer holds a group's channels, and where growing the group inserts new ones.

A member holds each of the group's channels at `repeat` positions. Two layouts grow in place:
'block' (each channel's positions adjacent, as after a flatten) and 'cyclic' (the group repeated
back to back, as when one tensor is concatenated with a depthwise copy of itself).
"""

from __future__ import annotations


def member_layout(positions: list[int], root_idxs: list[int], size: int) -> tuple[int, str | None]:
    """How many positions each root channel occupies; a reason when the block cannot grow in place."""
    if not positions:
        return 1, "no channels mapped"
    if len(positions) % size:
        return 1, f"{len(positions)} positions for {size} channels"
    repeat = len(positions) // size
    order = sorted(range(len(positions)), key=positions.__getitem__)
    pos = [positions[i] for i in order]
    if pos != list(range(pos[0], pos[0] + len(pos))):
        return repeat, "positions are not one contiguous block"
    roots = [root_idxs[i] for i in order]
    blocks = all(len(set(roots[k * repeat : (k + 1) * repeat])) == 1 for k in range(size))
    cycles = all(len(set(roots[k * size : (k + 1) * size])) == size for k in range(repeat))
    if len(set(roots)) != size or not (blocks or cycles):
        return repeat, "channels map unevenly"
    return repeat, None


def growth_slots(
    positions: list[int], root_idxs: list[int], size: int, n: int, blocks: int = 1
) -> list[tuple[int, int]]:
    """(insert-before position, count) pairs that add `n` channels to a member, last slot first.

    A block layout grows at its end, `repeat` positions per new channel; a cyclic one grows at
    the end of every repetition, so each copy of the group keeps the same channel order. With
    `blocks` > 1 (a grouped conv reads the group in that many contiguous blocks) every block
    grows at its own end by n / blocks, so each conv group keeps its old channels.
    """
    if blocks > 1 and (size % blocks or n % blocks):
        blocks = 1
    repeat = len(positions) // size
    start = min(positions)
    order = sorted(range(len(positions)), key=positions.__getitem__)
    if repeat == 1 or len({root_idxs[i] for i in order[:repeat]}) == 1:
        # Block layout: one run of `size * repeat` positions, cut into `blocks` equal runs.
        step = size * repeat // blocks
        return [(start + (b + 1) * step, n * repeat // blocks) for b in reversed(range(blocks))]
    step = size // blocks
    return [
        (start + k * size + (b + 1) * step, n // blocks)
        for k in reversed(range(repeat))
        for b in reversed(range(blocks))
    ]
