"""Channel groups: a torch-pruning group described as the unit LW-DNA widens, scores and shrinks.

A channel group is everything that must keep the same channel count: a conv's outputs and the
norm, depthwise conv, residual sum, concatenation slice and consumer inputs coupled to them.
`describe` records where every member holds the group's channels and why a group must keep its
width (the model's output, irregular index mappings, layers with no grow function).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from ..grow import GROWERS
from .constants import PASS_THROUGH
from .heads import head_count
from .internals import node_name
from .layout import member_layout
from .reasons import Fixed, Why


@dataclass
class Member:
    """Where one layer holds a group's channels: `dim` is 'out', 'in' or 'tied' (norms, depthwise)."""

    name: str
    dim: str
    optype: str
    positions: list[int]
    root_idxs: list[int]
    repeat: int


@dataclass
class ChannelGroup:
    """A set of coupled channels that LW-DNA widens, scores and shrinks as one."""

    key: str
    size: int
    members: list[Member] = field(default_factory=list)
    divisor: int = 1
    fixed: Fixed | None = None
    classifier_input: bool = False
    # A grouped conv sees its channels in `balance` contiguous blocks: each keeps an equal share.
    balance: int = 1
    # Groups with the same `tie` keep one width: the pieces of a split sized by one number in Python.
    tie: str | None = None
    # An attention block's group (every head's width); `heads_from_shape` where the block keeps
    # no `head_dim`: it reads each head's width off a tensor, which may be another group's.
    # Either may also reshape its output to its input's width (see `widen._tied_heads`).
    attention: bool = False
    heads_from_shape: bool = False
    # (split op, pieces) for every equal-piece split the group passes through.
    splits: list[tuple[nn.Module, tuple[int, ...]]] = field(default_factory=list, repr=False)
    # Layers the group's channels pass through unchanged (token mixers): their cost scales with it.
    passes: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return self.fixed is None

    def step(self, round_to: int = 1) -> int:
        """The channel granularity of the group: `round_to` and its grouped layers' group count."""
        return math.lcm(max(1, round_to), self.divisor)


def describe(
    dg: tp.DependencyGraph,
    key: str,
    tp_group: tp.dependency.Group,
    overflow: Sequence[tuple[tp.dependency.Node, int]],
    *,
    ignored: set[str],
    splits: Mapping[nn.Module, bool],
    heads: nn.Module | None,
) -> ChannelGroup:
    """The channel group of torch-pruning's `tp_group`, keyed `key`.

    `overflow` lists where the search's index mappings pointed past a layer's channels, `splits`
    the split ops whose pieces one number sizes, `heads` the attention block the group spans.
    The first reason found is the one a fixed group reports.
    """
    size = len(tp_group[0].idxs)
    group = ChannelGroup(key=key, size=size)
    divisors = [1]
    reasons = [
        Fixed(
            Why.IRREGULAR,
            f"channel mapping at {_name(dg, node) or node.name.splitlines()[0]} points past its {width} channels",
        )
        for node, width in overflow
    ]
    unsized = getattr(dg, "unsized_concats", set())
    unmapped = getattr(dg, "unmapped_reshapes", set())
    for item in tp_group:
        node = item.dep.target
        if node.module in unsized:
            reasons.append(
                Fixed(Why.SIZED_IN_PYTHON, "passes through a concatenation whose input sizes could not be read")
            )
            continue
        if node.module in unmapped:
            reasons.append(Fixed(Why.IRREGULAR, "passes through a reshape whose channels could not be mapped"))
            continue
        if node.type == ops.OPTYPE.OUTPUT:
            reasons.append(Fixed(Why.OUTPUT, "feeds the model output"))
            continue
        if node.module in getattr(dg, "pass_through", ()):
            group.passes.append(_name(dg, node))
        if node.type in PASS_THROUGH or (node.type == ops.OPTYPE.SLICE and not slices_channels(node)):
            continue
        if node.type == ops.OPTYPE.SPLIT and splits.get(node.module, False):
            group.splits.append((node.module, _pieces(node.module.split_sizes, item.idxs)))
        member, found = _member(dg, item, size)
        reasons += found
        if member.name in ignored:
            reasons.append(Fixed(Why.IGNORED, f"layer {member.name} is ignored"))
        if member.name is None:
            continue
        if isinstance(node.module, ops.TORCH_LINEAR) and member.dim == "in" and _is_classifier(node):
            group.classifier_input = True
        if node.type == ops.OPTYPE.CONV:
            divisors.append(node.module.groups)
            if node.module.groups > 1:
                group.balance = math.lcm(group.balance, node.module.groups)
        elif node.type == ops.OPTYPE.GN:
            divisors.append(node.module.num_groups)
        # Heads of a product of activations (`q @ k` on conv features): see `products`.
        divisors.append(getattr(dg, "product_divisors", {}).get((node.module, member.dim == "out"), 1))
        group.members.append(member)
    if heads is not None:
        divisors.append(head_count(heads))
        group.attention = True
        group.heads_from_shape = type(getattr(heads, "head_dim", None)) is not int
    group.divisor = math.lcm(*divisors)
    if size % group.divisor:
        reasons.append(
            Fixed(Why.LAYER_GROUPS, f"{size} channels are not divisible by the layer groups ({group.divisor})")
        )
    group.fixed = reasons[0] if reasons else None
    return group


