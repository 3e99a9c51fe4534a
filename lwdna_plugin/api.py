"""`dissimilate`: the whole pipeline in one call, one stage after another:
inputs -> graph -> widen -> score -> (latency) -> search -> shrink -> verify, each charged to its stage.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .adapter import default_loss, model_device
from .arguments import is_number
from .budget import (
    RANKINGS,
    Floors,
    Plan,
    check_flop_target,
    check_round_to,
    is_fraction,
    parse_flops,
    plan_widths,
)
from .calibrate import Calibration, Limits
from .data import Batch
from .export import Result, assemble_spec
from .flops import FLOP_CONVENTION, FlopModel, count_flops, count_params
from .footprint import DEFAULT_FOOTPRINT, Footprint, FootprintPlan
from .graph import ChannelGroup, Depth, GroupGraph
from .initialise import initialise
from .inits import score_initialisations
from .inputs import Inputs, check_device, check_ignored, prepare_inputs
from .kernels import hazard_notes
from .latency import LatencyBudget
from .memory import AUTO, MicroBatch, check_widening_fits
from .ranks import rendezvous
from .report import Report, identification_notes, layer_rows
from .score import Criterion, LossFn
from .shrink import Candidate, shrink_to_target
from .stages import StageTimer
from .warmup import Warmup, WarmupCost, warm_up, warmup_note
from .widen import widen_or_fix

__all__ = ["DEFAULTS", "Result", "dissimilate", "parse_flops"]

_STAGES = ("graph", "widen", "warmup", "score", "latency", "search", "shrink", "verify")


# Identification back-propagates (scores, warm-up) and traces autograd's graph: it works the same
# when called under torch.no_grad() or torch.inference_mode(), as evaluation code often is.
@torch.inference_mode(False)
@torch.enable_grad()
def dissimilate(
    model: str | Mapping[str, Any] | nn.Module,
    width: float = 2.0,
    flops: float | str = 1.0,
    data: Iterable[Batch] | None = None,
    *,
    batches: int = 2,
    score_batch_size: int | str | MicroBatch | None = "auto",
    criterion: Criterion = "gate",
    aggregate: str = "sum",
    ranking: str = "flops",
    inits: int = 1,
    warmup: Warmup | int | None = None,
    floors: Floors | None = None,
    round_to: int = 8,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    input_size: tuple[int, int, int] | None = None,
    ignore: Iterable[str] = (),
    progress: bool = False,
    device: torch.device | str | None = None,
    latency: LatencyBudget | float | None = None,
    footprint: Footprint | None = DEFAULT_FOOTPRINT,
) -> Result:
    """Find a layer-wise dissimilated (LW-DNA) version of `model` at no more than `flops`.

    The result's model is a fresh definition: initialised as its zoo constructor would, every
    parameter trainable (the caller's frozen flags are not carried over), ready for the caller's
    own training recipe.

    Args:
        model: a timm model name (built with `model_kwargs`, pretrained=False), an mmengine model
            config (`dict(type=..., ...)`, built from mmengine's MODELS registry) or an nn.Module
            (an mmengine `BaseModel` included), which is copied, never modified.
        width: how much every channel group is widened before scoring (the paper uses 2).
        flops: the target, as a fraction of the original model's FLOPs or an absolute count ("350M").
        data: an iterable of (images, targets) batches, or for an mmengine model its dataloader
            (or the batches it yields); the first `batches` are used for scoring and the input
            size is read from them.
        score_batch_size: score each batch in micro-batches of at most this many samples,
            accumulating gradients: the widened model then needs the activation memory of one
            micro-batch (train-mode batch norm normalises each micro-batch on its own). 'auto'
            (the default) measures the activations a sample saves and cuts batches only when
            they would not fit half of a GPU's free memory, or on a CPU 2 GiB; a `MicroBatch`
            sets the budget; None scores whole batches.
        criterion: 'gate' (gradient of a per-channel gate, the paper's), 'synflow' (the same
            gate gradient of SynFlow's data-free objective), 'l1', 'bn', 'random', or a
            torch-pruning `Importance` / callable mapping a torch-pruning group to channel scores.
            Without `data`, only the data-free ones apply ('synflow', 'l1', 'bn', 'random').
        aggregate: how coupled layers' gate scores combine: 'sum', 'mean' or 'norm'.
        ranking: what the one global threshold compares: 'flops' (the default: score per FLOP one
            channel of its group costs, a knapsack view of the budget) or 'saliency' (raw scores, the
            paper's criterion). In this project's regime study (README) per-FLOP ranking beats raw
            saliency, which trails uniform widths; per-FLOP ranking keeps more parameters.
            'uniform' ranks nothing: every group keeps one common fraction of its width; with
            `width=1` that is the original thinned uniformly, the baseline to compare against.
        inits: score this many initialisations of the widened model (seeds `seed`, `seed + 1`,
            ...) and plan on each group's rank-wise mean score profile: less noise from one
            random initialisation, at `inits` times the scoring cost.
        warmup: train the widened model this many SGD steps (or as a `Warmup` says) on the
            batches of `data` after the scoring ones before scoring it, so that scores are taken
            once the network has started to fit (each of `inits` draws is warmed up). Off by
            default; the report and spec say what it cost in image passes of training the original.
        floors: minimum widths per group (fractions of the widened width, and an absolute count).
        round_to: keep every width a multiple of this (default 8, which suits CPUs' and GPUs'
            vector units: odd widths ran up to 1.17x slower at equal FLOPs here; 1 for any width).
        loss_fn: `loss_fn(model, batch) -> loss`; by default cross-entropy of the logits, or for
            an mmengine model the sum of its `forward(..., mode='loss')` losses.
        input_size: (C, H, W) when `data` is None (data-free criteria only).
        ignore: layer names (one name or several) whose channel groups keep their width.
        progress: show a progress bar over the stages.
        device: where to build a model given by name or config (default: the device of the
            data's images, else the CPU); a module you pass stays on its own device. Wrappers
            (DistributedDataParallel, DataParallel, mmengine's, `torch.compile`) are unwrapped;
            a bf16/fp16 model is identified in float32 and the LW-DNA model returned in its dtype.
        latency: also keep the model no slower than `ratio` x the original on this device
            (a `LatencyBudget`, or just the ratio, timed at batch sizes 1 and 32). Layers are
            timed to plan, and the result is timed against the original to check; the plan
            then depends on those measurements, so it is not reproducible run to run.
        footprint: keep the activations the model writes and the parameters it holds at most
            these multiples of the original's (by default 1.0 each: no more), and at least
            `keep_flops` (0.95) of the FLOP target, moving widths toward uniform thinning where
            needed. Per-FLOP ranking otherwise keeps channels that are cheap in multiply-adds
            but move data (stems, residual streams, expansions), and the model ran up to 1.7x
            slower than the original at equal FLOPs. Analytic: no timing, the same plan on
            every machine. None plans on FLOPs alone.
    """
    budget = _latency(latency)
    warm = _warmup(warmup)
    optional = {"warmup": warm is not None, "latency": budget is not None}
    stages = [stage for stage in _STAGES if optional.get(stage, True)]
    timer = StageTimer(stages, progress)
    floors = _floors(floors)
    footprint = _footprint(footprint)
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    _check_arguments(
        width=width, batches=batches, round_to=round_to, inits=inits, seed=seed, ranking=ranking,
        score_batch_size=score_batch_size,
    )  # fmt: skip
    device = check_device(device)
    rendezvous("dissimilate")
    torch.manual_seed(seed)

    with timer("graph"):
        gate = criterion == "gate"
        inputs = prepare_inputs(
            model, model_kwargs, data, batches, device=device, input_size=input_size,
            needs_data=_needs_data(gate, warm), check_loss=gate and loss_fn is None, more=warm.steps if warm else 0,
        )  # fmt: skip
        base, example = inputs.base, inputs.example
        check_ignored(base, ignore)
        memory = _PeakMemory(example.device)
        original_flops = count_flops(base, example)
        target = parse_flops(flops, original_flops)
        base_groups = GroupGraph(base, example, ignore).groups
        check_round_to(base_groups, width, round_to)
        if is_fraction(flops) and target > original_flops:
            _warn(
                f"flops={flops!r}: the target is {target / original_flops:.2f}x the original's FLOPs, so the model "
                "grows; give a fraction of at most 1.0 to prune"
            )

    with timer("widen"):
        check_widening_fits(base, width, example.device)
        create = inputs.recipe.create if inputs.recipe is not None else None
        widened = widen_or_fix(base, example, width, round_to, create, ignore)
        wide = widened.model
        graph = GroupGraph(wide, example, ignore, widened.unwidenable)
        if widened.unwidenable:
            base_groups = GroupGraph(base, example, ignore, widened.unwidenable).groups
        depth = Depth.of(base_groups)
        shallow = depth.warning(inputs.recipe.name if inputs.recipe else type(base).__name__)
        if shallow:
            _warn(shallow)

    if budget is None:
        _off_device(base)  # from here only its layer shapes are read (the report): the widened model needs the room

    with timer("score"):
        loss = loss_fn or default_loss(wide)
        flop_model = FlopModel(graph, example)
        check_flop_target(graph, flop_model, target, original_flops, floors, round_to, tuple(example.shape[1:]))
        if not is_fraction(flops) and target > flop_model.total:
            raise ValueError(
                f"flops={flops!r}: {target:,} FLOPs is above even the widened model's {flop_model.total:,} at input "
                f"{'x'.join(map(str, inputs.shape))} (the original's: {original_flops:,}). FLOPs grow with the "
                "input size: count the target at this input, or give a fraction of the original such as 0.9"
            )
        spent: list[WarmupCost] = []
        pieces = score_batch_size if isinstance(score_batch_size, MicroBatch) else MicroBatch.parse(score_batch_size)

        def warm_wide() -> None:
            with timer("warmup"):
                ratio = flop_model.total / original_flops
                spent.append(warm_up(wide, warm, inputs.more or inputs.batches, loss, ratio))

        scores = score_initialisations(
            graph, criterion, inputs.batches, loss, aggregate, inits=inits, seed=seed, create=create,
            progress=progress, example=example, before=warm_wide if warm else None, micro_batch=pieces,
        )  # fmt: skip

    share = target / original_flops
    limited = FootprintPlan.fit(footprint, graph, scores, flop_model, base_groups, floors, round_to, share, example)
    calibration = None
    if budget:
        with timer("latency"):
            calibration = Calibration.fit(
                budget, base, base_groups, graph, scores, flop_model, floors, round_to, inputs.shape
            )

    def replan(flop_target: float, limits: Limits = calibration.limits if calibration else []) -> Plan:
        return plan_widths(
            graph, scores, flop_model, flop_target, floors, round_to, limits=[*limits, *limited.limits],
            ranking=ranking, toward=limited.toward, least=limited.least,
        )  # fmt: skip

    with timer("search"):
        plan = replan(target)
    if plan.max_flops < target:
        _warn(
            f"the FLOP target {target:,} is above the widened model's {int(plan.max_flops):,} FLOPs (width={width}): "
            "every channel is kept. Raise `width` to use the whole budget"
        )

    with timer("shrink"):
        candidate = shrink_to_target(wide, plan, replan, target, example, ignore, timer)
        timed = None
        if calibration:

            def attempt(limits: Limits) -> Candidate:
                with timer("search"):
                    plan = replan(target, limits)
                return shrink_to_target(wide, plan, lambda t: replan(t, limits), target, example, ignore, timer)

            timed = calibration.meet(candidate, attempt, target, timer)
            candidate = timed.candidate
        lw = candidate.model
        initialise(lw, create)
        _off_device(wide)

    with timer("verify"):
        lw.train(base.training)
        lw.to(inputs.dtype)
        notes = identification_notes(
            candidate.plan, target, candidate.flops, criterion, aggregate, len(inputs.batches), inits
        )
        notes += calibration.notes(timed) if calibration else []
        notes += limited.notes(candidate.plan)
        notes += [warmup_note(warm, spent, inputs.batch_size)] if warm else []
        notes += [line for line in [pieces.note(inputs.batch_size)] if line]
        notes += memory.notes()
        hazards = hazard_notes(lw, base)
        for line in hazards:
            _warn(line)
        notes += hazards
        notes += [shallow] if shallow else []
        report = _report(inputs, wide, lw, candidate, flop_model, base_groups, original_flops, target, notes)
        settings = _settings(inputs, width, criterion, aggregate, ranking, inits, seed, floors, round_to, ignore)
        settings["footprint"] = footprint.to_dict() if footprint else None
        if calibration:
            settings["latency"] = calibration.settings(candidate.plan)
        if isinstance(score_batch_size, int) or pieces.split(inputs.batch_size):
            settings["score_batch_size"] = pieces.size
        if warm:
            settings["warmup"] = {**dataclasses.asdict(warm), "spent": WarmupCost.total(spent).to_dict()}
        groups = _group_widths(base_groups, widened.sizes, candidate.plan)
        spec = assemble_spec(
            inputs.recipe, inputs.shape, {"flops": target, "requested": flops}, report, settings, groups, lw
        )
        spec["achieved"].update(timed.achieved() if timed else {})
        spec["achieved"].update(limited.achieved(candidate.plan))
    return Result(lw, spec, report, timer.close(), memory.peak_mb())


def _warn(message: str) -> None:
    """Warn at the caller's line: the first frame outside this package and torch's decorator
    wrappers (`dissimilate` runs inside two), not a line of ours or of torch's."""
    frame, level = sys._getframe(1), 2
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith("lwdna_plugin")
        or Path(frame.f_code.co_filename).parts[-3:] == ("torch", "utils", "_contextlib.py")
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


# dissimilate's keyword defaults, which the CLI and the mmengine hook default to as well.
DEFAULTS: dict[str, Any] = {k: p.default for k, p in inspect.signature(dissimilate).parameters.items()}


def _off_device(model: nn.Module) -> None:
    """Move one of our own copies off a GPU once the next stages only read its shapes."""
    if model_device(model).type == "cuda":
        model.cpu()
        torch.cuda.empty_cache()


class _PeakMemory:
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


def _report(
    inputs: Inputs,
    wide: nn.Module,
    lw: nn.Module,
    candidate: Candidate,
    flop_model: FlopModel,
    base_groups: list[ChannelGroup],
    original_flops: int,
    target: int,
    notes: list[str],
) -> Report:
    """The per-layer table and the totals before widening, widened and found."""
    base = inputs.base
    return Report(
        model=inputs.recipe.name if inputs.recipe else type(base).__name__,
        layers=layer_rows(base, wide, lw),
        flops={
            "original": original_flops,
            "widened": flop_model.total,
            "lwdna": candidate.flops,
            "target": target,
            "predicted": int(candidate.plan.predicted_flops),
        },
        params={"original": count_params(base), "widened": count_params(wide), "lwdna": count_params(lw)},
        convention=FLOP_CONVENTION,
        fixed_groups={g.key: str(g.fixed) for g in base_groups if g.fixed},
        depth=Depth.of(base_groups),
        notes=notes,
        input_size=tuple(inputs.shape),
    )


def _group_widths(base_groups: list[ChannelGroup], widened: dict[str, int], plan: Plan) -> dict[str, dict[str, int]]:
    """Each planned group's original, widened and kept width, for the spec."""
    return {
        g.key: {"original": g.size, "widened": widened[g.key], "kept": plan.widths[g.key]}
        for g in base_groups
        if g.key in plan.widths
    }


def _settings(
    inputs: Inputs, width, criterion, aggregate, ranking, inits, seed, floors: Floors, round_to, ignore
) -> dict[str, Any]:
    """The spec's record of how the widths were found."""
    return {
        "width": width,
        "criterion": criterion if isinstance(criterion, str) else "custom",
        "aggregate": aggregate,
        "ranking": ranking,
        "inits": inits,
        "batches": len(inputs.batches),
        "batch_size": inputs.batch_size,
        "seed": seed,
        "floors": {"rho": floors.rho, "tau": floors.tau, "min_channels": floors.min_channels},
        "round_to": round_to,
        "ignored": sorted(ignore),
    }


def _needs_data(gate: bool, warm: Warmup | None) -> str | None:
    if gate:
        return "criterion 'gate' scores on data (or choose a data-free criterion such as 'synflow')"
    if warm:
        return f"a warm-up ({warm.steps} steps) trains on data (or leave `warmup` out)"
    return None


def _warmup(warmup: Warmup | int | None) -> Warmup | None:
    if warmup is None or isinstance(warmup, Warmup):
        return warmup
    if isinstance(warmup, int) and not isinstance(warmup, bool):
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


def _check_arguments(*, width, batches, round_to, inits, seed, ranking, score_batch_size) -> None:
    """Refuse numeric arguments that would plan nonsense, naming the argument and what it takes."""
    whole = {"batches": batches, "round_to": round_to, "inits": inits}
    if not isinstance(score_batch_size, MicroBatch) and score_batch_size not in (None, AUTO):
        whole["score_batch_size"] = score_batch_size
    for name, value in whole.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            also = f", {AUTO!r} or None" if name == "score_batch_size" else ""
            raise ValueError(f"{name}={value!r}: must be a positive integer{also}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r}: must be an integer")
    if not is_number(width) or width < 1:
        raise ValueError(f"width={width!r}: the widening factor must be a number of at least 1 (the paper uses 2)")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking={ranking!r}: choose one of {RANKINGS}")
