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

from .index_mapping import RearrangeMapping, ReorderMapping, between, wire
from .internals import FlattenIndexMapping, flatten_stride

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
_TRANSPOSES = {"PermuteBackward0", "TransposeBackward0"}
# A linear layer's own matrix product, as autograd records it for a 3-D input.
_LINEAR_MATMULS = {"MmBackward0", "AddmmBackward0"}
_CHANNELS_FIRST = (ops.OPTYPE.CONV, ops.OPTYPE.DEPTHWISE_CONV, ops.OPTYPE.BN, ops.OPTYPE.GN, ops.OPTYPE.IN)
_CHANNELS_LAST = (ops.OPTYPE.LINEAR, ops.OPTYPE.LN)


def _moves(node: tp.dependency.Node) -> bool:
    """Whether `node` only moves the elements of its one input (its output may feed several ops)."""
    fn = node.grad_fn
    return (
        node.type in (ops.OPTYPE.RESHAPE, ops.OPTYPE.ELEMENTWISE)
        and fn is not None
        and fn.name() in _REARRANGE
        and len(node.inputs) == 1
    )


def _is_rearrange(node: tp.dependency.Node) -> bool:
    """A rearranging op inside a chain: it feeds exactly one op."""
    return _moves(node) and len(node.outputs) == 1


def _nearest_layers(nodes: list[tp.dependency.Node], upstream: bool, across: bool = False) -> list[tp.dependency.Node]:
    """The layers nearest `nodes` that write (or read) their tensor: searched through element-wise
    ops (residual sums, activations), and with `across` through rearrangements too."""
    stack, seen, layers = list(nodes), set(), []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type in _CHANNELS_FIRST + _CHANNELS_LAST:
            layers.append(n)
        elif (n.type == ops.OPTYPE.ELEMENTWISE and not _moves(n)) or (across and _moves(n)):
            stack.extend(n.inputs if upstream else n.outputs)
    return layers


def _channel_dim(
    dg: tp.DependencyGraph, nodes: list[tp.dependency.Node], upstream: bool, across: bool = False
) -> tuple[int | None, int | None] | None:
    """Where a tensor keeps its channels and how many, judged by its nearest layers.

    With `across`, layers beyond rearrangements count too and leave the dimension unknown (None).
    None when no layer is found or layers disagree on the dimension (the count is None when
    they disagree on it).
    """
    layers = _nearest_layers(nodes, upstream, across)
    dims = {1 if n.type in _CHANNELS_FIRST else -1 for n in layers}
    if len(dims) != 1 and not (across and dims):
        return None
    counts = {_width(dg, n.module, upstream) for n in layers}
    count = counts.pop() if len(counts) == 1 else None
    return (None, count) if across else (dims.pop(), count)


def token_mixers(dg: tp.DependencyGraph, module2node: dict) -> set[nn.Module]:
    """Linear layers that mix another dimension than the channels: gMLP's spatial gate and
    MLP-Mixer's token MLP, `proj(x.transpose(-1, -2))`. One reads, through a transpose, a tensor
    whose nearest layers hold another channel count than its `in_features`; a linear layer fed
    only by such layers (a token MLP's `fc2`) mixes the same dimension. Each channel passes
    through them on its own, as through an element-wise op; their widths are token counts."""
    found: set[nn.Module] = set()
    changed = True
    while changed:
        changed = False
        for node in module2node.values():
            if node.type != ops.OPTYPE.LINEAR or node.module in found or len(node.inputs) != 1:
                continue
            first, transposed, chain = _linear_input(node)
            layers = _nearest_layers([first], upstream=True)
            if transposed and not layers:
                # Past rearrangements too where none is nearer (a patch embedding's flattened conv).
                layers = _nearest_layers([first], upstream=True, across=True)
            mixers = [n for n in layers if n.module in found]
            if transposed:
                counts = {_width(dg, n.module, True) for n in layers}
                mixes = bool(layers) and not mixers and None not in counts and node.module.in_features not in counts
                mixes = mixes and not _features_hold_channels(dg, first, chain)
            else:
                mixes = bool(layers) and len(mixers) == len(layers)
            if mixes:
                found.add(node.module)
                changed = True
    return found


