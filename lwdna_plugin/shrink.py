"""Shrink: remove the channels the budget did not keep, with torch-pruning."""

from __future__ import annotations

import torch.nn as nn

from .budget import Plan
from .graph import GroupGraph
from .resize import resize


def shrink(graph: GroupGraph, plan: Plan) -> nn.Module:
    """Prune `graph.model` in place to the plan's widths, keeping the plan's channels."""
    resize(graph, plan.widths, plan.keep)
    return graph.model
