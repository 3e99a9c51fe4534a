"""`dissimilate`: the whole pipeline in one call, adapter -> widen -> score -> budget -> shrink -> export."""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .adapter import (
    batch_shape,
    check_head,
    check_input,
    default_loss,
    is_mmengine_model,
    model_device,
    model_dtype,
    resolve_model,
)
from .budget import RANKINGS, Floors, Plan, floor_widths, plan_widths
from .data import Batch
from .export import SCHEMA, atomic_write, dump_spec, tensor_shapes, versions
from .flops import FLOP_CONVENTION, FlopModel, count_flops, count_params
from .graph import GroupGraph
from .initialise import initialise
from .latency import LatencyBudget, LatencyModel, latency_models, ratio_interval, time_samples
from .report import Report, layer_rows
from .score import Criterion, LossFn, average_inits, score_channels
from .shrink import shrink
from .widen import widen

_SI = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_MAX_ROUNDS = 4


@dataclass
class Result:
    """What `dissimilate` returns: the LW-DNA model, its JSON spec and a report."""

    model: nn.Module
    spec: dict[str, Any]
    report: Report
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        """Write spec.json, report.md and channels.png into `directory`, each file atomically."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory} is a file: give `save` a folder to write spec.json and the report into")
        directory.mkdir(parents=True, exist_ok=True)
        dump_spec(self.spec, directory / "spec.json")
        markdown = self.report.to_markdown()
        atomic_write(directory / "report.md", lambda p: p.write_text(markdown))
        atomic_write(directory / "channels.png", self.report.plot)
        return directory


def parse_flops(flops: float | str, original: int) -> int:
    """A FLOP target: a fraction of the original (`0.9`) or an absolute count (`"350M"`, `3.5e8`)."""
    if isinstance(flops, bool) or not isinstance(flops, (str, int, float)):
        raise ValueError(f"flops={flops!r}: give a fraction such as 0.9 or a count such as '350M'")
    if isinstance(flops, str):
        text = flops.strip().upper()
        scale = _SI.get(text[-1:], 1.0)
        try:
            value = float(text[:-1] if text[-1:] in _SI else text)
        except ValueError:
            raise ValueError(f"flops={flops!r}: give a fraction such as 0.9 or a count such as '350M'") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"flops={flops!r}: must be positive")
        return int(value * scale)
    if not math.isfinite(flops) or flops <= 0:
        raise ValueError(f"flops={flops}: must be positive")
    return int(flops * original) if flops <= 10 else int(flops)


def dissimilate(
    model: str | Mapping[str, Any] | nn.Module,
    width: float = 2.0,
    flops: float | str = 1.0,
    data: Iterable[Batch] | None = None,
    *,
    batches: int = 2,
    criterion: Criterion = "gate",
    aggregate: str = "sum",
    ranking: str = "saliency",
    inits: int = 1,
    floors: Floors | None = None,
    round_to: int = 1,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    input_size: tuple[int, int, int] | None = None,
    ignore: Iterable[str] = (),
    progress: bool = False,
    device: torch.device | str | None = None,
    latency: LatencyBudget | float | None = None,
) -> Result:
    """Find a layer-wise dissimilated (LW-DNA) version of `model` at no more than `flops`.

    Args:
        model: a timm model name (built with `model_kwargs`, pretrained=False), an mmengine model
            config (`dict(type=..., ...)`, built from mmengine's MODELS registry) or an nn.Module
            (an mmengine `BaseModel` included), which is copied, never modified.
        width: how much every channel group is widened before scoring (the paper uses 2).
        flops: the target, as a fraction of the original model's FLOPs or an absolute count ("350M").
        data: an iterable of (images, targets) batches, or for an mmengine model its dataloader
            (or the batches it yields); the first `batches` are used for scoring and the input
            size is read from them.
        criterion: 'gate' (gradient of a per-channel gate, the paper's), 'synflow' (the same
            gate gradient of SynFlow's data-free objective), 'l1', 'bn', 'random', or a
            torch-pruning `Importance` / callable mapping a torch-pruning group to channel scores.
            Without `data`, only the data-free ones apply ('synflow', 'l1', 'bn', 'random').
        aggregate: how coupled layers' gate scores combine: 'sum', 'mean' or 'norm'.
        ranking: what the one global threshold compares: 'saliency' (raw scores, the paper's) or
            'flops' (score per FLOP one channel of its group costs: a knapsack view of the budget).
        inits: score this many initialisations of the widened model (seeds `seed`, `seed + 1`,
            ...) and plan on each group's rank-wise mean score profile: less noise from one
            random initialisation, at `inits` times the scoring cost.
        floors: minimum widths per group (fractions of the widened width, and an absolute count).
        round_to: keep every width a multiple of this (8 suits most accelerators).
        loss_fn: `loss_fn(model, batch) -> loss`; by default cross-entropy of the logits, or for
            an mmengine model the sum of its `forward(..., mode='loss')` losses.
        input_size: (C, H, W) when `data` is None (data-free criteria only).
        ignore: layer names whose channel groups keep their width.
        progress: show a progress bar over the stages.
        device: where to build a model given by name or config (default: the device of the
            data's images, else the CPU); a module you pass stays on its own device. Wrappers
            (DistributedDataParallel, DataParallel, mmengine's, `torch.compile`) are unwrapped;
            a bf16/fp16 model is identified in float32 and the LW-DNA model returned in its dtype.
        latency: also keep the model no slower than `ratio` x the original on this device
            (a `LatencyBudget`, or just the ratio, timed at batch sizes 1 and 32). Layers are
            timed to plan, and the result is timed against the original to check; the plan
            then depends on those measurements, so it is not reproducible run to run.
    """
    budget = LatencyBudget(ratio=float(latency)) if isinstance(latency, (int, float)) else latency
    stages = ["graph", "widen", "score", *(["latency"] if budget else []), "search", "shrink", "verify"]
    bar = tqdm(total=len(stages), desc="dissimilate", disable=not progress, leave=False)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now
        bar.set_postfix_str(stage)
        bar.update()

    floors = floors or Floors()
    ignore = tuple(ignore)
    _check_arguments(width=width, batches=batches, round_to=round_to, inits=inits, seed=seed, ranking=ranking)
    device = _check_device(device)
    torch.manual_seed(seed)
    base, recipe = resolve_model(model, model_kwargs)
    batch_list = list(itertools.islice(iter(data), batches)) if data is not None else []
    if data is not None and not batch_list:
        raise ValueError(
            "`data` yielded no batches (an empty dataset or dataloader?): pass an iterable of (images, targets) "
            "batches or a dataloader that yields at least one batch"
        )
    if not isinstance(model, nn.Module):
        # A model we build goes where `device` says, else where the data already is.
        device = device if device is not None else _data_device(batch_list)
        if device is not None:
            base = base.to(device)
    device = model_device(base)
    # Identification runs in float32 (tracing, FLOPs, index probes and gate gradients need its
    # range and precision); the LW-DNA model is handed back in the caller's dtype.
    dtype = model_dtype(base)
    base = base.float()
    if batch_list:
        batch_size, *shape = batch_shape(base, batch_list[0])
        shape = tuple(shape)
    elif criterion == "gate":
        raise ValueError("criterion 'gate' scores on data: pass `data=`, or choose a data-free criterion ('synflow')")
    elif input_size is not None:
        shape = tuple(input_size)
    else:
        raise ValueError("pass `data` (batches of images, targets) or, for a data-free criterion, `input_size`")
    example = torch.zeros(1, *shape, device=device)
    create = recipe.create if recipe is not None else None
    if batch_list and loss_fn is None and criterion == "gate" and not is_mmengine_model(base):
        check_head(base)
    check_input(base, example, (batch_size, *shape) if batch_list else (1, *shape))

    original_flops, original_params = count_flops(base, example), count_params(base)
    target = parse_flops(flops, original_flops)
    base_groups = GroupGraph(base, example, ignore).groups
    fixed = {g.key: g.fixed for g in base_groups if g.fixed}
    done("graph")

    wide, widened = widen(base, example, width, round_to, create, ignore)
    graph = GroupGraph(wide, example, ignore)
    done("widen")

    loss = loss_fn or default_loss(wide)
    per_init = [score_channels(graph, criterion, batch_list, loss, aggregate, progress, example=example)]
    for k in range(1, inits):
        torch.manual_seed(seed + k)
        initialise(wide, create)
        per_init.append(score_channels(graph, criterion, batch_list, loss, aggregate, progress, example=example))
    scores = average_inits(per_init)
    done("score")

    flop_model = FlopModel(graph, example)
    limits: list[tuple[LatencyModel, float]] = []
    if budget:
        original = {g.key: g.size for g in base_groups}
        base_widths = np.array([original.get(k, s) for k, s in zip(flop_model.keys, flop_model.sizes, strict=True)])
        models = latency_models(flop_model, base, wide, base_widths, shape, budget)
        lowest = floor_widths(graph, scores, flop_model, floors, round_to)
        limits = _above_floors([(m, budget.aim * m.base_seconds) for m in models], lowest)
        done("latency")

    def replan(flop_target: float, limits: list = limits) -> Plan:
        return plan_widths(graph, scores, flop_model, flop_target, floors, round_to, limits=limits, ranking=ranking)

    plan = replan(target)
    if plan.max_flops < target:
        warnings.warn(
            f"the FLOP target {target:,} is above the widened model's {int(plan.max_flops):,} FLOPs (width={width}): "
            "every channel is kept. Raise `width` to use the whole budget",
            stacklevel=2,
        )
    done("search")

    lw, plan, achieved, replanning = _shrink_to_target(wide, replan, plan, target, example, ignore)
    measured: dict[int, float] = {}
    intervals: dict[int, tuple[float, float]] = {}
    measuring = 0.0
    if budget:

        def attempt(limits: list) -> tuple:
            limits = _above_floors(limits, lowest)
            plan = replan(target, limits)
            return _shrink_to_target(wide, partial(replan, limits=limits), plan, target, example, ignore)

        lw, plan, achieved, measured, intervals, measuring, more = _meet_latency(
            budget, limits, base, (lw, plan, achieved), shape, target, attempt
        )
        replanning += more
    initialise(lw, create)
    done("shrink")
    if budget:
        timings["latency"] += measuring
        timings["shrink"] -= measuring
    timings["search"] += replanning
    timings["shrink"] -= replanning

    lw.train(base.training)
    lw.to(dtype)
    report = Report(
        model=recipe.name if recipe else type(base).__name__,
        layers=layer_rows(base, wide, lw),
        flops={
            "original": original_flops,
            "widened": flop_model.total,
            "lwdna": achieved,
            "target": target,
            "predicted": int(plan.predicted_flops),
        },
        params={"original": original_params, "widened": count_params(wide), "lwdna": count_params(lw)},
        convention=FLOP_CONVENTION,
        fixed_groups=fixed,
        notes=_notes(plan, target, achieved, criterion, aggregate, len(batch_list), inits)
        + _latency_notes(budget, measured, intervals, plan),
    )
    settings = {
        "width": width,
        "criterion": criterion if isinstance(criterion, str) else "custom",
        "aggregate": aggregate,
        "ranking": ranking,
        "inits": inits,
        "batches": len(batch_list),
        "batch_size": batch_size if batch_list else 0,
        "seed": seed,
        "floors": {"rho": floors.rho, "tau": floors.tau, "min_channels": floors.min_channels},
        "round_to": round_to,
        "ignored": sorted(ignore),
        **({"latency": _latency_settings(budget, plan)} if budget else {}),
    }
    groups = {
        g.key: {"original": g.size, "widened": widened[g.key], "kept": plan.widths[g.key]}
        for g in base_groups
        if g.key in plan.widths
    }
    spec = _spec(recipe, shape, {"flops": target, "requested": flops}, report, settings, groups, lw)
    if measured:
        spec["achieved"]["latency_ratios"] = {str(b): round(r, 4) for b, r in measured.items()}
        spec["achieved"]["latency_intervals"] = {str(b): [round(x, 4) for x in i] for b, i in intervals.items()}
    done("verify")
    bar.close()
    return Result(lw, spec, report, timings)


def _data_device(batches: list) -> torch.device | None:
    """The device of the first batch's images, when they are a tensor off the CPU."""
    images = batches[0][0] if batches and isinstance(batches[0], (tuple, list)) and batches[0] else None
    if isinstance(images, torch.Tensor) and images.device.type != "cpu":
        return images.device
    return None


def _check_device(device: torch.device | str | None) -> torch.device | None:
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r}: not a torch device ({err}); give 'cpu', 'cuda', 'cuda:1', ...") from None
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(f"device={str(device)!r}: torch has no {device.type} device here; give 'cpu' or leave it out")
    return device


def _check_arguments(*, width, batches, round_to, inits, seed, ranking) -> None:
    """Refuse numeric arguments that would plan nonsense, naming the argument and what it takes."""
    whole = {"batches": batches, "round_to": round_to, "inits": inits}
    for name, value in whole.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r}: must be an integer")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width < 1:
        raise ValueError(f"width={width!r}: the widening factor must be a number of at least 1 (the paper uses 2)")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking={ranking!r}: choose one of {RANKINGS}")


def _shrink_to_target(wide, replan, plan, target, example, ignore):
    """Shrink a copy of `wide` to the plan; if fvcore counts more than the target, re-plan lower.

    The analytic model treats a few width-dependent ops (pooling, some element-wise ones) as
    constant, so each round corrects the planned target by the measured ratio.
    """
    planned, replanning = target, 0.0
    for _ in range(_MAX_ROUNDS):
        lw = copy.deepcopy(wide)
        shrink(GroupGraph(lw, example, ignore), plan)
        achieved = count_flops(lw, example)
        if achieved <= target:
            return lw, plan, achieved, replanning
        start = time.perf_counter()
        planned *= target / achieved
        plan = replan(planned)
        replanning += time.perf_counter() - start
    raise RuntimeError(f"could not get under {target:,} FLOPs (last try {achieved:,}); please report this model")


def _above_floors(limits: list, lowest: np.ndarray) -> list:
    """Limits raised to at least what the floors' widths are predicted to cost: a prediction
    is not a measurement, so a limit below it plans the fastest model the floors allow, and
    the timing against the original decides."""
    return [(m, max(limit, m(lowest))) for m, limit in limits]


def _meet_latency(budget: LatencyBudget, limits, base, candidate, shape, target, attempt):
    """Time candidates against the original and rescale each batch size's latency limit by the
    measured error, until the slowest batch size is under the budget's aim and within 3% of it
    (or the FLOP target binds). Returns the candidate that met the aim with the most FLOPs (the
    fastest one if none did), its latency ratios with their 95% intervals, and the seconds spent
    timing and re-planning.
    `attempt(limits)` shrinks anew under the given limits: (model, plan, flops, seconds planning).
    """
    best = fastest = None
    measuring = replanning = 0.0
    for round_ in range(budget.rounds):
        start = time.perf_counter()
        measured, intervals = _latency_ratios(base, candidate[0], shape, budget)
        measuring += time.perf_counter() - start
        timed = (*candidate[:3], measured, intervals)
        worst = max(measured.values())
        met = worst <= budget.aim
        if met and (best is None or candidate[2] > best[2]):
            best = timed
        if fastest is None or worst < max(fastest[3].values()):
            fastest = timed
        if round_ == budget.rounds - 1 or (met and (worst >= 0.97 * budget.aim or candidate[2] >= 0.995 * target)):
            break
        limits = [(m, limit * budget.aim / measured[m.batch]) for m, limit in limits]
        try:
            *candidate, more = attempt(limits)
        except ValueError:
            break  # re-planning under fvcore's count went below the FLOP floors: keep what was found
        replanning += more
    return (*(best or fastest), measuring, replanning)


def _latency_ratios(base: nn.Module, lw: nn.Module, shape, budget: LatencyBudget) -> tuple[dict, dict]:
    """The found model's latency over the original's at each batch size, timed side by side:
    the ratios of medians and their 95% intervals."""
    ratios, intervals = {}, {}
    for batch in budget.batch_sizes:
        samples = time_samples([base, lw], shape, batch, budget.repeats, budget.seconds)
        original, found = np.median(samples, axis=0)
        ratios[batch] = float(found / original)
        intervals[batch] = tuple(ratio_interval(samples)[1].tolist()) if len(samples) > 1 else (ratios[batch],) * 2
    return ratios, intervals


def _latency_settings(budget: LatencyBudget, plan: Plan) -> dict[str, Any]:
    return {
        "ratio": budget.ratio,
        "margin": budget.margin,
        "batch_sizes": list(budget.batch_sizes),
        "cost_strength": plan.cost_strength,
    }


def _latency_notes(budget: LatencyBudget | None, measured: dict[int, float], intervals: dict, plan: Plan) -> list[str]:
    if not budget:
        return []
    timed = ", ".join(
        f"{r:.3f}x [95%: {intervals[b][0]:.3f}-{intervals[b][1]:.3f}] at batch {b}" for b, r in measured.items()
    )
    note = (
        f"latency budget {budget.ratio}x the original on {budget.batch_sizes} (aiming at {budget.aim:.3g}x, "
        f"margin {budget.margin}): measured {timed}"
    )
    if max(measured.values()) > budget.ratio:
        advice = "raise `rounds`, relax the ratio, lower the floors or use `round_to=8`"
        note += f" (NOT met after {budget.rounds} rounds: {advice})"
    elif max(measured.values()) > budget.aim:
        note += " (under the ratio but inside the margin: timing noise may put it over on another run)"
    ranking = "saliency per unit of latency cost" if plan.cost_strength else "saliency alone (the global threshold)"
    return [note, f"channels ranked by {ranking}, cost strength {plan.cost_strength}"]


def _notes(
    plan: Plan, target: int, achieved: int, criterion: Criterion, aggregate: str, batches: int, inits: int
) -> list[str]:
    name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", type(criterion).__name__)
    source = f"on {batches} batch(es)" if batches else "data-free: no data was used"
    scored = f", {inits} initialisations averaged rank by rank" if inits > 1 else ""
    notes = [
        f"criterion: {name} (aggregate={aggregate}) {source}{scored}; channels ranked by {plan.ranking}"
        + (" per FLOP" if plan.ranking == "flops" else ""),
        f"achieved / target FLOPs: {achieved / target:.4f}; the search's analytic model predicted "
        f"{plan.predicted_flops / achieved:.4f}x the fvcore count",
    ]
    if plan.max_flops < target:
        notes.append("the widened model is below the target: every channel was kept (raise `width` to use the budget)")
    return notes


def _spec(recipe, shape, target, report: Report, settings, groups, lw: nn.Module) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "base": recipe.to_dict() if recipe else None,
        "input_size": list(shape),
        "target": target,
        "achieved": {
            "flops": report.flops["lwdna"],
            "params": report.params["lwdna"],
            "flops_ratio": round(report.flops["lwdna"] / report.flops["original"], 6),
            "params_ratio": round(report.params["lwdna"] / report.params["original"], 6),
        },
        "original": {"flops": report.flops["original"], "params": report.params["original"]},
        "flop_counter": FLOP_CONVENTION,
        **settings,
        "versions": versions(),
        "groups": groups,
        "fixed_groups": report.fixed_groups,
        "shapes": tensor_shapes(lw),
    }
