"""`dissimilate`'s phases, in the order they run, each charged to its stage of the timer:

    prepare (graph) -> widen -> score -> limits (latency) -> search -> shrink -> verify

`Options` are `dissimilate`'s arguments once checked; `Identification` holds what one phase
hands the next (the inputs, the widened graph, the scores, the planner, the candidate), so that
no phase calls back into another. timm's `build_model_with_cfg` is the model: named steps over
one state.

Worked example (what `dissimilate("resnet18", data=batches)` runs)::

    options = Options.check(width=2.0, flops=1.0, batches=2, ...)
    run = Identification(options, StageTimer(options.stages()))
    with run.timer("graph"):
        run.prepare("resnet18", None, batches)
    ...
    with run.timer("verify"):
        result = run.verify()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .adapter import default_loss, model_device
from .arguments import check_choice, is_number, is_whole
from .budget import RANKINGS, Floors, check_flop_target, check_round_to, is_fraction, parse_flops
from .calibrate import Calibration
from .caller import warn_caller
from .data import Batch
from .export import Result, assemble_spec
from .flops import FLOP_CONVENTION, FlopModel, count_flops, count_params
from .footprint import Footprint, FootprintPlan
from .graph import ChannelGroup, Depth, GroupGraph
from .initialise import initialise
from .inits import score_initialisations
from .inputs import check_device, check_ignored, prepare_inputs
from .kernels import hazard_notes
from .latency import LatencyBudget
from .memory import AUTO, MicroBatch, check_widening_fits
from .planner import Plan, Planner
from .report import Report, identification_notes, layer_rows
from .score import Criterion, LossFn
from .shrink import Shrinker
from .stages import StageTimer
from .warmup import WarmingUp, Warmup, WarmupCost, warmup_note
from .widen import widen_or_fix

STAGES = ("graph", "widen", "warmup", "score", "latency", "search", "shrink", "verify")


@dataclass(frozen=True)
class Options:
    """`dissimilate`'s arguments, checked and in the types the phases read."""

    width: float
    flops: float | str
    batches: int
    score_batch_size: int | str | MicroBatch | None
    criterion: Criterion
    aggregate: str
    ranking: str
    inits: int
    warmup: Warmup | None
    floors: Floors
    round_to: int
    seed: int
    loss_fn: LossFn | None
    input_size: tuple[int, int, int] | None
    ignore: tuple[str, ...]
    progress: bool
    device: torch.device | None
    latency: LatencyBudget | None
    footprint: Footprint | None

    @classmethod
    def check(cls, **given: Any) -> Options:
        """Refuse an argument of the wrong kind or value, naming it and what it takes."""
        latency, warmup = _latency(given["latency"]), _warmup(given["warmup"])
        floors, footprint = _floors(given["floors"]), _footprint(given["footprint"])
        ignore = given["ignore"]
        ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
        _check_numbers(given)
        device = check_device(given["device"])
        checked = {"latency": latency, "warmup": warmup, "floors": floors, "footprint": footprint}
        return cls(**{**given, **checked, "ignore": ignore, "device": device})

    def stages(self) -> list[str]:
        """The timer's stages: the warm-up's and the latency's only when asked for."""
        optional = {"warmup": self.warmup is not None, "latency": self.latency is not None}
        return [stage for stage in STAGES if optional.get(stage, True)]

    @property
    def micro_batch(self) -> MicroBatch:
        size = self.score_batch_size
        return size if isinstance(size, MicroBatch) else MicroBatch.parse(size)


