"""Channel groups: torch-pruning's dependency graph, seen as the units LW-DNA resizes.

A channel group is everything that must keep the same channel count: a conv's outputs and
the norm, depthwise conv, residual sum, concatenation slice and consumer inputs coupled to
them. torch-pruning finds the coupling; this module names each group after its root layer,
records where every member holds the group's channels, and marks the groups that must keep
their width (the model's output, irregular index mappings, layers with no grow function).
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning._helpers import _HybridIndex
from torch_pruning.dependency import shape_infer

from .grow import GROWERS

# Key suffix of a group rooted at a layer's input channels (an attention output projection).
_INPUT_SUFFIX = ":in"

# Ops whose only pruning job is bookkeeping that the graph re-derives from shapes.
_PASS_THROUGH = {
    ops.OPTYPE.ELEMENTWISE,
    ops.OPTYPE.RESHAPE,
    ops.OPTYPE.UNBIND,
    ops.OPTYPE.EXPAND,
}


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
    fixed: str | None = None
    classifier_input: bool = False
    # A grouped conv sees its channels in `balance` contiguous blocks: each keeps an equal share.
    balance: int = 1
    # Groups with the same `tie` keep one width: the pieces of a split sized by one number in Python.
    tie: str | None = None
    # (split op, pieces) for every equal-piece split the group passes through.
    splits: list[tuple[nn.Module, tuple[int, ...]]] = field(default_factory=list, repr=False)

    @property
    def prunable(self) -> bool:
        return self.fixed is None


class GroupGraph:
    """torch-pruning's `DependencyGraph` of a model plus its channel groups, keyed by root layer name."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        ignored: Iterable[str] = (),
    ) -> None:
        self.model = model
        self.dg, outputs, leaves = _trace(model, example_inputs)
        self.cached_widths = self._find_cached_widths(outputs)
        nodes = {node.grad_fn: node for node in self.dg.module2node.values() if node.grad_fn is not None}
        # Layers torch-pruning does not know (a blur filter applied with F.conv2d) show up as
        # element-wise ops; their per-channel tensors and width attributes follow the group.
        self.opaque: dict[object, nn.Module] = {
            nodes[grad_fn]: module for module, grad_fn, _ in leaves if grad_fn in nodes
        }
        self.ignored = set(ignored)
        # Root layer of each group and whether the group is its input (rather than output) channels.
        self._roots: dict[str, tuple[nn.Module, bool]] = {}
        self.groups: list[ChannelGroup] = []
        stalled: dict[nn.Module, str] = {}
        for root, tp_group in self._all_groups():
            if isinstance(tp_group, _SearchStalled):
                key = self.dg._module2name[root]
                self.groups.append(ChannelGroup(key, self.dg.get_out_channels(root), fixed=str(tp_group)))
                self._roots[key] = (root, False)
                stalled.update({m: key for m in tp_group.reached})
                continue
            group = self._describe(self.dg._module2name[root], tp_group)
            as_input = False
            if group.fixed and group.fixed.startswith("irregular"):
                root, as_input, group = self._reroot(tp_group, root, group)
            self._roots[group.key] = (root, as_input)
            self.groups.append(group)
        # Key of a group rooted at one piece of a split -> (split op, piece).
        self._pieces: dict[str, tuple[nn.Module, int]] = {}
        self._split_into_pieces()
        self._tie_pieces()
        for g in self.groups:
            if g.prunable:
                near = next((stalled[m] for m in self._member_modules(g) if m in stalled), None)
                if near is not None:
                    g.fixed = f"shares layers with {near}, whose channel coupling torch-pruning could not resolve"

    def _member_modules(self, group: ChannelGroup) -> list[nn.Module]:
        by_name = {name: module for module, name in self.dg._module2name.items()}
        return [by_name[m.name] for m in group.members if m.name in by_name]

    def _all_groups(self):
        """torch-pruning's `get_all_groups` (every conv and linear layer's output channels, each
        channel once), yielding (root, group) or (root, `_SearchStalled`) for a search that did not settle."""
        visited: set = set()
        for module in list(self.dg.module2node):
            if not isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)) or module in visited:
                continue
            pruner = self.dg.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            try:
                group = self._pruning_group(
                    module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module)))
                )
            except _SearchStalled as stall:
                visited.update(stall.reached)
                yield module, stall
                continue
            visited.update(
                item.dep.target.module for item in group if self.dg.is_out_channel_pruning_fn(item.dep.handler)
            )
            yield module, group

    def _reroot(
        self, tp_group: tp.dependency.Group, root: nn.Module, group: ChannelGroup
    ) -> tuple[nn.Module, bool, ChannelGroup]:
        """Root an irregular group at its narrowest layer instead, if that makes it regular.

        A root wider than another layer of the same channels maps several of its channels onto
        one of the narrower layer's: GhostNet's squeeze-excite expands to a concatenation of a
        tensor and its depthwise copy, an attention `qkv` projection feeds `proj` through three
        chunks. Rooted at the narrower layer (its output, or an attention projection's input),
        the mapping is cyclic.
        """
        candidates = []
        for item in tp_group:
            module = item.dep.target.module
            if module is root or not isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)):
                continue
            as_input = not self.dg.is_out_channel_pruning_fn(item.dep.handler)
            pruner = self.dg.get_pruner_of_module(module)
            width = pruner.get_in_channels(module) if as_input else pruner.get_out_channels(module)
            if width < group.size:
                candidates.append((as_input, width, self.dg._module2name[module], module))
        for as_input, width, name, module in sorted(candidates, key=lambda c: c[:3]):
            pruner = self.dg.get_pruner_of_module(module)
            fn = pruner.prune_in_channels if as_input else pruner.prune_out_channels
            key = f"{name}{_INPUT_SUFFIX}" if as_input else name
            if as_input and self._head_owner(key) is None:
                # Only attention heads are known to split a layer's input evenly; elsewhere a
                # split's sizes may be fixed in Python (Res2Net's `torch.split(x, self.width)`).
                continue
            candidate = self._describe(key, self._pruning_group(module, fn, list(range(width))))
            if candidate.prunable:
                return module, as_input, candidate
        return root, False, group

    def group(self, key: str) -> ChannelGroup:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(f"no channel group rooted at layer {key!r}; known roots: {[g.key for g in self.groups][:8]}...")

    def tp_group(self, key: str, idxs: Sequence[int] | None = None) -> tp.dependency.Group:
        """The torch-pruning group of `key` for `idxs` (all current channels by default)."""
        root, as_input = self._roots[key]
        pruner = self.dg.get_pruner_of_module(root)
        fn = pruner.prune_in_channels if as_input else pruner.prune_out_channels
        if key in self._pieces:
            # A piece's channels sit at its offset in the root; root indices stay 0-based.
            op, piece = self._pieces[key]
            start = sum(op.split_sizes[:piece])
            idxs = range(op.split_sizes[piece]) if idxs is None else idxs
            group = self._pruning_group(root, fn, [start + i for i in idxs])
            for item in group:
                item.root_idxs = [r - start for r in item.root_idxs]
            return group
        if idxs is None:
            idxs = range(pruner.get_in_channels(root) if as_input else pruner.get_out_channels(root))
        return self._pruning_group(root, fn, list(idxs))

    def _pruning_group(self, root: nn.Module, fn, idxs: list[int]) -> tp.dependency.Group:
        """torch-pruning's group, noting where an index mapping pointed past a layer's channels.

        Raises `_SearchStalled` when the search takes more than `_SEARCH_STEPS` steps.
        """
        self.dg.lw_overflow.clear()
        self.dg.lw_search = {"steps": 0, "reached": set()}
        try:
            group = self.dg.get_pruning_group(root, fn, idxs)
        finally:
            search, self.dg.lw_search = self.dg.lw_search, None
        if search["steps"] > _SEARCH_STEPS:
            raise _SearchStalled(self.dg._module2name.get(root, "?"), search["reached"])
        group.lw_overflow = list(self.dg.lw_overflow)
        return group

    def refresh(self, key: str) -> tuple[ChannelGroup, tp.dependency.Group]:
        """Re-describe one group after layers changed size (positions shift in concatenations)."""
        tp_group = self.tp_group(key)
        fresh = self._describe(key, tp_group)
        i = [g.key for g in self.groups].index(key)
        old = self.groups[i]
        fresh.tie, fresh.divisor = old.tie, math.lcm(fresh.divisor, old.divisor)
        if fresh.fixed is None:
            fresh.fixed = old.fixed
        self.groups[i] = fresh
        return fresh, tp_group

    def _split_into_pieces(self) -> None:
        """One group per piece of a split whose pieces must stay equal (`x.split(n)`, `x.chunk(k)`).

        torch-pruning marks a layer visited once any of its channels is in a group, so a layer
        whose output is split may have one piece in a group (CSPNet: the half that feeds the
        residual blocks) and the other in none, or all pieces in one group that cannot grow
        (each consumer sees a part of the root). Such pieces get a group of their own, rooted at
        the layer that produces the split's input.
        """
        for node in list(self.dg.module2node.values()):
            op = node.module
            if node.type != ops.OPTYPE.SPLIT or not getattr(op, "equal_pieces", False):
                continue
            root = _split_root(node)
            if root is None:
                continue
            name = self.dg._module2name[root]
            pruner = self.dg.get_pruner_of_module(root)
            if pruner.get_out_channels(root) != sum(op.split_sizes):
                continue
            touched = {k for g in self.groups for o, pieces in g.splits if o is op for k in pieces}
            whole = [g for g in self.groups if self._roots[g.key][0] is root and g.key not in self._pieces]
            whole = [g for g in whole if g.fixed and g.fixed.startswith("irregular")]
            for g in whole:
                self.groups.remove(g)
                del self._roots[g.key]
                touched -= {k for o, pieces in g.splits if o is op for k in pieces}
            for piece in range(len(op.split_sizes)):
                key = f"{name}#{piece}"
                if piece in touched or key in self._roots:
                    continue
                self._roots[key] = (root, False)
                self._pieces[key] = (op, piece)
                group = self._describe(key, self.tp_group(key))
                if group.splits != [(op, (piece,))] and not group.fixed:
                    group.fixed = f"piece {piece} of a split reaches other pieces"
                self.groups.append(group)

    def _tie_pieces(self) -> None:
        """Tie the groups of one equal-piece split to one width; fix them all if any is fixed."""
        parent = {g.key: g.key for g in self.groups}

        def find(k: str) -> str:
            while parent[k] != k:
                k = parent[k]
            return k

        by_op: dict[int, list[tuple[ChannelGroup, tuple[int, ...]]]] = {}
        ops_by_id = {}
        for g in self.groups:
            for op, pieces in g.splits:
                by_op.setdefault(id(op), []).append((g, pieces))
                ops_by_id[id(op)] = op
        reasons: dict[str, str] = {}
        for op_id, touching in by_op.items():
            op = ops_by_id[op_id]
            keys = [g.key for g, _ in touching]
            for k in keys[1:]:
                parent[find(k)] = find(keys[0])
            covered = sorted(p for _, pieces in touching for p in pieces)
            if covered != list(range(len(op.split_sizes))) or any(len(p) > 1 for _, p in touching):
                reasons[find(keys[0])] = (
                    "its channels are split into equal pieces sized in Python, and the pieces are not one group each"
                )
        members: dict[str, list[ChannelGroup]] = {}
        for g in self.groups:
            if g.splits:
                members.setdefault(find(g.key), []).append(g)
        for label, tied in members.items():
            if len(tied) == 1 and label not in reasons:
                continue
            divisor = math.lcm(*(g.divisor for g in tied))
            fixed = next((g for g in tied if g.fixed), None)
            reason = reasons.get(label)
            if reason is None and fixed is not None:
                reason = f"tied to {fixed.key} (equal pieces of one split), which is fixed: {fixed.fixed}"
            if reason is None and len({g.size for g in tied}) > 1:
                reason = "its channels are split by one size in Python into pieces of different widths"
            for g in tied:
                g.tie, g.divisor = tied[0].key, divisor
                if reason and not g.fixed:
                    g.fixed = reason

    def _find_cached_widths(self, outputs: list[tuple[nn.Module, int]]) -> list[tuple[nn.Module, str, object, str]]:
        """Integer attributes of a block that hold the width of a concatenation or split inside it.

        Such an attribute bounds a slice of a concatenation (GhostNet's `out[:, :self.out_chs]`)
        or sizes a split (CSPNet's `x.split(self.expand_chs // 2)`, Res2Net's
        `torch.split(x, self.width)`). A concatenation is found by where its inputs come from,
        every input produced inside the block; a split by where its pieces go, the block that
        holds every consumer. Each entry: (block, attribute, graph node, what it holds: the
        concatenation's 'width', the split's 'total' or its equal 'piece').
        """
        names = self.dg._module2name
        concat_owner: dict[str, object] = {}
        found = []
        for node in self.dg.module2node.values():
            if node.type == ops.OPTYPE.CONCAT:
                producers = [_named_neighbour(n, names, "inputs") for n in node.inputs]
                if all(producers):
                    owner = _common_parent(producers)
                    concat_owner.setdefault(owner, node)
            elif node.type == ops.OPTYPE.SPLIT and getattr(node.module, "equal_pieces", False):
                consumers = [_named_neighbour(n, names, "outputs") for n in node.outputs]
                if not all(consumers):
                    continue
                owner = self.model.get_submodule(_common_parent(consumers))
                sizes = node.module.split_sizes
                for attr, value in vars(owner).items():
                    if type(value) is int and value > 1 and value in (sizes[0], sum(sizes)):
                        found.append((owner, attr, node, "piece" if value == sizes[0] else "total"))
        for module, channels in outputs:
            node = concat_owner.get(names.get(module, ""))
            if node is None or _concat_width(self.dg, node) != channels:
                continue
            for attr, value in vars(module).items():
                # An attribute that sizes a split is the split's: the concatenation may differ.
                claimed = any(m is module and a == attr for m, a, _, _ in found)
                if type(value) is int and value == channels and value > 1 and not claimed:
                    found.append((module, attr, node, "width"))
        return found

    def _head_owner(self, key: str) -> nn.Module | None:
        """The attention block whose heads a group rooted at an output projection's input spans.

        timm's attention blocks keep `num_heads` and `head_dim` (and often `attn_dim` and
        `scale`); the group keeps the head count and resizes every head's dimension.
        """
        if not key.endswith(_INPUT_SUFFIX):
            return None
        owner = self.model.get_submodule(key[: -len(_INPUT_SUFFIX)].rpartition(".")[0])
        heads, dim = getattr(owner, "num_heads", None), getattr(owner, "head_dim", None)
        if type(heads) is int and type(dim) is int:
            return owner
        return None

    def sync_cached_widths(self) -> list[str]:
        """After a resize, set each cached width attribute to its block's new output width."""
        changed = []
        for key, (root, as_input) in self._roots.items():
            owner = self._head_owner(key) if as_input else None
            width = self.dg.get_pruner_of_module(root).get_in_channels(root) if owner is not None else None
            if owner is None or width == owner.num_heads * owner.head_dim:
                continue
            old_dim, owner.head_dim = owner.head_dim, width // owner.num_heads
            if getattr(owner, "attn_dim", None) == old_dim * owner.num_heads:
                owner.attn_dim = width
            if isinstance(getattr(owner, "scale", None), float):
                owner.scale = owner.head_dim**-0.5
            changed.append(f"{self.dg._module2name.get(owner)}.head_dim")
        for module, attr, node, kind in self.cached_widths:
            if kind == "width":
                width = _concat_width(self.dg, node)
            else:
                width = node.module.split_sizes[0] if kind == "piece" else sum(node.module.split_sizes)
            if width is not None and width != getattr(module, attr):
                setattr(module, attr, width)
                changed.append(f"{self.dg._module2name.get(module, type(module).__name__)}.{attr}")
        return changed

    def _describe(self, key: str, tp_group: tp.dependency.Group) -> ChannelGroup:
        size = len(tp_group[0].idxs)
        group = ChannelGroup(key=key, size=size)
        divisors, reasons = [1], []
        for node, width in getattr(tp_group, "lw_overflow", []):
            where = self.dg._module2name.get(node.module) or node.name.splitlines()[0]
            reasons.append(f"channel mapping at {where} points past its {width} channels")
        for item in tp_group:
            node, handler = item.dep.target, item.dep.handler
            optype = node.type
            if optype == ops.OPTYPE.OUTPUT:
                reasons.append("feeds the model output")
                continue
            if optype in _PASS_THROUGH:
                continue
            module = node.module
            if optype == ops.OPTYPE.SPLIT and getattr(module, "equal_pieces", False):
                offsets = [sum(module.split_sizes[:i]) for i in range(len(module.split_sizes) + 1)]
                pieces = {bisect.bisect_right(offsets, i) - 1 for i in item.idxs}
                group.splits.append((module, tuple(sorted(pieces))))
            names = self.dg._param_to_name if optype == ops.OPTYPE.PARAMETER else self.dg._module2name
            name = names.get(module)
            pruner = self.dg.get_pruner_of_module(module)
            tied = pruner.prune_in_channels == pruner.prune_out_channels
            dim = "tied" if tied else ("out" if self.dg.is_out_channel_pruning_fn(handler) else "in")
            if dim != "in" and not node.outputs and optype != ops.OPTYPE.PARAMETER:
                reasons.append(f"{name} produces the model output")
            repeat, reason = _layout(list(item.idxs), list(item.root_idxs), size)
            if reason:
                reasons.append(f"irregular channel mapping at {name or node.name}: {reason}")
            if optype == ops.OPTYPE.PARAMETER:
                width = module.shape[node.pruning_dim]
            else:
                width = pruner.get_in_channels(module) if dim == "in" else pruner.get_out_channels(module)
            if width is not None and max(item.idxs, default=0) >= width:
                reasons.append(f"channel mapping at {name or node.name} points past its {width} channels")
            if optype not in GROWERS:
                reasons.append(f"no grow function for {type(module).__name__} ({name or node.name})")
            if name in self.ignored:
                reasons.append(f"layer {name} is ignored")
            if name is None:
                continue
            if isinstance(module, ops.TORCH_LINEAR) and dim == "in" and _is_classifier(self.dg, node):
                group.classifier_input = True
            if optype == ops.OPTYPE.CONV:
                divisors.append(module.groups)
                if module.groups > 1:
                    group.balance = math.lcm(group.balance, module.groups)
            elif optype == ops.OPTYPE.GN:
                divisors.append(module.num_groups)
            group.members.append(Member(name, dim, optype.name.lower(), list(item.idxs), list(item.root_idxs), repeat))
        heads = self._head_owner(key)
        if heads is not None:
            divisors.append(heads.num_heads)
        group.divisor = math.lcm(*divisors)
        if size % group.divisor:
            reasons.append(f"{size} channels are not divisible by the layer groups ({group.divisor})")
        group.fixed = reasons[0] if reasons else None
        return group


