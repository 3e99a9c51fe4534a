"""Widen: grow every prunable channel group by `width`, then initialise as the zoo would."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from .graph import ChannelGroup, GroupGraph
from .initialise import initialise
from .resize import resize


def widened_size(group: ChannelGroup, width: float, round_to: int = 1) -> int:
    step = group.step(round_to)
    return max(step, int(round(group.size * width / step)) * step)


def widen(
    model: nn.Module,
    example_inputs: torch.Tensor,
    width: float = 2.0,
    round_to: int = 1,
    create: Callable[[], nn.Module] | None = None,
    ignored: Iterable[str] = (),
) -> tuple[nn.Module, dict[str, int]]:
    """A widened, freshly initialised copy of `model` and the widened size of each group."""
    if width <= 0:
        raise ValueError(f"width={width}: must be positive (the paper uses 2.0)")
    wide = copy.deepcopy(model)
    graph = GroupGraph(wide, example_inputs, ignored)
    sizes = {g.key: widened_size(g, width, round_to) for g in graph.groups if g.prunable}
    resize(graph, sizes)
    initialise(wide, create)
    return wide, sizes
