"""Default losses for scoring: cross-entropy for timm classifiers on (images, targets) batches,
and an mmengine `BaseModel`'s own loss through its `data_preprocessor` and
`forward(..., mode='loss')`; each checks what it is given and names what to change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Batch
from .modules import is_mmengine_model, model_device, model_dtype


def default_loss(model: nn.Module) -> Callable[[nn.Module, Any], torch.Tensor]:
    return mmengine_loss if is_mmengine_model(model) else classification_loss


def mmengine_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The summed losses of an mmengine `BaseModel`, through its data preprocessor and loss mode."""
    data = model.data_preprocessor(batch, True)
    try:
        losses = model(**data, mode="loss") if isinstance(data, dict) else model(*data, mode="loss")
    except NotImplementedError as err:
        raise TypeError(f"{type(model).__name__}.forward has no mode='loss': scoring needs the model's loss") from err
    if not isinstance(losses, Mapping) or not losses:
        raise TypeError(
            f"{type(model).__name__}.forward(inputs, data_samples, mode='loss') returned "
            f"{type(losses).__name__}, not a dict of losses: scoring needs the model's loss"
        )
    loss, _ = model.parse_losses(dict(losses))
    return loss


def to_device(batch: Batch, device: torch.device, dtype: torch.dtype | None = None) -> Batch:
    """The batch's images and targets on `device` (what follows them in the batch, such as file
    paths, is not read); floating-point images also in `dtype` when given."""
    images, targets = batch[0], batch[1]
    cast = dtype if dtype is not None and images.is_floating_point() else None
    return images.to(device, cast, non_blocking=True), targets.to(device, non_blocking=True)


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of a classifier (or, per position, of a dense predictor) on one batch, on the
    model's device and in its dtype."""
    images, targets = to_device(batch, model_device(model), model_dtype(model))
    logits = model(images)
    if isinstance(logits, (tuple, list)) and logits and logits[0].dim() == 2:
        logits = logits[0]  # a classifier with an auxiliary head returns the main logits first
    check_logits(logits, targets)
    # Class indices of any integer dtype are fine data; torch's cross-entropy takes only int64.
    return F.cross_entropy(logits, targets if targets.is_floating_point() else targets.long())


def check_head(model: nn.Module) -> None:
    """Refuse a model with no classifier (timm's `num_classes=0`) for the default cross-entropy."""
    if getattr(model, "num_classes", None) == 0:
        raise ValueError(
            f"{type(model).__name__} has no classifier (num_classes=0, a headless/pre-training model): the "
            "default loss is cross-entropy of class logits. Pass model_kwargs={'num_classes': N} (a timm name) "
            "or loss_fn=<your loss(model, batch)>"
        )


def check_logits(logits: Any, targets: torch.Tensor) -> None:
    """The default loss's inputs: (N, classes) logits, or dense (N, classes, *positions) logits
    (segmentation), with class indices or class probabilities for each image or position."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model returned {shape}, not (batch, classes) logits: the default loss is cross-entropy of "
            "a classifier's output. For a backbone (features_only, num_classes=0) pass loss_fn=<loss(model, batch)>"
        )
    # One class index per image, or per position of dense logits.
    indices = (logits.shape[0], *logits.shape[2:])
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"targets are {targets.dtype} of shape {tuple(targets.shape)}: the default cross-entropy needs "
                f"class indices (int64, shape {indices}) or class probabilities (float, shape "
                f"{tuple(logits.shape)}). Cast them with targets.long(), or pass loss_fn"
            )
        return
    if targets.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise ValueError(f"targets are {targets.dtype}: the default cross-entropy needs int64 class indices")
    if targets.shape != indices and logits.dim() > 2:
        raise ValueError(
            f"the model returned dense logits {tuple(logits.shape)} (batch, classes, positions) and the targets "
            f"have shape {tuple(targets.shape)}: the default cross-entropy needs one class index per position, "
            f"shape {indices}. For a backbone's feature maps, or another loss, pass loss_fn=<loss(model, batch)>"
        )
    if targets.shape != indices:
        raise ValueError(
            f"targets have shape {tuple(targets.shape)}: the default cross-entropy needs one class index per "
            f"image, shape ({logits.shape[0]},). Flatten them with targets.view(-1), or pass loss_fn"
        )
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(
            f"targets hold the negative class {int(targets.min())}: the default cross-entropy needs class "
            f"indices 0..{logits.shape[1] - 1}; map the labels to those, or pass loss_fn"
        )
    if targets.numel() and int(targets.max()) >= logits.shape[1]:
        raise ValueError(
            f"targets hold classes {int(targets.min())}..{int(targets.max())} but the model has {logits.shape[1]} "
            "classes: pass model_kwargs={'num_classes': N} with N above the largest class"
        )
