"""One primitive that sets a channel group to any width: torch-pruning removes, `grow` inserts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .arguments import is_whole
from .graph import GroupGraph, growth_slots, slices_channels
from .graph.internals import drop_items
from .graph.split_bias import bias_pieces, split_bias_blocks
from .grow import GROWERS, ParameterGrower, insert_along, like

# Tensors the layer functions of torch-pruning and `grow` already resize.
_LAYER_TENSORS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
# Norms whose torch-pruning function prunes a bias whenever the norm is affine.
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def resize(
    graph: GroupGraph,
    widths: Mapping[str, int],
    keep: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Set every group named in `widths` to that many channels, in place on `graph.model`.

    Shrinking removes the channels not listed in `keep[key]` (default: the trailing ones) with
    torch-pruning; growing inserts zero channels after each member's block of the group, so the
    model computes what it did, unless a norm takes statistics over the channels (LayerNorm,
    GroupNorm: the new zeros count). A group read by a grouped conv keeps (and by default drops,
    or grows) the same number of channels in each conv group.
    """
    _check_widths(graph, widths)
    keep = keep or {}
    for key, target in widths.items():
        group, tp_group = graph.refresh(key)
        if target == group.size:
            continue
        if group.fixed:
            raise ValueError(f"channel group {key!r} cannot change width ({group.fixed}); leave it out of `widths`")
        if target < 1 or target % group.divisor:
            raise ValueError(
                f"channel group {key!r}: width {target} must be a positive multiple of {group.divisor} "
                "(its grouped layers' group count)"
            )
        if target < group.size:
            # Without a keep list: the leading channels (of each block), as all scores tie.
            kept = sorted(keep[key]) if key in keep else top_channels(torch.zeros(group.size), target, group.balance)
            if len(kept) != target:
                raise ValueError(f"channel group {key!r}: keep lists {len(kept)} channels, width is {target}")
            _prune(graph, key, tp_group, set(range(group.size)) - set(kept))
        else:
            n = target - group.size
            extras = _extra_tensors(graph, tp_group)
            _grow(graph, tp_group, group.size, n, group.balance)
            for module, attr, positions, roots in extras:
                for at, count in growth_slots(positions, roots, group.size, n, group.balance):
                    _replace(module, attr, count, lambda t, at=at, count=count: insert_along(t, 0, at, count))
    graph.sync_cached_widths()


@contextmanager
def _placeholder_biases(tp_group) -> Iterator[None]:
    """torch-pruning prunes an affine norm's bias without checking that it has one; timm's
    MetaFormer norms (`GroupNorm1NoBias`) have none: they get a zero one while it prunes."""
    layers = {id(item.dep.target.module): item.dep.target.module for item in tp_group}.values()
    bare = [m for m in layers if isinstance(m, _NORMS) and getattr(m, "affine", False) and m.bias is None]
    for norm in bare:
        norm.bias = nn.Parameter(torch.zeros_like(norm.weight))
    try:
        yield
    finally:
        for norm in bare:
            norm.bias = None