class Identification:
    """One `dissimilate` call's state, phase by phase (see the module)."""

    def __init__(self, options: Options, timer: StageTimer) -> None:
        self.options, self.timer = options, timer

    def prepare(self, model: Any, model_kwargs: dict[str, Any] | None, data: Iterable[Batch] | None) -> None:
        """Inputs checked, the original's FLOPs and groups, the FLOP target ("graph" stage)."""
        o = self.options
        gate = o.criterion == "gate"
        self.inputs = prepare_inputs(
            model, model_kwargs, data, o.batches, device=o.device, input_size=o.input_size,
            needs_data=_needs_data(gate, o.warmup), check_loss=gate and o.loss_fn is None,
            more=o.warmup.steps if o.warmup else 0,
        )  # fmt: skip
        self.base, self.example = self.inputs.base, self.inputs.example
        check_ignored(self.base, o.ignore)
        self.memory = PeakMemory(self.example.device)
        self.original_flops = count_flops(self.base, self.example)
        self.target = parse_flops(o.flops, self.original_flops)
        graph = GroupGraph(self.base, self.example, o.ignore)
        self.base_groups = graph.groups
        # Searches that did not settle are taken as found in the graphs of the model's copies.
        self.stalls = graph.stalls
        check_round_to(self.base_groups, o.width, o.round_to)
        if is_fraction(o.flops) and self.target > self.original_flops:
            warn_caller(
                f"flops={o.flops!r}: the target is {self.target / self.original_flops:.2f}x the original's FLOPs, so "
                "the model grows; give a fraction of at most 1.0 to prune"
            )

    def widen(self) -> None:
        """The widened, freshly initialised model and its graph; the depth warning ("widen")."""
        o, base, example = self.options, self.base, self.example
        check_widening_fits(base, o.width, example.device)
        self.create = self.inputs.recipe.create if self.inputs.recipe is not None else None
        self.widened = widen_or_fix(base, example, o.width, o.round_to, self.create, o.ignore, self.stalls)
        self.wide = self.widened.model
        self.graph = GroupGraph(self.wide, example, o.ignore, self.widened.unwidenable, self.stalls, self.widened.ties)
        if self.widened.unwidenable:
            self.base_groups = GroupGraph(base, example, o.ignore, self.widened.unwidenable, self.stalls).groups
        name = self.inputs.recipe.name if self.inputs.recipe else type(base).__name__
        self.originals = {g.key: g.size for g in self.base_groups}  # no floor goes above these
        self.shallow = Depth.of(self.base_groups).warning(name)
        if self.shallow:
            warn_caller(self.shallow)
        if o.latency is None:
            off_device(base)  # from here only its layer shapes are read (the report): the widened model needs the room

    def score(self) -> None:
        """Every channel's score, after a warm-up when asked for ("score", "warmup")."""
        o, inputs = self.options, self.inputs
        loss = o.loss_fn or default_loss(self.wide)
        self.flop_model = FlopModel(self.graph, self.example)
        check_flop_target(
            self.graph, self.flop_model, self.target, self.original_flops, o.floors, o.round_to,
            tuple(self.example.shape[1:]), self.originals,
        )  # fmt: skip
        if not is_fraction(o.flops) and self.target > self.flop_model.total:
            raise ValueError(
                f"flops={o.flops!r}: {self.target:,} FLOPs is above even the widened model's "
                f"{self.flop_model.total:,} at input {'x'.join(map(str, inputs.shape))} (the original's: "
                f"{self.original_flops:,}). FLOPs grow with the input size: count the target at this input, or "
                "give a fraction of the original such as 0.9"
            )
        ratio = self.flop_model.total / self.original_flops
        self.warming = WarmingUp(o.warmup, inputs.more or inputs.batches, loss, ratio, self.timer) if o.warmup else None
        self.scores = score_initialisations(
            self.graph, o.criterion, inputs.batches, loss, o.aggregate, inits=o.inits, seed=o.seed,
            create=self.create, progress=o.progress, example=self.example, warming=self.warming,
            micro_batch=o.micro_batch,
        )  # fmt: skip

    def limits(self) -> None:
        """The footprint's limits, and the latency calibration when asked for ("latency")."""
        o = self.options
        share = self.target / self.original_flops
        self.limited = FootprintPlan.fit(
            o.footprint, self.graph, self.scores, self.flop_model, self.base_groups, o.floors, o.round_to, share,
            self.example,
        )  # fmt: skip
        self.calibration = None
        if o.latency:
            with self.timer("latency"):
                self.calibration = Calibration.fit(
                    o.latency, self.base, self.base_groups, self.graph, self.scores, self.flop_model, o.floors,
                    o.round_to, self.inputs.shape,
                )  # fmt: skip
        self.planner = Planner(
            self.graph, self.scores, self.flop_model, o.floors, o.round_to, o.ranking,
            limits=tuple(self.calibration.limits) if self.calibration else (), footprint=tuple(self.limited.limits),
            toward=self.limited.toward, least=self.limited.least, originals=self.originals,
        )  # fmt: skip

    def search(self) -> Plan:
        """The widths at the FLOP target ("search")."""
        plan = self.planner.plan(self.target)
        if plan.max_flops < self.target:
            warn_caller(
                f"the FLOP target {self.target:,} is above the widened model's {int(plan.max_flops):,} FLOPs "
                f"(width={self.options.width}): every channel is kept. Raise `width` to use the whole budget"
            )
        return plan

    def shrink(self, plan: Plan) -> None:
        """The LW-DNA model: shrunk to the plan, timed when a latency budget is set, initialised
        afresh ("shrink")."""
        shrinker = Shrinker(
            self.wide, self.planner, self.target, self.example, self.options.ignore, self.timer, self.stalls
        )
        self.candidate = shrinker.shrink(plan)
        self.timed = self.calibration.meet(self.candidate, shrinker) if self.calibration else None
        if self.timed:
            self.candidate = self.timed.candidate
        self.lw = self.candidate.model
        initialise(self.lw, self.create)
        off_device(self.wide)

    def verify(self) -> Result:
        """The model in the caller's mode and dtype, its report and its spec ("verify")."""
        lw, inputs, candidate = self.lw, self.inputs, self.candidate
        lw.train(self.base.training)
        lw.to(inputs.dtype)
        report = self._report(self._notes())
        spec = assemble_spec(
            inputs.recipe, inputs.shape, {"flops": self.target, "requested": self.options.flops}, report,
            self._settings(), _group_widths(self.base_groups, self.widened.sizes, candidate.plan), lw,
        )  # fmt: skip
        spec["achieved"].update(self.timed.achieved() if self.timed else {})
        spec["achieved"].update(self.limited.achieved(candidate.plan))
        return Result(lw, spec, report, self.timer.close(), self.memory.peak_mb())

    def _notes(self) -> list[str]:
        o, inputs, plan = self.options, self.inputs, self.candidate.plan
        notes = identification_notes(
            plan, self.target, self.candidate.flops, o.criterion, o.aggregate, len(inputs.batches), o.inits
        )
        notes += self.calibration.notes(self.timed) if self.calibration else []
        notes += self.limited.notes(plan)
        notes += [warmup_note(o.warmup, self.warming.spent, inputs.batch_size)] if self.warming else []
        notes += [line for line in [o.micro_batch.note(inputs.batch_size)] if line]
        notes += self.memory.notes()
        hazards = hazard_notes(self.lw, self.base)
        for line in hazards:
            warn_caller(line)
        notes += hazards
        return notes + ([self.shallow] if self.shallow else [])

    def _report(self, notes: list[str]) -> Report:
        """The per-layer table and the totals before widening, widened and found."""
        base, wide, lw, candidate = self.base, self.wide, self.lw, self.candidate
        return Report(
            model=self.inputs.recipe.name if self.inputs.recipe else type(base).__name__,
            layers=layer_rows(base, wide, lw),
            flops={
                "original": self.original_flops,
                "widened": self.flop_model.total,
                "lwdna": candidate.flops,
                "target": self.target,
                "predicted": int(candidate.plan.predicted_flops),
            },
            params={"original": count_params(base), "widened": count_params(wide), "lwdna": count_params(lw)},
            convention=FLOP_CONVENTION,
            fixed_groups={g.key: str(g.fixed) for g in self.base_groups if g.fixed},
            depth=Depth.of(self.base_groups),
            notes=notes,
            input_size=tuple(self.inputs.shape),
        )

    def _settings(self) -> dict[str, Any]:
        """The spec's record of how the widths were found."""
        o, inputs = self.options, self.inputs
        floors = o.floors
        settings: dict[str, Any] = {
            "width": o.width,
            "criterion": o.criterion if isinstance(o.criterion, str) else "custom",
            "aggregate": o.aggregate,
            "ranking": o.ranking,
            "inits": o.inits,
            "batches": len(inputs.batches),
            "batch_size": inputs.batch_size,
            "seed": o.seed,
            "floors": {"rho": floors.rho, "tau": floors.tau, "min_channels": floors.min_channels},
            "round_to": o.round_to,
            "ignored": sorted(o.ignore),
            "footprint": o.footprint.to_dict() if o.footprint else None,
        }
        if self.calibration:
            settings["latency"] = self.calibration.settings(self.candidate.plan)
        if isinstance(o.score_batch_size, int) or o.micro_batch.split(inputs.batch_size):
            settings["score_batch_size"] = o.micro_batch.size
        if o.warmup:
            spent = WarmupCost.total(self.warming.spent).to_dict()
            settings["warmup"] = {**dataclasses.asdict(o.warmup), "spent": spent}
        return settings


