"""Tracing: the model as two torch.fx graphs, one per mode, traced through everything but torch.nn layers.

fx fixes Python branches on `self.training`, so the model is traced once in train and once in
eval mode. Functional calls given `training=<the trace's mode>` are rewritten to read
`self.training` at run time, so a forward whose only mode-dependence was such a call traces
the same in both modes. timm's fx "notrace" functions stay calls.
"""

from __future__ import annotations

import builtins
import inspect
import operator
import warnings
from dataclasses import dataclass

import torch.fx as fx
import torch.nn as nn

from ..modes import in_mode


class TraceError(RuntimeError):
    """torch.fx could not trace the model (Python control flow on traced values, most often)."""


class Tracer(fx.Tracer):
    """Traces through everything but `torch.nn` layers and `leaves`; timm's notrace functions stay calls."""

    # Buffers read in a traced forward (BatchNormAct2d's num_batches_tracked.add_) become graph
    # nodes instead of being touched for real.
    proxy_buffer_attributes = True

    def __init__(self, leaves: frozenset[int] = frozenset()) -> None:
        self.extra_leaves = leaves  # ids of modules kept whole, though not torch.nn layers
        try:
            from timm.layers import get_notrace_functions
        except ImportError:  # a module that did not come from timm
            functions = ()
        else:
            functions = tuple(f for f in get_notrace_functions() if callable(f))
        super().__init__(autowrap_functions=functions)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.extra_leaves or super().is_leaf_module(m, module_qualified_name)


def is_leaf(module: nn.Module) -> bool:
    """Whether fx keeps `module` whole (a torch.nn layer) rather than tracing through it.

    fx counts every torch.nn class as a leaf, containers included; but a ModuleList or
    ModuleDict is never called, only indexed or looped over, so its items are what the trace calls.
    """
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return False
    return Tracer().is_leaf_module(module, "")


@dataclass(frozen=True)
class Traces:
    """The model traced in train mode and in eval mode."""

    train: fx.GraphModule
    eval: fx.GraphModule

    @classmethod
    def of(cls, model: nn.Module, leaves: frozenset[int] = frozenset()) -> Traces:
        """Trace `model` in both modes, keeping the modules whose ids are in `leaves` whole."""
        return cls(trace(model, True, leaves), trace(model, False, leaves))

    @property
    def both(self) -> tuple[fx.GraphModule, fx.GraphModule]:
        return (self.train, self.eval)

    def called(self) -> set[str]:
        """The qualified names of the modules either trace calls."""
        return {n.target for gm in self.both for n in gm.graph.nodes if n.op == "call_module"}


def trace(model: nn.Module, training: bool, leaves: frozenset[int] = frozenset()) -> fx.GraphModule:
    """`model` traced in train (`training=True`) or eval mode; its own mode is left as it was.

    The file's model is called as `model(x)`: the forward's optional arguments are traced at
    their defaults (Hiera's `mask=None` skips masking) and left out of its signature.
    """
    params = list(inspect.signature(model.forward).parameters.values())
    defaults = _optional_arguments(params[1:])
    try:
        with in_mode(model, training=training):
            graph = Tracer(leaves).trace(model, concrete_args=defaults or None)
    except Exception as error:
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__} in {'train' if training else 'eval'} mode: {error}"
        ) from error
    _drop_specialised(graph, [p.name for p in params], defaults)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    _drop_dead_reads(gm.graph)
    _read_training_flag(gm.graph, training)
    for node in gm.graph.nodes:
        node.type = None  # no annotations in the generated signature
    gm.recompile()
    return gm


def _optional_arguments(params: list[inspect.Parameter]) -> dict[str, object]:
    """Those of the forward's arguments after the input that have a plain default (None, a bool, a number, a string)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: p.default
        for p in params
        if p.kind in kinds and p.default is not p.empty and isinstance(p.default, (type(None), bool, int, float, str))
    }


def _drop_specialised(graph: fx.Graph, names: list[str], defaults: dict[str, object]) -> None:
    """Remove the placeholders fx made for arguments traced at their defaults, with the checks
    it hangs on them (that a call passes the same value): nothing else reads them. fx renames
    those placeholders (`mask_1`), so they are matched to the forward's `names` by position."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node, name in zip(placeholders, names, strict=False):
        if name in defaults:
            _erase_with_users(graph, node)


def _erase_with_users(graph: fx.Graph, node: fx.Node) -> None:
    for user in list(node.users):
        _erase_with_users(graph, user)
    graph.erase_node(node)


def _read_training_flag(graph: fx.Graph, training: bool) -> None:
    """Functional calls given `training=<the trace's mode>` (F.dropout, F.batch_norm) read `self.training` instead.

    The value fx recorded is `self.training` at trace time, so reading it at run time computes the
    same; a forward whose only mode-dependence was such a call then reads the same in both modes.
    """
    flag = None
    for node in list(graph.nodes):
        index = _training_argument(node, training)
        if index is None:
            continue
        if flag is None:
            first = next(n for n in graph.nodes if n.op != "placeholder")
            with graph.inserting_before(first), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flag = graph.get_attr("training")
        if "training" in node.kwargs:
            node.kwargs = {**node.kwargs, "training": flag}
        else:
            node.args = (*node.args[:index], flag, *node.args[index + 1 :])


def _training_argument(node: fx.Node, training: bool) -> int | None:
    """The position of `training` in a functional call that passes it as the trace's mode, else None."""
    if node.op != "call_function":
        return None
    try:
        params = list(inspect.signature(node.target).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return None
    if "training" not in params:
        return None
    index = params.index("training")
    if "training" in node.kwargs:
        value = node.kwargs["training"]
    elif index < len(node.args):
        value = node.args[index]
    else:
        return None
    return index if value is training else None


def _drop_dead_reads(graph: fx.Graph) -> None:
    """Remove unused shape reads and attribute fetches; anything that might act in place stays."""
    pure = (builtins.getattr, operator.getitem)
    for node in reversed(list(graph.nodes)):
        if node.users:
            continue
        if node.op == "get_attr" or (node.op == "call_function" and node.target in pure):
            graph.erase_node(node)