def top_channels(score: torch.Tensor, k: int, blocks: int = 1) -> list[int]:
    """Indices of the k best channels; ties go to the lower index so plans are reproducible.

    With `blocks` > 1 (a grouped conv reads the channels in that many contiguous blocks) each
    block keeps its k / blocks best, so every conv group keeps the same number of channels.
    """
    n = len(score)
    if blocks > 1 and n % blocks == 0 and k % blocks == 0:
        size = n // blocks
        picks = (top_channels(score[b * size : (b + 1) * size], k // blocks) for b in range(blocks))
        return sorted(b * size + j for b, block in enumerate(picks) for j in block)
    values = score.tolist()
    order = sorted(range(n), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def _grouped_conv_input(dg: tp.DependencyGraph, item) -> bool:
    """The input channels of a grouped (not depthwise) conv: each conv group must lose (or gain) as
    many, which neither torch-pruning's removal nor an insertion at one position keeps."""
    node = item.dep.target
    return (
        node.type == ops.OPTYPE.CONV and node.module.groups > 1 and not dg.is_out_channel_pruning_fn(item.dep.handler)
    )


def _prune_grouped_conv_input(layer: nn.Conv2d, idxs) -> None:
    """Remove input channels of a grouped conv, the same number from every group.

    torch-pruning keeps the first `kept / groups` of the kept channel indices as positions
    inside a group, which is only right when those indices happen to be small (and fails
    with an out-of-bounds index otherwise, as in FastViT's grouped final conv).
    """
    per = layer.in_channels // layer.groups
    gone = set(idxs)
    keep = [[j for j in range(per) if g * per + j not in gone] for g in range(layer.groups)]
    if len({len(k) for k in keep}) != 1:
        raise ValueError(f"{layer}: channels to remove are spread unevenly over its {layer.groups} groups")
    out_per = layer.out_channels // layer.groups
    weight = layer.weight.data
    new = torch.cat([weight[g * out_per : (g + 1) * out_per][:, k] for g, k in enumerate(keep)])
    layer.weight = like(layer.weight, new)
    layer.in_channels -= len(gone)


def _check_widths(graph: GroupGraph, widths: Mapping[str, int]) -> None:
    """Refuse arguments `resize` cannot apply, and tied groups given different widths."""
    if not isinstance(graph, GroupGraph):
        raise TypeError(
            f"resize(graph, widths): graph must be a GroupGraph(model, example_inputs), got {type(graph).__name__}"
        )
    if not isinstance(widths, Mapping):
        raise TypeError(
            f"resize(graph, widths): widths must map group keys to channel counts, got {type(widths).__name__}"
        )
    for key, target in widths.items():
        if not is_whole(target, least=None):
            raise ValueError(f"channel group {key!r}: width {target!r} must be a whole number of channels")
    ties: dict[str, tuple[str, int]] = {}
    for key, target in widths.items():
        tie = graph.group(key).tie
        if tie is not None and ties.setdefault(tie, (key, target))[1] != target:
            other = ties[tie][0]
            raise ValueError(
                f"channel groups {other!r} and {key!r} are tied to one width (equal pieces of one split); "
                f"give them the same width, not {ties[tie][1]} and {target}"
            )


def _prune(graph: GroupGraph, key: str, tp_group: tp.dependency.Group, removed: set[int]) -> None:
    """Remove the `removed` channels of group `key` with torch-pruning, and from the tensors it
    does not know (see `_extra_tensors`)."""
    extras = _extra_tensors(graph, tp_group)
    tp_removal = graph.tp_group(key, sorted(removed))
    # A transposed conv's inputs are whole rows of its weight, which torch-pruning removes right.
    grouped = [
        item for item in tp_removal if _grouped_conv_input(graph.dg, item) and not item.dep.target.module.transposed
    ]
    drop_items(tp_removal, grouped)
    with _placeholder_biases(tp_removal):
        tp_removal.prune(record_history=False)
    for item in grouped:
        _prune_grouped_conv_input(item.dep.target.module, item.idxs)
    for module, attr, positions, roots in extras:
        gone = {p for p, r in zip(positions, roots, strict=True) if r in removed}
        _replace(module, attr, -len(gone), lambda t, gone=gone: t[[i for i in range(t.shape[0]) if i not in gone]])


def _extra_tensors(graph: GroupGraph, tp_group) -> list[tuple[nn.Module, str, list[int], list[int]]]:
    """Per-channel tensors (and width attributes) of a group's layers that no layer function knows.

    A layer subclass may keep more per-channel state than its base class (timm's
    ScaledStdConv2d has a `gain` per output channel); a layer torch-pruning does not know at
    all (timm's BlurPool2d: a `filt` buffer and a `channels` attribute) sits in the group as
    an element-wise op; an attention block may keep its qkv layer's biases (`split_bias`). All
    are resized with the group.
    """
    found = []
    split_biases = split_bias_blocks(graph.model)
    for item in tp_group:
        node, module = item.dep.target, item.dep.target.module
        if node in graph.opaque:
            module = graph.opaque[node]
            width = max(t.shape[0] for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)])
            if width <= max(item.idxs):
                continue  # a scalar affine (HGNetV2's LearnableAffineBlock) has no per-channel state
        elif isinstance(module, nn.Module) and graph.dg.is_out_channel_pruning_fn(item.dep.handler):
            width = graph.dg.get_out_channels(module)
            if module in split_biases:
                found += bias_pieces(split_biases[module], list(item.idxs), list(item.root_idxs))
        else:
            continue
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None or attr in _LAYER_TENSORS or tensor.dim() == 0 or tensor.shape[0] != width:
                continue
            if tensor in graph.dg.module2node:  # a bare parameter: the graph resizes it itself
                continue
            found.append((module, attr, list(item.idxs), list(item.root_idxs)))
        if node in graph.opaque:
            found += [
                (module, attr, list(item.idxs), list(item.root_idxs))
                for attr, value in vars(module).items()
                if _width_attr(value, width)
            ]
    return found


def _width_attr(value: object, width: int) -> bool:
    """An int equal to the width, or a shape tuple holding it once (timm's Scale keeps `(dim, 1, 1)`)."""
    if type(value) is int:
        return value == width
    return isinstance(value, tuple) and all(type(v) is int for v in value) and value.count(width) == 1


def _replace(module: nn.Module, attr: str, delta: int, change) -> None:
    """Resize a per-channel tensor with `change`, or move a width attribute by `delta`."""
    tensor = getattr(module, attr)
    if type(tensor) is int:
        setattr(module, attr, tensor + delta)
        return
    if isinstance(tensor, tuple):
        width = max(tensor)
        setattr(module, attr, tuple(v + delta if v == width else v for v in tensor))
        return
    setattr(module, attr, like(tensor, change(tensor.data)))


def _grow(graph: GroupGraph, tp_group, size: int, n: int, blocks: int) -> None:
    dg = graph.dg
    for item in tp_group:
        node, handler = item.dep.target, item.dep.handler
        if node.type == ops.OPTYPE.SLICE and not slices_channels(node):
            continue  # a slice of tokens: every channel passes
        grower = GROWERS[node.type]
        slots = growth_slots(list(item.idxs), list(item.root_idxs), size, n, blocks)
        if _grouped_conv_input(dg, item):
            _grow_grouped_conv_input(node.module, slots, n)
            continue
        for at, count in slots:
            if node.type == ops.OPTYPE.PARAMETER:
                _grow_parameter(graph, node, at, count)
            elif dg.is_out_channel_pruning_fn(handler):
                grower.grow_out_channels(node.module, at, count)
            else:
                grower.grow_in_channels(node.module, at, count)


def _grow_grouped_conv_input(layer: nn.Conv2d, slots: list[tuple[int, int]], n: int) -> None:
    """A grouped conv takes its new inputs where the group's other members put them. Where they
    would fall unevenly into its conv groups (a group that fills only part of the conv's input),
    each conv group appends its share instead: the shapes fit, the model's function is not kept."""
    grower = GROWERS[ops.OPTYPE.CONV]
    try:
        grower.grow_grouped_in_channels(layer, slots)
    except ValueError:
        grower.grow_in_channels(layer, 0, n)


def _grow_parameter(graph: GroupGraph, node, at: int, count: int) -> None:
    """Grow a bare parameter: a new parameter replaces it, as `Group.prune` does when it prunes one."""
    graph.replace_parameter(node, ParameterGrower(node.pruning_dim).grow_out_channels(node.module, at, count))
