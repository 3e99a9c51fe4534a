"""Equal-piece splits: the layer whose channels a split cuts, and one width for all its pieces.

A split sized by one number in Python (`x.split(n)`, `x.chunk(k)`) keeps its pieces equal, so
the groups its pieces fall in must keep one width: they are tied, and fixed together. Groups
that trials found to resize only together (`tie_found`) are tied the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .groups import ChannelGroup
from .reasons import Fixed, Why


def split_root(node: tp.dependency.Node) -> nn.Module | None:
    """The conv or linear layer whose output channels reach `node` one to one (through norms, activations)."""
    while len(node.inputs) == 1:
        node = node.inputs[0]
        if node.type in (ops.OPTYPE.CONV, ops.OPTYPE.LINEAR):
            return node.module
        if node.type not in (ops.OPTYPE.BN, ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.LN, ops.OPTYPE.GN, ops.OPTYPE.IN):
            return None
    return None


def _pieces_by_split(groups: list[ChannelGroup]) -> dict[nn.Module, list[tuple[ChannelGroup, tuple[int, ...]]]]:
    """Split op -> [(group, the op's pieces it holds)], in the order groups meet splits."""
    by_op: dict[nn.Module, list[tuple[ChannelGroup, tuple[int, ...]]]] = {}
    for g in groups:
        for op, pieces in g.splits:
            by_op.setdefault(op, []).append((g, pieces))
    return by_op


def tie_pieces(groups: list[ChannelGroup]) -> None:
    """Tie the groups of one equal-piece split to one width; fix them all if any is fixed."""
    parent = {g.key: g.key for g in groups}

    def find(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    reasons: dict[str, Fixed] = {}
    for op, touching in _pieces_by_split(groups).items():
        keys = [g.key for g, _ in touching]
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
        covered = sorted(p for _, pieces in touching for p in pieces)
        if covered != list(range(len(op.split_sizes))) or any(len(p) > 1 for _, p in touching):
            reasons[find(keys[0])] = Fixed(
                Why.SIZED_IN_PYTHON,
                "its channels are split into equal pieces sized in Python, and the pieces are not one group each",
            )
    members: dict[str, list[ChannelGroup]] = {}
    for g in groups:
        if g.splits:
            members.setdefault(find(g.key), []).append(g)
    for label, tied in members.items():
        if len(tied) == 1 and label not in reasons:
            continue
        divisor = math.lcm(*(g.divisor for g in tied))
        fixed = next((g for g in tied if g.fixed), None)
        reason = reasons.get(label)
        if reason is None and fixed is not None:
            reason = Fixed(
                fixed.fixed.why, f"tied to {fixed.key} (equal pieces of one split), which is fixed: {fixed.fixed}"
            )
        if reason is None and len({g.size for g in tied}) > 1:
            reason = Fixed(
                Why.SIZED_IN_PYTHON, "its channels are split by one size in Python into pieces of different widths"
            )
        for g in tied:
            g.tie, g.divisor = tied[0].key, divisor
            if reason and not g.fixed:
                g.fixed = reason


def tie_found(groups: list[ChannelGroup], ties: Mapping[str, str]) -> None:
    """Tie the free, untied groups that `ties` labels (found to resize only together, see
    `widen`): one label and one divisor, the least multiple of the tied groups' own."""
    tied: dict[str, list[ChannelGroup]] = {}
    for g in groups:
        if g.prunable and g.tie is None and g.key in ties:
            g.tie = ties[g.key]
            tied.setdefault(g.tie, []).append(g)
    for members in tied.values():
        divisor = math.lcm(*(g.divisor for g in members))
        for g in members:
            g.divisor = divisor
