"""Latency calibration: plan under fitted latency limits, time the shrunk model against the
original side by side, and rescale each batch size's limit by the measured error.

The latency model (`latency.py`) predicts; only a timing decides. Each round re-plans under the
corrected limits until the slowest batch size is under the budget's aim and within 3% of it,
or the FLOP target binds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .budget import Floors, Limit, floor_widths
from .flops import FlopModel
from .graph import ChannelGroup, GroupGraph
from .latency import LatencyBudget, latency_models, ratio_interval, time_samples
from .planner import Plan
from .shrink import Candidate, Shrinker

# Latency limits: (latency model of one batch size, its most seconds), as `plan_widths` takes them.
Limits = list[Limit]


@dataclass
class Timed:
    """A candidate with its latency over the original's per batch size, and their 95% intervals."""

    candidate: Candidate
    ratios: dict[int, float]
    intervals: dict[int, tuple[float, float]]

    @property
    def worst(self) -> float:
        return max(self.ratios.values())

    def achieved(self) -> dict[str, dict[str, Any]]:
        """The spec's record of the measured ratios, keyed by batch size."""
        return {
            "latency_ratios": {str(b): round(r, 4) for b, r in self.ratios.items()},
            "latency_intervals": {str(b): [round(x, 4) for x in i] for b, i in self.intervals.items()},
        }


@dataclass
class Calibration:
    """The latency budget's part of `dissimilate`: the limits to plan under, and the timing loop."""

    budget: LatencyBudget
    base: nn.Module
    shape: tuple[int, ...]
    lowest: np.ndarray  # the widths the floors allow: no limit is set below what they cost
    limits: Limits

    @classmethod
    def fit(
        cls,
        budget: LatencyBudget,
        base: nn.Module,
        base_groups: Sequence[ChannelGroup],
        graph: GroupGraph,
        scores: dict[str, torch.Tensor],
        flop_model: FlopModel,
        floors: Floors,
        round_to: int,
        shape: Sequence[int],
    ) -> Calibration:
        """Time the original and the widened model (`graph.model`) layer by layer, fit a latency
        model per batch size, and set each limit at the budget's aim times its original latency."""
        original = {g.key: g.size for g in base_groups}
        base_widths = np.array([original.get(k, s) for k, s in zip(flop_model.keys, flop_model.sizes, strict=True)])
        models = latency_models(flop_model, base, graph.model, base_widths, shape, budget)
        lowest = floor_widths(graph, scores, flop_model, floors, round_to, original)
        calibration = cls(budget, base, tuple(shape), lowest, [])
        calibration.limits = calibration.above_floors([Limit(m, budget.aim * m.base_seconds) for m in models])
        return calibration

    def above_floors(self, limits: Limits) -> Limits:
        """Limits raised to at least what the floors' widths are predicted to cost: a prediction
        is not a measurement, so a limit below it plans the fastest model the floors allow, and
        the timing against the original decides."""
        return [Limit(m, max(limit, m(self.lowest))) for m, limit in limits]

    def meet(self, candidate: Candidate, shrinker: Shrinker) -> Timed:
        """Time candidates and rescale the limits until the aim is met (see the module).

        `shrinker` shrinks anew under the rescaled limits. Returns the candidate that met the aim
        with the most FLOPs, or the fastest one if none did. Timing is charged to "latency".
        """
        budget, limits, target, timer = self.budget, self.limits, shrinker.target, shrinker.timer
        best = fastest = None
        for round_ in range(budget.rounds):
            with timer("latency"):
                timed = Timed(candidate, *self.ratios(candidate.model))
            met = timed.worst <= budget.aim
            if met and (best is None or candidate.flops > best.candidate.flops):
                best = timed
            if fastest is None or timed.worst < fastest.worst:
                fastest = timed
            close = timed.worst >= 0.97 * budget.aim or candidate.flops >= 0.995 * target
            if round_ == budget.rounds - 1 or (met and close):
                break
            limits = [Limit(m, limit * budget.aim / timed.ratios[m.batch]) for m, limit in limits]
            try:
                candidate = shrinker.under(self.above_floors(limits))
            except ValueError:
                break  # re-planning under fvcore's count went below the FLOP floors: keep what was found
        return best or fastest

    def ratios(self, lw: nn.Module) -> tuple[dict[int, float], dict[int, tuple[float, float]]]:
        """The found model's latency over the original's at each batch size, timed side by side:
        the ratios of medians and their 95% intervals."""
        ratios, intervals = {}, {}
        for batch in self.budget.batch_sizes:
            samples = time_samples([self.base, lw], self.shape, batch, self.budget.repeats, self.budget.seconds)
            original, found = np.median(samples, axis=0)
            ratios[batch] = float(found / original)
            single = (ratios[batch],) * 2
            intervals[batch] = tuple(ratio_interval(samples)[1].tolist()) if len(samples) > 1 else single
        return ratios, intervals

    def settings(self, plan: Plan) -> dict[str, Any]:
        """The budget's part of the spec's settings."""
        budget = self.budget
        return {
            "ratio": budget.ratio,
            "margin": budget.margin,
            "batch_sizes": list(budget.batch_sizes),
            "cost_strength": plan.cost_strength,
        }

    def notes(self, timed: Timed) -> list[str]:
        """The report's lines on the budget: what was measured, and whether it was met."""
        budget = self.budget
        measured = ", ".join(
            f"{r:.3f}x [95%: {timed.intervals[b][0]:.3f}-{timed.intervals[b][1]:.3f}] at batch {b}"
            for b, r in timed.ratios.items()
        )
        note = (
            f"latency budget {budget.ratio}x the original on {budget.batch_sizes} (aiming at {budget.aim:.3g}x, "
            f"margin {budget.margin}): measured {measured}"
        )
        if timed.worst > budget.ratio:
            advice = "raise `rounds`, relax the ratio, lower the floors or use `round_to=8`"
            note += f" (NOT met after {budget.rounds} rounds: {advice})"
        elif timed.worst > budget.aim:
            note += " (under the ratio but inside the margin: timing noise may put it over on another run)"
        strength = timed.candidate.plan.cost_strength
        ranking = "saliency per unit of latency cost" if strength else "saliency alone (the global threshold)"
        return [note, f"channels ranked by {ranking}, cost strength {strength}"]
