"""Shrink: remove the channels the budget did not keep, with torch-pruning, until fvcore's
count of the result is at or under the FLOP target."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .adapter import copy_model
from .budget import Plan
from .flops import count_flops
from .graph import GroupGraph
from .resize import resize
from .stages import StageTimer

_MAX_ROUNDS = 4


def shrink(graph: GroupGraph, plan: Plan) -> nn.Module:
    """Prune `graph.model` in place to the plan's widths, keeping the plan's channels."""
    resize(graph, plan.widths, plan.keep)
    return graph.model


@dataclass
class Candidate:
    """A shrunk model, the plan it was shrunk to, and its FLOPs as fvcore counts them."""

    model: nn.Module
    plan: Plan
    flops: int


def shrink_to_target(
    wide: nn.Module,
    plan: Plan,
    replan: Callable[[float], Plan],
    target: int,
    example: torch.Tensor,
    ignore: Iterable[str],
    timer: StageTimer,
) -> Candidate:
    """Shrink a copy of `wide` to the plan; if fvcore counts more than the target, re-plan lower.

    The analytic model treats a few width-dependent ops (pooling, some element-wise ones) as
    constant, so each round corrects the planned target by the measured ratio. Re-planning is
    charged to the timer's "search" stage.
    """
    planned = target
    for _ in range(_MAX_ROUNDS):
        lw = copy_model(wide)
        shrink(GroupGraph(lw, example, ignore), plan)
        achieved = count_flops(lw, example)
        if achieved <= target:
            return Candidate(lw, plan, achieved)
        planned *= target / achieved
        with timer("search"):
            plan = replan(planned)
    raise RuntimeError(f"could not get under {target:,} FLOPs (last try {achieved:,}); please report this model")
