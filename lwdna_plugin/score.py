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
from functools import partial

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from tqdm.auto import tqdm

from .adapter import model_device
from .data import Batch
from .graph import ChannelGroup, GroupGraph
from .memory import MicroBatch, batch_len
from .modes import in_mode

LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Criterion = str | Callable[[tp.dependency.Group], torch.Tensor]

AGGREGATIONS = ("sum", "mean", "norm")

_IMPORTANCES: dict[str, Callable[[], Callable]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None),
    "bn": lambda: tp.importance.BNScaleImportance(normalizer=None),
    "random": lambda: tp.importance.RandomImportance(),
}
CRITERIA = ("gate", "synflow", *_IMPORTANCES)

_NORMS = (ops.TORCH_BATCHNORM, ops.TORCH_LAYERNORM, ops.TORCH_GROUPNORM, ops.TORCH_INSTANCENORM)

# Layers whose channel axis is the last one of their output (linear layers on tokens or NHWC maps).
_FEATURES_LAST = (ops.TORCH_LINEAR, ops.TORCH_EMBED)


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
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate={aggregate!r}: choose one of {AGGREGATIONS}")
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
    grads = _gate_gradients(graph, groups, batches, loss_fn, train=True, pieces=pieces or MicroBatch())
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
            if isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    model.double()
    ones = torch.ones(1, *example.shape[1:], dtype=torch.float64, device=example.device)
    try:
        by_layer = _gate_gradients(graph, groups, [ones], _summed_output, train=False, pieces=MicroBatch())
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


def _gate_gradients(
    graph: GroupGraph, groups: list[ChannelGroup], batches: Iterable, loss_fn: LossFn, train: bool, pieces: MicroBatch
) -> dict[str, torch.Tensor]:
    """The loss gradient of a gate on every layer that outputs a group's channels, summed over
    batches, by layer name.

    On the CPU a float32 model is scored in float64: float32 gradients change in their last bits
    with the thread count (oneDNN splits its sums by thread), near-equal channels then swap
    ranks, and the same call and seed planned other widths at 1 and 2 threads. In float64 those
    differences sit far below float32's precision, to which the scores are rounded, so a seed
    gives one spec on any thread count. A forward that mixes in float32 tensors of its own is
    scored in float32 instead.
    """
    model = graph.model
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32 or model_device(model).type != "cpu":
        return _in_layout(graph, groups, batches, loss_fn, train, pieces)
    model.double()
    cast = model.register_forward_pre_hook(_to_float64, with_kwargs=True)
    try:
        return _in_layout(graph, groups, batches, loss_fn, train, pieces)
    except RuntimeError:
        pass  # a dtype error; any other failure repeats below in float32 and is raised from there
    finally:
        cast.remove()
        model.to(dtype)
    return _in_layout(graph, groups, batches, loss_fn, train, pieces)


def _to_float64(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def cast(value):
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _in_layout(
    graph: GroupGraph, groups: list[ChannelGroup], batches: Iterable, loss_fn: LossFn, train: bool, pieces: MicroBatch
) -> dict[str, torch.Tensor]:
    """The gate pass, on the CPU in channels-last layout, where oneDNN's convolutions are faster
    (about 1.25x measured on the widened resnet50); a model whose forward cannot take that
    layout (a `.view` of a feature map) is scored in the default layout instead."""
    model = graph.model
    if _prefers_channels_last(model):
        try:
            model.to(memory_format=torch.channels_last)
            return _gate_pass(graph, groups, batches, loss_fn, train, pieces)
        except RuntimeError:
            # A layout error; any other failure repeats below and is raised from there.
            pass
        finally:
            model.to(memory_format=torch.contiguous_format)
    return _gate_pass(graph, groups, batches, loss_fn, train, pieces)


def _train_loss(loss_fn: LossFn, model: nn.Module, index: int, batch: Batch) -> torch.Tensor:
    """The loss of one scoring batch (or piece), with batch norm's refusal of a single sample in
    train mode explained: without it the user sees torch's message and no way out."""
    try:
        return loss_fn(model, batch)
    except ValueError as err:
        if batch_len(batch) != 1 or not model.training:
            raise
        raise ValueError(
            f"scoring batch {index} holds one sample and {type(model).__name__} refuses it in train mode ({err}): "
            "a batch norm needs more than one value per channel. Pass scoring batches of 2 or more samples"
        ) from err


def _prefers_channels_last(model: nn.Module) -> bool:
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return on_cpu and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _gate_pass(
    graph: GroupGraph, groups: list[ChannelGroup], batches: Iterable, loss_fn: LossFn, train: bool, pieces: MicroBatch
) -> dict[str, torch.Tensor]:
    model = graph.model
    device = model_device(model)
    gates: dict[str, torch.Tensor] = {}
    norms: dict[str, nn.Module] = {}
    hooks = []
    visited: set[str] = set()
    for g in groups:
        for m in g.members:
            if m.dim == "in" or m.optype == "parameter" or m.name in visited:
                continue
            visited.add(m.name)
            module = model.get_submodule(m.name)
            if _feeds_batchnorm_only(graph, module):
                continue
            if _is_affine_norm(module):
                norms[m.name] = module
                continue
            hooks.append(module.register_forward_hook(partial(_apply_gate, gates, m.name)))
    # Only the gates need gradients: skipping weight gradients saves about a third of backward.
    # An affine norm's output y = w * x_hat + b needs no gate: sum(dL/dy * y) per channel is
    # w * dL/dw + b * dL/db, from gradients its backward computes anyway, with no extra pass.
    requires = {p: p.requires_grad for p in model.parameters()}
    affine = [p for module in norms.values() for p in (module.weight, module.bias) if p is not None]
    for p in requires:
        p.requires_grad_(False)
    for p in affine:
        p.grad = None
        p.requires_grad_(True)
    seen = 0
    try:
        # In float32 whatever autocast the caller runs under: fp16 gate gradients underflow.
        with in_mode(model, training=train), torch.autocast(device.type, enabled=False):
            for batch in batches:
                run = partial(_train_loss, loss_fn, model, seen)
                for piece, share in pieces.cut(batch, run, device):
                    loss = run(piece)
                    check_loss(loss)
                    if not torch.isfinite(loss).all():
                        raise ValueError(_non_finite_loss(model, piece, seen, loss.detach().float().item()))
                    (loss * share if share != 1.0 else loss).backward()
                seen += 1
        grads = {name: gate.grad for name, gate in gates.items() if gate.grad is not None}
        for name, module in norms.items():
            grad = _norm_gate_gradient(module)
            if grad is not None:
                grads[name] = grad
    finally:
        for h in hooks:
            h.remove()
        for p in affine:
            p.grad = None
        for p, flag in requires.items():
            p.requires_grad_(flag)
    if seen == 0:
        raise ValueError("the data yielded no batches: gate scores need at least one (images, targets) batch")
    return grads


def _non_finite_loss(model: nn.Module, batch: Batch, index: int, value: float) -> str:
    """Why the loss on a scoring batch is not finite: the batch, or the first layer that computes
    non-finite values from finite images (a widened layer under a parametrization such as
    weight_norm divides its new, all-zero channels by their zero norm)."""
    head = f"the loss on scoring batch {index} is {value}"
    images = batch[0] if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor) else None
    if images is None or not torch.isfinite(images).all():
        return f"{head}: check the batch for non-finite images or targets (NaN, inf) before dissimilating"
    layer = _first_non_finite_layer(model, images)
    if layer is None:
        return f"{head}, although its images are finite: check its targets and the loss for non-finite values"
    return (
        f"{head}, although its images are finite: layer {layer!r} of the widened model computes non-finite "
        "values. A parametrization on a widened layer (weight_norm divides the new, zero channels by a zero "
        "norm) does this: remove it (torch.nn.utils.parametrize.remove_parametrizations) before dissimilating "
        "and apply it to the LW-DNA model, or pass ignore=[that layer]"
    )