def _trace(model: nn.Module, example_inputs: torch.Tensor) -> tuple[tp.DependencyGraph, list, list]:
    """Build torch-pruning's graph, recording block output widths and unknown layers' outputs."""
    was_training = model.training
    outputs: list[tuple[nn.Module, int]] = []
    leaves: list[tuple[nn.Module, object, int]] = []
    known = tuple(ops.type2class(t) for t in tp.DependencyGraph().REGISTERED_PRUNERS if ops.type2class(t))
    hooks = []
    for m in model.modules():
        if m is not model and next(m.children(), None) is not None:
            hooks.append(m.register_forward_hook(partial(_record_output, outputs)))
        elif next(m.children(), None) is None and not isinstance(m, known) and _per_channel_state(m):
            hooks.append(m.register_forward_hook(partial(_record_leaf, leaves)))
    try:
        with warnings.catch_warnings():
            # torch-pruning warns about every parameter outside a known layer; we report those groups ourselves.
            warnings.simplefilter("ignore")
            dg = _DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    finally:
        for h in hooks:
            h.remove()
    model.train(was_training)
    seen: set = set()
    for node in list(dg.module2node.values()):
        if node.type == ops.OPTYPE.RESHAPE and node not in seen:
            _map_rearrangement(dg, node, seen)
    for node in _map_splits(dg):
        for out in node.outputs:
            if out.type == ops.OPTYPE.CONCAT:
                _map_concat_inputs(dg, out)
    dg.lw_overflow = []
    for node in dg.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping = _BoundedMappings(dep.index_mapping, dg, dep)
    return dg, outputs, leaves


