"""FLOP counting with fvcore, and the analytic FLOP model the budget search runs against.

Convention: fvcore's, where one "flop" is one multiply-accumulate of a conv or linear layer
(norms and pooling add one per element). Every count this package reports is fvcore's total.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

# fvcore scripts its focal loss with torch.jit.script at import, which torch now deprecates:
# a warning about fvcore's code on every `import lwdna_plugin`, which the user can do nothing about.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis

from .adapter import check_input
from .arguments import check_module
from .graph import GroupGraph
from .graph.internals import module_name
from .graph.split_bias import layers_called
from .modes import in_mode

FLOP_CONVENTION = "fvcore FlopCountAnalysis total; one flop = one multiply-accumulate (conv, linear)"


def _analysis(model: nn.Module, inputs: torch.Tensor) -> FlopCountAnalysis:
    # fvcore logs every op it has no formula for (activations, sums); they carry no MACs.
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    with in_mode(model, training=False):
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        analysis.total()
    return analysis


def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """fvcore's total for one forward pass of `inputs` (use a batch of one)."""
    check_module("count_flops(model, inputs)", model, inputs)
    try:
        with torch.no_grad():
            return int(_analysis(model, inputs).total())
    except (RuntimeError, ValueError, AssertionError):
        # Inputs the model cannot take fail inside fvcore's trace; a plain forward names them.
        check_input(model, inputs, tuple(inputs.shape))
        raise


def count_params(model: nn.Module) -> int:
    """The number of parameters of `model`."""
    check_module("count_params(model)", model, eager=False)
    return sum(p.numel() for p in model.parameters())


@dataclass
class _Dim:
    """A layer dimension whose size is `fixed + sum(repeat * width[group])`."""

    current: int
    fixed: int
    terms: list[tuple[int, int]]


class FlopModel:
    """FLOPs as a function of every group's width, fitted once to fvcore's per-layer counts.

    A leaf layer's count scales with the product of its input and output widths (conv,
    linear) or with its one width (norms, depthwise convs, layers channels pass through, such as
    a token-mixing linear layer); a product of two activations the graph mapped with the widths
    its operands hold; the rest of the network is constant.
    """

    def __init__(self, graph: GroupGraph, inputs: torch.Tensor) -> None:
        model = graph.model
        # A qkv layer its block calls through its weight would count toward the block, not itself.
        with torch.no_grad(), layers_called(model):
            analysis = _analysis(model, inputs)
        per_module = analysis.by_module()
        self.total = int(analysis.total())
        self.keys = [g.key for g in graph.groups]
        index = {k: i for i, k in enumerate(self.keys)}
        self.sizes = np.array([g.size for g in graph.groups], dtype=np.float64)

        dims: dict[tuple[str, str], _Dim] = {}
        for g in graph.groups:
            for m in g.members:
                if m.optype == "parameter":
                    continue
                key = (m.name, m.dim)
                if key not in dims:
                    dims[key] = _Dim(_channels(graph, m.name, m.dim), 0, [])
                dims[key].terms.append((index[g.key], m.repeat))
        for g in graph.groups:
            for name in g.passes:
                # The channels it carries are the groups passing through it, all of them.
                passing = dims.setdefault((name, "tied"), _Dim(0, 0, []))
                passing.current += g.size
                passing.terms.append((index[g.key], 1))
        for d in dims.values():
            d.fixed = d.current - sum(r * self.sizes[i] for i, r in d.terms)

        names = sorted({name for name, _ in dims})
        self.layers = names
        self._slot = {k: i for i, k in enumerate(dims)}
        self._matrix = np.zeros((len(dims), len(self.keys)))
        self._fixed = np.array([d.fixed for d in dims.values()])
        self._current = np.array([float(d.current) for d in dims.values()])
        for i, d in enumerate(dims.values()):
            for g, r in d.terms:
                self._matrix[i, g] += r
        counts, first, second = [], [], []
        for name in names:
            flops = _own_flops(model, name, per_module)
            if not flops:
                continue
            a, b, _ = self.slots(name)
            counts.append(flops)
            first.append(a)
            second.append(b)
        # A product of two activations (`q @ k` on conv features) counts toward its block, not a
        # layer: its multiply-adds scale with the widths its operands' layers hold (see `products`).
        for cost in getattr(graph.dg, "product_costs", ()):
            ends = [self._slot.get((module_name(graph.dg, module), dim)) for module, dim in cost.scales_with]
            if None in ends or len(ends) > 2:
                continue
            counts.append(cost.flops)
            first.append(ends[0])
            second.append(ends[1] if len(ends) == 2 else len(self._slot))
        self._counts = np.array(counts, dtype=np.float64)
        self._first, self._second = np.array(first, dtype=int), np.array(second, dtype=int)
        self.constant = self.total - self._counts.sum()

    def __call__(self, widths: np.ndarray) -> float:
        """Predicted fvcore total for per-group widths (in `self.keys` order)."""
        ratio = self.ratios(widths)
        return float(self.constant + (self._counts * ratio[self._first] * ratio[self._second]).sum())

    def ratios(self, widths: np.ndarray) -> np.ndarray:
        """Every width-dependent layer dimension over its current size, then a constant 1."""
        return np.append((self._fixed + self._matrix @ widths) / self._current, 1.0)

    def slots(self, name: str) -> tuple[int, int, int]:
        """Indexes into `ratios()` of a layer's two MAC-scaling dims and of its output dim.

        A layer whose input and output are one dim (a norm, a depthwise conv) scales linearly;
        a dim that does not change points at the constant.
        """
        unit = len(self._slot)
        tied = self._slot.get((name, "tied"))
        if tied is not None:
            return tied, unit, tied
        out = self._slot.get((name, "out"), unit)
        return self._slot.get((name, "in"), unit), out, out


def _own_flops(model: nn.Module, name: str, per_module: dict[str, int]) -> int:
    """A layer's count without its children's (timm's BatchNormAct2d holds an activation child)."""
    module = lookup(model, name)
    if not isinstance(module, nn.Module):
        return 0
    children = sum(per_module.get(f"{name}.{child}", 0) for child, _ in module.named_children())
    return per_module.get(name, 0) - children


def _channels(graph: GroupGraph, name: str, dim: str) -> int:
    module = lookup(graph.model, name)
    if isinstance(module, nn.Parameter):
        return module.shape[graph.dg.module2node[module].pruning_dim]
    if dim == "in":
        return graph.dg.get_in_channels(module)
    return graph.dg.get_out_channels(module)


def lookup(model: nn.Module, name: str) -> nn.Module | nn.Parameter:
    """The layer or bare parameter `name` names in `model` (a graph node's name)."""
    owner, _, attr = name.rpartition(".")
    parent = model.get_submodule(owner)
    return getattr(parent, attr) if attr in parent._parameters else model.get_submodule(name)
