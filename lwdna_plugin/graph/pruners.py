"""torch-pruning's per-layer pruning functions, where a zoo's layers need more of them.

torch-pruning prunes a norm's `bias` whenever the norm is affine; timm has affine norms without
one (MetaFormer's `GroupNorm1NoBias`, `LayerNorm2dNoBias`). The same functions, for every
registered layer type, pass a missing parameter through instead of failing on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch_pruning.pruner import function


class _MissingParametersPass:
    """Mixed into a torch-pruning function: a parameter a layer does not have stays absent."""

    def _prune_parameter_and_grad(self, weight: torch.Tensor | None, keep_idxs: Sequence[int], pruning_dim: int):
        if weight is None:
            return None
        return super()._prune_parameter_and_grad(weight, keep_idxs, pruning_dim)


_SAFE: dict[type, type] = {}


def tolerant(pruner: object) -> object:
    """`pruner` (a torch-pruning `BasePruningFunc`) as a copy that passes missing parameters through."""
    if not isinstance(pruner, function.BasePruningFunc):
        return pruner
    cls = type(pruner)
    if cls not in _SAFE:
        _SAFE[cls] = type(cls.__name__, (_MissingParametersPass, cls), {"__doc__": cls.__doc__})
    clone = object.__new__(_SAFE[cls])
    clone.__dict__.update(pruner.__dict__)
    return clone


def install(graph: object) -> None:
    """Give a torch-pruning `DependencyGraph`, before it builds, tolerant copies of its functions
    (and the lookup sets it derives from them in its `__init__`)."""
    graph.REGISTERED_PRUNERS = {key: tolerant(p) for key, p in graph.REGISTERED_PRUNERS.items()}
    pruners = [p for p in graph.REGISTERED_PRUNERS.values() if p is not None]
    pruners += [p for p in graph.CUSTOMIZED_PRUNERS.values() if p is not None]
    graph._in_channel_pruning_fn = {p.prune_in_channels for p in pruners}
    graph._out_channel_pruning_fn = {p.prune_out_channels for p in pruners}
