"""The group graph: torch-pruning's dependency graph of a model plus its channel groups.

Groups are found from every conv and linear layer's output channels, as torch-pruning's
`get_all_groups` does, then adjusted where torch-pruning's grouping does not fit resizing: an
irregular group is re-rooted at a narrower layer, the pieces of an equal-piece split get a
group each (tied to one width), and groups next to a search that did not settle are fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from ..arguments import check_module
from .cached_widths import find_cached_widths, head_owner, internal_heads, sync_cached_widths, sync_head_dims
from .groups import ChannelGroup, describe
from .heads import head_sources, per_head_tensors
from .internals import module_name, modules_by_name, swap_parameter
from .keys import GroupKey
from .pieces import split_root, tie_found, tie_pieces
from .reasons import Fixed, Why
from .search import BoundedSearch, Overflow, SearchStalled, Stall
from .tracing import trace

_Found = tuple[tp.dependency.Group, Overflow]


def _covers(group: ChannelGroup, layer: str, size: int) -> bool:
    """Whether `group` holds all `size` output channels of `layer`."""
    return any(m.name == layer and m.dim == "out" and len(set(m.positions)) == size for m in group.members)


@dataclass(frozen=True)
class _Rooted:
    """A group as rooted at one layer: the layer, whether at its input, the group, and what the
    search found from there."""

    root: nn.Module
    as_input: bool
    group: ChannelGroup
    found: _Found


class GroupGraph:
    """torch-pruning's `DependencyGraph` of a model plus its channel groups, keyed by root layer name."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        ignored: Iterable[str] = (),
        fixed: Mapping[str, str | Fixed] | None = None,
        stalls: Mapping[str, Stall] | None = None,
        ties: Mapping[str, str] | None = None,
    ) -> None:
        """`ignored`: layers whose groups keep their width; `fixed`: group key -> why it keeps its
        width (text, as a spec records it: `Why.BREAKS`); `stalls`: a graph of this model's
        `stalls`, not searched again; `ties`: key -> label, groups that resize only together."""
        check_module("GroupGraph(model, example_inputs)", model, example_inputs)
        self.model = model
        traced = trace(model, example_inputs)
        self.dg = traced.dg
        self._splits = traced.splits
        self.per_head = per_head_tensors(self.dg, model)
        # A search stops at per-head parameters (tables, scales added to the logits, off the
        # main path); a per-head layer sits on it (CaiT's talking heads) and keeps its own group.
        self._search = BoundedSearch(self.dg, head_sources(self.per_head), stalls)
        self.stalls: dict[str, Stall] = self._search.stalls  # group key -> its stalled search
        self.cached_widths = find_cached_widths(self.dg, model, traced.block_widths, self._splits)
        nodes = {node.grad_fn: node for node in self.dg.module2node.values() if node.grad_fn is not None}
        # Layers torch-pruning does not know (a blur filter applied with F.conv2d) show up as
        # element-wise ops; their per-channel tensors and width attributes follow the group.
        self.opaque: dict[object, nn.Module] = {
            nodes[grad_fn]: module for module, grad_fn, _ in traced.leaves if grad_fn in nodes
        }
        self.ignored = set(ignored)
        # Root layer of each group and whether the group is its input (rather than output) channels.
        self._roots: dict[str, tuple[nn.Module, bool]] = {}
        # Key of a group rooted at one piece of a split -> (split op, piece).
        self._pieces: dict[str, tuple[nn.Module, int]] = {}
        # Key of a group spanning an attention block's heads -> (the block, its output projection).
        self._heads: dict[str, tuple[nn.Module, nn.Module]] = {}
        self.groups: list[ChannelGroup] = []
        stalled = self._add_layer_groups()
        stalled.update(self._split_into_pieces())
        tie_pieces(self.groups)
        # A group holding a stalled group's channels shares its unknown coupling. A layer a stalled
        # search merely reached may be one its runaway mappings walked to (HaloNet's attention
        # folds channels into the batch): its own group's search settled without those channels.
        stalled_roots = {GroupKey.parse(key).layer for key in stalled.values()}
        for g in self.groups:
            if g.prunable:
                near = next((m.name for m in g.members if m.dim != "in" and m.name in stalled_roots), None)
                if near is not None:
                    g.fixed = Fixed(
                        Why.STALLED,
                        f"holds channels of {near}, whose channel coupling torch-pruning could not resolve",
                    )
        for g in self.groups:
            if g.prunable and self._roots[g.key][0] in self.per_head:
                g.fixed = Fixed(Why.PER_HEAD, f"{g.key} maps between attention heads")
        for g in self.groups:
            if g.prunable and g.key in (fixed or {}):
                reason = fixed[g.key]
                g.fixed = reason if isinstance(reason, Fixed) else Fixed(Why.BREAKS, reason)
        tie_found(self.groups, ties or {})

    def group(self, key: str) -> ChannelGroup:
        """The channel group rooted at layer `key` (KeyError naming a few known roots if none), as
        last described: after resizing its layers, `refresh(key)` gives its new size."""
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(f"no channel group rooted at layer {key!r}; known roots: {[g.key for g in self.groups][:8]}...")

    def tp_group(self, key: str, idxs: Sequence[int] | None = None) -> tp.dependency.Group:
        """The torch-pruning group of `key` for `idxs` (all current channels by default)."""
        return self._find(key, idxs)[0]

    def refresh(self, key: str) -> tuple[ChannelGroup, tp.dependency.Group]:
        """Re-describe one group after layers changed size (positions shift in concatenations)."""
        found = self._find(key)
        fresh = self._describe(key, found)
        i = [g.key for g in self.groups].index(key)
        old = self.groups[i]
        fresh.tie, fresh.divisor = old.tie, math.lcm(fresh.divisor, old.divisor)
        if fresh.fixed is None:
            fresh.fixed = old.fixed
        self.groups[i] = fresh
        return fresh, found[0]

    def sync_cached_widths(self) -> list[str]:
        """After a resize, set each cached width attribute to its block's new output width."""
        heads = [self._heads[g.key] for g in self.groups if g.key in self._heads]
        return sync_head_dims(self.dg, heads) + sync_cached_widths(self.dg, self.cached_widths)

    def replace_parameter(self, node: tp.dependency.Node, new: nn.Parameter) -> None:
        """Put `new` in place of the bare parameter `node` holds, on its owner and in the graph.

        (see `internals.swap_parameter`).
        """
        name = swap_parameter(self.dg, node, new)
        owner_name, _, attr = name.rpartition(".")
        setattr(self.model.get_submodule(owner_name), attr, new)

    def _find(self, key: str, idxs: Sequence[int] | None = None) -> _Found:
        """The torch-pruning group of `key` for `idxs`, and where its mappings pointed past a layer."""
        root, as_input = self._roots[key]
        pruner = self.dg.get_pruner_of_module(root)
        fn = pruner.prune_in_channels if as_input else pruner.prune_out_channels
        if key in self._pieces:
            # A piece's channels sit at its offset in the root; root indices stay 0-based.
            op, piece = self._pieces[key]
            start = sum(op.split_sizes[:piece])
            idxs = range(op.split_sizes[piece]) if idxs is None else idxs
            group, overflow = self._search.run(root, fn, [start + i for i in idxs], key)
            for item in group:
                item.root_idxs = [r - start for r in item.root_idxs]
            return group, overflow
        if idxs is None:
            idxs = range(pruner.get_in_channels(root) if as_input else pruner.get_out_channels(root))
        return self._search.run(root, fn, list(idxs), key)

    def _describe(self, key: str, found: _Found) -> ChannelGroup:
        tp_group, overflow = found
        owner = head_owner(self.model, key)
        if owner is not None:
            self._heads[key] = (owner, modules_by_name(self.dg)[GroupKey.parse(key).layer])
        elif (inside := internal_heads(self.dg, self.model, tp_group)) is not None:
            self._heads[key] = inside
        owner = self._heads[key][0] if key in self._heads else None
        return describe(self.dg, key, tp_group, overflow, ignored=self.ignored, splits=self._splits, heads=owner)

    def _add_layer_groups(self) -> dict[nn.Module, str]:
        """Add a group per layer group torch-pruning finds, as its `get_all_groups` does (every conv
        and linear layer's output channels, each channel once); return the layers whose output
        channels a stalled search reached (-> the stalled group's key); one it reached only at
        its input (an MLP's `fc1` reading an unresolved residual stream) roots a group of its own.

        A layer counts as grouped once a group holds some of its channels; for a group re-rooted
        at a narrower layer that is the re-rooted group, so the channels it leaves out (the other
        input of a concatenation that a squeeze-excite spans) start groups of their own.
        """
        stalled: dict[nn.Module, str] = {}
        visited: set = set()
        for module in list(self.dg.module2node):
            if not isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)) or module in visited:
                continue
            pruner = self.dg.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            key = module_name(self.dg, module)
            try:
                width = pruner.get_out_channels(module)
                found = self._search.run(module, pruner.prune_out_channels, list(range(width)), key)
            except SearchStalled as stall:
                visited.update(stall.reached)
                self.groups.append(
                    ChannelGroup(key, self.dg.get_out_channels(module), fixed=Fixed(Why.STALLED, str(stall)))
                )
                self._roots[key] = (module, False)
                stalled.update({m: key for m in stall.reached})
                continue
            rooted = _Rooted(module, False, self._describe(key, found), found)
            if rooted.group.fixed and rooted.group.fixed.why is Why.IRREGULAR:
                rooted = self._reroot(rooted)
            visited.update(
                item.dep.target.module
                for item in rooted.found[0]
                if item.idxs and self.dg.is_out_channel_pruning_fn(item.dep.handler)
            )
            self._roots[rooted.group.key] = (rooted.root, rooted.as_input)
            self.groups.append(rooted.group)
        return stalled

    def _reroot(self, rooted: _Rooted) -> _Rooted:
        """Root an irregular group at its narrowest layer instead, if that makes it regular.

        A root wider than another layer of the same channels maps several of its channels onto
        one of the narrower layer's: GhostNet's squeeze-excite expands to a concatenation of a
        tensor and its depthwise copy, an attention `qkv` projection feeds `proj` through three
        chunks. Rooted at the narrower layer (its output, or an attention projection's input),
        the mapping is cyclic.
        """
        found, root, group = rooted.found, rooted.root, rooted.group
        candidates = []
        splits = any(
            item.dep.target.type in (ops.OPTYPE.SPLIT, ops.OPTYPE.SLICE, ops.OPTYPE.UNBIND) for item in found[0]
        )
        for item in found[0]:
            module = item.dep.target.module
            if module is root or not isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)):
                continue
            as_input = not self.dg.is_out_channel_pruning_fn(item.dep.handler)
            pruner = self.dg.get_pruner_of_module(module)
            width = pruner.get_in_channels(module) if as_input else pruner.get_out_channels(module)
            if width is not None and width < group.size:  # None: a layer channels pass through
                candidates.append((as_input, width, module_name(self.dg, module), module))
        for as_input, width, name, module in sorted(candidates, key=lambda c: c[:3]):
            pruner = self.dg.get_pruner_of_module(module)
            fn: Callable = pruner.prune_in_channels if as_input else pruner.prune_out_channels
            key = str(GroupKey(name, at_input=as_input))
            # Through a split, a layer's input may be one piece whose size is fixed in Python
            # (Res2Net's `torch.split(x, self.width)`); only attention heads are known to split
            # evenly, or pieces joined channel by channel (a gated MLP's `x1 * act(x2)`), where
            # the narrower root reaches every channel of the wider one.
            whole = as_input and splits and head_owner(self.model, key) is None
            try:
                narrower = self._search.run(module, fn, list(range(width)))
            except SearchStalled:
                continue  # no better root: the group stays as described, fixed
            candidate = self._describe(key, narrower)
            if candidate.prunable and (not whole or _covers(candidate, module_name(self.dg, root), group.size)):
                return _Rooted(module, as_input, candidate, narrower)
        return rooted

    def _split_into_pieces(self) -> dict[nn.Module, str]:
        """One group per piece of a split whose pieces must stay equal (`x.split(n)`, `x.chunk(k)`).

        torch-pruning marks a layer visited once any of its channels is in a group, so a layer
        whose output is split may have one piece in a group (CSPNet: the half that feeds the
        residual blocks) and the other in none, or all pieces in one group that cannot grow
        (each consumer sees a part of the root). Such pieces get a group of their own, rooted at
        the layer that produces the split's input. Returns the layers a stalled search reached
        (-> the stalled piece's key).
        """
        stalled: dict[nn.Module, str] = {}
        for node in list(self.dg.module2node.values()):
            op = node.module
            root = split_root(node) if node.type == ops.OPTYPE.SPLIT and self._splits.get(op, False) else None
            if root is None or self.dg.get_pruner_of_module(root).get_out_channels(root) != sum(op.split_sizes):
                continue
            name = module_name(self.dg, root)
            touched = {k for g in self.groups for o, pieces in g.splits if o is op for k in pieces}
            whole = [g for g in self.groups if self._roots[g.key][0] is root and g.key not in self._pieces]
            for g in [g for g in whole if g.fixed and g.fixed.why is Why.IRREGULAR]:
                self.groups.remove(g)
                del self._roots[g.key]
                touched -= {k for o, pieces in g.splits if o is op for k in pieces}
            for piece in range(len(op.split_sizes)):
                key = str(GroupKey(name, piece=piece))
                if piece in touched or key in self._roots:
                    continue
                self._roots[key] = (root, False)
                self._pieces[key] = (op, piece)
                try:
                    group = self._describe(key, self._find(key))
                except SearchStalled as stall:
                    self.groups.append(ChannelGroup(key, op.split_sizes[piece], fixed=Fixed(Why.STALLED, str(stall))))
                    stalled.update({m: key for m in stall.reached})
                    continue
                if group.splits != [(op, (piece,))] and not group.fixed:
                    group.fixed = Fixed(Why.SIZED_IN_PYTHON, f"piece {piece} of a split reaches other pieces")
                self.groups.append(group)
        return stalled
