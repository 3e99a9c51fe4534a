"""Planner (the search stage): one global score threshold, per-group floors and rounding, at a
FLOP target.

The threshold is found by bisection against the analytic `FlopModel`; a greedy pass then adds
the best-scored remaining channels that still fit, so the plan lands just under the target even
when rounding makes the threshold coarse.

What the threshold compares is a channel's value per unit of what it costs (a knapsack view):
- `ranking="saliency"` (the paper's): raw scores, every channel costing the same;
- `ranking="flops"` (`dissimilate`'s default): scores divided by the FLOPs one channel of the
  group costs, so a residual channel that every block of a stage reads and writes must be worth
  that much more to stay;
- `ranking="uniform"`: no ranking across groups: every group keeps one fraction of its width
  (rounded to its step), the largest fraction that meets the target. With `width=1` this is the
  original architecture thinned uniformly, the baseline a layer-wise allocation must beat.
Further cost limits (a `LatencyModel` per batch size) that the plan would break divide the
ranked scores further by the group's share of those limits per share of FLOPs, at a few
strengths, so the search cuts where the limit is spent rather than everywhere.

`Planner` holds everything but the FLOP target: the search stage plans once; the shrink stage
plans again lower when fvcore counts the shrunk model over the target, and the latency
calibration again under corrected latency limits. Each receives this object, not a function of
`dissimilate`'s, so what a re-plan depends on is in one place.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .arguments import check_choice
from .budget import RANKINGS, Floors, Limit, floor_widths
from .flops import FlopModel
from .graph import GroupGraph
from .resize import top_channels


@dataclass
class Plan:
    widths: dict[str, int]
    keep: dict[str, list[int]]
    predicted_flops: float
    threshold: float  # on the ranked scores (per FLOP for ranking="flops"), divided by relative cost ** cost_strength
    floor_flops: float
    max_flops: float
    cost_strength: float = 0.0
    ranking: str = "saliency"
    blended: float = 0.0  # the part of the way the widths moved toward `toward` to keep `least` of the FLOPs


def plan_widths(
    graph: GroupGraph,
    scores: dict[str, torch.Tensor],
    flop_model: FlopModel,
    target: float,
    floors: Floors | None = None,
    round_to: int = 1,
    tolerance: float = 1e-3,
    limits: Sequence[Limit] = (),
    strengths: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
    ranking: str = "saliency",
    toward: np.ndarray | None = None,
    least: float = 0.0,
    originals: Mapping[str, int] | None = None,
) -> Plan:
    """Widths and kept channels for every scored group, at or under `target` FLOPs.

    `limits`: further (cost model, maximum) pairs the plan must also respect, in the same
    width vector as the FLOP model (for example predicted latency at a batch size).
    `strengths`: when the FLOP-only plan breaks a limit, each is tried as the exponent s in
    "score / relative cost ** s" (relative cost: a group's share of the broken limits per share
    of FLOPs) and the plan with the most FLOPs wins; (0,) keeps the plain global threshold.
    `ranking`: "saliency" compares raw scores, "flops" scores per FLOP of one channel (see the module).
    `toward`, `least`: where the limits leave the plan under `least` x `target` FLOPs, its widths
    move toward `toward` (widths that meet the target and the limits, such as the original
    thinned uniformly) just far enough to reach it.
    `originals`: each group's width before widening, where its floor stops (see `floor_widths`).
    """
    check_choice("ranking", ranking, RANKINGS)
    if not strengths:
        raise ValueError("strengths=(): give at least one cost strength, (0.0,) for the plain global threshold")
    floors = floors or Floors()
    space = _Space(graph, scores, flop_model, floors, round_to, target, tolerance, originals)
    space.check_reachable(limits, floors)
    ordered = space.ordered
    if ranking == "uniform":
        widths = space.uniform()
        return _plan(graph, scores, flop_model, space, widths, math.nan, 0.0, ranking)
    if ranking == "flops":
        # Costs are taken at the uniformly scaled widths that meet the target: a channel's FLOPs
        # depend on its neighbours' widths, and that is where a plan at this target sits.
        costs = space.step_costs(_uniform_widths(flop_model, space.lows, target), flop_model)
        ordered = {i: ordered[i] / max(costs[i], 1e-12) for i in space.free}
    widths, threshold = space.search(ordered, ())
    strength = blended = 0.0
    binding = [(cost, limit) for cost, limit in limits if cost(widths) > limit]
    if binding:
        # Rank by saliency per unit of cost: where the FLOP-only plan is over a limit, a group
        # that costs more of it per FLOP than the others must be worth more to keep its channels.
        # How much more is tried at a few strengths per limit (limits pull different ways: the
        # activations a stem writes, the weights a late stage reads), one limit at a time over
        # two sweeps; the plan that spends the most of the FLOP budget wins, being the closest to
        # the plan the paper's method would make. (The most summed score would not do: a global
        # threshold already keeps the top channels by count, so it wins that even when a limit
        # has cut its FLOPs in half.)
        widths, threshold, powers = _cost_aware(space, ordered, widths, limits, strengths)
        strength = max(powers)
        if toward is not None and flop_model(widths) < least * target:
            widths, blended = space.blend(widths, toward, least, limits)
    plan = _plan(graph, scores, flop_model, space, widths, threshold, strength, ranking)
    plan.blended = blended
    return plan


def _plan(
    graph: GroupGraph,
    scores: dict[str, torch.Tensor],
    flop_model: FlopModel,
    space: _Space,
    widths: np.ndarray,
    threshold: float,
    strength: float,
    ranking: str,
) -> Plan:
    """The plan of a width vector: each scored group's width and its best-scored channels."""
    plan = {flop_model.keys[i]: int(widths[i]) for i in space.scored}
    keep = {k: top_channels(scores[k], w, graph.group(k).balance) for k, w in plan.items()}
    floor_flops, max_flops = flop_model(space.lows), flop_model(space.sizes)
    return Plan(plan, keep, flop_model(widths), threshold, floor_flops, max_flops, strength, ranking)


