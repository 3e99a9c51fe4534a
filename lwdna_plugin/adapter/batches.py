"""Batches: their shape as the model receives them, the checks that name a malformed batch, the
first forward pass that names data the model cannot take, and micro-batches."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn as nn

from ..arguments import describe
from ..data import Batch
from ..modes import in_mode
from .modules import is_mmengine_model


def batch_shape(model: nn.Module, batch: Any) -> tuple[int, ...]:
    """The (N, C, H, W) shape of a batch's inputs as the model's forward receives them."""
    if not is_mmengine_model(model):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not isinstance(batch[0], torch.Tensor):
            raise ValueError(
                f"each batch of `data` must be an (images, targets) pair of tensors, got {describe(batch)}: pass a "
                "list of (images, targets) tuples of tensors or a DataLoader that yields them"
            )
        images = batch[0]
        if images.layout != torch.strided:
            raise ValueError(
                f"the images of `data` are a {images.layout} tensor: models compute on dense tensors, pass "
                "images.to_dense()"
            )
        if images.is_meta:
            raise ValueError(
                "the images of `data` are on the 'meta' device (shapes without data): scoring needs real images"
            )
        return tuple(images.shape)
    inputs = model.data_preprocessor(batch, False)["inputs"]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return (len(inputs), *inputs[0].shape)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"{type(model).__name__}.data_preprocessor gave inputs of type {type(inputs).__name__}; "
            "dissimilation traces the model with one tensor input per sample"
        )
    return tuple(inputs.shape)


def check_batch(batch: Batch, index: int) -> None:
    """A batch for the default classification loss: float images and one class target per image."""
    images, targets = batch[0], batch[1]
    where = f"batch {index} of `data`"
    single = isinstance(targets, int) or (isinstance(targets, torch.Tensor) and targets.dim() == 0)
    if single and images.dim() == 3:
        raise ValueError(
            f"{where} is one sample, an image of shape {tuple(images.shape)} and one target: `data` looks like a "
            "Dataset; pass batches, e.g. torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)"
        )
    if not isinstance(targets, torch.Tensor):
        raise ValueError(
            f"{where}: targets are {describe(targets)}, not a tensor: the default cross-entropy needs a tensor of "
            "class indices (torch.as_tensor(targets)), or pass loss_fn=<your loss(model, batch)>"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{where}: images are {images.dtype}, and models compute in floating point: convert them as your "
            "training pipeline does (for example images.float() / 255, then normalise)"
        )
    if targets.dim() == 0 or len(targets) != len(images):
        count = "a single number" if targets.dim() == 0 else f"{len(targets)} target(s)"
        # Images of shape (C, H, W) are most likely one image without its batch axis.
        hint = f"; if {tuple(images.shape)} is one image, add the batch axis: images[None]" if images.dim() == 3 else ""
        raise ValueError(f"{where}: {len(images)} image(s) but {count}: give one target per image{hint}")


def micro_batches(batch: Any, size: int, minimum: int = 1) -> list[tuple[Any, float]]:
    """`batch` cut into pieces of at most `size` samples, each with its share of the batch; a
    last piece under `minimum` samples joins the one before it.

    An (images, targets, ...) tuple is sliced along its first axis; an mmengine batch dict has
    each list or tensor holding one entry per sample sliced alike.
    """
    if isinstance(batch, dict):
        count = len(batch["inputs"])
        per_sample = {k for k, v in batch.items() if isinstance(v, (list, tuple, torch.Tensor)) and len(v) == count}
        cut = lambda lo, hi: {k: (v[lo:hi] if k in per_sample else v) for k, v in batch.items()}  # noqa: E731
    else:
        count = len(batch[0])
        cut = lambda lo, hi: type(batch)(part[lo:hi] for part in batch)  # noqa: E731
    if count <= size:
        return [(batch, 1.0)]
    bounds = list(range(0, count, size)) + [count]
    if len(bounds) > 2 and count - bounds[-2] < minimum:
        del bounds[-2]
    return [(cut(lo, hi), (hi - lo) / count) for lo, hi in itertools.pairwise(bounds)]


def check_input(
    model: nn.Module, example: torch.Tensor, batch_shape: tuple[int, ...], input_size: tuple[int, ...] | None = None
) -> None:
    """One forward pass of `example` (a sample shaped like the data, or like `input_size` when
    that is what the caller gave) before anything is traced, so that data the model cannot take
    is named as such, not as a failure deep inside a layer."""
    try:
        with torch.no_grad(), in_mode(model, training=False):
            model(example)
    except (RuntimeError, ValueError, AssertionError) as err:
        # The first conv's input width names the likely cause; it is only a guess, so it is
        # consulted when the forward pass failed (a stem may transform its input first).
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))), None)
        expected = getattr(first, "in_channels", None)
        reason = str(err).splitlines()[0].rstrip(".") if str(err) else type(err).__name__
        if input_size is not None:
            hint = "give one sample's shape"
            if isinstance(first, nn.Conv2d):
                hint = f"give one sample's (channels, height, width), e.g. ({expected}, 224, 224)"
                if len(input_size) == 3 and input_size[0] != expected:
                    channels = input_size[0]
                    hint += f", or build the model for {channels} channels (model_kwargs={{'in_chans': {channels}}})"
            raise ValueError(
                f"input_size={tuple(input_size)!r}: {type(model).__name__} cannot take a sample of this shape "
                f"({reason}); {hint}"
            ) from err
        if isinstance(first, nn.Conv2d) and len(batch_shape) == 4 and batch_shape[1] != expected:
            raise ValueError(
                f"{type(model).__name__} takes {expected}-channel images but the batches are {tuple(batch_shape)} "
                f"({batch_shape[1]} channels): build the model for them "
                f"(model_kwargs={{'in_chans': {batch_shape[1]}}}) or load the data with {expected} channels "
                f"(load_batches(..., in_chans={expected}))"
            ) from err
        if isinstance(first, nn.Conv2d) and len(batch_shape) == 3:
            raise ValueError(
                f"{type(model).__name__} takes batches of images (batch, channels, height, width), got one of shape "
                f"{tuple(batch_shape)} ({reason}): add the batch dimension, e.g. images.unsqueeze(0)"
            ) from err
        raise ValueError(
            f"{type(model).__name__} cannot take inputs of shape {tuple(batch_shape)} (batch, channels, height, "
            f"width): {reason}. Give images of the size the model was built for (timm models take "
            "model_kwargs={'img_size': ...} where they support it)"
        ) from err