# Dependency steps one group search may take: DenseNet-121 needs about 500 and ResNet-50 under 100;
# a search circling through ops that mix channels with other dimensions can run for hours.
_SEARCH_STEPS = 5_000


class _SearchStalled(Exception):
    """torch-pruning's group search from `root` did not settle; `reached` holds what it touched."""

    def __init__(self, root: str, reached: set) -> None:
        super().__init__(
            f"torch-pruning's channel coupling search from {root} did not settle within {_SEARCH_STEPS:,} steps"
        )
        self.reached = reached


class _BoundedMappings(list):
    """A dependency's index mappings, followed by a bound: no index past the target's channels.

    torch-pruning's mappings into a split, unbind or concatenation add offsets without a
    bound; where ops that mix channels with other dimensions close a cycle (CoaT's factorised
    attention), indices walk on round it and the group search never ends. Indices past the
    target's width are dropped and noted in `dg.lw_overflow`, so the group is reported fixed.
    torch-pruning still sets the two mappings by position.
    """

    def __init__(self, mappings: list, dg: tp.DependencyGraph, dep) -> None:
        super().__init__(mappings)
        self.dg, self.dep = dg, dep

    def __iter__(self):
        yield from super().__iter__()
        yield self._bound

    def _bound(self, idxs):
        search = getattr(self.dg, "lw_search", None)
        if search is not None:
            search["steps"] += 1
            search["reached"].add(self.dep.target.module)
            if search["steps"] > _SEARCH_STEPS:
                return []  # ends the search; the caller reports it stalled
        width = _target_width(self.dg, self.dep)
        if width is None or all(i.idx < width for i in idxs):
            return idxs
        self.dg.lw_overflow.append((self.dep.target, width))
        return [i for i in idxs if i.idx < width]


