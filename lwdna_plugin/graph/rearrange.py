"""Reshapes and permutes that change the channel count, mapped by probing autograd.

torch-pruning maps a flatten of an NCHW tensor only; a channels-last patch merge (Swin's
`x.reshape(B, H/2, 2, W/2, 2, C).permute(...).flatten(3)`, C -> 4C with channel c at j*C + c)
passes unmapped, as if the first C of the 4C channels were the group's. Such a chain only moves
elements, so sending each output element's channel index backwards through it shows where every
input channel goes; a block or cyclic layout becomes an index mapping.

The same probe checks the reshapes torch-pruning did map: it maps every channel-count change as
a flatten (block layout), but a view that splits channels into leading paths (timm's selective
kernel attention, `x.view(B, paths, C, H, W)`, channel c of a path at p*C + c) is cyclic.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .index_mapping import RearrangeMapping, ReorderMapping, wire

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


def _is_rearrange(node: tp.dependency.Node) -> bool:
    fn = node.grad_fn
    return (
        node.type in (ops.OPTYPE.RESHAPE, ops.OPTYPE.ELEMENTWISE)
        and fn is not None
        and fn.name() in _REARRANGE
        and len(node.inputs) == 1
        and len(node.outputs) == 1
    )


def _channel_dim(dg: tp.DependencyGraph, node: tp.dependency.Node, upstream: bool) -> tuple[int, int | None] | None:
    """Where a tensor keeps its channels and how many, judged by the nearest layers that write (or read) it.

    Searches through element-wise ops (residual sums, activations), not through reshapes;
    None when no layer is found or layers disagree on the dimension (the count is None when
    they disagree on it).
    """
    stack, seen, dims, counts = [node], set(), set(), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type in _CHANNELS_FIRST + _CHANNELS_LAST:
            dims.add(1 if n.type in _CHANNELS_FIRST else -1)
            pruner = dg.get_pruner_of_module(n.module)
            counts.add(
                None if pruner is None else (pruner.get_out_channels if upstream else pruner.get_in_channels)(n.module)
            )
        elif n.type == ops.OPTYPE.ELEMENTWISE and not _is_rearrange(n):
            stack.extend(n.inputs if upstream else n.outputs)
    if len(dims) != 1:
        return None
    return dims.pop(), counts.pop() if len(counts) == 1 else None


def _dim_of(shape: list[int], found: tuple[int, int | None]) -> int | None:
    """The dimension of `shape` that holds the channels the nearest layers hold.

    A layer's own dimension unless its size is not their channel count: a view that adds leading
    dimensions (B, C*P, H, W) -> (B, P, C, H, W) moves the channels, and then the one other
    dimension of that size holds them.
    """
    dim, count = found
    if count is None or shape[dim] == count:
        return dim
    matches = [d for d in range(1, len(shape)) if shape[d] == count]
    return matches[0] if len(matches) == 1 else None


def _edge(fn: object, target: object) -> int | None:
    return next((i for i, (f, _) in enumerate(fn.next_functions) if f is target), None)


def _chain(node: tp.dependency.Node) -> list[tp.dependency.Node]:
    """The whole run of rearranging ops through `node`, first to last."""
    first = last = node
    while _is_rearrange(first.inputs[0]):
        first = first.inputs[0]
    while _is_rearrange(last.outputs[0]):
        last = last.outputs[0]
    chain = [first]
    while chain[-1] is not last:
        chain.append(chain[-1].outputs[0])
    return chain


def _shapes(chain: list[tp.dependency.Node], producer: tp.dependency.Node) -> tuple[list[int], list[int]] | None:
    """The shapes of the chain's input and output, as autograd recorded them; None if it cannot say."""
    edge = _edge(chain[0].grad_fn, producer.grad_fn)
    if edge is None:
        return None
    nr = chain[0].grad_fn.next_functions[edge][1]
    in_shape = list(producer.grad_fn._input_metadata[nr].shape)
    out_shape = list(chain[-1].grad_fn._input_metadata[0].shape)
    if len(in_shape) < 2 or len(out_shape) < 2:
        return None
    return in_shape, out_shape