def _linear_input(node: tp.dependency.Node) -> tuple[tp.dependency.Node, bool, list[tp.dependency.Node]]:
    """The op that feeds a linear layer's input, past the layer's own matmul (torch-pruning
    keeps a 3-D input's `mm` and views as ops of their own) and past rearrangements; whether
    one of those rearrangements was a transpose or permute; and those rearrangements, first to last."""
    first, transposed, own_matmul, chain = node.inputs[0], False, True, []
    while True:
        name = first.grad_fn.name() if first.grad_fn is not None else ""
        if own_matmul and name in _LINEAR_MATMULS:
            # The weight's transpose (`TBackward0`) is an input of its own, fed by nothing.
            inputs = [n for n in first.inputs if n.inputs]
            if len(inputs) != 1:
                return first, False, chain
            first, own_matmul = inputs[0], False
        elif _moves(first):
            transposed |= name in _TRANSPOSES
            chain.insert(0, first)
            first = first.inputs[0]
        else:
            return first, transposed, chain


def _features_hold_channels(dg: tp.DependencyGraph, producer: tp.dependency.Node, chain: list) -> bool:
    """Whether the features a linear layer reads through `chain` hold `producer`'s channels,
    each its own features: Swin V2's patch merging flattens (2, 2, C) into 4C features, which a
    token mixer's features (tokens, every channel at each) do not. Element ids say; where
    they cannot, no."""
    found = _channel_dim(dg, [producer], upstream=True)
    shapes = _shapes(chain, producer) if chain and found is not None else None
    dim = None if shapes is None else _dim_of(shapes[0], found)
    probed = None if dim is None else _probe(chain, producer, shapes, (dim, len(shapes[1]) - 1))
    return probed is not None and len({tuple(lands) for lands in probed[0]}) > 1


def _width(dg: tp.DependencyGraph, module: object, out: bool) -> int | None:
    """A layer's live output (or input) channel count; None if torch-pruning has no pruner for it."""
    pruner = dg.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
    if pruner is None:
        return None
    return (pruner.get_out_channels if out else pruner.get_in_channels)(module)


def pass_slices(dg: tp.DependencyGraph) -> None:
    """Make every slice of another dimension than the channels element-wise: it passes every channel."""
    for node in dg.module2node.values():
        if node.type == ops.OPTYPE.SLICE and slice_keeps_channels(dg, node):
            node.type = ops.OPTYPE.ELEMENTWISE


def slice_keeps_channels(dg: tp.DependencyGraph, node: tp.dependency.Node) -> bool:
    """Whether a slice cuts another dimension than the channels its tensor holds: Twins' crop of
    padded windows, `x[:, :H, :W, :]` on a channels-last map, which torch-pruning reads as a cut
    of an image's channels. Ids of the next layers' channels, sent back through the
    rearrangements and slices between, hold the same channels at every index of the sliced
    dimension. Where they cannot say, no."""
    dim = getattr(node.grad_fn, "_saved_dim", None)
    chain, last = [], node
    while len(last.outputs) == 1 and (_moves(last.outputs[0]) or _is_slice(last.outputs[0])):
        last = last.outputs[0]
        chain.append(last)
    found = _channel_dim(dg, last.outputs, upstream=False)
    shape = list(node.grad_fn._input_metadata[0].shape)
    if dim is None or found is None or len(last.outputs) != 1 or not -len(shape) <= dim < len(shape):
        return False
    out_shape = list(last.grad_fn._input_metadata[0].shape)
    read = _dim_of(out_shape, found)
    if read is None:
        return False
    view = [1] * len(out_shape)
    view[read] = out_shape[read]
    # Ids from 1: a slice sends 0 back to what it cut away.
    ids = torch.arange(1, out_shape[read] + 1, dtype=torch.float64).view(view).expand(out_shape)
    ids = _send_back(chain, node, ids.to(last.grad_fn._input_metadata[0].dtype).contiguous())
    if ids is None or list(ids.shape) != shape:
        return False
    held = [{v for v in ids.select(dim, i).reshape(-1).tolist() if v} for i in range(shape[dim])]
    return all(h == held[0] for h in held) and bool(held[0])


