"""Products of two activations (attention's `q @ k` and `attn @ v`), coupled where their operands keep channels.

torch-pruning takes a batched matrix product of two activations for an element-wise op: every
index of either operand and of the output is one channel. That merges the contracted head width
with the tokens, and through the views around the product a group search walks on without end
(EfficientFormerV2, iFormer, Twins: "search stalled"). A product C = A @ B of (b, n, k) by
(b, k, m) couples A's k with B's k (pruned together), passes A's rows to C's rows and B's
columns to C's columns. Where an operand is a run of views and permutes of one layer's output,
sending element indices back through that run shows which layer channel each element holds, and
so which dimension holds the channels; a product whose operands and output are all accounted
for loses its element-wise dependencies and its layers are coupled directly instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .internals import HybridIndex
from .rearrange import _CHANNELS_FIRST, _CHANNELS_LAST, _REARRANGE, _edge, _width

_PRODUCTS = {"BmmBackward0"}
# Ops a product's operand may pass through from its layer: element moves, and an expand that
# only adds batch dimensions of size one (a real broadcast repeats elements and is refused).
_MOVES = _REARRANGE | {"ExpandBackward0", "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1"}
# Ops that scale each element where it is (attention's `q * scale`), taken only with one input
# in the graph (the other factor a number or a constant).
_IN_PLACE = {"MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1"}
# Ops that hand on one piece of their input: the operand is that piece.
_PIECES = (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND)


class PairMapping:
    """Channels of one layer to the channels of another that meet them in a product."""

    def __init__(self, pairs: dict[int, list[int]]) -> None:
        self.pairs = pairs

    def __call__(self, idxs: Sequence[HybridIndex]) -> list[HybridIndex]:
        return [HybridIndex(idx=t, root_idx=i.root_idx) for i in idxs for t in self.pairs.get(i.idx, ())]


@dataclass(frozen=True)
class ProductCost:
    """The multiply-adds of one product and the layer dimensions they scale with: the contracted
    width (`q @ k`), or each width that passes to the output (`attn @ v`)."""

    flops: int
    scales_with: tuple[tuple[nn.Module, str], ...]  # (layer, "out" or "in")


@dataclass(frozen=True)
class _Side:
    """A layer at one end of a run of element moves into (or out of) a product, and for each
    element at the product's end the layer channel it holds."""

    layer: tp.dependency.Node
    channels: torch.Tensor
    out: bool  # the layer's output channels (an operand), else its input channels (the product's reader)


def _grad_fn_name(node: tp.dependency.Node) -> str:
    return node.grad_fn.name() if node.grad_fn is not None else ""


def _is_layer(node: tp.dependency.Node) -> bool:
    return node.type in _CHANNELS_FIRST + _CHANNELS_LAST


def _channel_dim(node: tp.dependency.Node) -> int:
    return 1 if node.type in _CHANNELS_FIRST else -1


def _pull_back(
    chain: list[tp.dependency.Node], producer: tp.dependency.Node, grad: torch.Tensor, reader: tp.dependency.Node
) -> torch.Tensor | None:
    """`grad` at the chain's last output (as `reader` reads it) sent back through the chain to
    `producer`'s output. A split or unbind gets zeros for its other pieces; an op that only
    scales its input in place passes `grad` on as it is."""
    with torch.no_grad():
        for n, prev in zip(reversed(chain), [*reversed(chain[:-1]), producer], strict=True):
            i = _edge(n.grad_fn, prev.grad_fn)
            if i is None:
                return None
            name = _grad_fn_name(n)
            if name in _IN_PLACE:
                reader = n
                continue
            if name == "ExpandBackward0" and list(n.grad_fn._saved_self_sym_sizes) != list(grad.shape):
                return None
            if n.type in _PIECES:
                piece = reader.grad_fn.next_functions[_edge(reader.grad_fn, n.grad_fn)][1]
                grads = [torch.zeros(list(m.shape), dtype=grad.dtype) for m in n.grad_fn._input_metadata]
                grads[piece] = grad
                grad = n.grad_fn(*grads)
            else:
                grad = n.grad_fn(grad)
            grad = grad[i] if isinstance(grad, tuple) else grad
            if grad is None:
                return None
            reader = n
    return grad


