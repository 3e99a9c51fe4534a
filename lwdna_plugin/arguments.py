"""Arguments: the checks the public helpers share, so that a value of the wrong kind is named
with what to give, not met as a TypeError deep inside torch or torch-pruning."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

_UNSET = object()


def check_module(where: str, model: Any, inputs: Any = _UNSET, eager: bool = True) -> None:
    """`where` takes an nn.Module (`eager`: not a TorchScript one) and, when `inputs` is given,
    example inputs as a tensor."""
    if not isinstance(model, nn.Module):
        hint = " (build it with timm.create_model, or pass the name to dissimilate)" if isinstance(model, str) else ""
        raise TypeError(f"{where}: the model must be an nn.Module, got {describe(model)}{hint}")
    if eager and isinstance(model, torch.jit.ScriptModule):
        # A compiled graph: no forward hooks to trace channels with, no layers to resize.
        raise TypeError(
            f"{where}: the model is a TorchScript module ({type(model).__name__}): pass the nn.Module it was "
            "scripted or traced from (torch.jit.script/trace can be applied to the LW-DNA model afterwards)"
        )
    if inputs is not _UNSET and not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"{where}: the example inputs must be a tensor, a batch of one shaped like the data "
            f"(e.g. torch.zeros(1, 3, 224, 224)), got {describe(inputs)}"
        )


def is_number(value: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: Any, least: int | None = 1) -> bool:
    """An int (bools are not numbers here) of at least `least` (None: any int)."""
    return isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Refuse `name=value` unless it is one of `choices`, naming them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {tuple(choices)}")


def describe(value: Any) -> str:
    """What a value is, for an error: a number or string with its value, a tensor with its shape,
    a short tuple or list with its items' kinds, else its type."""
    if isinstance(value, (str, int, float)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, torch.Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)) and 0 < len(value) <= 4:
        return f"a {type(value).__name__} of ({', '.join(_qualname(v) for v in value)})"
    return f"a {_qualname(value)}"


def _qualname(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"
