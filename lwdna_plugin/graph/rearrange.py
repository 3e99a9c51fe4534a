"""Reshapes and permutes that change the channel count, mapped by probing autograd.

torch-pruning maps a flatten of an NCHW tensor only; a channels-last patch merge (Swin's
`x.reshape(B, H/2, 2, W/2, 2, C).permute(...).flatten(3)`, C -> 4C with channel c at j*C + c)
passes unmapped, as if the first C of the 4C channels were the group's. Such a chain only moves
elements, so sending each output element's channel index backwards through it shows where every
input channel goes; a block or cyclic layout becomes an index mapping.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .index_mapping import RearrangeMapping, wire

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


def _probe(
    chain: list[tp.dependency.Node], producer: tp.dependency.Node, dims: tuple[int, int]
) -> tuple[list[list[int]], int] | None:
    """For each input channel of `chain`, the output channels it lands at, and the output's channel
    count; None if the chain keeps the count or autograd cannot say."""
    first, last = chain[0], chain[-1]
    edge = _edge(first.grad_fn, producer.grad_fn)
    if edge is None:
        return None
    nr = first.grad_fn.next_functions[edge][1]
    in_meta, out_meta = producer.grad_fn._input_metadata[nr], last.grad_fn._input_metadata[0]
    in_shape, out_shape = list(in_meta.shape), list(out_meta.shape)
    if len(in_shape) < 2 or len(out_shape) < 2:
        return None
    in_dim, out_dim = dims
    c_in, c_out = in_shape[in_dim], out_shape[out_dim]
    if c_in == c_out or c_out % c_in:
        return None
    # Each output element holds its channel index; pull it back through the chain.
    view = [1] * len(out_shape)
    view[out_dim] = c_out
    grad = torch.arange(c_out, dtype=torch.float64).view(view).expand(out_shape).to(out_meta.dtype).contiguous()
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
    """'block' when channel c lands at c*r ... c*r + r-1, 'cyclic' at c, C + c, ...; else None."""
    c_in = len(lands)
    r = c_out // c_in
    if all(row == list(range(c * r, c * r + r)) for c, row in enumerate(lands)):
        return "block"
    if all(row == [j * c_in + c for j in range(r)] for c, row in enumerate(lands)):
        return "cyclic"
    return None


def map_rearrangement(dg: tp.DependencyGraph, node: tp.dependency.Node, seen: set) -> None:
    """Index-map the chain of reshapes and permutes through `node` if it changes the channel count.

    Adds the chain to `seen`, mapped or not.
    """
    if not _is_rearrange(node):
        return
    chain = _chain(node)
    seen.update(chain)
    last = chain[-1]
    producer, consumer = chain[0].inputs[0], last.outputs[0]
    if any(m is not None for n in chain for d in n.dependencies for m in d.index_mapping):
        return  # torch-pruning mapped it
    in_dim, out_dim = _channel_dim(producer, upstream=True), _channel_dim(consumer, upstream=False)
    if in_dim is None or out_dim is None or producer.grad_fn is None:
        return
    probed = _probe(chain, producer, (in_dim, out_dim))
    layout = None if probed is None else _layout(*probed)
    if layout is None:
        return
    lands, c_out = probed
    module = consumer.module
    pruner = dg.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
    if pruner is None or pruner.get_in_channels(module) != c_out:
        return
    width = partial(pruner.get_in_channels, module)
    r = c_out // len(lands)
    wire(last, consumer, 0, RearrangeMapping(layout, r, width, False), RearrangeMapping(layout, r, width, True))
