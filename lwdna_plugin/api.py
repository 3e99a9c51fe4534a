"""`dissimilate`: the whole pipeline in one call, its phases one after another (`phases.py`):
inputs -> graph -> widen -> score -> (latency) -> search -> shrink -> verify, each charged to its stage.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn

from .budget import Floors, parse_flops
from .data import Batch
from .export import Result
from .footprint import DEFAULT_FOOTPRINT, Footprint
from .latency import LatencyBudget
from .memory import MicroBatch
from .phases import Identification, Options
from .ranks import rendezvous
from .score import Criterion, LossFn
from .stages import StageTimer
from .warmup import Warmup

__all__ = ["DEFAULTS", "Result", "dissimilate", "parse_flops"]


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
    options = Options.check(
        width=width, flops=flops, batches=batches, score_batch_size=score_batch_size, criterion=criterion,
        aggregate=aggregate, ranking=ranking, inits=inits, warmup=warmup, floors=floors, round_to=round_to,
        seed=seed, loss_fn=loss_fn, input_size=input_size, ignore=ignore, progress=progress, device=device,
        latency=latency, footprint=footprint,
    )  # fmt: skip
    timer = StageTimer(options.stages(), progress)
    rendezvous("dissimilate")
    torch.manual_seed(seed)
    run = Identification(options, timer)
    with timer("graph"):
        run.prepare(model, model_kwargs, data)
    with timer("widen"):
        run.widen()
    with timer("score"):
        run.score()
    run.limits()
    with timer("search"):
        plan = run.search()
    with timer("shrink"):
        run.shrink(plan)
    with timer("verify"):
        return run.verify()


# dissimilate's keyword defaults, which the CLI and the mmengine hook default to as well.
DEFAULTS: dict[str, Any] = {k: p.default for k, p in inspect.signature(dissimilate).parameters.items()}