def _name(dg: tp.DependencyGraph, node: tp.dependency.Node) -> str | None:
    """The model's name for a node's layer or bare parameter (a relative position bias table)."""
    return node_name(dg, node)


def _member(dg: tp.DependencyGraph, item: object, size: int) -> tuple[Member, list[Fixed]]:
    """One group item as a member (its name None for a layer the model does not name), and what
    keeps it from growing in place."""
    node, handler = item.dep.target, item.dep.handler
    optype, module = node.type, node.module
    name = _name(dg, node)
    where = name or node.name
    pruner = dg.get_pruner_of_module(module)
    tied = pruner.prune_in_channels == pruner.prune_out_channels
    dim = "tied" if tied else ("out" if dg.is_out_channel_pruning_fn(handler) else "in")
    reasons = []
    if dim != "in" and not node.outputs and optype != ops.OPTYPE.PARAMETER:
        reasons.append(Fixed(Why.OUTPUT, f"{name} produces the model output"))
    repeat, reason = member_layout(list(item.idxs), list(item.root_idxs), size)
    if reason:
        reasons.append(Fixed(Why.IRREGULAR, f"irregular channel mapping at {where}: {reason}"))
    if optype == ops.OPTYPE.PARAMETER:
        width = module.shape[node.pruning_dim]
    else:
        width = pruner.get_in_channels(module) if dim == "in" else pruner.get_out_channels(module)
    if width is not None and max(item.idxs, default=0) >= width:
        reasons.append(Fixed(Why.IRREGULAR, f"channel mapping at {where} points past its {width} channels"))
    if optype not in GROWERS:
        reasons.append(Fixed(Why.NO_GROWER, f"no grow function for {type(module).__name__} ({where})"))
    member = Member(name, dim, optype.name.lower(), list(item.idxs), list(item.root_idxs), repeat)
    return member, reasons


def slices_channels(node: tp.dependency.Node) -> bool:
    """Whether a slice cuts channels (dim 1 of an image, the last of tokens, torch-pruning's
    convention): a slice of tokens (TNT's `x[:, 1:]`, past the class token) keeps every channel,
    and torch-pruning maps it as such. True where autograd does not say."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    dim = getattr(node.grad_fn, "_saved_dim", None)
    if sizes is None or dim is None or not -len(sizes) <= dim < len(sizes):
        return True
    return dim % len(sizes) == (1 if len(sizes) in (2, 4) else len(sizes) - 1)


def _pieces(split_sizes: list[int], idxs: Sequence[int]) -> tuple[int, ...]:
    """Which pieces of a split the indices `idxs` of its input fall in."""
    offsets = [sum(split_sizes[:i]) for i in range(len(split_sizes) + 1)]
    return tuple(sorted({bisect.bisect_right(offsets, i) - 1 for i in idxs}))


def _is_classifier(node: tp.dependency.Node) -> bool:
    """True if this linear layer's output reaches the model output through shape-preserving ops only."""
    stack, seen = list(node.outputs), set()
    if not stack:
        return True
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type == ops.OPTYPE.OUTPUT:
            return True
        if n.type in PASS_THROUGH:
            stack.extend(n.outputs)
    return False
