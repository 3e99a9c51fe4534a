"""Tracing a model into torch-pruning's dependency graph, with the index mappings it lacks.

Forward hooks record what the graph alone does not keep: each block's output width (for the
cached widths of `cached_widths`) and the outputs of leaf layers torch-pruning does not know (a
blur filter applied with F.conv2d), whose per-channel state must follow their group.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.dependency import shape_infer

from ..modes import in_mode
from .internals import HookedDependencyGraph, check_internals
from .products import map_products
from .rearrange import map_rearrangement, pass_slices, token_mixers
from .split_bias import layers_called
from .splits import MappedSplits, along_image_channels, map_concat_inputs, map_splits


@dataclass
class Trace:
    """torch-pruning's graph of a model, with what the hooks recorded during its forward pass."""

    dg: tp.DependencyGraph
    # (block, its output width) for every module with children.
    block_widths: list[tuple[nn.Module, int]]
    # (leaf layer unknown to torch-pruning, its output's grad_fn, its output width).
    leaves: list[tuple[nn.Module, object, int]]
    splits: MappedSplits


class _DependencyGraph(HookedDependencyGraph):
    """torch-pruning's graph, with concatenation sizes read off autograd.

    torch-pruning sizes each input of a concatenation by walking the graph; through a slice of
    a tensor (DPN's `x[:, :self.num_1x1_c]`) it finds the sliced tensor's full width, or none
    and fails summing the sizes. Autograd records the shape of every tensor it passed, so the
    sizes are taken from there wherever it recorded them.
    """

    def before_dependency(self, module2node: dict) -> set[nn.Module]:
        return token_mixers(self, module2node)

    def after_dependency(self, module2node: dict) -> None:
        self.unsized_concats: set[nn.Module] = set()
        for node in module2node.values():
            if node.type != ops.OPTYPE.CONCAT or node.module.concat_sizes is not None or node.grad_fn is None:
                continue
            # Autograd's sizes are the tensors' own. torch-pruning's inference walks through a
            # slice as if it kept every channel (DPN's `x_s[:, n:]`): it sizes such an input at
            # the sliced tensor's full width, or at none. Along another dimension than an image's
            # channels (a class token joined to the tokens) autograd's sizes are not channels,
            # and torch-pruning's own stand where it finds them.
            sizes = _autograd_concat_sizes(node)
            if sizes is not None and _joins_image_channels(node):
                node.module.concat_sizes = sizes
                continue
            try:
                inferred = [shape_infer.infer_channels_between(self, n, node) for n in node.inputs]
            except (TypeError, IndexError):
                # It needs split sizes that torch-pruning sets later, in the order it meets the ops.
                inferred = None
            if inferred is not None and None not in inferred:
                continue
            if sizes is not None:
                node.module.concat_sizes = sizes
            elif inferred is not None:
                # Neither torch-pruning nor autograd can size it (inputs sliced from the model
                # input, as a space-to-depth stem does): torch-pruning would fail summing its
                # sizes, so it is treated as element-wise, and every group through it is fixed.
                node.type = ops.OPTYPE.ELEMENTWISE
                self.unsized_concats.add(node.module)
        # torch-pruning maps a reshape by dividing the channels it infers on one side by the
        # other's, and infers 0 where a walk ends in a concatenation it cannot split (SHViT's
        # attention `bmm`s): the division fails. Such reshapes pass its mapping as element-wise
        # and are given back their type for `trace` to map by probing, as every rearrangement.
        shape_infer.init_shape_information(self)
        self.zero_sized_reshapes = [
            node for node in module2node.values() if node.type == ops.OPTYPE.RESHAPE and _zero_sized(self, node)
        ]
        for node in self.zero_sized_reshapes:
            node.type = ops.OPTYPE.ELEMENTWISE
        # torch-pruning reads every 5-d expand as grouped-query attention repeating key/value heads,
        # and divides by the repeat it infers: 0 where nothing is repeated (Hiera's windowed
        # attention expands q, k and v to the shape they have). Such an expand moves no element.
        for node in module2node.values():
            if node.type == ops.OPTYPE.EXPAND and _expands_nothing(node):
                node.type = ops.OPTYPE.ELEMENTWISE


def _expands_nothing(node: tp.dependency.Node) -> bool:
    """Whether an expand's output has its input's shape, as autograd recorded both."""
    grad_fn = node.grad_fn
    before = getattr(grad_fn, "_saved_self_sym_sizes", None)
    return before is not None and list(before) == list(grad_fn._input_metadata[0].shape)


def _zero_sized(dg: tp.DependencyGraph, node: tp.dependency.Node) -> bool:
    """Whether torch-pruning infers 0 channels on a side of this reshape (as its mapping does)."""
    sides = [
        [shape_infer.infer_in_channels_recursively(dg, n, [0]) for n in node.outputs],
        [shape_infer.infer_out_channels_recursively(dg, n, [0]) for n in node.inputs],
    ]
    return any(next((c for c in side if c is not None), None) == 0 for side in sides)