def _needs_data(gate: bool, warm: Warmup | None) -> str | None:
    if gate:
        return "criterion 'gate' scores on data (or choose a data-free criterion such as 'synflow')"
    if warm:
        return f"a warm-up ({warm.steps} steps) trains on data (or leave `warmup` out)"
    return None


def _warmup(warmup: Warmup | int | None) -> Warmup | None:
    if warmup is None or isinstance(warmup, Warmup):
        return warmup
    if is_whole(warmup, None):
        return Warmup(steps=warmup) if warmup else None
    raise ValueError(f"warmup={warmup!r}: give a number of SGD steps, a `Warmup(steps=...)`, or None for no warm-up")


def _latency(latency: LatencyBudget | float | None) -> LatencyBudget | None:
    if latency is None or isinstance(latency, LatencyBudget):
        return latency
    if isinstance(latency, (int, float)) and not isinstance(latency, bool):
        return LatencyBudget(ratio=float(latency))
    raise TypeError(
        f"latency={latency!r}: give the slowest allowed time as a ratio of the original's (1.0 = no slower), "
        "a `LatencyBudget(ratio=...)`, or None for no latency budget"
    )


def _footprint(footprint: Footprint | None) -> Footprint | None:
    if footprint is None or isinstance(footprint, Footprint):
        return footprint
    raise TypeError(
        f"footprint={footprint!r}: give a `Footprint(activations=1.0, params=1.0)` (multiples of the "
        "original's), or None to plan on FLOPs alone"
    )


