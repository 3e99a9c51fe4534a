"""Gates: the per-channel multipliers whose loss gradient is the `gate` criterion's score.

A forward hook multiplies each scored layer's output by a gate of ones; one backward pass gives
every gate's gradient (for an affine norm read off its weight and bias gradients, with no gate
in the graph). On the CPU the pass runs in float64 (scores the same on any thread count; depthwise
convolutions in float32, as deterministic and far faster) and in channels-last layout (faster),
each falling back where the model's forward cannot take it. A loss that is not one finite scalar
is explained: the batch, or the first layer to blame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn as nn
from torch_pruning import ops

from .adapter import model_device
from .data import Batch
from .graph import ChannelGroup, GroupGraph
from .graph.split_bias import layers_called
from .memory import MicroBatch, batch_len
from .modes import in_mode

LossFn = Callable[[nn.Module, Batch], torch.Tensor]


NORMS = (ops.TORCH_BATCHNORM, ops.TORCH_LAYERNORM, ops.TORCH_GROUPNORM, ops.TORCH_INSTANCENORM)

# Layers whose channel axis is the last one of their output (linear layers on tokens or NHWC maps).
_FEATURES_LAST = (ops.TORCH_LINEAR, ops.TORCH_EMBED)


def gate_gradients(
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
    hooks = [model.register_forward_pre_hook(_to_float64, with_kwargs=True), *_depthwise_in_float32(model)]
    try:
        return _in_layout(graph, groups, batches, loss_fn, train, pieces)
    except RuntimeError:
        pass  # a dtype error; any other failure repeats below in float32 and is raised from there
    finally:
        for hook in hooks:
            hook.remove()
        model.to(dtype)
    return _in_layout(graph, groups, batches, loss_fn, train, pieces)


def _depthwise_in_float32(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Keep `model`'s depthwise convolutions in float32 inside the float64 pass.

    The CPU has no fast float64 kernel for them (a 9x9 depthwise layer of ConvMixer took over
    10x its float32 time, and the whole pass of Xception 6x), while oneDNN's float32 kernel
    computes each output, and each input gradient, within one thread: bit for bit the same on
    any thread count (`tests/test_gates.py`), which is all the float64 pass is for. Their outputs
    return to float64 before anything else (a gate, a norm) reads them.
    """
    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            module.float()
            hooks.append(module.register_forward_pre_hook(_to_dtype(torch.float32)))
            hooks.append(module.register_forward_hook(_output_to_float64, prepend=True))
    return hooks


def _to_dtype(dtype: torch.dtype) -> Callable[[nn.Module, tuple], tuple]:
    def cast(module: nn.Module, args: tuple) -> tuple:
        return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    return cast


def _output_to_float64(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.double()


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
        # A qkv layer whose block adds its biases apart is called as a layer, so its gate acts.
        with in_mode(model, training=train), torch.autocast(device.type, enabled=False), layers_called(model):
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
    return isinstance(module, NORMS) and isinstance(weight, nn.Parameter) and weight.dim() == 1


def _norm_gate_gradient(module: nn.Module) -> torch.Tensor | None:
    if module.weight.grad is None:
        return None
    grad = module.weight.detach() * module.weight.grad
    if module.bias is not None and module.bias.grad is not None:
        grad = grad + module.bias.detach() * module.bias.grad
    return grad


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