class _Space:
    """The widths a plan can take: per group (in the FLOP model's order) its size, floor and
    rounding step, its scores sorted best first, and which groups are planned freely (the
    leaders) and which follow a leader's width (the other pieces of one split)."""

    def __init__(
        self,
        graph: GroupGraph,
        scores: dict[str, torch.Tensor],
        flop_model: FlopModel,
        floors: Floors,
        round_to: int,
        target: float,
        tolerance: float,
        originals: Mapping[str, int] | None = None,
    ) -> None:
        self.flop_model, self.target, self.tolerance, self.round_to = flop_model, target, tolerance, round_to
        groups = [graph.group(k) for k in flop_model.keys]
        self.scored = [i for i, g in enumerate(groups) if g.key in scores]
        self.steps = np.array([g.step(round_to) for g in groups])
        self.sizes = flop_model.sizes.copy()
        self.lows = floor_widths(graph, scores, flop_model, floors, round_to, originals)
        self.ordered = {i: np.sort(scores[groups[i].key].double().numpy())[::-1] for i in self.scored}
        # Tied groups (equal pieces of one split) take the width of the first of them, the leader,
        # planned on the mean of their ranked scores.
        leader_of: dict[str, int] = {}
        self.followers: dict[int, list[int]] = {}
        for i in self.scored:
            tie = groups[i].tie
            if tie is None or tie not in leader_of:
                leader_of[tie or groups[i].key] = i
                self.followers[i] = []
            else:
                self.followers[leader_of[tie]].append(i)
        self.free = list(self.followers)
        for i, tied in self.followers.items():
            if tied:
                self.ordered[i] = np.mean([self.ordered[j] for j in [i, *tied]], axis=0)

    def check_reachable(self, limits: Sequence[Limit], floors: Floors) -> None:
        """A clear error when even the floors' widths break the target or a limit."""
        settings = f"rho={floors.rho}, tau={floors.tau}, min_channels={floors.min_channels}"
        # Widths are multiples of round_to, so a large one raises every floor.
        settings += f", round_to={self.round_to}" if self.round_to > 1 else ""
        floor_flops = self.flop_model(self.lows)
        if floor_flops > self.target:
            raise ValueError(
                f"the FLOP target {self.target:,.0f} is below what the floors allow ({floor_flops:,.0f} FLOPs with "
                f"{settings}); raise `flops` or lower the floors" + (" or round_to" if self.round_to > 1 else "")
            )
        for cost, limit in limits:
            if cost(self.lows) > limit:
                raise ValueError(
                    f"{cost}: the limit {limit:.4g} is below what the floors allow ({cost(self.lows):.4g} with "
                    f"{settings}); relax the limit or lower the floors"
                )

    def follow(self, widths: np.ndarray) -> np.ndarray:
        """`widths` with every follower at its leader's width."""
        for i, tied in self.followers.items():
            widths[tied] = widths[i]
        return widths

    def fits(self, widths: np.ndarray, limits: Sequence[Limit]) -> bool:
        return self.flop_model(widths) <= self.target and all(cost(widths) <= limit for cost, limit in limits)

    def at_threshold(self, ranked: dict[int, np.ndarray], threshold: float) -> np.ndarray:
        """Each free group keeps its channels ranked at or above `threshold`, within its floor and step."""
        widths = self.sizes.copy()
        for i in self.free:
            count = int(np.searchsorted(-ranked[i], -threshold, side="right"))
            widths[i] = min(self.sizes[i], max(self.lows[i], math.ceil(count / self.steps[i]) * self.steps[i]))
        return self.follow(widths)

    def search(self, ranked: dict[int, np.ndarray], limits: Sequence[Limit]) -> tuple[np.ndarray, float]:
        """The lowest global threshold on `ranked` that fits, then a greedy fill up to the target."""
        candidates = np.unique(np.concatenate([ranked[i] for i in self.free])) if self.free else np.array([0.0])
        lo, hi = 0, len(candidates)  # invariant: candidates[hi] (or +inf) fits, candidates[lo - 1] does not
        if self.fits(self.sizes, limits):
            hi = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if self.fits(self.at_threshold(ranked, candidates[mid]), limits):
                hi = mid
            else:
                lo = mid + 1
        threshold = float(candidates[hi]) if hi < len(candidates) else math.inf
        return self.fill(self.at_threshold(ranked, threshold), ranked, limits), threshold

    def fill(self, widths: np.ndarray, ranked: dict[int, np.ndarray], limits: Sequence[Limit]) -> np.ndarray:
        """Add a step to the group whose next channel ranks best, while that still fits, until
        the plan is within `tolerance` of the target: rounding makes the threshold coarse."""
        while self.target - self.flop_model(widths) > self.tolerance * self.target:
            for i in sorted(self.free, key=lambda j: -_next_score(ranked[j], widths[j])):
                # The next multiple of the step: a floor at an original width may lie between two.
                grown = (widths[i] // self.steps[i] + 1) * self.steps[i]
                if grown > self.sizes[i]:
                    continue
                trial = widths.copy()
                trial[i] = grown
                trial = self.follow(trial)
                if self.fits(trial, limits):
                    widths = trial
                    break
            else:
                return widths
        return widths

    def blend(
        self, widths: np.ndarray, toward: np.ndarray, least: float, limits: Sequence[Limit]
    ) -> tuple[np.ndarray, float]:
        """`widths` moved the least part of the way to `toward` (each free group's width rounded
        to its step, to the nearest or, where that breaks the target or a limit, down; within its
        floor and size) that keeps `least` x the target FLOPs and every limit, and that part;
        `widths` unchanged when not even all the way does (rounding, floors)."""

        def at(part: float, rounding: Callable[[float], float]) -> np.ndarray:
            mixed = widths.copy()
            for i in self.free:
                rounded = rounding(((1 - part) * widths[i] + part * toward[i]) / self.steps[i]) * self.steps[i]
                mixed[i] = min(self.sizes[i], max(self.lows[i], rounded))
            return self.follow(mixed)

        for rounding in (round, math.floor):
            if self._enough(at(1.0, rounding), least, limits):
                lo, hi = 0.0, 1.0
                for _ in range(30):
                    mid = (lo + hi) / 2
                    lo, hi = (lo, mid) if self._enough(at(mid, rounding), least, limits) else (mid, hi)
                return at(hi, rounding), hi
        return widths, 0.0

    def _enough(self, widths: np.ndarray, least: float, limits: Sequence[Limit]) -> bool:
        # The analytic count of the original's widths can sit a hair over fvcore's (its constant
        # part): the target gets the search's tolerance here, and shrinking checks fvcore's count.
        flops = self.flop_model(widths)
        within = all(cost(widths) <= limit for cost, limit in limits)
        return within and least * self.target <= flops <= (1 + self.tolerance) * self.target

    def uniform(self) -> np.ndarray:
        """Every free group at the largest common fraction of its size that meets the target:
        each width that fraction of its size rounded to its step, within its floor and size."""

        def at(fraction: float) -> np.ndarray:
            widths = self.sizes.copy()
            for i in self.free:
                rounded = round(fraction * self.sizes[i] / self.steps[i]) * self.steps[i]
                widths[i] = min(self.sizes[i], max(self.lows[i], rounded))
            return self.follow(widths)

        lo, hi = 0.0, 1.0
        if self.fits(at(hi), ()):
            return at(hi)
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.fits(at(mid), ()) else (lo, mid)
        return at(lo)

    def step_costs(self, widths: np.ndarray, cost: Callable[[np.ndarray], float]) -> dict[int, float]:
        """Per free group, the share of `cost(widths)` that one channel of it costs at `widths`
        (one rounding step removed, tied groups with it, divided by the step)."""
        total = cost(widths)
        shares = {}
        for i in self.free:
            less = widths.copy()
            less[i] = max(widths[i] - self.steps[i], 1)
            shares[i] = (total - cost(self.follow(less))) / total / max(widths[i] - less[i], 1)
        return shares

    def relative_cost(self, widths: np.ndarray, limits: Sequence[Limit]) -> dict[int, float]:
        """Per free group, the share of the binding limits one channel of it costs over the share
        of FLOPs it costs, at `widths` (1: the group costs latency in proportion to its FLOPs).
        Clipped to [1/8, 8] so one noisy layer timing cannot decide a group alone."""
        flop_share = self.step_costs(widths, self.flop_model)
        limit_shares = [self.step_costs(widths, cost) for cost, _ in limits]
        return {
            i: float(np.clip(np.mean([s[i] for s in limit_shares]) / flop_share[i], 0.125, 8.0))
            if flop_share[i] > 0
            else 1.0
            for i in self.free
        }


def _cost_aware(
    space: _Space,
    ordered: dict[int, np.ndarray],
    widths: np.ndarray,
    limits: Sequence[Limit],
    strengths: Sequence[float],
) -> tuple[np.ndarray, float, tuple[float, ...]]:
    """The plan under every limit with the most FLOPs, ranking by saliency over each limit's
    relative cost raised to its own strength; returns widths, threshold and the strengths."""
    relative = [space.relative_cost(widths, [limit]) for limit in limits]

    def plan(powers: tuple[float, ...]) -> tuple[float, float, np.ndarray, float, tuple[float, ...]]:
        ranked = {
            i: ordered[i] / (1 + sum(p * r[i] for r, p in zip(relative, powers, strict=True))) for i in space.free
        }
        found, threshold = space.search(ranked, limits)
        return space.flop_model(found), -sum(powers), found, threshold, powers

    best = plan((strengths[0],) * len(limits))
    for _ in range(2):
        for k in range(len(limits)):
            for s in strengths:
                powers = best[4][:k] + (s,) + best[4][k + 1 :]
                if powers != best[4]:
                    best = max(best, plan(powers), key=lambda b: b[:2])
    return best[2], best[3], best[4]


def _uniform_widths(flop_model: FlopModel, lows: np.ndarray, target: float) -> np.ndarray:
    """Every group at one fraction of its size (not below its floor) such that the FLOPs meet `target`."""
    sizes = flop_model.sizes
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if flop_model(np.maximum(lows, sizes * mid)) <= target:
            lo = mid
        else:
            hi = mid
    return np.maximum(lows, sizes * lo)


def _next_score(ordered: np.ndarray, width: float) -> float:
    return float(ordered[int(width)]) if int(width) < len(ordered) else -math.inf


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
    originals: Mapping[str, int] | None = None

    def plan(self, target: float) -> Plan:
        """Widths and kept channels at or under `target` FLOPs."""
        return plan_widths(
            self.graph, self.scores, self.flop_model, target, self.floors, self.round_to,
            limits=[*self.limits, *self.footprint], ranking=self.ranking, toward=self.toward, least=self.least,
            originals=self.originals,
        )  # fmt: skip

    def under(self, limits: Sequence[Limit]) -> Planner:
        """The same planner under other latency limits."""
        return dataclasses.replace(self, limits=tuple(limits))