def _target_width(dg: tp.DependencyGraph, dep) -> int | None:
    """How many channels the dependency's target holds along the dimension the dependency prunes."""
    node = dep.target
    module = node.module
    try:
        if node.type == ops.OPTYPE.PARAMETER:
            return module.shape[node.pruning_dim]
        if node.type == ops.OPTYPE.SPLIT:
            return sum(module.split_sizes) if module.split_sizes else None
        if node.type == ops.OPTYPE.CONCAT:
            sizes = module.concat_sizes
            return sum(sizes) if sizes and None not in sizes else None
        if node.type == ops.OPTYPE.UNBIND:
            return module.offsets[-1] if getattr(module, "offsets", None) else None
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or node.type in _PASS_THROUGH or node.type == ops.OPTYPE.SLICE:
            return None
        if dg.is_out_channel_pruning_fn(dep.handler):
            return pruner.get_out_channels(module)
        return pruner.get_in_channels(module)
    except (AttributeError, TypeError, IndexError):
        return None


class _PieceMapping:
    """Index mapping between a split's input and one of its pieces, read from the live piece sizes.

    torch-pruning maps a split's i-th consumer to its i-th piece and caches the offsets; a
    piece consumed by two layers (CSPNet's `xs, xb = x.split(...)`, `xb` feeding a conv and a
    residual sum) shifts every later piece. Here each consumer maps to the piece its autograd
    edge names, at the piece's current offset (sizes change as groups grow and shrink).
    """

    def __init__(self, op: nn.Module, piece: int, reverse: bool) -> None:
        self.op, self.piece, self.reverse = op, piece, reverse

    def __call__(self, idxs):
        start = sum(self.op.split_sizes[: self.piece])
        size = self.op.split_sizes[self.piece]
        if self.reverse:
            # Bounded both ways: an index past the piece (reached through ops that mix channels
            # with other dimensions) must not walk on around a cycle of the graph.
            return [_HybridIndex(idx=i.idx + start, root_idx=i.root_idx) for i in idxs if i.idx < size]
        return [_HybridIndex(idx=i.idx - start, root_idx=i.root_idx) for i in idxs if start <= i.idx < start + size]


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


