"""Index mappings torch-pruning lacks, read from live sizes, and the one loop that installs them.

torch-pruning keeps two mappings on every dependency, applied in order: `index_mapping[0]`
takes indices from the source's coordinates to a standard one, `index_mapping[1]` from there to
the target's. Its own mappings cache offsets at trace time; these read the op's sizes at each
call, as sizes change when groups grow and shrink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch.nn as nn
import torch_pruning as tp

from .internals import HybridIndex

IndexMapping = Callable[[Sequence[HybridIndex]], list[HybridIndex]]


class SegmentMapping:
    """Index mapping between a whole tensor and one segment of it, at the segment's live offset.

    A split's input is a whole and its pieces are segments (`sizes_attr="split_sizes"`); a
    concatenation's output is a whole and its inputs are segments (`"concat_sizes"`). With
    `to_whole`, a segment's indices move into the whole, bounded by the segment's size: an index
    past it (reached through ops that mix channels with other dimensions) must not walk on around
    a cycle of the graph. Otherwise the whole's indices inside the segment move into it.
    """

    def __init__(self, op: nn.Module, sizes_attr: str, index: int, to_whole: bool) -> None:
        self.op, self.sizes_attr, self.index, self.to_whole = op, sizes_attr, index, to_whole

    def __call__(self, idxs: Sequence[HybridIndex]) -> list[HybridIndex]:
        sizes = getattr(self.op, self.sizes_attr)
        start, size = sum(sizes[: self.index]), sizes[self.index]
        if self.to_whole:
            return [HybridIndex(idx=i.idx + start, root_idx=i.root_idx) for i in idxs if i.idx < size]
        return [HybridIndex(idx=i.idx - start, root_idx=i.root_idx) for i in idxs if start <= i.idx < start + size]


class RearrangeMapping:
    """Channel c of a rearrangement's input lands at `repeat` output channels: c*repeat + j ('block',
    NCHW flattening) or j*C + c ('cyclic', channels-last patch merging), C read live from `width`."""

    def __init__(self, layout: str, repeat: int, width: Callable[[], int], reverse: bool) -> None:
        self.layout, self.repeat, self.width, self.reverse = layout, repeat, width, reverse

    def __call__(self, idxs: Sequence[HybridIndex]) -> list[HybridIndex]:
        r = self.repeat
        if self.layout == "block":
            if self.reverse:
                return list({HybridIndex(idx=i.idx // r, root_idx=i.root_idx): None for i in idxs})
            return [HybridIndex(idx=i.idx * r + j, root_idx=i.root_idx) for i in idxs for j in range(r)]
        channels = self.width() // r
        if self.reverse:
            return list({HybridIndex(idx=i.idx % channels, root_idx=i.root_idx): None for i in idxs})
        return [HybridIndex(idx=j * channels + i.idx, root_idx=i.root_idx) for j in range(r) for i in idxs]


class ReorderMapping:
    """Channel positions of `repeat` interleaved copies of C channels, moved between the cyclic order
    (copy j of channel c at j*C + c) and the block order (at c*repeat + j); C read live from `width`.

    Where torch-pruning maps a reshape as a flatten (block) but the tensor holds its copies
    cyclically, this sits on the reshape's wide side and hands torch-pruning the order it assumes.
    """

    def __init__(self, repeat: int, width: Callable[[], int], to_block: bool) -> None:
        self.repeat, self.width, self.to_block = repeat, width, to_block

    def __call__(self, idxs: Sequence[HybridIndex]) -> list[HybridIndex]:
        r, channels = self.repeat, self.width() // self.repeat
        if self.to_block:
            return [HybridIndex(idx=(i.idx % channels) * r + i.idx // channels, root_idx=i.root_idx) for i in idxs]
        return [HybridIndex(idx=(i.idx % r) * channels + i.idx // r, root_idx=i.root_idx) for i in idxs]


class Chain:
    """Several mappings applied in order, for one slot of a dependency."""

    def __init__(self, *mappings: IndexMapping) -> None:
        self.mappings = mappings

    def __call__(self, idxs: Sequence[HybridIndex]) -> list[HybridIndex]:
        for mapping in self.mappings:
            idxs = mapping(idxs)
        return list(idxs)


def between(source: tp.dependency.Node, target: tp.dependency.Node) -> Iterator[tp.dependency.Dependency]:
    """The dependencies of `source` on `target` (one per pair of pruning functions)."""
    return (dep for dep in source.dependencies if dep.target is target)


def wire(
    a: tp.dependency.Node, b: tp.dependency.Node, slot: int, forward: IndexMapping, backward: IndexMapping
) -> None:
    """Map indices from `a` to `b` with `forward` and back with `backward`, in mapping `slot` (0 or 1)."""
    for dep in between(a, b):
        dep.index_mapping[slot] = forward
    for dep in between(b, a):
        dep.index_mapping[slot] = backward
