"""Initialisations: score several draws of the widened network and average what carries over.

Only the widths survive into the freshly initialised LW-DNA model, so the noise of one random
draw is noise in the widths: scoring more draws and averaging their score profiles lowers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from .data import Batch
from .graph import GroupGraph
from .initialise import initialise
from .memory import MicroBatch
from .score import Criterion, LossFn, score_channels
from .warmup import WarmingUp


def score_initialisations(
    graph: GroupGraph,
    criterion: Criterion,
    batches: Iterable[Batch],
    loss_fn: LossFn | None,
    aggregate: str,
    *,
    inits: int,
    seed: int,
    create: Callable[[], nn.Module] | None,
    progress: bool = False,
    example: torch.Tensor | None = None,
    warming: WarmingUp | None = None,
    micro_batch: MicroBatch | int | str | None = None,
) -> dict[str, torch.Tensor]:
    """Score `graph.model` as it is, then `inits - 1` re-initialisations of it (seeds `seed + 1`,
    ...), and average them rank by rank (`average_inits`). `warming` warms up each draw before
    it is scored; `micro_batch` as in `score_channels`."""
    per_init = []
    for k in range(inits):
        if k:
            torch.manual_seed(seed + k)
            initialise(graph.model, create)
        if warming is not None:
            warming.run(graph.model)
        per_init.append(
            score_channels(
                graph, criterion, batches, loss_fn, aggregate, progress, example=example, micro_batch=micro_batch
            )
        )
    return average_inits(per_init)


def average_inits(per_init: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One score per channel from the scores of several initialisations of the same network.

    Channels of a freshly initialised layer are exchangeable, so channel i of one initialisation
    has nothing to do with channel i of another: what carries over is each group's score profile
    (its scores sorted). Each initialisation is first scaled to a unit total, so no one draw's
    gradient scale dominates; the sorted profiles are then averaged rank by rank and handed back
    to the first initialisation's channels in its own order.
    """
    if len(per_init) == 1:
        return per_init[0]
    scaled = []
    for scores in per_init:
        total = sum(float(s.double().sum()) for s in scores.values()) or 1.0
        scaled.append({k: s.double() / total for k, s in scores.items()})
    averaged = {}
    for key, first in scaled[0].items():
        profile = torch.stack([s[key].sort(descending=True).values for s in scaled]).mean(0)
        score = torch.empty_like(first)
        score[first.argsort(descending=True, stable=True)] = profile
        averaged[key] = score.float()
    return averaged
