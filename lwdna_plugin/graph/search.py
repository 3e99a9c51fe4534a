"""torch-pruning's group search, bounded: no index past a layer's channels, no search without end.

torch-pruning's mappings into a split, unbind or concatenation add offsets without a bound;
where ops that mix channels with other dimensions close a cycle (CoaT's factorised attention),
indices walk on round it and the group search never ends. Every dependency's mappings are
followed by a bound that drops indices past the target's width (noting them, so the group is
reported fixed) and counts the search's steps, ending a search that runs past `SEARCH_STEPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning._helpers import _HybridIndex

from .constants import PASS_THROUGH

# Dependency steps one group search may take: DenseNet-121 needs about 500 and ResNet-50 under 100;
# a search circling through ops that mix channels with other dimensions can run for hours.
SEARCH_STEPS = 5_000

# Where an index mapping pointed past a layer's channels: (the layer's node, its width).
Overflow = list[tuple[tp.dependency.Node, int]]


class SearchStalled(Exception):
    """torch-pruning's group search from `root` did not settle; `reached` holds what it touched."""

    def __init__(self, root: str, reached: set[nn.Module]) -> None:
        super().__init__(
            f"torch-pruning's channel coupling search from {root} did not settle within {SEARCH_STEPS:,} steps"
        )
        self.reached = reached


class BoundedSearch:
    """Group searches on one dependency graph, each bounded in indices and steps.

    Constructing it puts a bound after the mappings of every dependency of `dg`; install the
    graph's own index mappings first.
    """

    def __init__(self, dg: tp.DependencyGraph) -> None:
        self.dg = dg
        self.active = False
        self.steps = 0
        self.reached: set[nn.Module] = set()
        self.overflow: Overflow = []
        for node in dg.module2node.values():
            for dep in node.dependencies:
                dep.index_mapping = _BoundedMappings(dep.index_mapping, self, dep)

    def run(self, root: nn.Module, fn: Callable, idxs: list[int]) -> tuple[tp.dependency.Group, Overflow]:
        """torch-pruning's group of `root`'s channels `idxs`, and where a mapping pointed past a layer.

        Raises `SearchStalled` when the search takes more than `SEARCH_STEPS` steps.
        """
        self.overflow.clear()
        self.active, self.steps, self.reached = True, 0, set()
        try:
            group = self.dg.get_pruning_group(root, fn, idxs)
        finally:
            self.active = False
        if self.steps > SEARCH_STEPS:
            raise SearchStalled(self.dg._module2name.get(root, "?"), self.reached)
        return group, list(self.overflow)

    def bound(self, dep: tp.dependency.Dependency, idxs: Sequence[_HybridIndex]) -> Sequence[_HybridIndex]:
        """Count one step of the search into `dep`'s target and drop indices past its width."""
        if self.active:
            self.steps += 1
            self.reached.add(dep.target.module)
            if self.steps > SEARCH_STEPS:
                return []  # ends the search; `run` reports it stalled
        width = target_width(self.dg, dep)
        if width is None or all(i.idx < width for i in idxs):
            return idxs
        self.overflow.append((dep.target, width))
        return [i for i in idxs if i.idx < width]


class _BoundedMappings(list):
    """A dependency's index mappings, followed by the search's bound.

    torch-pruning reads a dependency's mappings only by iterating this list during its search,
    the one hook it offers into it, so the bound joins the list when iterated. torch-pruning
    still sets the two mappings by position.
    """

    def __init__(self, mappings: list, search: BoundedSearch, dep: tp.dependency.Dependency) -> None:
        super().__init__(mappings)
        self.search, self.dep = search, dep

    def __iter__(self) -> Iterator[Callable]:
        yield from super().__iter__()
        yield self._bound

    def _bound(self, idxs: Sequence[_HybridIndex]) -> Sequence[_HybridIndex]:
        return self.search.bound(self.dep, idxs)


def target_width(dg: tp.DependencyGraph, dep: tp.dependency.Dependency) -> int | None:
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
        if pruner is None or node.type in PASS_THROUGH or node.type == ops.OPTYPE.SLICE:
            return None
        if dg.is_out_channel_pruning_fn(dep.handler):
            return pruner.get_out_channels(module)
        return pruner.get_in_channels(module)
    except (AttributeError, TypeError, IndexError):
        return None
