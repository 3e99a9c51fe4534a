"""Shrink: remove the channels the budget did not keep, with torch-pruning, until fvcore's
count of the result is at or under the FLOP target."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .adapter import copy_model
from .budget import Limit
from .flops import count_flops
from .graph import GroupGraph
from .graph.keys import GroupKey
from .graph.search import Stall
from .modes import in_mode
from .planner import Plan, Planner
from .resize import resize
from .stages import StageTimer
from .widen import WIDEN_ERRORS, breaking_groups, first_line

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
    planner: Planner,
    target: int,
    example: torch.Tensor,
    ignore: Iterable[str],
    timer: StageTimer,
    stalls: Mapping[str, Stall] | None = None,
) -> Candidate:
    """Shrink a copy of `wide` to the plan; if fvcore counts more than the target, re-plan lower
    with `planner`.

    The analytic model treats a few width-dependent ops (pooling, some element-wise ones) as
    constant, so each round corrects the planned target by the measured ratio. Re-planning is
    charged to the timer's "search" stage. `stalls`: the widened graph's (`GroupGraph.stalls`).
    """
    planned = target
    for _ in range(_MAX_ROUNDS):
        lw = copy_model(wide)
        shrink(GroupGraph(lw, example, ignore, stalls=stalls), plan)
        check_shrunk_runs(lw, wide, plan, example, ignore, stalls)
        achieved = count_flops(lw, example)
        if achieved <= target:
            return Candidate(lw, plan, achieved)
        planned *= target / achieved
        with timer("search"):
            plan = planner.plan(planned)
    raise RuntimeError(f"could not get under {target:,} FLOPs (last try {achieved:,}); please report this model")


@dataclass(frozen=True)
class Shrinker:
    """Shrinks the widened model to the FLOP target under a planner's plans: the shrink stage's
    state, handed to the latency calibration, which shrinks again under other limits."""

    wide: nn.Module
    planner: Planner
    target: int
    example: torch.Tensor
    ignore: tuple[str, ...]
    timer: StageTimer
    stalls: Mapping[str, Stall] = dataclasses.field(default_factory=dict)

    def shrink(self, plan: Plan) -> Candidate:
        """A candidate shrunk to `plan`, re-planned lower until fvcore counts it under the target."""
        return shrink_to_target(
            self.wide, plan, self.planner, self.target, self.example, self.ignore, self.timer, self.stalls
        )

    def under(self, limits: Sequence[Limit]) -> Candidate:
        """A candidate planned and shrunk anew under other latency limits."""
        planner = self.planner.under(limits)
        with self.timer("search"):
            plan = planner.plan(self.target)
        return dataclasses.replace(self, planner=planner).shrink(plan)


def check_shrunk_runs(
    lw: nn.Module,
    wide: nn.Module,
    plan: Plan,
    example: torch.Tensor,
    ignore: Iterable[str],
    stalls: Mapping[str, Stall] | None = None,
) -> None:
    """Raise, naming the groups to blame and what to pass, if the shrunk model `lw` fails on
    `example`, which the original model took: a width constraint in the model's code that the
    graph did not see (a group count or head count written as a number), never the caller's input."""
    try:
        with torch.no_grad(), in_mode(lw, training=False):
            lw(example)
        return
    except WIDEN_ERRORS as err:
        error = first_line(err)
    ignore = tuple(ignore)
    found = breaking_groups(
        wide, example, lambda g: plan.widths.get(g.key, g.size), ignore, {}, error, "shrinking", stalls
    )
    layers = sorted({GroupKey.parse(key).layer for key in found})
    blamed = "; ".join(f"{key}: {why}" for key, why in sorted(found.items())) or error
    raise RuntimeError(
        f"the shrunk {type(lw).__name__} fails its forward pass, which the original passes on the same input, "
        f"so the cause is a width the model's code constrains where lwdna_plugin cannot see it ({blamed}). "
        f"Keep those groups at their width with ignore={[*ignore, *layers]!r}, or try round_to=8; please "
        "report the model so the constraint can be read from it"
    )