def _first_non_finite_layer(model: nn.Module, images: torch.Tensor) -> str | None:
    """The first leaf module, in the order they run, whose output holds a NaN or inf."""
    found: list[str] = []

    def hook(name: str, module: nn.Module, inputs, output) -> None:
        if not found and isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
            found.append(name.split(".parametrizations.")[0])  # the layer, not its parametrization

    leaves = [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(partial(hook, name)) for name, m in leaves]
    try:
        with torch.no_grad():
            model(images.to(model_device(model), torch.float32 if images.is_floating_point() else None))
    except (RuntimeError, ValueError, TypeError):  # a model the images alone cannot run: no layer to name
        return None
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def check_loss(loss: object) -> None:
    """Gate scores need one scalar loss with a graph back to the model."""
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad:
        return
    if not isinstance(loss, torch.Tensor):
        got = type(loss).__name__
    elif loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}"
    else:
        got = "a tensor with no grad"
    raise ValueError(
        f"loss_fn returned {got}: gate scores need one scalar loss computed from the model's output "
        "(reduce it with .mean())"
    )


def _is_affine_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, _NORMS) and isinstance(weight, nn.Parameter) and weight.dim() == 1


def _norm_gate_gradient(module: nn.Module) -> torch.Tensor | None:
    if module.weight.grad is None:
        return None
    grad = module.weight.detach() * module.weight.grad
    if module.bias is not None and module.bias.grad is not None:
        grad = grad + module.bias.detach() * module.bias.grad
    return grad


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


def _feeds_batchnorm_only(graph: GroupGraph, module: nn.Module) -> bool:
    """A training-mode BatchNorm undoes any per-channel scale before it: a gate there has no gradient."""
    node = graph.dg.module2node.get(module)
    return bool(node and node.outputs) and all(isinstance(n.module, ops.TORCH_BATCHNORM) for n in node.outputs)


def _apply_gate(gates: dict[str, torch.Tensor], name: str, module: nn.Module, inputs, output):
    if not isinstance(output, torch.Tensor):
        return None
    dim = _output_channel_dim(module, output)
    if dim is None:
        return None
    gate = gates.get(name)
    if gate is None:
        gate = torch.ones(output.shape[dim], device=output.device, dtype=output.dtype, requires_grad=True)
        gates[name] = gate
    shape = [1] * output.dim()
    shape[dim] = -1
    return output * gate.view(shape)


def _output_channel_dim(module: nn.Module, output: torch.Tensor) -> int | None:
    """The output axis that holds the module's channels (NCHW axis 1 or the last axis)."""
    width = _width(module)
    if width is None or output.dim() < 2:
        return None
    matches = [d for d in (1, output.dim() - 1) if output.shape[d] == width]
    if len(matches) < 2:
        return matches[0] if matches else None
    # Both axes fit: linear layers and token/NHWC layer norms act on the last axis.
    channels_last = isinstance(module, _FEATURES_LAST) or (
        isinstance(module, ops.TORCH_LAYERNORM) and not type(module).__name__.endswith("2d")
    )
    return matches[-1] if channels_last else matches[0]


def _width(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim"):
        if hasattr(module, attr):
            return getattr(module, attr)
    if isinstance(module, ops.TORCH_LAYERNORM):
        return module.normalized_shape[-1]
    return None


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