def _is_slice(node: tp.dependency.Node) -> bool:
    return node.grad_fn is not None and node.grad_fn.name() == "SliceBackward0" and len(node.inputs) == 1


def _dim_of(shape: list[int], found: tuple[int | None, int | None]) -> int | None:
    """The dimension of `shape` that holds the channels the nearest layers hold.

    A layer's own dimension unless its size is not their channel count: a view that adds leading
    dimensions (B, C*P, H, W) -> (B, P, C, H, W) moves the channels, and then the one other
    dimension of that size holds them.
    """
    dim, count = found
    if count is None or (dim is not None and shape[dim] == count):
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
    while len(last.outputs) == 1 and _moves(last.outputs[0]):
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
    count; None if neither count divides the other or autograd cannot say."""
    (in_shape, out_shape), (in_dim, out_dim) = shapes, dims
    out_dtype = chain[-1].grad_fn._input_metadata[0].dtype
    c_in, c_out = in_shape[in_dim], out_shape[out_dim]
    if c_out % c_in and c_in % c_out:
        return None
    # Each output element holds its channel index; pull it back through the chain.
    view = [1] * len(out_shape)
    view[out_dim] = c_out
    grad = torch.arange(c_out, dtype=torch.float64).view(view).expand(out_shape).to(out_dtype).contiguous()
    grad = _send_back(chain, producer, grad)
    if grad is None or list(grad.shape) != in_shape:
        return None
    grad = grad.movedim(in_dim, 0).reshape(c_in, -1)
    return [sorted({int(v) for v in row.tolist()}) for row in grad], c_out


def _send_back(chain: list, producer: tp.dependency.Node, grad: torch.Tensor) -> torch.Tensor | None:
    """`grad` at the chain's last output sent back through the chain's backward functions to
    `producer`'s output; None where autograd does not say."""
    with torch.no_grad():
        for n, prev in zip(reversed(chain), reversed([producer, *chain][:-1]), strict=True):
            i = _edge(n.grad_fn, prev.grad_fn)
            if i is None:
                return None
            grad = n.grad_fn(grad)
            grad = grad[i] if isinstance(grad, tuple) else grad
            if grad is None:
                return None
    return grad


