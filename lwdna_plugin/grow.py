"""The grow side torch-pruning lacks: insert channels into a layer, one function per layer type.

Mirrors `torch_pruning.pruner.function`: a table keyed by `torch_pruning.ops.OPTYPE`, each entry
with `grow_out_channels(layer, at, n)` and `grow_in_channels(layer, at, n)` that insert `n`
channels before position `at` and keep the layer's attributes consistent. New entries are
zero; the caller re-initialises the whole model the way its zoo does. Graph ops (concat,
split, slice) update the sizes torch-pruning caches so its index mappings stay right.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch_pruning import ops


def insert_along(tensor: torch.Tensor, dim: int, at: int, n: int, fill: float = 0.0) -> torch.Tensor:
    dim = dim % tensor.dim()
    shape = list(tensor.shape)
    shape[dim] = n
    new = torch.full(shape, fill, dtype=tensor.dtype, device=tensor.device)
    head, tail = tensor.narrow(dim, 0, at), tensor.narrow(dim, at, tensor.shape[dim] - at)
    return torch.cat([head, new, tail], dim=dim)


def like(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`new` as the kind of tensor `old` is: a Parameter with its `requires_grad`, or a plain tensor."""
    return nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new


def _grow_param(layer: nn.Module, attr: str, dim: int, at: int, n: int, fill: float = 0.0) -> None:
    value = getattr(layer, attr, None)
    if value is not None:
        setattr(layer, attr, like(value, insert_along(value.data, dim, at, n, fill)))


class BaseGrowFunc:
    """Grow functions for one layer type; `grow_in_channels = grow_out_channels` for tied layers."""

    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        raise NotImplementedError

    def grow_in_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        raise NotImplementedError


class ConvGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        _grow_param(layer, "weight", 1 if layer.transposed else 0, at, n)
        _grow_param(layer, "bias", 0, at, n)
        layer.out_channels += n
        return layer

    def grow_in_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        """A plain conv takes the `n` inputs before input `at`; a grouped conv, which one
        position cannot place, takes n / groups at the end of each conv group."""
        if layer.groups == 1:
            _grow_param(layer, "weight", 0 if layer.transposed else 1, at, n)
            layer.in_channels += n
            return layer
        per = layer.in_channels // layer.groups
        ends = [((g + 1) * per, n // layer.groups) for g in reversed(range(layer.groups))]
        return self.grow_grouped_in_channels(layer, ends)

    def grow_grouped_in_channels(self, layer: nn.Module, slots: list[tuple[int, int]]) -> nn.Module:
        """Insert inputs at (insert-before position, count) `slots` of the whole input, last slot
        first; a slot belongs to the conv group it ends. Every conv group must take as many."""
        per = layer.in_channels // layer.groups
        within: list[list[tuple[int, int]]] = [[] for _ in range(layer.groups)]
        for at, count in slots:
            g = min(max(at - 1, 0) // per, layer.groups - 1)
            within[g].append((at - g * per, count))
        added = {sum(count for _, count in w) for w in within}
        if len(added) != 1:
            raise ValueError(f"{layer}: new inputs at {slots} fall unevenly into its {layer.groups} conv groups")
        weight = layer.weight.data
        if layer.transposed:  # (in_channels, out / groups, ...): the whole input along dim 0
            for at, count in sorted(slots, reverse=True):
                weight = insert_along(weight, 0, at, count)
        else:  # (out_channels, in / groups, ...): each conv group's filters read its own inputs
            rows = layer.out_channels // layer.groups
            chunks = []
            for g, inserts in enumerate(within):
                chunk = weight[g * rows : (g + 1) * rows]
                for at, count in sorted(inserts, reverse=True):
                    chunk = insert_along(chunk, 1, at, count)
                chunks.append(chunk)
            weight = torch.cat(chunks)
        layer.weight = like(layer.weight, weight)
        layer.in_channels += added.pop() * layer.groups
        return layer


class DepthwiseConvGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        _grow_param(layer, "weight", 0, at, n)
        _grow_param(layer, "bias", 0, at, n)
        layer.out_channels += n
        layer.in_channels += n
        layer.groups += n
        return layer

    grow_in_channels = grow_out_channels


class LinearGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        _grow_param(layer, "weight", 0, at, n)
        _grow_param(layer, "bias", 0, at, n)
        layer.out_features += n
        return layer

    def grow_in_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        _grow_param(layer, "weight", 1, at, n)
        layer.in_features += n
        return layer


class NormGrower(BaseGrowFunc):
    """Batch, instance and group norms: affine parameters and running statistics, if present."""

    def __init__(self, count_attr: str = "num_features") -> None:
        self.count_attr = count_attr

    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        _grow_param(layer, "weight", 0, at, n, 1.0)
        _grow_param(layer, "bias", 0, at, n)
        _grow_param(layer, "running_mean", 0, at, n)
        _grow_param(layer, "running_var", 0, at, n, 1.0)
        setattr(layer, self.count_attr, getattr(layer, self.count_attr) + n)
        return layer

    grow_in_channels = grow_out_channels


class LayerNormGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        _grow_param(layer, "weight", -1, at, n, 1.0)
        _grow_param(layer, "bias", -1, at, n)
        shape = tuple(layer.normalized_shape)
        layer.normalized_shape = shape[:-1] + (shape[-1] + n,)
        return layer

    grow_in_channels = grow_out_channels


class PReLUGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        if layer.num_parameters > 1:
            _grow_param(layer, "weight", 0, at, n, 0.25)
            layer.num_parameters += n
        return layer

    grow_in_channels = grow_out_channels


class EmbeddingGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        _grow_param(layer, "weight", 1, at, n)
        layer.embedding_dim += n
        return layer

    grow_in_channels = grow_out_channels


class ParameterGrower(BaseGrowFunc):
    """A bare `nn.Parameter` (class token, position embedding, layer scale): returns the new one."""

    def __init__(self, dim: int = -1) -> None:
        self.dim = dim

    def grow_out_channels(self, layer: nn.Parameter, at: int, n: int) -> nn.Parameter:
        return like(layer, insert_along(layer.data, self.dim, at, n))

    grow_in_channels = grow_out_channels


def _grow_sizes(sizes: list[int], at: int, n: int) -> None:
    """Add `n` to the segment that ends at or contains position `at - 1`."""
    offset = 0
    for i, s in enumerate(sizes):
        if offset <= at - 1 < offset + s:
            sizes[i] += n
            return
        offset += s
    sizes[-1] += n


class ConcatGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        if layer.concat_sizes is not None:
            _grow_sizes(layer.concat_sizes, at, n)
        return layer

    grow_in_channels = grow_out_channels


class SplitGrower(BaseGrowFunc):
    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        if layer.split_sizes is not None:
            _grow_sizes(layer.split_sizes, at, n)
            offsets = [0]
            for s in layer.split_sizes:
                offsets.append(offsets[-1] + s)
            layer.offsets = offsets
        return layer

    grow_in_channels = grow_out_channels


class NoOpGrower(BaseGrowFunc):
    """Ops that carry channels through unchanged (sums, reshapes) or are re-derived by the graph."""

    def grow_out_channels(self, layer: nn.Module, at: int, n: int) -> nn.Module:
        return layer

    grow_in_channels = grow_out_channels


GROWERS: dict[ops.OPTYPE, BaseGrowFunc] = {
    ops.OPTYPE.CONV: ConvGrower(),
    ops.OPTYPE.DEPTHWISE_CONV: DepthwiseConvGrower(),
    ops.OPTYPE.LINEAR: LinearGrower(),
    ops.OPTYPE.BN: NormGrower(),
    ops.OPTYPE.IN: NormGrower(),
    ops.OPTYPE.LN: LayerNormGrower(),
    ops.OPTYPE.GN: NormGrower("num_channels"),
    ops.OPTYPE.PRELU: PReLUGrower(),
    ops.OPTYPE.EMBED: EmbeddingGrower(),
    ops.OPTYPE.PARAMETER: ParameterGrower(),
    ops.OPTYPE.CONCAT: ConcatGrower(),
    ops.OPTYPE.SPLIT: SplitGrower(),
    ops.OPTYPE.ELEMENTWISE: NoOpGrower(),
    ops.OPTYPE.RESHAPE: NoOpGrower(),
    ops.OPTYPE.UNBIND: SplitGrower(),  # sizes only where `graph.splits` mapped its pieces
    ops.OPTYPE.EXPAND: NoOpGrower(),
}
