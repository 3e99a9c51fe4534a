"""torch-pruning's group search, bounded: no index past a layer's channels, no search without end.

torch-pruning's mappings into a split, unbind or concatenation add offsets without a bound;
where ops that mix channels with other dimensions close a cycle (CoaT's factorised attention),
indices walk on round it and the group search never ends. Every dependency's mappings are
followed by a bound that drops indices past the target's width (noting them, so the group is
reported fixed) and counts the search's steps and the indices it carries, ending a search
that runs past `SEARCH_STEPS` steps or its index budget (a flatten of a large feature
map maps each channel to every pixel: HaloNet's at 256x256 to 65,536 indices a channel, a
search of hours and gigabytes).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .constants import PASS_THROUGH
from .internals import HybridIndex, flatten_stride, module_name, modules_by_name

# Dependency steps one group search may take: DenseNet-121 needs about 500 and ResNet-50 under 100;
# a search circling through ops that mix channels with other dimensions can run for hours.
SEARCH_STEPS = 5_000
# Indices one group search may carry in all, at least, and per channel of its root: timm's CNNs
# and ViTs carry under 130,000 (convnext_atto at 224 and 384: 120,053, about 375 per channel).
# BEiT-Base's residual stream carries about 1,390 a channel once per-head tables no longer cut
# its search short; a larger bound slows the searches that stall (HaloNet's graph: 50 s at
# 1,000 a channel, 58 s at 1,500; 5,000 ran past coverage.py's 300 s).
SEARCH_INDICES = 250_000
SEARCH_INDICES_PER_CHANNEL = 1_500

# Where an index mapping pointed past a layer's channels: (the layer's node, its width).
Overflow = list[tuple[tp.dependency.Node, int]]


class SearchStalled(RuntimeError):
    """torch-pruning's group search from `root` did not settle; `reached` holds the layers whose
    output channels it reached (layers it reached at their input may still root groups of their own)."""

    def __init__(self, message: str, reached: set[nn.Module]) -> None:
        super().__init__(message)
        self.reached = reached

    @classmethod
    def of(cls, root: str, reached: set[nn.Module], failure: str | None = None) -> SearchStalled:
        """The search from `root` went past its bounds, or failed with `failure`."""
        if failure is None:
            message = (
                f"torch-pruning's channel coupling search from {root} did not settle within {SEARCH_STEPS:,} "
                f"steps and {SEARCH_INDICES_PER_CHANNEL:,} indices a channel"
            )
        else:
            message = f"torch-pruning's channel coupling search from {root} failed: {failure}"
        return cls(message, reached)


@dataclass(frozen=True)
class Stall:
    """A group search that did not settle, kept by name so that a graph of a copy of the same
    model (widened, shrunk) reuses it instead of running the search again: what it said, and
    the layers whose output channels it reached."""

    detail: str
    reached: frozenset[str]


class BoundedSearch:
    """Group searches on one dependency graph, each bounded in indices and steps.

    Constructing it puts a bound after the mappings of every dependency of `dg`; install the
    graph's own index mappings first.
    """

    def __init__(
        self, dg: tp.DependencyGraph, per_head: Collection[object] = (), stalls: Mapping[str, Stall] | None = None
    ) -> None:
        """`per_head`: layers and parameters that hold one entry per attention head, where a
        search of channels stops (see `heads.per_head_tensors`); `stalls`: searches that did not
        settle in a graph of the same model at other widths (HaloNet's 38 cost 40 s a graph at
        256 px), raised again by group key without searching."""
        self.dg = dg
        self.known = dict(stalls or {})
        # Group key -> the search that did not settle from its root (given, or found here).
        self.stalls: dict[str, Stall] = {}
        self.per_head = set(per_head)
        self.active = False
        self.steps = self.indices = 0
        self.budget = SEARCH_INDICES
        self.reached: set[nn.Module] = set()
        self.overflow: Overflow = []
        for node in dg.module2node.values():
            for dep in node.dependencies:
                dep.index_mapping = _BoundedMappings(dep.index_mapping, self, dep)

    def run(
        self, root: nn.Module, fn: Callable, idxs: list[int], key: str | None = None
    ) -> tuple[tp.dependency.Group, Overflow]:
        """torch-pruning's group of `root`'s channels `idxs`, and where a mapping pointed past a layer.

        Raises `SearchStalled` when the search takes more than `SEARCH_STEPS` steps or carries
        more indices than its budget (`SEARCH_INDICES_PER_CHANNEL` a root channel, at least
        `SEARCH_INDICES`); a search of group `key` is remembered in `stalls` when it stalls, and
        one given stalled is raised again without searching.
        """
        if key in self.known:
            by_name = modules_by_name(self.dg)
            known = self.stalls[key] = self.known[key]
            raise SearchStalled(known.detail, {by_name[n] for n in known.reached if n in by_name})
        try:
            return self._run(root, fn, idxs)
        except SearchStalled as stall:
            if key is not None:
                names = (module_name(self.dg, m) for m in stall.reached if isinstance(m, nn.Module))
                self.stalls[key] = Stall(str(stall), frozenset(n for n in names if n is not None))
            raise

    def _run(self, root: nn.Module, fn: Callable, idxs: list[int]) -> tuple[tp.dependency.Group, Overflow]:
        self.overflow.clear()
        self.active, self.steps, self.indices, self.reached = True, 0, 0, set()
        self.budget = max(SEARCH_INDICES, SEARCH_INDICES_PER_CHANNEL * len(idxs))
        try:
            group = self.dg.get_pruning_group(root, fn, idxs)
        except (TypeError, IndexError, KeyError, ArithmeticError) as err:
            # An index mapping torch-pruning built from sizes it could not read (a concatenation
            # offset of None, a head dimension of 0): the coupling is unknown, so the group keeps its width.
            failure = f"{type(err).__name__}: {err}"
            raise SearchStalled.of(module_name(self.dg, root, "?"), self.reached, failure) from err
        finally:
            self.active = False
        if self.steps > SEARCH_STEPS or self.indices > self.budget:
            raise SearchStalled.of(module_name(self.dg, root, "?"), self.reached)
        return group, list(self.overflow)

    def bound(self, dep: tp.dependency.Dependency, idxs: Sequence[HybridIndex]) -> Sequence[HybridIndex]:
        """Count one step of the search into `dep`'s target and drop indices past its width."""
        if (
            self.active
            and dep.target.module in self.per_head
            and dep.source.module not in self.per_head
            and not _at_layer_input(self.dg, dep)
        ):
            # Reached through the attention logits, whose second dimension torch-pruning takes
            # for channels: a head count, which no channel group changes. (A layer making
            # per-head values is reached at its input by its own features, which do resize.)
            return []
        if self.active:
            self.steps += 1
            self.indices += len(idxs)
            if self.dg.is_out_channel_pruning_fn(dep.handler):
                self.reached.add(dep.target.module)
            if self.steps > SEARCH_STEPS or self.indices > self.budget:
                return []  # ends the search; `run` reports it stalled
        width = target_width(self.dg, dep)
        if width is None or all(i.idx < width for i in idxs):
            return idxs
        self.overflow.append((dep.target, width))
        return [i for i in idxs if i.idx < width]


def _at_layer_input(dg: tp.DependencyGraph, dep: tp.dependency.Dependency) -> bool:
    """Whether `dep` reaches a layer's input channels."""
    return isinstance(dep.target.module, nn.Module) and dg.is_in_channel_pruning_fn(dep.handler)


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
        for mapping in super().__iter__():
            # A flatten maps each index to `stride` of them: checked before it runs, so one
            # step cannot build millions of indices.
            stride = flatten_stride(mapping)
            if stride is not None and stride > 1 and not getattr(mapping, "reverse", True):
                yield partial(self._within_budget, mapping, stride)
            else:
                yield mapping
        yield self._bound

    def _within_budget(self, mapping: Callable, stride: int, idxs: Sequence[HybridIndex]) -> Sequence[HybridIndex]:
        if self.search.active and self.search.indices + len(idxs) * stride > self.search.budget:
            self.search.indices = self.search.budget + 1  # over the budget: `run` reports the search stalled
            return []
        return mapping(idxs)

    def _bound(self, idxs: Sequence[HybridIndex]) -> Sequence[HybridIndex]:
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