def _map_splits(dg: tp.DependencyGraph) -> list[tp.dependency.Node]:
    """Map every channel split's consumers to their pieces; return the splits mapped.

    A layer called at two places (CoaT's shared conv position encoding) is one graph node with
    one call's autograd edges: its piece is read off another split of the same sizes feeding it.
    A split left unresolved keeps torch-pruning's mapping, and so does every split that shares
    a consumer with it, so one consumer never sees two mappings.
    """
    found = {}
    for node in dg.module2node.values():
        if node.type == ops.OPTYPE.SPLIT:
            pieces = _split_pieces(node)
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
    mapped = []
    for node, (sizes, equal, pieces) in resolved.items():
        if blocked.intersection(node.outputs):
            continue
        op = node.module
        op.split_sizes = sizes
        op.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        op.equal_pieces = equal
        node.enable_index_mapping = False  # keeps torch-pruning from re-deriving its own mapping
        for out, piece in zip(node.outputs, pieces, strict=True):
            for dep in node.dependencies:
                if dep.target is out:
                    dep.index_mapping[0] = _PieceMapping(op, piece, reverse=False)
            for dep in out.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _PieceMapping(op, piece, reverse=True)
        mapped.append(node)
    return mapped


class _ConcatMapping:
    """Index mapping between one input of a concatenation and its output, from the live input sizes."""

    def __init__(self, op: nn.Module, position: int, reverse: bool) -> None:
        self.op, self.position, self.reverse = op, position, reverse

    def __call__(self, idxs):
        start = sum(self.op.concat_sizes[: self.position])
        size = self.op.concat_sizes[self.position]
        if not self.reverse:
            return [_HybridIndex(idx=i.idx + start, root_idx=i.root_idx) for i in idxs if i.idx < size]
        return [_HybridIndex(idx=i.idx - start, root_idx=i.root_idx) for i in idxs if start <= i.idx < start + size]


