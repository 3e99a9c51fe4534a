"""Inputs: what identification runs on, checked before any work starts.

The caller's model as a float32 copy on its device (the caller's dtype is remembered for the
result), its recipe, the scoring batches and the per-sample input shape. Bad input fails here,
with an error that names the argument, not deep inside a traced layer.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .adapter import (
    Recipe,
    batch_shape,
    check_batch,
    check_head,
    check_input,
    check_model,
    is_mmengine_model,
    model_device,
    model_dtype,
    resolve_model,
)
from .arguments import is_whole
from .data import Batch


@dataclass
class Inputs:
    base: nn.Module  # a float32 copy of the caller's model, never the caller's own
    recipe: Recipe | None
    batches: list[Batch]  # for scoring
    shape: tuple[int, ...]  # one sample's input shape, (C, H, W)
    batch_size: int  # of the scoring batches; 0 when identification is data-free
    dtype: torch.dtype  # the caller's model's, for the result
    more: list[Batch]  # the batches after the scoring ones, for a warm-up

    @property
    def example(self) -> torch.Tensor:
        """One zero sample on the model's device: what tracing and FLOP counting run."""
        return torch.zeros(1, *self.shape, device=model_device(self.base))


def prepare_inputs(
    model: str | Mapping[str, Any] | nn.Module,
    model_kwargs: dict[str, Any] | None,
    data: Iterable[Batch] | None,
    batches: int,
    *,
    device: torch.device | None = None,
    input_size: tuple[int, int, int] | None = None,
    needs_data: str | None = None,
    check_loss: bool = False,
    more: int = 0,
) -> Inputs:
    """Build or copy the model, take the first `batches` of `data` and check that they fit it.

    `needs_data`: why data is needed, when it is (the error says so). `check_loss`: the default classification loss
    will be used, so the model must end in a classifier head. `more`: batches to take after the
    scoring ones (as many as `data` has, up to this).
    """
    base, recipe = resolve_model(model, model_kwargs)
    check_model(base)
    taken = list(itertools.islice(iter(data), batches + more)) if data is not None else []
    taken, extra = taken[:batches], taken[batches:]
    if data is not None and not taken:
        raise ValueError(
            "`data` yielded no batches (an empty dataset or dataloader?): pass an iterable of (images, targets) "
            "batches or a dataloader that yields at least one batch"
        )
    if not isinstance(model, nn.Module):
        # A model we build goes where `device` says, else where the data already is.
        device = device if device is not None else data_device(taken)
        if device is not None:
            base = base.to(device)
    # Identification runs in float32 (tracing, FLOPs, index probes and gate gradients need its
    # range and precision); the LW-DNA model is handed back in the caller's dtype.
    dtype = model_dtype(base)
    base = base.float()
    if taken:
        batch_size, *shape = batch_shape(base, taken[0])
    elif needs_data:
        raise ValueError(f"{needs_data}: pass `data=` batches of (images, targets)")
    elif input_size is not None:
        batch_size, shape = 0, check_input_size(input_size)
    else:
        raise ValueError("pass `data` (batches of images, targets) or, for a data-free criterion, `input_size`")
    inputs = Inputs(base, recipe, taken, tuple(shape), batch_size, dtype, extra)
    if taken and check_loss and not is_mmengine_model(base):
        check_head(base)
        for index, batch in enumerate(taken + extra):
            batch_shape(base, batch)
            check_batch(batch, index)
    check_input(base, inputs.example, (batch_size, *shape) if taken else (1, *shape), None if taken else tuple(shape))
    return inputs


def data_device(batches: list) -> torch.device | None:
    """The device of the first batch's images, when they are a tensor off the CPU."""
    images = batches[0][0] if batches and isinstance(batches[0], (tuple, list)) and batches[0] else None
    if isinstance(images, torch.Tensor) and images.device.type != "cpu":
        return images.device
    return None


def check_device(device: torch.device | str | None) -> torch.device | None:
    """`device` as a torch.device, refused with a clear error when torch has no such device here."""
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


def check_ignored(model: nn.Module, ignore: tuple[str, ...]) -> None:
    """Every name in `ignore` is a layer of the model: a misspelt one would silently ignore nothing."""
    names = [name for name, _ in model.named_modules() if name]
    for name in ignore:
        if not isinstance(name, str) or name not in names:
            close = difflib.get_close_matches(str(name), names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; see model.named_modules()"
            raise ValueError(f"ignore: {type(model).__name__} has no layer {name!r}{hint}")


def check_input_size(input_size: Any) -> list[int]:
    """`input_size` as a list of positive whole numbers, one sample's (channels, height, width)."""
    sizes = list(input_size) if isinstance(input_size, (tuple, list)) else None
    if not sizes or any(not is_whole(v) for v in sizes):
        raise ValueError(f"input_size={input_size!r}: give one sample's shape as positive integers, e.g. (3, 224, 224)")
    return sizes