def _probe(
    chain: list[tp.dependency.Node],
    producer: tp.dependency.Node,
    shapes: tuple[list[int], list[int]],
    dims: tuple[int, int],
) -> tuple[list[list[int]], int] | None:
    """For each input channel of `chain`, the output channels it lands at, and the output's channel
    count; None if the chain keeps the count, neither count divides the other, or autograd cannot say."""
    (in_shape, out_shape), (in_dim, out_dim) = shapes, dims
    out_dtype = chain[-1].grad_fn._input_metadata[0].dtype
    c_in, c_out = in_shape[in_dim], out_shape[out_dim]
    if c_in == c_out or (c_out % c_in and c_in % c_out):
        return None
    # Each output element holds its channel index; pull it back through the chain.
    view = [1] * len(out_shape)
    view[out_dim] = c_out
    grad = torch.arange(c_out, dtype=torch.float64).view(view).expand(out_shape).to(out_dtype).contiguous()
    with torch.no_grad():
        for n, prev in zip(reversed(chain), [*reversed(chain[:-1]), producer], strict=True):
            i = _edge(n.grad_fn, prev.grad_fn)
            if i is None:
                return None
            grad = n.grad_fn(grad)
            grad = grad[i] if isinstance(grad, tuple) else grad
    if grad is None or list(grad.shape) != in_shape:
        return None
    grad = grad.movedim(in_dim, 0).reshape(c_in, -1)
    return [sorted({int(v) for v in row.tolist()}) for row in grad], c_out


def _layout(lands: list[list[int]], c_out: int) -> str | None:
    """How the C channels of the narrow side sit among the r*C of the wide side: 'block' when channel
    c is at c*r ... c*r + r-1, 'cyclic' at c, C + c, ...; else None. The chain's input is the narrow
    side when it widens (a flatten, a patch merge), the wide one when it narrows (paths split off)."""
    c_in = len(lands)
    if c_out > c_in:
        r = c_out // c_in
        block = all(row == list(range(c * r, c * r + r)) for c, row in enumerate(lands))
        cyclic = all(row == [j * c_in + c for j in range(r)] for c, row in enumerate(lands))
    else:
        r = c_in // c_out
        block = all(row == [c // r] for c, row in enumerate(lands))
        cyclic = all(row == [c % c_out] for c, row in enumerate(lands))
    return "block" if block else "cyclic" if cyclic else None


def map_rearrangement(dg: tp.DependencyGraph, node: tp.dependency.Node, seen: set) -> None:
    """Index-map the chain of reshapes and permutes through `node` if it changes the channel count.

    Adds the chain to `seen`, mapped or not. A chain torch-pruning mapped (always as a block
    layout) is remapped only where the probe finds it cyclic.
    """
    if not _is_rearrange(node):
        return
    chain = _chain(node)
    seen.update(chain)
    last = chain[-1]
    producer, consumer = chain[0].inputs[0], last.outputs[0]
    # torch-pruning maps a lone reshape that changes the channel count as a flatten (block layout).
    tp_mappings = [m for n in chain for d in n.dependencies for m in d.index_mapping if m is not None]
    if tp_mappings and len(chain) > 1:
        return
    wrote, read = _channel_dim(dg, producer, upstream=True), _channel_dim(dg, consumer, upstream=False)
    if wrote is None or read is None or producer.grad_fn is None:
        return
    shapes = _shapes(chain, producer)
    if shapes is None:
        return
    in_dim, out_dim = _dim_of(shapes[0], wrote), _dim_of(shapes[1], read)
    if in_dim is None or out_dim is None:
        return
    probed = _probe(chain, producer, shapes, (in_dim, out_dim))
    layout = None if probed is None else _layout(*probed)
    if layout is None or (tp_mappings and layout == "block"):
        return
    lands, c_out = probed
    widens = c_out > len(lands)
    r = max(c_out, len(lands)) // min(c_out, len(lands))
    # The mapping sits between the chain and the layer on its wide side, whose live width sizes it.
    wide, get = (consumer, "get_in_channels") if widens else (producer, "get_out_channels")
    module = wide.module
    pruner = dg.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
    if pruner is None or getattr(pruner, get)(module) != r * min(c_out, len(lands)):
        return
    width = partial(getattr(pruner, get), module)
    a, b = (last, consumer) if widens else (producer, chain[0])
    if tp_mappings:
        # torch-pruning re-installs its block mapping on the narrow side before every group
        # search; reordering the wide side's cyclic positions into block order composes with it.
        if any(getattr(m, "_stride", r) != r for m in tp_mappings):
            return
        wire(a, b, 0, ReorderMapping(r, width, to_block=not widens), ReorderMapping(r, width, to_block=widens))
    else:
        wire(a, b, 0, RearrangeMapping(layout, r, width, not widens), RearrangeMapping(layout, r, width, widens))