class _Chain:
    def __init__(self, *mappings) -> None:
        self.mappings = mappings

    def __call__(self, idxs):
        for mapping in self.mappings:
            idxs = mapping(idxs)
        return idxs


def _map_concat_inputs(dg: tp.DependencyGraph, node: tp.dependency.Node) -> None:
    """Size and map a concatenation fed by a split's piece (Res2Net's last scale, CSPNet's `xs`).

    torch-pruning sized a piece by the consumer's position among the split's consumers (a wrong
    size drops the concatenation's mapping altogether), and maps indices from a concatenation
    back into a split in the wrong order (split offset before concatenation offset). Here the
    concatenation's input sizes come from the split's pieces, and every input maps through live
    offsets, a piece after its concatenation slot.
    """
    sources, sizes = [], []
    for fn, nr in node.grad_fn.next_functions:
        source = next((n for n in node.inputs if n.grad_fn is fn), None)
        if source is None or source in sources:
            return
        sources.append(source)
        if source.type == ops.OPTYPE.SPLIT and getattr(source.module, "equal_pieces", None) is not None:
            sizes.append(source.module.split_sizes[nr])
        else:
            sizes.append(shape_infer.infer_out_channels_recursively(dg, source, [0]))
    if None in sizes or len(sources) != len(node.inputs):
        return
    op = node.module
    op.concat_sizes = sizes
    op.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    node.enable_index_mapping = False  # keeps torch-pruning from re-deriving its own mapping
    for position, source in enumerate(sources):
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[1] = _ConcatMapping(op, position, reverse=False)
        for dep in node.dependencies:
            if dep.target is not source:
                continue
            back = _ConcatMapping(op, position, reverse=True)
            if isinstance(dep.index_mapping[0], _PieceMapping):
                dep.index_mapping[0], dep.index_mapping[1] = _Chain(back, dep.index_mapping[0]), None
            else:
                dep.index_mapping[1] = back


# Autograd ops that only move elements (or pad them): a chain of them maps channels one to one.
_REARRANGE = {
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "ConstantPadNdBackward0",
    "CloneBackward0",
}
_CHANNELS_FIRST = (ops.OPTYPE.CONV, ops.OPTYPE.DEPTHWISE_CONV, ops.OPTYPE.BN, ops.OPTYPE.GN, ops.OPTYPE.IN)
_CHANNELS_LAST = (ops.OPTYPE.LINEAR, ops.OPTYPE.LN)


