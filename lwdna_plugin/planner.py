"""Planner: widths at any FLOP target from one set of scores, floors and limits.

The search stage plans once; the shrink stage plans again lower when fvcore counts the shrunk
model over the target, and the latency calibration again under corrected latency limits. Each
receives this object, not a function of `dissimilate`'s, so what a re-plan depends on is in
one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .budget import Floors, Limit, Plan, plan_widths
from .flops import FlopModel
from .graph import GroupGraph


@dataclass(frozen=True)
class Planner:
    """`plan_widths` with everything but the FLOP target fixed.

    `limits` are the latency limits (changed by `under`), `footprint` the footprint's limits;
    a plan short of `least` of its target moves toward `toward` (see `plan_widths`).
    """

    graph: GroupGraph
    scores: dict[str, torch.Tensor]
    flop_model: FlopModel
    floors: Floors
    round_to: int
    ranking: str
    limits: Sequence[Limit] = ()
    footprint: Sequence[Limit] = ()
    toward: np.ndarray | None = None
    least: float = 0.0

    def plan(self, target: float) -> Plan:
        """Widths and kept channels at or under `target` FLOPs."""
        return plan_widths(
            self.graph, self.scores, self.flop_model, target, self.floors, self.round_to,
            limits=[*self.limits, *self.footprint], ranking=self.ranking, toward=self.toward, least=self.least,
        )  # fmt: skip

    def under(self, limits: Sequence[Limit]) -> Planner:
        """The same planner under other latency limits."""
        return dataclasses.replace(self, limits=tuple(limits))