def _layout(lands: list[list[int]], c_out: int) -> str | None:
    """How the C channels of the narrow side sit among the r*C of the wide side: 'block' when channel
    c is at c*r ... c*r + r-1, 'cyclic' at c, C + c, ...; 'same' when the chain keeps every channel
    where it was; else None. The chain's input is the narrow side when it widens (a flatten, a
    patch merge), the wide one when it narrows (paths split off)."""
    c_in = len(lands)
    if c_out == c_in:
        return "same" if all(row == [c] for c, row in enumerate(lands)) else None
    if c_out > c_in:
        r = c_out // c_in
        block = all(row == list(range(c * r, c * r + r)) for c, row in enumerate(lands))
        cyclic = all(row == [j * c_in + c for j in range(r)] for c, row in enumerate(lands))
    else:
        r = c_in // c_out
        block = all(row == [c // r] for c, row in enumerate(lands))
        cyclic = all(row == [c % c_out] for c, row in enumerate(lands))
    return "block" if block else "cyclic" if cyclic else None


def _tp_mapped(chain: list[tp.dependency.Node]) -> list[tp.dependency.Node]:
    """The chain's ops torch-pruning index-maps (as flattens) on its own: it re-maps them before every group search."""
    mapped = []
    for n in chain:
        if n.type != ops.OPTYPE.RESHAPE:
            continue
        deps = [d for other in n.inputs + n.outputs for d in (*between(n, other), *between(other, n))]
        if any(isinstance(m, FlattenIndexMapping) for d in deps for m in d.index_mapping):
            mapped.append(n)
    return mapped


def _unmap(nodes: list[tp.dependency.Node]) -> None:
    """Take `nodes` out of torch-pruning's reshape mapping and drop the flatten mappings it gave them."""
    for n in nodes:
        # torch-pruning maps only nodes of type RESHAPE; to it an element-wise op keeps channels.
        n.type = ops.OPTYPE.ELEMENTWISE
        for other in n.inputs + n.outputs:
            for dep in (*between(n, other), *between(other, n)):
                dep.index_mapping = [None if isinstance(m, FlattenIndexMapping) else m for m in dep.index_mapping]


def map_rearrangement(dg: tp.DependencyGraph, node: tp.dependency.Node, seen: set) -> bool:
    """Index-map the chain of reshapes and permutes through `node` where torch-pruning maps it wrongly or not at all.

    Adds the chain to `seen`, mapped or not, and says whether its channels are accounted for:
    mapped here or by torch-pruning, or kept in place. Where torch-pruning mapped one op of the
    chain (as a flatten: block layout), a probe that finds the chain cyclic puts a reordering on
    its wide side, and one that finds it keeps every channel in place removes torch-pruning's
    mapping.
    Where one side's layers lie beyond other rearrangements (split attention's softmax between
    two views), that side's channels are looked for at the other side's count, then at the count
    of the layers beyond those rearrangements; the probe decides whether either fits.
    """
    if not _moves(node):
        return True
    chain = _chain(node)
    seen.update(chain)
    producer, consumers = chain[0].inputs[0], chain[-1].outputs
    mapped = _tp_mapped(chain)
    if producer.grad_fn is None or not consumers:
        return False
    wrote, read = _channel_dim(dg, [producer], upstream=True), _channel_dim(dg, consumers, upstream=False)
    shapes = _shapes(chain, producer)
    if shapes is None or (wrote is None and read is None):
        return False
    if wrote is not None and read is not None:
        sides = [(wrote, read)]
    else:
        # One side's nearest layers lie beyond other rearrangements (split attention's softmax
        # between two views): its channels are looked for at the other side's count (a chain
        # that keeps them in place), then at the count of the layers beyond.
        known = wrote or read
        beyond = _channel_dim(dg, [producer] if wrote is None else consumers, wrote is None, across=True)
        guesses = [(None, known[1])] + ([beyond] if beyond is not None else [])
        sides = [(g, read) if wrote is None else (wrote, g) for g in guesses]
    for wrote, read in sides:
        in_dim, out_dim = _dim_of(shapes[0], wrote), _dim_of(shapes[1], read)
        probed = None if in_dim is None or out_dim is None else _probe(chain, producer, shapes, (in_dim, out_dim))
        layout = None if probed is None else _layout(*probed)
        if layout is not None:
            break
    if layout == "same" and mapped:
        _unmap(mapped)
    if layout in (None, "same") or (mapped and layout == "block") or len(mapped) > 1:
        return layout == "same" or (layout == "block" and len(mapped) == 1)
    lands, c_out = probed
    widens = c_out > len(lands)
    if widens and len(consumers) > 1:
        return False
    r = max(c_out, len(lands)) // min(c_out, len(lands))
    # The mapping sits between the chain and the op on its wide side; the nearest layer there
    # (the op itself, or the conv before an activation) sizes it as it is resized.
    wide = _nearest_layers(consumers if widens else [producer], upstream=not widens)
    if len(wide) != 1 or _width(dg, wide[0].module, out=not widens) != r * min(c_out, len(lands)):
        return False
    width = partial(_width, dg, wide[0].module, not widens)
    a, b = (chain[-1], consumers[0]) if widens else (producer, chain[0])
    if mapped:
        # torch-pruning re-installs its block mapping on the narrow side before every group
        # search; reordering the wide side's cyclic positions into block order composes with it.
        tp_mappings = [m for n in chain for d in n.dependencies for m in d.index_mapping if m is not None]
        if any(flatten_stride(m) not in (None, r) for m in tp_mappings):
            return False
        wire(a, b, 0, ReorderMapping(r, width, to_block=not widens), ReorderMapping(r, width, to_block=widens))
    else:
        wire(a, b, 0, RearrangeMapping(layout, r, width, not widens), RearrangeMapping(layout, r, width, widens))
    return True
