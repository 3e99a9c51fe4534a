"""Integer attributes of a block that cache a width the graph changes, found once and kept in step.

A block may keep in Python the width of a concatenation or split inside it (GhostNet's
`out[:, :self.out_chs]`, CSPNet's `x.split(self.expand_chs // 2)`, Res2Net's
`torch.split(x, self.width)`) or its attention heads' dimension (timm's `head_dim`, `attn_dim` or `dim_out`,
`scale`). After a resize these must hold the new widths, or the next forward pass breaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.dependency import shape_infer

from .heads import head_count
from .internals import module_name
from .keys import GroupKey
from .splits import MappedSplits

# What attention blocks call the width of all their heads (heads x head_dim), read in their
# forward (`reshape(B, N, self.attn_dim)`; Hiera's and MViTv2's `dim_out`).
_ALL_HEADS_WIDTHS = ("attn_dim", "dim_out")


class CachedWidth(NamedTuple):
    """`module.attr` holds the concatenation `node`'s 'width', or the split `node`'s 'total' or equal 'piece'."""

    module: nn.Module
    attr: str
    node: tp.dependency.Node
    kind: str


def _named_neighbour(dg: tp.DependencyGraph, node: tp.dependency.Node, direction: str) -> str | None:
    """The nearest named layer from `node` (itself included), walking `direction` ('inputs' or
    'outputs') through unnamed ops such as activations."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        name = module_name(dg, n.module)
        if name:
            return name
        stack.extend(getattr(n, direction))
    return None


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _concat_width(dg: tp.DependencyGraph, node: tp.dependency.Node) -> int | None:
    """A concatenation's width: its input sizes as torch-pruning keeps them, else inferred."""
    if node.module.concat_sizes is not None and None not in node.module.concat_sizes:
        return sum(node.module.concat_sizes)
    return shape_infer.infer_out_channels_recursively(dg, node, [0])


def find_cached_widths(
    dg: tp.DependencyGraph, model: nn.Module, block_widths: list[tuple[nn.Module, int]], splits: MappedSplits
) -> list[CachedWidth]:
    """Integer attributes of a block that hold the width of a concatenation or split inside it.

    A concatenation is found by where its inputs come from, every input produced inside the
    block, and its attribute by the block's output width (`block_widths`); a split by where its
    pieces go, the block that holds every consumer, and its attribute by the pieces' sizes.
    """

    concat_owner: dict[str, tp.dependency.Node] = {}
    found = []
    for node in dg.module2node.values():
        if node.type == ops.OPTYPE.CONCAT:
            producers = [_named_neighbour(dg, n, "inputs") for n in node.inputs]
            if all(producers):
                concat_owner.setdefault(_common_parent(producers), node)
        elif node.type == ops.OPTYPE.SPLIT and splits.get(node.module, False):
            consumers = [_named_neighbour(dg, n, "outputs") for n in node.outputs]
            if not all(consumers):
                continue
            owner = model.get_submodule(_common_parent(consumers))
            sizes = node.module.split_sizes
            for attr, value in vars(owner).items():
                if type(value) is int and value > 1 and value in (sizes[0], sum(sizes)):
                    found.append(CachedWidth(owner, attr, node, "piece" if value == sizes[0] else "total"))
    for module, channels in block_widths:
        node = concat_owner.get(module_name(dg, module, ""))
        if node is None or _concat_width(dg, node) != channels:
            continue
        for attr, value in vars(module).items():
            # An attribute that sizes a split is the split's: the concatenation may differ.
            claimed = any(c.module is module and c.attr == attr for c in found)
            if type(value) is int and value == channels and value > 1 and not claimed:
                found.append(CachedWidth(module, attr, node, "width"))
    return found


def sync_cached_widths(dg: tp.DependencyGraph, cached: list[CachedWidth]) -> list[str]:
    """Set each cached width attribute to its concatenation's or split's current width; name those changed."""
    changed = []
    for module, attr, node, kind in cached:
        if kind == "width":
            width = _concat_width(dg, node)
        else:
            width = node.module.split_sizes[0] if kind == "piece" else sum(node.module.split_sizes)
        if width is not None and width != getattr(module, attr):
            setattr(module, attr, width)
            changed.append(f"{module_name(dg, module, type(module).__name__)}.{attr}")
    return changed


def head_owner(model: nn.Module, key: str) -> nn.Module | None:
    """The attention block whose heads a group rooted at an output projection's input spans.

    timm's attention blocks keep `num_heads`, and `head_dim` (often `attn_dim` and `scale`)
    or read each head's dimension off the tensor's shape (Swin's `reshape(B, N, 3, heads, -1)`);
    the group keeps the head count and resizes every head's dimension.
    """
    parts = GroupKey.parse(key)
    if not parts.at_input:
        return None
    owner = model.get_submodule(parts.layer.rpartition(".")[0])
    dim = getattr(owner, "head_dim", None)
    if head_count(owner) is not None and (dim is None or type(dim) is int):
        return owner
    return None


def internal_heads(
    dg: tp.DependencyGraph, model: nn.Module, tp_group: tp.dependency.Group
) -> tuple[nn.Module, nn.Module] | None:
    """The attention block whose heads a group rooted at a layer's outputs spans, and its output
    projection: a layer of the group reading its channels as input, in a block that declares
    its heads, fed from a layer of the same block that writes them (TNT's `v` -> `proj`).

    The block's residual stream also holds one of its layers' inputs (`qkv`'s) and another's
    outputs (`proj`'s), but `proj` writes them after `qkv` read them, and no layer of the block
    feeds `qkv`.
    """
    writers = {item.dep.target.module for item in tp_group if dg.is_out_channel_pruning_fn(item.dep.handler)}
    for item in tp_group:
        module = item.dep.target.module
        if dg.is_out_channel_pruning_fn(item.dep.handler) or not isinstance(module, ops.TORCH_LINEAR):
            continue
        name = module_name(dg, module)
        owner = head_owner(model, f"{name}:in") if name else None
        if owner is None:
            continue
        inside = set(owner.modules())
        if any(layer in writers and layer in inside for layer in _layers_before(item.dep.target)):
            return owner, module
    return None


def _layers_before(node: tp.dependency.Node, limit: int = 64) -> list[nn.Module]:
    """The nearest conv and linear layers upstream of `node`, through any ops between."""
    found, stack, seen = [], list(node.inputs), set()
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if isinstance(n.module, (ops.TORCH_CONV, ops.TORCH_LINEAR)):
            found.append(n.module)
        else:
            stack.extend(n.inputs)
    return found


def sync_head_dims(dg: tp.DependencyGraph, heads: Iterable[tuple[nn.Module, nn.Module]]) -> list[str]:
    """Set each attention block's head dimension (and its width of all heads, `scale`) to its
    projection's input width; `heads` pairs each block with its output projection."""
    changed = []
    for owner, projection in heads:
        if getattr(owner, "head_dim", None) is None:
            continue  # no head dimension kept, or one read off the tensor's shape
        width = dg.get_pruner_of_module(projection).get_in_channels(projection)
        count = head_count(owner)
        if width == count * owner.head_dim:
            continue
        old_dim, owner.head_dim = owner.head_dim, width // count
        for attr in _ALL_HEADS_WIDTHS:
            if getattr(owner, attr, None) == old_dim * count:
                setattr(owner, attr, width)
        if isinstance(getattr(owner, "scale", None), float):
            owner.scale = owner.head_dim**-0.5
        changed.append(f"{module_name(dg, owner)}.head_dim")
    return changed
