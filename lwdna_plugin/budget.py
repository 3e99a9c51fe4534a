"""Budget: one global score threshold, per-group floors and rounding, at a FLOP target.

The threshold is found by bisection against the analytic `FlopModel` (and any further cost
limits, such as a `LatencyModel` per batch size); a greedy pass then adds the best-scored
remaining channels that still fit, so the plan lands just under the target even when
rounding makes the threshold coarse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .flops import FlopModel
from .graph import GroupGraph
from .widen import step_of


@dataclass(frozen=True)
class Floors:
    """Per-group minimum widths: `rho` (conv layers) and `tau` (classifier input) are fractions
    of the widened width; `min_channels` is an absolute minimum."""

    rho: float = 0.4
    tau: float = 0.45
    min_channels: int = 4


@dataclass
class Plan:
    widths: dict[str, int]
    keep: dict[str, list[int]]
    predicted_flops: float
    threshold: float
    floor_flops: float
    max_flops: float


def plan_widths(
    graph: GroupGraph,
    scores: dict[str, torch.Tensor],
    flop_model: FlopModel,
    target: float,
    floors: Floors | None = None,
    round_to: int = 1,
    tolerance: float = 1e-3,
    limits: Sequence[tuple[Callable[[np.ndarray], float], float]] = (),
) -> Plan:
    """Widths and kept channels for every scored group, at or under `target` FLOPs.

    `limits`: further (cost model, maximum) pairs the plan must also respect, in the same
    width vector as the FLOP model (for example predicted latency at a batch size).
    """
    floors = floors or Floors()
    groups = [graph.group(k) for k in flop_model.keys]
    scored = [i for i, g in enumerate(groups) if g.key in scores]
    steps = np.array([step_of(g, round_to) for g in groups])
    sizes = flop_model.sizes.copy()
    lows = sizes.copy()
    ordered: dict[int, np.ndarray] = {}
    for i in scored:
        g = groups[i]
        fraction = floors.tau if g.classifier_input else floors.rho
        low = max(math.ceil(fraction * g.size), floors.min_channels)
        lows[i] = min(g.size, math.ceil(low / steps[i]) * steps[i])
        ordered[i] = np.sort(scores[g.key].double().numpy())[::-1]
    # Tied groups (equal pieces of one split) take the width of the first of them, the leader,
    # planned on the mean of their ranked scores and the highest of their floors.
    leader_of: dict[str, int] = {}
    followers: dict[int, list[int]] = {}
    for i in scored:
        tie = groups[i].tie
        if tie is None or tie not in leader_of:
            leader_of[tie or groups[i].key] = i
            followers[i] = []
        else:
            followers[leader_of[tie]].append(i)
    free = list(followers)
    for i, tied in followers.items():
        if tied:
            ordered[i] = np.mean([ordered[j] for j in [i, *tied]], axis=0)
            lows[i] = max(lows[j] for j in [i, *tied])

    def follow(w: np.ndarray) -> np.ndarray:
        for i, tied in followers.items():
            w[tied] = w[i]
        return w

    def widths_at(threshold: float) -> np.ndarray:
        w = sizes.copy()
        for i in free:
            count = int(np.searchsorted(-ordered[i], -threshold, side="right"))
            w[i] = min(sizes[i], max(lows[i], math.ceil(count / steps[i]) * steps[i]))
        return follow(w)

    def fits(w: np.ndarray) -> bool:
        return flop_model(w) <= target and all(cost(w) <= limit for cost, limit in limits)

    floor_flops, max_flops = flop_model(follow(lows)), flop_model(sizes)
    floor_settings = f"rho={floors.rho}, tau={floors.tau}, min_channels={floors.min_channels}"
    if floor_flops > target:
        raise ValueError(
            f"the FLOP target {target:,.0f} is below what the floors allow ({floor_flops:,.0f} FLOPs with "
            f"{floor_settings}); raise `flops` or lower the floors"
        )
    for cost, limit in limits:
        if cost(follow(lows)) > limit:
            raise ValueError(
                f"{cost}: the limit {limit:.4g} is below what the floors allow ({cost(follow(lows)):.4g} with "
                f"{floor_settings}); relax the limit or lower the floors"
            )
    candidates = np.unique(np.concatenate([ordered[i] for i in free])) if free else np.array([0.0])
    lo, hi = 0, len(candidates)  # invariant: candidates[hi] (or +inf) fits, candidates[lo - 1] does not
    if fits(sizes):
        hi = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(widths_at(candidates[mid])):
            hi = mid
        else:
            lo = mid + 1
    threshold = float(candidates[hi]) if hi < len(candidates) else math.inf
    widths = widths_at(threshold)
    flops = flop_model(widths)
    while target - flops > tolerance * target:
        best = None
        for i in sorted(free, key=lambda j: -_next_score(ordered[j], widths[j])):
            if widths[i] + steps[i] > sizes[i]:
                continue
            trial = widths.copy()
            trial[i] += steps[i]
            trial = follow(trial)
            if fits(trial):
                best = (trial, flop_model(trial))
                break
        if best is None:
            break
        widths, flops = best
    keys = flop_model.keys
    plan_widths = {keys[i]: int(widths[i]) for i in scored}
    keep = {k: _top(scores[k], w, graph.group(k).balance) for k, w in plan_widths.items()}
    return Plan(plan_widths, keep, flops, threshold, floor_flops, max_flops)


def _next_score(ordered: np.ndarray, width: float) -> float:
    return float(ordered[int(width)]) if int(width) < len(ordered) else -math.inf


def _top(score: torch.Tensor, k: int, blocks: int = 1) -> list[int]:
    """Indices of the k best channels; ties go to the lower index so plans are reproducible.

    With `blocks` > 1 (a grouped conv reads the channels in that many contiguous blocks) each
    block keeps its k / blocks best, so every conv group keeps the same number of channels.
    """
    n = len(score)
    if blocks > 1 and n % blocks == 0 and k % blocks == 0:
        size = n // blocks
        picks = (_top(score[b * size : (b + 1) * size], k // blocks) for b in range(blocks))
        return sorted(b * size + j for b, block in enumerate(picks) for j in block)
    order = sorted(range(n), key=lambda i: (-float(score[i]), i))
    return sorted(order[:k])