def _operand(dg: tp.DependencyGraph, product: tp.dependency.Node, node: tp.dependency.Node) -> _Side | None:
    """The layer whose output reaches the product as operand `node` through element moves, scalar
    factors and pieces of splits only."""
    chain = []
    while len(node.inputs) == 1 and (_grad_fn_name(node) in _MOVES | _IN_PLACE or node.type in _PIECES):
        chain.insert(0, node)
        node = node.inputs[0]
    if not chain or not _is_layer(node):
        return None
    edge = _edge(chain[0].grad_fn, node.grad_fn)
    if edge is None:
        return None
    in_shape = list(node.grad_fn._input_metadata[chain[0].grad_fn.next_functions[edge][1]].shape)
    out_shape = list(chain[-1].grad_fn._input_metadata[0].shape) if chain[-1].type not in _PIECES else None
    edge = _edge(product.grad_fn, chain[-1].grad_fn)
    if out_shape is None:
        out_shape = list(chain[-1].grad_fn._input_metadata[product.grad_fn.next_functions[edge][1]].shape)
    dim = _channel_dim(node)
    if len(out_shape) != 3 or in_shape[dim] != _width(dg, node.module, True):
        return None
    count = int(torch.tensor(out_shape).prod())
    # Element ids from 1: a piece's pull-back leaves the other pieces' elements at 0.
    ids = _pull_back(chain, node, torch.arange(1, count + 1, dtype=torch.float64).view(out_shape), product)
    if ids is None or list(ids.shape) != in_shape:
        return None
    ids = ids.reshape(-1).long()
    held = ids > 0
    if not torch.equal(ids[held].sort().values, torch.arange(1, count + 1)):
        return None  # not one element of the layer per element of the operand
    view = [1] * len(in_shape)
    view[dim] = in_shape[dim]
    channel = torch.arange(in_shape[dim]).view(view).expand(in_shape).reshape(-1)
    channels = torch.empty(count, dtype=torch.long)
    channels[ids[held] - 1] = channel[held]
    return _Side(node, channels.view(out_shape), out=True)


def _reader(dg: tp.DependencyGraph, product: tp.dependency.Node) -> _Side | None:
    """The one layer that reads the product's output through element moves only."""
    chain, node = [], product
    while len(node.outputs) == 1 and _grad_fn_name(node.outputs[0]) in _REARRANGE:
        node = node.outputs[0]
        chain.append(node)
    if not chain or len(node.outputs) != 1 or not _is_layer(node.outputs[0]):
        return None
    layer = node.outputs[0]
    out_shape = list(node.grad_fn._input_metadata[0].shape)
    dim = _channel_dim(layer)
    width = _width(dg, layer.module, False)
    if out_shape[dim] != width:
        return None
    view = [1] * len(out_shape)
    view[dim] = width
    channels = _pull_back(chain, product, torch.arange(width, dtype=torch.float64).view(view).expand(out_shape), layer)
    ones = _pull_back(chain, product, torch.ones(out_shape, dtype=torch.float64), layer)
    if channels is None or ones is None or channels.dim() != 3 or not bool((ones == 1).all()):
        return None
    return _Side(layer, channels.long(), out=False)


def _along(channels: torch.Tensor, fixed_dim: int) -> torch.Tensor | None:
    """The channels per (batch, other dim) where they do not change along `fixed_dim`; else None."""
    first = channels.select(fixed_dim, 0)
    if channels.shape[fixed_dim] < 2 or not bool((channels == first.unsqueeze(fixed_dim)).all()):
        return None
    return first


def _couple(dg: tp.DependencyGraph, a: _Side, a_channels: torch.Tensor, b: _Side, b_channels: torch.Tensor) -> None:
    """Direct dependencies between two layers whose channels meet, element for element, in a product."""
    forward: dict[int, set[int]] = {}
    backward: dict[int, set[int]] = {}
    for s, t in zip(a_channels.reshape(-1).tolist(), b_channels.reshape(-1).tolist(), strict=True):
        forward.setdefault(s, set()).add(t)
        backward.setdefault(t, set()).add(s)

    def fn(side: _Side):
        pruner = dg.get_pruner_of_module(side.layer.module)
        return pruner.prune_out_channels if side.out else pruner.prune_in_channels

    # Channels come in one block per head (the batch dimension folds in the heads): a width
    # that is not a multiple of the heads breaks the view that made them.
    divisors = dg.__dict__.setdefault("product_divisors", {})
    for side, channels in ((a, a_channels), (b, b_channels)):
        heads = len({tuple(sorted(set(row))) for row in channels.tolist()})
        key = (side.layer.module, side.out)
        divisors[key] = math.lcm(divisors.get(key, 1), heads)
    for src, dst, pairs in ((a, b, forward), (b, a, backward)):
        dep = tp.dependency.Dependency(trigger=fn(src), handler=fn(dst), source=src.layer, target=dst.layer)
        dep.index_mapping = [PairMapping({k: sorted(v) for k, v in pairs.items()}), None]
        src.layer.dependencies.append(dep)


