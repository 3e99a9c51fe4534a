"""Budget: what a plan may spend and keep: the FLOP target (parsed, and checked reachable
before any scoring), per-group floors and rounding, and further limits (`Limit`: a cost model of
the widths and its maximum, such as the footprint's or a latency model's). `planner.py`
searches the widths within them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .arguments import is_number, is_whole
from .flops import FlopModel
from .graph import ChannelGroup, GroupGraph


@dataclass(frozen=True)
class Floors:
    """Per-group minimum widths: `rho` (conv layers) and `tau` (classifier input) are fractions
    of the widened width; `min_channels` is an absolute minimum."""

    rho: float = 0.4
    tau: float = 0.45
    min_channels: int = 4

    def __post_init__(self) -> None:
        for name in ("rho", "tau"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"Floors({name}={value!r}): give a fraction of the widened width in [0, 1]")
        if not is_whole(self.min_channels):
            raise ValueError(f"Floors(min_channels={self.min_channels!r}): must be a positive integer")


RANKINGS = ("saliency", "flops", "uniform")


class Limit(NamedTuple):
    """A further cost a plan must respect: a cost model of the width vector and its maximum."""

    cost: Callable[[np.ndarray], float]
    most: float


_SI = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_flops(flops: float | str, original: int) -> int:
    """A FLOP target: a fraction of the original (`0.9`, up to 10) or an absolute count (`"350M"`,
    `3.5e8`); a string without a unit (`"0.9"`, from a command line or a config) reads as its number."""
    if isinstance(flops, bool) or not isinstance(flops, (str, int, float)):
        raise ValueError(f"flops={flops!r}: give a fraction such as 0.9 or a count such as '350M'")
    value, scale = flops, None
    if isinstance(flops, str):
        text = flops.strip().upper()
        scale = _SI.get(text[-1:])
        try:
            value = float(text[:-1] if scale is not None else text)
        except ValueError:
            raise ValueError(f"flops={flops!r}: give a fraction such as 0.9 or a count such as '350M'") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"flops={flops!r}: must be positive")
    if scale is not None:
        return int(value * scale)
    return int(value * original) if value <= 10 else int(value)


def is_fraction(flops: float | str) -> bool:
    """Whether `parse_flops` reads `flops` as a fraction of the original (else as a count)."""
    if isinstance(flops, str):
        text = flops.strip().upper()
        return text[-1:] not in _SI and float(text) <= 10
    return flops <= 10


def check_round_to(groups: Sequence[ChannelGroup], width: float, round_to: int) -> None:
    """Before widening: a step larger than every widened group would round each one up to it."""
    sizes = [math.ceil(g.size * width) for g in groups if g.prunable]
    if sizes and round_to > max(sizes):
        raise ValueError(
            f"round_to={round_to} is larger than every channel group widened by {width} (largest: {max(sizes)} "
            f"channels): each would be rounded up to {round_to} channels. Choose a step of at most {max(sizes)} "
            "(8 is the default, 1 gives any width)"
        )


def floor_widths(
    graph: GroupGraph,
    scores: dict[str, torch.Tensor],
    flop_model: FlopModel,
    floors: Floors | None = None,
    round_to: int = 1,
    originals: Mapping[str, int] | None = None,
) -> np.ndarray:
    """The narrowest width vector the floors allow, in the FLOP model's order: scored groups at
    their floor (rounded up to the step, tied groups at the highest floor of the tie), the
    others at their full width.

    `originals` (group key -> width in the model before widening) caps each floor at the
    group's original width: rounding a small group's floor up to the step (4 or 12 channels in
    steps of 8) must not force it wider than the original, or even `flops=1.0` is out of reach.
    """
    floors = floors or Floors()
    originals = originals or {}
    lows = flop_model.sizes.copy()
    highest: dict[str, float] = {}
    for i, key in enumerate(flop_model.keys):
        g = graph.group(key)
        if key not in scores:
            continue
        step = g.step(round_to)
        fraction = floors.tau if g.classifier_input else floors.rho
        low = max(math.ceil(fraction * g.size), floors.min_channels)
        lows[i] = min(g.size, originals.get(key, g.size), math.ceil(low / step) * step)
        if g.tie is not None:
            highest[g.tie] = max(highest.get(g.tie, 0), lows[i])
    for i, key in enumerate(flop_model.keys):
        tie = graph.group(key).tie
        if key in scores and tie is not None:
            lows[i] = highest[tie]
    return lows


def check_flop_target(
    graph: GroupGraph,
    flop_model: FlopModel,
    target: float,
    original: float,
    floors: Floors,
    round_to: int,
    input_size: tuple[int, ...] = (),
    originals: Mapping[str, int] | None = None,
) -> None:
    """Before any scoring: a FLOP target the floors and `round_to` cannot reach is an error that
    gives the reachable range as fractions of the original and floors that would reach it.

    Analytic (the FLOP model at the floors' widths), so it costs no forward pass; the plan
    checks again after scoring, with the footprint and latency limits."""
    prunable = {g.key: None for g in graph.groups if g.prunable}
    lowest = flop_model(floor_widths(graph, prunable, flop_model, floors, round_to, originals))
    if lowest <= target:
        return
    settings = f"rho={floors.rho}, tau={floors.tau}, min_channels={floors.min_channels}, round_to={round_to}"
    top = flop_model(flop_model.sizes)
    found = None
    # The gentlest change that reaches it: lower floors first, then any width (round_to=1) with
    # the floors as they are, then lower as well.
    for step in dict.fromkeys((round_to, 1)):
        for rho in sorted({floors.rho, *(r for r in (0.3, 0.2, 0.1, 0.05) if r < floors.rho)}, reverse=True):
            lower = Floors(rho=rho, tau=min(rho, floors.tau), min_channels=floors.min_channels)
            if (step, rho) != (round_to, floors.rho) and flop_model(
                floor_widths(graph, prunable, flop_model, lower, step, originals)
            ) <= target:
                found = (lower, step)
                break
        if found:
            break
    advice = "no floors reach it: raise `flops`"
    if found:
        lower, step = found
        floors_text = f"floors=Floors(rho={lower.rho}, tau={lower.tau})" if lower.rho != floors.rho else ""
        step_text = f"round_to={step}" if step != round_to else ""
        advice = " with ".join(t for t in (floors_text, step_text) if t) + " reaches it (or raise `flops`)"
    raise ValueError(
        f"the FLOP target {target:,.0f} ({target / original:.3f} of the original"
        + (f" at input {'x'.join(map(str, input_size))}" if input_size else "")
        + ") is below what the floors allow "
        f"({lowest:,.0f} FLOPs, {lowest / original:.3f} of the original, with {settings}): this call can reach "
        f"{lowest / original:.3f}-{top / original:.3f} of the original's FLOPs; {advice}"
    )
