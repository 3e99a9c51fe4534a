"""torch-pruning's internals: the one module that reads its private names or overrides its code.

Everything else in the package uses torch-pruning's public API. What it lacks is read or
patched here, behind small functions, so that a torch-pruning release that renames one of them
breaks one module, and `check_internals()` says which internal is gone instead of a failure deep inside
a search. Written against the torch-pruning versions in `TESTED_VERSIONS`.

What is relied on:
- `DependencyGraph._module2name` and `._param_to_name`: the model's name of each layer and of
  each bare parameter (torch-pruning keeps them private; the graph has no public lookup).
- `DependencyGraph._build_dependency`: the step after which the graph's nodes exist and before
  its index mappings are built; `HookedDependencyGraph` runs a hook before and after it, and
  gives the layers the first hook names (`pass_through`) the pruner of an element-wise op.
- `torch_pruning._helpers._HybridIndex`: the index type its mappings pass along (an index with
  the root index it came from).
- `torch_pruning.dependency.index_mapping._FlattenIndexMapping`: the mapping it puts on a flatten,
  and its `_stride` (how many indices one channel maps to).
- `Group.items`: the group's own list of items, edited in place to leave some to our code.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping

TESTED_VERSIONS = ("1.6.0",)


def _advice(what: str) -> str:
    return (
        f"torch-pruning {tp.__version__} lacks {what}, which lwdna_plugin relies on. lwdna_plugin was "
        f"written against torch-pruning {', '.join(TESTED_VERSIONS)}: install one of those "
        f"(pip install 'torch-pruning=={TESTED_VERSIONS[-1]}')"
    )


def _private(owner: object, name: str, where: str) -> type:
    if not hasattr(owner, name):
        raise ImportError(_advice(f"{where}.{name}"))
    return getattr(owner, name)


HybridIndex = _private(_helpers, "_HybridIndex", "torch_pruning._helpers")
FlattenIndexMapping = _private(index_mapping, "_FlattenIndexMapping", "torch_pruning.dependency.index_mapping")


class HookedDependencyGraph(tp.DependencyGraph):
    """torch-pruning's graph with hooks before its nodes' dependencies are built and after,
    before their index mappings are: the one place the graph's own build is overridden."""

    # Layers whose channels pass through one to one, as through an element-wise op (their own
    # weights act on another dimension): torch-pruning gives them no dependency of their own.
    pass_through: frozenset[nn.Module] = frozenset()

    def _build_dependency(self, module2node: dict) -> None:
        self.pass_through = frozenset(self.before_dependency(module2node))
        for module in self.pass_through:
            module2node[module].type = ops.OPTYPE.ELEMENTWISE
        super()._build_dependency(module2node)
        self.after_dependency(module2node)

    def get_pruner_of_module(self, module: nn.Module) -> object:
        if module in self.pass_through:
            return self.REGISTERED_PRUNERS[ops.OPTYPE.ELEMENTWISE]
        return super().get_pruner_of_module(module)

    def before_dependency(self, module2node: dict) -> set[nn.Module]:
        """Subclasses name the layers whose channels pass through (see `pass_through`)."""
        return set()

    def after_dependency(self, module2node: dict) -> None:
        """Subclasses adjust the nodes here (types, concatenation sizes)."""


def module_name(dg: tp.DependencyGraph, module: nn.Module, default: str | None = None) -> str | None:
    """The model's name of a layer in the graph, `default` for one it does not know."""
    return dg._module2name.get(module, default)


def modules_by_name(dg: tp.DependencyGraph) -> dict[str, nn.Module]:
    """Every layer of the graph by the model's name of it."""
    return {name: module for module, name in dg._module2name.items()}


def parameter_name(dg: tp.DependencyGraph, parameter: nn.Parameter) -> str | None:
    """The model's name of a bare parameter the graph holds as a node (a position bias table)."""
    return dg._param_to_name.get(parameter)


def node_name(dg: tp.DependencyGraph, node: tp.dependency.Node) -> str | None:
    """The model's name of a node's layer or bare parameter."""
    if node.type == ops.OPTYPE.PARAMETER:
        return parameter_name(dg, node.module)
    return module_name(dg, node.module)


def swap_parameter(dg: tp.DependencyGraph, node: tp.dependency.Node, new: nn.Parameter) -> str:
    """Make the graph hold `new` where `node` held a bare parameter; return its name.

    torch-pruning offers no public way to swap a parameter: its own `Group.prune` updates the
    private `_param_to_name` and `module2node` when it prunes one, so growing one must too.
    """
    old = node.module
    name = dg._param_to_name.pop(old)
    dg._param_to_name[new] = name
    dg.module2node[new] = dg.module2node.pop(old)
    node.module = new
    return name


def flatten_stride(mapping: object) -> int | None:
    """How many indices a torch-pruning flatten mapping sends each channel to; None for any
    other mapping (or one without the field)."""
    stride = getattr(mapping, "_stride", None) if isinstance(mapping, FlattenIndexMapping) else None
    return stride if isinstance(stride, int) else None


def drop_items(group: tp.dependency.Group, items: Sequence[object]) -> None:
    """Remove `items` from torch-pruning's own list of the group's items, so that its `prune`
    handles everything else (bare parameters included) and our code those."""
    group.items[:] = [item for item in group.items if not any(item is other for other in items)]


@cache
def check_internals() -> None:
    """Raise an error naming each internal above that this torch-pruning no longer has (run
    once per process, before the first graph is traced)."""
    missing = []
    if not callable(getattr(tp.DependencyGraph, "_build_dependency", None)):
        missing.append("DependencyGraph._build_dependency")
    if not isinstance(getattr(tp.dependency.Group, "items", None), property):
        missing.append("Group.items (a property returning the group's list)")
    if not isinstance(getattr(FlattenIndexMapping(stride=2), "_stride", None), int):
        missing.append("_FlattenIndexMapping._stride (an int)")
    if not missing:
        # The name tables are set while a graph is built: build the smallest one, without
        # drawing from the caller's random stream (a layer's initialisation would).
        with torch.random.fork_rng(devices=[]):
            model = nn.Sequential(nn.Linear(2, 2))
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 2))
        missing += [
            f"DependencyGraph.{a} (a dict)"
            for a in ("_module2name", "_param_to_name")
            if not isinstance(getattr(dg, a, None), dict)
        ]
    if missing:
        raise RuntimeError(_advice(", ".join(missing)))