def _floors(floors: Floors | None) -> Floors:
    if floors is None:
        return Floors()
    if isinstance(floors, Floors):
        return floors
    raise TypeError(
        f"floors={floors!r}: give a `Floors(rho=..., tau=..., min_channels=...)` (rho: the fraction of each "
        "widened group a layer keeps at least), or None for the defaults"
    )


def _check_numbers(given: Mapping[str, Any]) -> None:
    """Refuse numeric arguments that would plan nonsense, naming the argument and what it takes."""
    width, batches, round_to, inits = given["width"], given["batches"], given["round_to"], given["inits"]
    seed, ranking, score_batch_size = given["seed"], given["ranking"], given["score_batch_size"]
    whole = {"batches": batches, "round_to": round_to, "inits": inits}
    if not isinstance(score_batch_size, MicroBatch) and score_batch_size not in (None, AUTO):
        whole["score_batch_size"] = score_batch_size
    for name, value in whole.items():
        if not is_whole(value):
            also = f", {AUTO!r} or None" if name == "score_batch_size" else ""
            raise ValueError(f"{name}={value!r}: must be a positive integer{also}")
    if not is_whole(seed, least=None):
        raise ValueError(f"seed={seed!r}: must be an integer")
    if not is_number(width) or width < 1:
        raise ValueError(f"width={width!r}: the widening factor must be a number of at least 1 (the paper uses 2)")
    check_choice("ranking", ranking, RANKINGS)


def off_device(model: nn.Module) -> None:
    """Move one of our own copies off a GPU once the next stages only read its shapes."""
    if model_device(model).type == "cuda":
        model.cpu()
        torch.cuda.empty_cache()


class PeakMemory:
    """The peak memory allocated on a CUDA device from here on (identification's footprint)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def peak_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    def notes(self) -> list[str]:
        peak = self.peak_mb()
        if peak is None:
            return []
        return [f"peak memory allocated on {self.device} during identification: {peak:,.0f} MiB"]


def _group_widths(base_groups: list[ChannelGroup], widened: dict[str, int], plan: Plan) -> dict[str, dict[str, int]]:
    """Each planned group's original, widened and kept width, for the spec."""
    return {
        g.key: {"original": g.size, "widened": widened[g.key], "kept": plan.widths[g.key]}
        for g in base_groups
        if g.key in plan.widths
    }
