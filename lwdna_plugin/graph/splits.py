"""Channel splits and the concatenations they feed, mapped from autograd's true piece sizes.

torch-pruning maps a split's i-th consumer to its i-th piece and caches the offsets; a piece
consumed by two layers (CSPNet's `xs, xb = x.split(...)`, `xb` feeding a conv and a residual
sum) shifts every later piece. Here each consumer maps to the piece its autograd edge names, at
the piece's live offset, and a concatenation fed by a piece is sized and mapped from the pieces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.dependency import shape_infer

from .index_mapping import Chain, SegmentMapping, between, wire

# A split op mapped here -> whether one number in Python sizes all its pieces (`x.split(n)`, `x.chunk(k)`).
MappedSplits = dict[nn.Module, bool]


def _split_pieces(node: tp.dependency.Node) -> tuple[list[int], bool, list[int | None]] | None:
    """A channel split's true piece sizes, whether one size in Python sets them all, and the
    piece each consumer reads (None where autograd does not say: a layer called twice keeps
    one call's edges)."""
    op, grad_fn = node.module, node.grad_fn
    if op.split_sizes is None or grad_fn is None:
        return None  # torch-pruning found the split is not along channels
    if hasattr(grad_fn, "_saved_split_sizes"):
        sizes, equal = [int(s) for s in grad_fn._saved_split_sizes], False
    elif hasattr(grad_fn, "_saved_split_size") and hasattr(grad_fn, "_saved_self_sym_sizes"):
        shape = grad_fn._saved_self_sym_sizes
        if not -len(shape) <= grad_fn._saved_dim < len(shape):
            return None  # an uninitialised dimension (a known PyTorch quirk): keep torch-pruning's reading
        total = int(shape[grad_fn._saved_dim])
        step = int(grad_fn._saved_split_size)
        sizes = [min(step, total - start) for start in range(0, total, step)]
        # One number sets every piece (`x.split(n)`, `x.chunk(k)`, the last piece may be smaller):
        # the pieces cannot change width independently.
        equal = True
    else:
        return None
    pieces: list[int | None] = []
    for out in node.outputs:
        edges = {nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is grad_fn}
        if len(edges) > 1:
            return None  # a consumer of several pieces: leave torch-pruning's mapping
        pieces.append(edges.pop() if edges else None)
    return sizes, equal and len(sizes) > 1, pieces


def _unbind_pieces(node: tp.dependency.Node) -> tuple[list[int], bool, list[int | None]] | None:
    """An unbind's true pieces where torch-pruning miscounted them, as `_split_pieces` returns them.

    torch-pruning reads an unbind along a factor of the channels (attention's `q, k, v =
    qkv.unbind(0)`) as one equal piece per consumer; a piece read twice (rotary embeddings slice
    `q` into prefix and patch tokens) makes five pieces of three. Autograd knows the count and
    which piece each consumer reads. Where torch-pruning's count is right its reading is kept.
    """
    grad_fn, op = node.grad_fn, node.module
    count = len(getattr(grad_fn, "_input_metadata", ()))
    if count < 2 or count == len(node.outputs) or not op.offsets:
        return None
    total = op.offsets[-1]
    if total % count:
        return None
    pieces: list[int | None] = []
    for out in node.outputs:
        edges = {nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is grad_fn}
        if len(edges) != 1:
            return None  # a consumer of several pieces, or one autograd does not name
        pieces.append(edges.pop())
    return [total // count] * count, True, pieces


def _resolve_pieces(dg: tp.DependencyGraph) -> dict[tp.dependency.Node, tuple[list[int], bool, list[int]]]:
    """Every split whose consumers' pieces are all known, and that shares no consumer with one that is not.

    A layer called at two places (CoaT's shared conv position encoding) is one graph node with
    one call's autograd edges: its piece is read off another split of the same sizes feeding it.
    A split left unresolved keeps torch-pruning's mapping, and so does every split that shares
    a consumer with it, so one consumer never sees two mappings.
    """
    found = {}
    for node in dg.module2node.values():
        pieces = None
        if node.type == ops.OPTYPE.SPLIT:
            pieces = _split_pieces(node)
        elif node.type == ops.OPTYPE.UNBIND:
            pieces = _unbind_pieces(node)
        if pieces is not None:
            found[node] = pieces
    known = {}
    for node, (sizes, _, pieces) in found.items():
        for out, piece in zip(node.outputs, pieces, strict=True):
            if piece is not None:
                known.setdefault((out, tuple(sizes)), piece)
    resolved, unresolved = {}, [n for n in dg.module2node.values() if n.type == ops.OPTYPE.SPLIT and n not in found]
    for node, (sizes, equal, pieces) in found.items():
        pieces = [
            known.get((out, tuple(sizes))) if p is None else p for out, p in zip(node.outputs, pieces, strict=True)
        ]
        if None in pieces:
            unresolved.append(node)
        else:
            resolved[node] = (sizes, equal, pieces)
    blocked = {out for node in unresolved for out in node.outputs}
    return {node: pieces for node, pieces in resolved.items() if not blocked.intersection(node.outputs)}


def map_splits(dg: tp.DependencyGraph) -> dict[tp.dependency.Node, bool]:
    """Map every resolvable channel split's consumers to their pieces.

    Returns each split mapped, in graph order, with whether one number sizes all its pieces.
    """
    mapped = {}
    for node, (sizes, equal, pieces) in _resolve_pieces(dg).items():
        if node.type == ops.OPTYPE.UNBIND:
            _as_split(dg, node)
        op = node.module
        # `split_sizes` and `offsets` are torch-pruning's own description of the op (its pruner
        # and the op's name read them): they are corrected to the true sizes, not duplicated.
        op.split_sizes = sizes
        op.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        node.enable_index_mapping = False  # keeps torch-pruning from re-deriving its own mapping
        for out, piece in zip(node.outputs, pieces, strict=True):
            to_piece, from_piece = (SegmentMapping(op, "split_sizes", piece, to_whole) for to_whole in (False, True))
            wire(node, out, 0, to_piece, from_piece)
        mapped[node] = equal
    return mapped


def _as_split(dg: tp.DependencyGraph, node: tp.dependency.Node) -> None:
    """Prune an unbind mapped to its pieces as a split of equal pieces, the op it is along
    channels (torch-pruning prunes nothing of an unbind, and its pieces would keep their sizes)."""
    split = dg.REGISTERED_PRUNERS[ops.OPTYPE.SPLIT]
    for other in dg.module2node.values():
        for dep in other.dependencies:
            if dep.target is node:
                dep.handler = split.prune_out_channels
            if dep.source is node:
                dep.trigger = split.prune_out_channels


def along_image_channels(shape: Sequence[int], dim: int) -> bool:
    """Whether `dim` of a tensor of `shape` is an NCHW image's channels."""
    return len(shape) == 4 and dim in (1, -3)


def map_concat_inputs(dg: tp.DependencyGraph, node: tp.dependency.Node, splits: MappedSplits) -> None:
    """Size and map a concatenation fed by a split's piece (Res2Net's last scale, CSPNet's `xs`).

    torch-pruning sized a piece by the consumer's position among the split's consumers (a wrong
    size drops the concatenation's mapping altogether), and maps indices from a concatenation
    back into a split in the wrong order (split offset before concatenation offset). Here the
    concatenation's input sizes come from the split's pieces, and every input maps through live
    offsets, a piece after its concatenation slot.
    """
    sources, sizes = [], []
    dim = getattr(node.grad_fn, "_saved_dim", 1)
    for fn, nr in node.grad_fn.next_functions:
        source = next((n for n in node.inputs if n.grad_fn is fn), None)
        if source is None or source in sources:
            return
        sources.append(source)
        shape = fn._input_metadata[nr].shape
        if source.type == ops.OPTYPE.SPLIT and source.module in splits:
            sizes.append(source.module.split_sizes[nr])
        elif along_image_channels(shape, dim):
            # The tensor's own channels, as autograd recorded them: torch-pruning's walk infers
            # through a reshape the channels of a layer before it (SHViT's attention: 16 for 68).
            sizes.append(int(shape[1]))
        else:
            sizes.append(shape_infer.infer_out_channels_recursively(dg, source, [0]))
    if None in sizes or len(sources) != len(node.inputs):
        return
    op = node.module
    # torch-pruning's own fields for the op's input sizes, set to the true ones.
    op.concat_sizes = sizes
    op.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    node.enable_index_mapping = False  # keeps torch-pruning from re-deriving its own mapping
    for position, source in enumerate(sources):
        to_concat, from_concat = (SegmentMapping(op, "concat_sizes", position, to_whole) for to_whole in (True, False))
        wire(source, node, 1, to_concat, from_concat)
        for dep in between(node, source):
            # torch-pruning applies slot 0 first, where the split's piece mapping sits: the
            # concatenation's offset must come off before the piece's offset goes on.
            if isinstance(dep.index_mapping[0], SegmentMapping):
                dep.index_mapping[0], dep.index_mapping[1] = Chain(dep.index_mapping[1], dep.index_mapping[0]), None
