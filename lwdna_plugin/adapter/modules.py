"""The caller's module: copy it without touching it, find it inside training wrappers, and
read its device and dtype."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of `model`. A tensor a forward pass cached on a module with autograd history
    (EfficientFormer's and EfficientViT's attention-bias caches) cannot be deep-copied: it is
    copied detached instead, leaving the original model as it was."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            items = (
                value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            )
            for item in items:
                if isinstance(item, torch.Tensor) and not item.is_leaf:
                    memo[id(item)] = item.detach().clone()
    return copy.deepcopy(model, memo)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside training wrappers (DistributedDataParallel, DataParallel, mmengine's
    wrappers, `torch.compile`) and weight-averaging copies (torch's AveragedModel, timm's
    ModelEmaV2/V3, mmengine's EMA), whose names and recipe are the model's own."""
    while True:
        if isinstance(model, _wrappers()) or _is_mmengine_wrapper(model):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _wrappers() -> tuple[type, ...]:
    """Module classes that hold the model as `.module`."""
    from timm.utils.model_ema import ModelEmaV2, ModelEmaV3
    from torch.optim.swa_utils import AveragedModel

    found: tuple[type, ...] = (
        nn.parallel.DistributedDataParallel,
        nn.DataParallel,
        AveragedModel,
        ModelEmaV2,
        ModelEmaV3,
    )
    try:
        from mmengine.model import BaseAveragedModel
    except ImportError:
        return found
    return (*found, BaseAveragedModel)


def _is_mmengine_wrapper(model: nn.Module) -> bool:
    try:
        from mmengine.model import is_model_wrapper
    except ImportError:
        return False
    return is_model_wrapper(model)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point dtype of the model's parameters (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def is_mmengine_model(model: nn.Module) -> bool:
    try:
        from mmengine.model import BaseModel
    except ImportError:
        return False
    return isinstance(model, BaseModel)


def check_model(model: nn.Module) -> None:
    """A model identification can work on: it has parameters, and they hold data."""
    name = type(model).__name__
    parameters = list(model.parameters())
    if not parameters:
        raise ValueError(f"{name} has no parameters: there are no channels to widen or prune")
    quantized = next((n for n, m in model.named_modules() if "quantized" in type(m).__module__.split(".")), None)
    if quantized is not None:
        kind = type(model.get_submodule(quantized)).__name__
        raise ValueError(
            f"{name} is quantized (layer {quantized or '<model>'!r} is {kind}): widths are found on the "
            "floating-point model; dissimilate that, then quantize the LW-DNA model"
        )
    if any(t.is_meta for t in (*parameters, *model.buffers())):
        raise ValueError(
            f"{name} has parameters on the 'meta' device (shapes without data): materialise it first, "
            "e.g. model.to_empty(device='cpu') and initialise or load its weights"
        )