class _RearrangeMapping:
    """Channel c of a rearrangement's input lands at `repeat` output channels: c*repeat + j ('block',
    NCHW flattening) or j*C + c ('cyclic', channels-last patch merging), C read live from `width`."""

    def __init__(self, layout: str, repeat: int, width, reverse: bool) -> None:
        self.layout, self.repeat, self.width, self.reverse = layout, repeat, width, reverse

    def __call__(self, idxs):
        r = self.repeat
        if self.layout == "block":
            if self.reverse:
                return list({_HybridIndex(idx=i.idx // r, root_idx=i.root_idx): None for i in idxs})
            return [_HybridIndex(idx=i.idx * r + j, root_idx=i.root_idx) for i in idxs for j in range(r)]
        channels = self.width() // r
        if self.reverse:
            return list({_HybridIndex(idx=i.idx % channels, root_idx=i.root_idx): None for i in idxs})
        return [_HybridIndex(idx=j * channels + i.idx, root_idx=i.root_idx) for j in range(r) for i in idxs]


def _is_rearrange(node: tp.dependency.Node) -> bool:
    fn = node.grad_fn
    return (
        node.type in (ops.OPTYPE.RESHAPE, ops.OPTYPE.ELEMENTWISE)
        and fn is not None
        and fn.name() in _REARRANGE
        and len(node.inputs) == 1
        and len(node.outputs) == 1
    )


def _channel_dim(node: tp.dependency.Node, upstream: bool) -> int | None:
    """Where a tensor keeps its channels, judged by the nearest layers that write (or read) it.

    Searches through element-wise ops (residual sums, activations), not through reshapes;
    None when no layer is found or layers disagree.
    """
    stack, seen, dims = [node], set(), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type in _CHANNELS_FIRST:
            dims.add(1)
        elif n.type in _CHANNELS_LAST:
            dims.add(-1)
        elif n.type == ops.OPTYPE.ELEMENTWISE and not _is_rearrange(n):
            stack.extend(n.inputs if upstream else n.outputs)
    return dims.pop() if len(dims) == 1 else None


def _edge(fn, target) -> int | None:
    return next((i for i, (f, _) in enumerate(fn.next_functions) if f is target), None)


def _map_rearrangement(dg: tp.DependencyGraph, node: tp.dependency.Node, seen: set) -> None:
    """Index-map a chain of reshapes and permutes that changes the channel count, by probing autograd.

    torch-pruning maps a flatten of an NCHW tensor only; a channels-last patch merge (Swin's
    `x.reshape(B, H/2, 2, W/2, 2, C).permute(...).flatten(3)`, C -> 4C with channel c at
    j*C + c) passes unmapped, as if the first C of the 4C channels were the group's. The chain
    only moves elements, so sending each output element's channel index backwards through it
    shows where every input channel goes; a block or cyclic layout becomes an index mapping.
    """
    if not _is_rearrange(node):
        return
    first = last = node
    while _is_rearrange(first.inputs[0]):
        first = first.inputs[0]
    while _is_rearrange(last.outputs[0]):
        last = last.outputs[0]
    chain = [first]
    while chain[-1] is not last:
        chain.append(chain[-1].outputs[0])
    seen.update(chain)
    producer, consumer = first.inputs[0], last.outputs[0]
    if any(m is not None for n in chain for d in n.dependencies for m in d.index_mapping):
        return  # torch-pruning mapped it
    in_dim, out_dim = _channel_dim(producer, upstream=True), _channel_dim(consumer, upstream=False)
    if in_dim is None or out_dim is None or producer.grad_fn is None:
        return
    nr = first.grad_fn.next_functions[_edge(first.grad_fn, producer.grad_fn) or 0][1]
    if _edge(first.grad_fn, producer.grad_fn) is None:
        return
    in_meta, out_meta = producer.grad_fn._input_metadata[nr], last.grad_fn._input_metadata[0]
    in_shape, out_shape = list(in_meta.shape), list(out_meta.shape)
    if len(in_shape) < 2 or len(out_shape) < 2:
        return
    c_in, c_out = in_shape[in_dim], out_shape[out_dim]
    if c_in == c_out or c_out % c_in:
        return
    # Probe: each output element holds its channel index; pull it back through the chain.
    index = torch.arange(c_out, dtype=torch.float64)
    view = [1] * len(out_shape)
    view[out_dim] = c_out
    grad = index.view(view).expand(out_shape).to(out_meta.dtype).contiguous()
    with torch.no_grad():
        for n, prev in zip(reversed(chain), [*reversed(chain[:-1]), producer], strict=True):
            i = _edge(n.grad_fn, prev.grad_fn)
            if i is None:
                return
            grad = n.grad_fn(grad)
            grad = grad[i] if isinstance(grad, tuple) else grad
    if grad is None or list(grad.shape) != in_shape:
        return
    grad = grad.movedim(in_dim, 0).reshape(c_in, -1)
    lands = [sorted({int(v) for v in row.tolist()}) for row in grad]
    r = c_out // c_in
    if all(row == list(range(c * r, c * r + r)) for c, row in enumerate(lands)):
        layout = "block"
    elif all(row == [j * c_in + c for j in range(r)] for c, row in enumerate(lands)):
        layout = "cyclic"
    else:
        return
    module = consumer.module
    pruner = dg.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
    if pruner is None or pruner.get_in_channels(module) != c_out:
        return
    width = partial(pruner.get_in_channels, module)
    for dep in last.dependencies:
        if dep.target is consumer:
            dep.index_mapping[0] = _RearrangeMapping(layout, r, width, reverse=False)
    for dep in consumer.dependencies:
        if dep.target is last:
            dep.index_mapping[0] = _RearrangeMapping(layout, r, width, reverse=True)


def _split_root(node: tp.dependency.Node) -> nn.Module | None:
    """The conv or linear layer whose output channels reach `node` one to one (through norms, activations)."""
    while len(node.inputs) == 1:
        node = node.inputs[0]
        if node.type in (ops.OPTYPE.CONV, ops.OPTYPE.LINEAR):
            return node.module
        if node.type not in (ops.OPTYPE.BN, ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.LN, ops.OPTYPE.GN, ops.OPTYPE.IN):
            return None
    return None


class _DependencyGraph(tp.DependencyGraph):
    """torch-pruning's graph, with concatenation sizes it cannot infer read off autograd.

    torch-pruning sizes each input of a concatenation by walking the graph; through a slice of
    a tensor (DPN's `x[:, :self.num_1x1_c]`) it finds none and fails summing the sizes. Autograd
    records the shape of every tensor it passed, so those sizes are taken from there.
    """

    def _build_dependency(self, module2node):
        super()._build_dependency(module2node)
        for node in module2node.values():
            if node.type != ops.OPTYPE.CONCAT or node.module.concat_sizes is not None or node.grad_fn is None:
                continue
            try:
                if None not in [shape_infer.infer_channels_between(self, n, node) for n in node.inputs]:
                    continue  # torch-pruning's own inference works
            except (TypeError, IndexError):
                continue  # it needs split sizes, set later: leave the concatenation to torch-pruning
            dim = getattr(node.grad_fn, "_saved_dim", 1)
            sizes = []
            for fn, nr in node.grad_fn.next_functions:
                source = next((n for n in node.inputs if n.grad_fn is fn), None)
                if source is None or fn is None:
                    break
                shape = fn._input_metadata[nr].shape
                if not -len(shape) <= dim < len(shape):
                    break
                sizes.append(int(shape[dim]))
            if len(sizes) == len(node.inputs) == len(node.grad_fn.next_functions):
                node.module.concat_sizes = sizes


def _per_channel_state(module: nn.Module) -> bool:
    return any(t.dim() > 0 for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)])


def _record_leaf(records: list, module: nn.Module, inputs: object, output: object) -> None:
    if isinstance(output, torch.Tensor) and output.grad_fn is not None and output.dim() in (3, 4):
        records.append((module, output.grad_fn, output.shape[1] if output.dim() == 4 else output.shape[-1]))


def _record_output(records: list, module: nn.Module, inputs: object, output: object) -> None:
    if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
        records.append((module, output.shape[1] if output.dim() == 4 else output.shape[-1]))


def _named_neighbour(node: tp.dependency.Node, names: dict, direction: str) -> str | None:
    """The nearest named layer from `node` (itself included), walking `direction` ('inputs' or
    'outputs') through unnamed ops such as activations."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if names.get(n.module):
            return names[n.module]
        stack.extend(getattr(n, direction))
    return None


def _concat_width(dg: tp.DependencyGraph, node: tp.dependency.Node) -> int | None:
    """A concatenation's width: its input sizes as torch-pruning keeps them, else inferred."""
    if node.module.concat_sizes is not None and None not in node.module.concat_sizes:
        return sum(node.module.concat_sizes)
    return shape_infer.infer_out_channels_recursively(dg, node, [0])


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _layout(positions: list[int], root_idxs: list[int], size: int) -> tuple[int, str | None]:
    """How many positions each root channel occupies; a reason when the block cannot grow in place.

    Two layouts grow in place: 'block' (each channel's positions adjacent, as after a flatten)
    and 'cyclic' (the group repeated back to back, as when one tensor is concatenated with a
    depthwise copy of itself).
    """
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


def growth_slots(positions: list[int], root_idxs: list[int], size: int, n: int) -> list[tuple[int, int]]:
    """(insert-before position, count) pairs that add `n` channels to a member, last slot first."""
    repeat = len(positions) // size
    start = min(positions)
    order = sorted(range(len(positions)), key=positions.__getitem__)
    if repeat == 1 or len({root_idxs[i] for i in order[:repeat]}) == 1:
        return [(start + len(positions), n * repeat)]
    return [(start + (k + 1) * size, n) for k in reversed(range(repeat))]


def _is_classifier(dg: tp.DependencyGraph, node: tp.dependency.Node) -> bool:
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
        if n.type in _PASS_THROUGH:
            stack.extend(n.outputs)
    return False