def _autograd_concat_sizes(node: tp.dependency.Node) -> list[int] | None:
    """The sizes of a concatenation's inputs along its dimension, as autograd recorded them."""
    dim = getattr(node.grad_fn, "_saved_dim", 1)
    sizes = []
    for fn, nr in node.grad_fn.next_functions:
        source = next((n for n in node.inputs if n.grad_fn is fn), None)
        if source is None or fn is None:
            break
        shape = fn._input_metadata[nr].shape
        if not -len(shape) <= dim < len(shape):
            break
        sizes.append(int(shape[dim]))
    if len(sizes) == len(node.inputs) == len(node.grad_fn.next_functions):
        return sizes
    return None


def _joins_image_channels(node: tp.dependency.Node) -> bool:
    """Whether a concatenation joins NCHW tensors along their channels."""
    dim = getattr(node.grad_fn, "_saved_dim", 1)
    shapes = [fn._input_metadata[nr].shape for fn, nr in node.grad_fn.next_functions if fn is not None]
    return bool(shapes) and all(along_image_channels(shape, dim) for shape in shapes)


def _per_channel_state(module: nn.Module) -> bool:
    return any(t.dim() > 0 for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)])


def _record_leaf(records: list, module: nn.Module, inputs: object, output: object) -> None:
    if isinstance(output, torch.Tensor) and output.grad_fn is not None and output.dim() in (3, 4):
        records.append((module, output.grad_fn, output.shape[1] if output.dim() == 4 else output.shape[-1]))


def _record_output(records: list, module: nn.Module, inputs: object, output: object) -> None:
    if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
        records.append((module, output.shape[1] if output.dim() == 4 else output.shape[-1]))


def _call(model: nn.Module, example_inputs: torch.Tensor) -> object:
    return model(example_inputs)


def _drop(tensor: torch.Tensor) -> None:
    return None


def _dropped(packed: None) -> torch.Tensor:
    raise RuntimeError("a channel-coupling trace cannot be back-propagated: its saved activations were dropped")


@contextmanager
def _followed_by_autograd(model: nn.Module) -> Iterator[None]:
    """torch-pruning finds layers through autograd's graph: a frozen layer (requires_grad=False)
    fed by frozen ones would be missing from it, so every parameter requires grad while tracing."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def trace(model: nn.Module, example_inputs: torch.Tensor) -> Trace:
    """Build torch-pruning's graph of `model` and install the index mappings it lacks."""
    check_internals()
    outputs: list[tuple[nn.Module, int]] = []
    leaves: list[tuple[nn.Module, object, int]] = []
    known = tuple(ops.type2class(t) for t in tp.DependencyGraph().REGISTERED_PRUNERS if ops.type2class(t))
    hooks = []
    for m in model.modules():
        if m is not model and next(m.children(), None) is not None:
            hooks.append(m.register_forward_hook(partial(_record_output, outputs)))
        elif next(m.children(), None) is None and not isinstance(m, known) and _per_channel_state(m):
            hooks.append(m.register_forward_hook(partial(_record_leaf, leaves)))
    try:
        # torch-pruning runs the model in whatever mode it finds; `in_mode` gives every module its own back.
        # The graph is walked, never back-propagated: dropping what autograd saves for backward
        # keeps the trace from holding a sample's activations (1.2 GB for a widened ConvMixer).
        with (
            warnings.catch_warnings(),
            in_mode(model),
            _followed_by_autograd(model),
            layers_called(model),
            torch.autograd.graph.saved_tensors_hooks(_drop, _dropped),
        ):
            # torch-pruning warns about every parameter outside a known layer; we report those groups ourselves.
            warnings.simplefilter("ignore")
            # `forward_fn`: torch-pruning otherwise tries `model(*example_inputs)` first, which
            # for a batch of one is a single unbatched image that a model without batch norm
            # may accept, tracing channels as the wrong dimension.
            dg = _DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=_call, verbose=False
            )
    finally:
        for h in hooks:
            h.remove()
    for node in dg.zero_sized_reshapes:
        node.type = ops.OPTYPE.RESHAPE
    seen: set = set()
    unmapped: set = set()
    for node in list(dg.module2node.values()):
        if node.type == ops.OPTYPE.RESHAPE and node not in seen:
            before = set(seen)
            if not map_rearrangement(dg, node, seen):
                unmapped |= seen - before
    # torch-pruning re-derives every reshape's mapping before each group search, dividing by the
    # 0 channels it infers for these: as element-wise ops it leaves them alone, and a group
    # through one that no probe could map keeps its width.
    dg.unmapped_reshapes = set()
    for node in dg.zero_sized_reshapes:
        node.type = ops.OPTYPE.ELEMENTWISE
        if node in unmapped:
            dg.unmapped_reshapes.add(node.module)
    pass_slices(dg)
    map_products(dg)
    mapped = map_splits(dg)
    splits = {node.module: equal for node, equal in mapped.items()}
    for node in mapped:
        for out in node.outputs:
            if out.type == ops.OPTYPE.CONCAT:
                map_concat_inputs(dg, out, splits)
    return Trace(dg, outputs, leaves, splits)