def _cut(product: tp.dependency.Node) -> None:
    """Drop the product's element-wise dependencies, both ways."""
    product.dependencies = []
    for other in product.inputs + product.outputs:
        other.dependencies = [d for d in other.dependencies if d.target is not product]


def _channel_free(node: tp.dependency.Node, free: set[tp.dependency.Node]) -> bool:
    """Whether `node` holds no layer's channels: everything upstream of it, up to products
    whose channels were all contracted (`free`: attention logits), holds none either."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen or n in free:
            continue
        seen.add(n)
        if _is_layer(n) or _grad_fn_name(n) in _PRODUCTS:
            return False
        stack.extend(n.inputs)
    return True


def _map_product(dg: tp.DependencyGraph, node: tp.dependency.Node, free: set) -> tuple[bool, list[_Side]]:
    """Couple the layers around one product: whether it was mapped, and its operands' layers."""
    operands: list[_Side | None] = [None, None]
    inputs: list[tp.dependency.Node | None] = [None, None]
    for n in node.inputs:
        index = _edge(node.grad_fn, n.grad_fn)
        if index is not None:
            operands[index], inputs[index] = _operand(dg, node, n), n
    if None in inputs:
        return False, []
    a, b = operands
    known = [side for side in operands if side is not None]
    if not known or any(side is None and not _channel_free(n, free) for side, n in zip(operands, inputs, strict=True)):
        return False, []
    a_k, a_n = (_along(a.channels, 1), _along(a.channels, 2)) if a is not None else (None, None)
    b_k, b_m = (_along(b.channels, 2), _along(b.channels, 1)) if b is not None else (None, None)
    if any(side is not None and (k is None) == (other is None) for side, k, other in ((a, a_k, a_n), (b, b_k, b_m))):
        return False, []  # channels on no dimension, or on both (a size of one)
    out_shape = list(node.grad_fn._input_metadata[0].shape)
    contracted = (a or b).channels.shape[2 if a is not None else 1]
    costs = dg.__dict__.setdefault("product_costs", [])
    flops = int(torch.tensor(out_shape).prod()) * contracted
    if a_k is not None and b_k is not None:
        _couple(dg, a, a_k, b, b_k)
        free.add(node)
        costs.append(ProductCost(flops, ((a.layer.module, "out"),)))
        return True, known
    if a_k is not None or b_k is not None:
        return False, []  # one side's channels meet the other's tokens or nothing: leave it to torch-pruning
    reader = _reader(dg, node)
    if reader is None:
        return False, []
    passes = [(a, a_n, _along(reader.channels, 2)), (b, b_m, _along(reader.channels, 1))]
    if any(side is not None and out is None for side, _, out in passes):
        return False, []
    for side, held, out in passes:
        if side is not None:
            _couple(dg, side, held, reader, out)
    costs.append(ProductCost(flops, tuple((side.layer.module, "out") for side in known)))
    return True, known


def map_products(dg: tp.DependencyGraph) -> int:
    """Couple the layers around every product of two activations that can be accounted for, and
    drop its element-wise dependencies; the number of products mapped.

    Products whose operands both contract their channels come first: their outputs (attention
    logits) hold no channels, and a product reading one of them (`attn @ v`) can be mapped next.
    """
    products = [
        n
        for n in dg.module2node.values()
        if n.type == ops.OPTYPE.ELEMENTWISE and _grad_fn_name(n) in _PRODUCTS and len(n.inputs) == 2
    ]
    free: set[tp.dependency.Node] = set()
    mapped: dict[tp.dependency.Node, list[_Side]] = {}
    changed = True
    while changed:
        changed = False
        for node in products:
            if node not in mapped:
                done, sides = _map_product(dg, node, free)
                if done:
                    mapped[node] = sides
                    changed = True
    for node in mapped:
        _cut(node)
    _cut_feeds(mapped)
    return len(mapped)


def _cut_feeds(mapped: dict[tp.dependency.Node, list[_Side]]) -> None:
    """Drop the dependencies from each operand's layer into the views that lead only to mapped
    products: the direct couplings stand for them, and torch-pruning's reading of those views
    (a flatten of the heads into the tokens) would send a search on through millions of indices."""
    for sides in mapped.values():
        for side in sides:
            for first in list(side.layer.outputs):
                if _only_feeds(first, mapped):
                    side.layer.dependencies = [d for d in side.layer.dependencies if d.target is not first]
                    first.dependencies = [d for d in first.dependencies if d.target is not side.layer]


def _only_feeds(node: tp.dependency.Node, mapped: dict) -> bool:
    """Whether every path down from `node` ends at a mapped product, through no layer."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen or n in mapped:
            continue
        seen.add(n)
        if _is_layer(n) or not n.outputs:
            return False
        stack.extend(n.outputs)
    return True
