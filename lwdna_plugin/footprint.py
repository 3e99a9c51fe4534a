"""Footprint: what a width vector costs beyond its multiply-adds, and the default limits on it.

Equal FLOPs are not equal latency. Per-FLOP ranking keeps channels that are cheap in
multiply-adds, and those are the ones that move the most data: the stem and the residual
streams of a ResNet, the expansion layers of a MobileNet. Timed layer by layer (README,
`benchmarks/latency.py`), a layer's time follows its multiply-adds, the activations it writes
and the weights it reads. A plan that spends no more of any of the three than the original
moves no more data than the original, on any device, so `dissimilate` keeps both footprints
at most the original's by default (at a FLOP target above the original's: at most the
original widened uniformly to it): no timing, the same plan on every machine and rank.
Where that would leave the plan under `keep_flops` of the FLOP target, its widths move toward
the original thinned uniformly to the target, which meets both, just far enough.

    >>> Footprint(params=None).to_dict()  # activations limited, parameters free
    {'activations': 1.0, 'params': None, 'keep_flops': 0.95}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .arguments import is_number
from .budget import Floors, Limit, floor_widths
from .flops import FlopModel, lookup
from .graph import ChannelGroup, GroupGraph
from .graph.split_bias import layers_called
from .modes import in_mode
from .planner import Plan


@dataclass(frozen=True)
class Footprint:
    """Limits on the activations a plan writes and the parameters it holds, each as a multiple
    of the original's (1.0: no more; at a FLOP target above the original's, of the original
    widened uniformly to it). None leaves that quantity free.

    `keep_flops`: the least share of the FLOP target the plan keeps. Where the limits would
    leave it below, the widths move toward the original thinned uniformly to the target (which
    meets the target and the limits) just far enough: layer-wise widths give way before FLOPs do."""

    activations: float | None = 1.0
    params: float | None = 1.0
    keep_flops: float = 0.95

    def __post_init__(self) -> None:
        for name in ("activations", "params"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or value <= 0):
                raise ValueError(
                    f"Footprint({name}={value!r}): give a positive multiple of the original's "
                    f"{name} (1.0 = no more), or None to leave {name} free"
                )

    def to_dict(self) -> dict[str, float | None]:
        return {"activations": self.activations, "params": self.params, "keep_flops": self.keep_flops}


# dissimilate's default: no more activations or parameters than the original.
DEFAULT_FOOTPRINT = Footprint()


class LayerCost:
    """A per-layer quantity as a function of the group widths, in the FLOP model's width vector:
    `kind` "activations" (elements each layer writes, scaling with its output width) or
    "params" (each layer's own parameters, scaling as its multiply-adds do)."""

    def __init__(self, kind: str, flop_model: FlopModel, amounts: np.ndarray, slots: np.ndarray) -> None:
        self.kind = kind
        self._flop_model = flop_model
        self._amounts = amounts
        self._slots = slots  # one row per layer: the ratio indexes whose product scales its amount

    def __call__(self, widths: np.ndarray) -> float:
        ratio = self._flop_model.ratios(widths)
        return float((self._amounts * ratio[self._slots].prod(axis=1)).sum())

    def __repr__(self) -> str:
        return f"{self.kind} footprint"


def layer_costs(flop_model: FlopModel, model: nn.Module, example: torch.Tensor) -> dict[str, LayerCost]:
    """The activations and parameters of `model` (the widened model the FLOP model was fitted
    to) as functions of the widths: one forward pass of `example` with hooks reads each width-
    dependent layer's output size."""
    names = flop_model.layers
    written: dict[str, int] = {}

    def hook(name: str):
        def record(module, args, output) -> None:
            if isinstance(output, torch.Tensor):
                written[name] = written.get(name, 0) + output.numel()

        return record

    modules = {n: lookup(model, n) for n in names}
    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items() if isinstance(m, nn.Module)]
    try:
        with torch.no_grad(), in_mode(model, training=False), layers_called(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    slots = np.array([flop_model.slots(n) for n in names], dtype=int).reshape(-1, 3)
    written_amounts = np.array([written.get(n, 0) for n in names], dtype=np.float64)
    # A weight scales with its input and output widths (as the layer's multiply-adds do); a
    # one-dimensional parameter (a bias, a norm's scale) with the output width alone.
    unit = len(flop_model.ratios(flop_model.sizes)) - 1
    amounts, pairs = [], []
    for (first, second, out), module in zip(slots, modules.values(), strict=True):
        params = [module] if isinstance(module, nn.Parameter) else list(module.parameters(recurse=False))
        matrix = sum(p.numel() for p in params if p.dim() > 1)
        amounts += [matrix, sum(p.numel() for p in params if p.dim() <= 1)]
        pairs += [(first, second), (out, unit)]
    return {
        "activations": LayerCost("activations", flop_model, written_amounts, slots[:, 2:]),
        "params": LayerCost(
            "params", flop_model, np.array(amounts, dtype=np.float64), np.array(pairs, dtype=int).reshape(-1, 2)
        ),
    }


def uniform_reference(flop_model: FlopModel, base_widths: np.ndarray, share: float) -> np.ndarray:
    """The original's widths times the one factor whose (unrounded) FLOPs are `share` of the
    original's (in the analytic model's own count, so that share 1 is the original exactly):
    the original thinned (or, above 1, widened) uniformly."""
    target = share * flop_model(base_widths)
    if share == 1:
        return base_widths.astype(np.float64)
    lo, hi = 0.0, float(np.min(flop_model.sizes / np.maximum(base_widths, 1)))
    if flop_model(base_widths * hi) <= target:
        return base_widths * hi
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flop_model(base_widths * mid) <= target else (lo, mid)
    return base_widths * lo


def footprint_limits(
    footprint: Footprint,
    costs: dict[str, LayerCost],
    reference: np.ndarray,
    lowest: np.ndarray,
) -> list[Limit]:
    """A limit per limited quantity: its multiple of the reference widths' cost,
    raised to what the floors' widths cost (the floors decide below that, as they would anyway)."""
    limits = []
    for kind in costs:
        multiple = getattr(footprint, kind)
        if multiple is not None:
            cost = costs[kind]
            limits.append(Limit(cost, max(multiple * cost(reference), cost(lowest))))
    return limits


def widths_vector(flop_model: FlopModel, sizes: dict[str, int]) -> np.ndarray:
    """`sizes` (group key -> width) as a vector in the FLOP model's order; groups not in `sizes`
    keep their size in the FLOP model."""
    return np.array([sizes.get(k, s) for k, s in zip(flop_model.keys, flop_model.sizes, strict=True)])


@dataclass
class FootprintPlan:
    """The footprint's part of `dissimilate`: the limits to plan under, and what the plan spent."""

    footprint: Footprint | None
    costs: dict[str, LayerCost]
    reference: np.ndarray  # widths whose costs the limits are multiples of
    uniform: np.ndarray  # the original thinned (or widened) uniformly to the FLOP target
    limits: list[Limit]
    flop_model: FlopModel

    @classmethod
    def fit(
        cls,
        footprint: Footprint | None,
        graph: GroupGraph,
        scores: dict[str, torch.Tensor],
        flop_model: FlopModel,
        base_groups: Sequence[ChannelGroup],
        floors: Floors,
        round_to: int,
        share: float,
        example: torch.Tensor,
    ) -> FootprintPlan:
        """Costs of the widened model (`graph.model`) and the limits `footprint` sets at `share`
        of the original's FLOPs."""
        originals = {g.key: g.size for g in base_groups}
        base = widths_vector(flop_model, originals)
        uniform = uniform_reference(flop_model, base, share)
        reference = uniform if share >= 1 else base.astype(np.float64)
        if footprint is None:
            return cls(None, {}, reference, uniform, [], flop_model)
        costs = layer_costs(flop_model, graph.model, example)
        lowest = floor_widths(graph, scores, flop_model, floors, round_to, originals)
        limits = footprint_limits(footprint, costs, reference, lowest)
        return cls(footprint, costs, reference, uniform, limits, flop_model)

    @property
    def toward(self) -> np.ndarray | None:
        """Widths a plan short of `keep_flops` moves toward: the original thinned uniformly."""
        return self.uniform if self.footprint else None

    @property
    def least(self) -> float:
        return self.footprint.keep_flops if self.footprint else 0.0

    def ratios(self, plan: Plan) -> dict[str, float]:
        """Each limited quantity of the plan over the reference's (the original's)."""
        widths = widths_vector(self.flop_model, plan.widths)
        return {kind: round(cost(widths) / max(cost(self.reference), 1e-12), 4) for kind, cost in self.costs.items()}

    def achieved(self, plan: Plan) -> dict[str, dict[str, float] | float]:
        """The spec's record: the plan's footprint over the reference's, and how far its widths
        moved toward uniform thinning (empty when not limited)."""
        return {"footprint": self.ratios(plan), "toward_uniform": round(plan.blended, 4)} if self.footprint else {}

    def notes(self, plan: Plan) -> list[str]:
        """The report's line on the footprint limits and what the plan spent of them."""
        if self.footprint is None:
            return ["footprint: not limited (footprint=None): widths planned on FLOPs alone"]
        spent = ", ".join(
            f"{kind} {ratio:.3f}x (limit {getattr(self.footprint, kind)}x)" for kind, ratio in self.ratios(plan).items()
        )
        moved = (
            f"; widths moved {plan.blended:.0%} of the way toward the original thinned uniformly to keep "
            f"{self.least} of the FLOP target"
            if plan.blended
            else ""
        )
        return [f"footprint vs the original: {spent}{moved}"]
