"""Per-head tensors: layers and parameters of an attention block with one entry per head.

torch-pruning treats the second dimension of every 4-d tensor as channels; for attention
logits (batch, heads, tokens, tokens) that is the head count. A relative position bias table
added to the logits (BEiT, Swin), a per-head logit scale (Swin V2) or a talking-heads
projection across heads (CaiT) is then coupled with the channels that produced the logits,
and the whole group looks irregular ("points past its 12 channels") or drags in every block.
Such a tensor has the head count, not a channel count, along the dimension torch-pruning
prunes. A channel search stops at a per-head parameter (it hangs off the logits' path); a
per-head layer lies on that path, so a search goes on through it, and its own group (the
talking-heads projection's outputs) keeps its width: changing it would change the head count.
A layer that makes per-head values from other features (Swin V2's continuous position bias
MLP: hidden width in, one output a head) hangs off the path like a table: a search stops there.
"""

from __future__ import annotations

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .internals import module_name, parameter_name

# The attributes an attention block declares its head count in: timm's convention, and Hiera's.
HEAD_COUNTS = ("num_heads", "heads")


def head_count(owner: nn.Module) -> int | None:
    """The head count an attention block declares (see `HEAD_COUNTS`), one head included; else None."""
    for attr in HEAD_COUNTS:
        heads = getattr(owner, attr, None)
        if type(heads) is int and heads > 0:
            return heads
    return None


def num_heads(owner: nn.Module) -> int | None:
    """The head count of a block with more than one head, else None."""
    heads = head_count(owner)
    return heads if heads is not None and heads > 1 else None


def per_head_tensors(dg: tp.DependencyGraph, model: nn.Module) -> set[object]:
    """Layers and bare parameters of `model` whose pruned dimension is the head count of the
    attention block that holds them (their parent module's `num_heads`), and layers with one
    output a head of the nearest block that declares one (see `head_sources`)."""
    found: set[object] = set()
    for node in dg.module2node.values():
        module = node.module
        if node.type == ops.OPTYPE.PARAMETER:
            name = parameter_name(dg, module)
            widths = [module.shape[node.pruning_dim]] if name else []
        elif isinstance(module, (ops.TORCH_LINEAR, ops.TORCH_CONV)):
            name = module_name(dg, module)
            pruner = dg.get_pruner_of_module(module)
            widths = [pruner.get_in_channels(module), pruner.get_out_channels(module)]
        else:
            continue
        if not name or "." not in name:
            continue
        heads = num_heads(model.get_submodule(name.rpartition(".")[0]))
        if heads is not None and all(w == heads for w in widths):
            found.add(module)
        elif len(widths) == 2 and widths[1] == _nearest_heads(model, name):
            found.add(module)
    return found


def head_sources(per_head: set[object]) -> set[object]:
    """The per-head tensors a channel search stops at: parameters, and layers that make per-head
    values from inputs of another width (talking-heads layers, heads in and out, lie on the path)."""
    return {
        t
        for t in per_head
        if isinstance(t, nn.Parameter) or (isinstance(t, nn.Linear) and t.in_features != t.out_features)
    }


def _nearest_heads(model: nn.Module, name: str) -> int | None:
    """The head count of the nearest module above `name` that declares one."""
    while "." in name:
        name = name.rpartition(".")[0]
        heads = num_heads(model.get_submodule(name))
        if heads is not None:
            return heads
    return None
