"""Score every channel of every group at initialisation.

The default, `gate`, is the paper's criterion: the loss gradient with respect to a per-channel
multiplier (equal to |sum of activation x gradient| over the channel's activations), taken on
one or two real mini-batches (for an affine norm read off its weight and bias gradients,
with no gate in the graph). `synflow` needs no data: the same gate gradient of SynFlow's
objective (Tanaka et al. 2020, the summed output of the network with absolute weights on an
all-ones input). `l1`, `bn` and `random` are torch-pruning importances applied to our groups,
and any `torch_pruning.importance.Importance` (or a callable taking a torch-pruning group and
returning one score per channel) can be passed instead of a name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from .arguments import check_choice
from .data import Batch
from .gates import NORMS, LossFn, gate_gradients
from .graph import ChannelGroup, GroupGraph
from .memory import MicroBatch

Criterion = str | Callable[[tp.dependency.Group], torch.Tensor]

AGGREGATIONS = ("sum", "mean", "norm")

_IMPORTANCES: dict[str, Callable[[], Callable]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None),
    "bn": lambda: tp.importance.BNScaleImportance(normalizer=None),
    "random": lambda: tp.importance.RandomImportance(),
}
CRITERIA = ("gate", "synflow", *_IMPORTANCES)


def score_channels(
    graph: GroupGraph,
    criterion: Criterion,
    batches: Iterable[Batch] = (),
    loss_fn: LossFn | None = None,
    aggregate: str = "sum",
    progress: bool = False,
    example: torch.Tensor | None = None,
    micro_batch: MicroBatch | int | str | None = None,
) -> dict[str, torch.Tensor]:
    """One score per channel for every prunable group, keyed by group (`example`: an input, for synflow).

    `micro_batch`: run each batch through the model in pieces of at most this many samples, or
    'auto' (a `MicroBatch`) for pieces that fit the device's memory (see `memory`), accumulating
    the gradients (each piece's loss weighted by its share of the batch), so a widened model
    needs the activation memory of one piece only. Batch norm in train mode then normalises
    each piece by its own statistics.
    """
    check_choice("aggregate", aggregate, AGGREGATIONS)
    pieces = micro_batch if isinstance(micro_batch, MicroBatch) else MicroBatch.parse(micro_batch)
    scores = _scores(graph, criterion, batches, loss_fn, aggregate, progress, example, pieces)
    bad = [key for key, score in scores.items() if not torch.isfinite(score).all()]
    if bad:
        raise ValueError(
            f"criterion {criterion!r} gave non-finite scores for {len(bad)} channel group(s) ({', '.join(bad[:3])}): "
            "check the data and loss for NaN/inf, or choose another criterion"
        )
    return scores


def _scores(graph, criterion, batches, loss_fn, aggregate, progress, example, pieces) -> dict[str, torch.Tensor]:
    groups = [g for g in graph.groups if g.prunable]
    if not groups:
        return {}  # nothing can change width: there is nothing to score
    if criterion == "gate":
        if loss_fn is None:
            raise ValueError("criterion 'gate' needs data and a loss; pass `data=` batches or choose 'synflow'")
        batches = tqdm(batches, desc="scoring batches", disable=not progress, leave=False)
        return gate_saliency(graph, groups, batches, loss_fn, aggregate, pieces)
    if criterion == "synflow":
        if example is None:
            raise ValueError("criterion 'synflow' needs the input shape: pass `input_size=(C, H, W)`")
        return synflow_saliency(graph, groups, example, aggregate)
    if isinstance(criterion, str):
        if criterion not in _IMPORTANCES:
            raise ValueError(f"criterion={criterion!r}: choose one of {CRITERIA} or pass a callable")
        criterion = _IMPORTANCES[criterion]()
    scores = {}
    for g in groups:
        value = criterion(graph.tp_group(g.key))
        if value is None:
            raise ValueError(
                f"criterion {criterion!r} gave no score for channel group {g.key!r} "
                "(for 'bn': the group has no BatchNorm); choose another criterion"
            )
        scores[g.key] = value.detach().float().cpu().reshape(-1)
    return scores


def gate_saliency(
    graph: GroupGraph,
    groups: list[ChannelGroup],
    batches: Iterable[Batch],
    loss_fn: LossFn,
    aggregate: str = "sum",
    pieces: MicroBatch | None = None,
) -> dict[str, torch.Tensor]:
    """|dL/dg| for a multiplier g = 1 on each channel of each layer that outputs a group's channels
    (each batch cut as `pieces` says; whole by default)."""
    grads = gate_gradients(graph, groups, batches, loss_fn, train=True, pieces=pieces or MicroBatch())
    _sum_across_ranks(list(grads.values()))
    # Rounded to float32 after aggregating: what the thread count changed of float64 sums is gone.
    return {g.key: _aggregate(g, grads, aggregate).float() for g in groups}


def synflow_saliency(
    graph: GroupGraph, groups: list[ChannelGroup], example: torch.Tensor, aggregate: str = "sum"
) -> dict[str, torch.Tensor]:
    """Data-free gate saliency of SynFlow's objective: sum of outputs with |weights| on an all-ones input.

    Norms run in eval mode with unit scale and zero shift: zoos zero-initialise the last norm
    of a residual branch, which would cut every path through it. The pass runs in float64
    because products of absolute weights over a deep network overflow float32. The model's
    tensors are restored exactly afterwards.
    """
    model = graph.model
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
        for module in model.modules():
            if isinstance(module, NORMS) and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    model.double()
    ones = torch.ones(1, *example.shape[1:], dtype=torch.float64, device=example.device)
    try:
        by_layer = gate_gradients(graph, groups, [ones], _summed_output, train=False, pieces=MicroBatch())
    finally:
        model.to(dtype)
        model.load_state_dict(saved)
    # One global scale keeps the ranking and brings the scores into float32's range.
    grads = list(by_layer.values())
    peak = max((float(g.abs().max()) for g in grads), default=0.0)
    if not math.isfinite(peak):
        raise ValueError("synflow overflowed even in float64 on this model; choose another data-free criterion ('l1')")
    for grad in grads:
        grad.div_(peak or 1.0)
    return {g.key: _aggregate(g, by_layer, aggregate) for g in groups}


def _summed_output(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    output = model(inputs)
    return output[0].sum() if isinstance(output, (tuple, list)) else output.sum()


def _sum_across_ranks(grads: list[torch.Tensor]) -> None:
    """Under torch.distributed, sum gate gradients over ranks so that every rank plans the same widths."""
    if not grads or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    if torch.distributed.get_backend() == "nccl" and flat.device.type != "cuda":
        # NCCL reduces CUDA tensors only: a model scored on the CPU reduces on this rank's GPU.
        reduced = flat.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.all_reduce(reduced)
        flat = reduced.to(flat.device)
    else:
        torch.distributed.all_reduce(flat)
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(chunk.view_as(grad))


def _aggregate(group: ChannelGroup, grads: dict[str, torch.Tensor], how: str) -> torch.Tensor:
    """Combine the gate gradients of a group's member layers into one score per channel.

    'sum' is one gate shared by all members (|sum of gradients|, the paper's choice); 'mean'
    divides that by the member count; 'norm' averages each member's |gradient| scaled to mean 1,
    so every member counts equally whatever its gradient scale.
    """
    per_member = []
    for m in group.members:
        gate_grad = grads.get(m.name)
        if m.dim == "in" or gate_grad is None:
            continue
        # A channel may sit at several positions of one layer (an attention qkv holds q, k and v).
        grad = torch.zeros(group.size, dtype=torch.float64)
        grad.index_add_(0, torch.tensor(m.root_idxs), gate_grad.detach().double().cpu()[torch.tensor(m.positions)])
        per_member.append(grad)
    if not per_member:
        return torch.zeros(group.size)
    stacked = torch.stack(per_member)
    if how == "sum":
        score = stacked.sum(0).abs()
    elif how == "mean":
        score = stacked.sum(0).abs() / len(per_member)
    else:
        magnitude = stacked.abs()
        score = (magnitude / magnitude.mean(1, keepdim=True).clamp_min(1e-30)).mean(0)
    return score.float()
