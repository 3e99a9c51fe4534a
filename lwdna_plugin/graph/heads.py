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
"""

from __future__ import annotations

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .internals import module_name, parameter_name


def num_heads(owner: nn.Module) -> int | None:
    """The head count an attention block declares (`num_heads`, timm's convention), else None."""
    heads = getattr(owner, "num_heads", None)
    return heads if type(heads) is int and heads > 1 else None


def per_head_tensors(dg: tp.DependencyGraph, model: nn.Module) -> set[object]:
    """Layers and bare parameters of `model` whose pruned dimension is the head count of the
    attention block that holds them (their parent module's `num_heads`)."""
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
    return found
