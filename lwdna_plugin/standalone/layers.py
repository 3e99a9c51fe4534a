"""Layer constructors: a torch.nn layer written as the constructor call that re-creates it.

Each candidate call is evaluated and the layer it makes compared with the original (type,
`extra_repr`, tensor names, shapes and dtypes, and public settings); the first that matches is
written, so a call that reads well but builds a different layer is never used.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn as nn

# Constructor parameters passed positionally when they lead the call: channel and feature counts.
_POSITIONAL = {
    "in_channels",
    "out_channels",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_groups",
    "num_channels",
    "embed_dim",
    "num_heads",
}


def constructor_call(name: str, module: nn.Module) -> str:
    """The shortest `nn.<Layer>(...)` call found that re-creates `module` (named `name` in errors)."""
    cls = type(module)
    if getattr(nn, cls.__name__, None) is not cls:
        raise ValueError(
            f"layer {name!r} is a {cls.__module__}.{cls.__qualname__}, which is not in torch.nn's namespace: "
            "it cannot be written as an nn constructor call"
        )
    tried = []
    candidates = (
        signature_call(module, minimal=True),
        f"nn.{cls.__name__}({module.extra_repr()})",
        signature_call(module, minimal=False),
    )
    for call in candidates:
        if call is None or call in tried:
            continue
        tried.append(call)
        try:
            made = eval(call, {"nn": nn, "torch": torch, "inf": math.inf, "nan": math.nan})  # noqa: S307
        except Exception:  # a candidate the constructor rejects: try the next one
            continue
        if same_layer(made, module):
            return call
    raise ValueError(
        f"cannot write layer {name!r} ({cls.__name__}) as a constructor call: none of {tried} re-creates "
        "its tensors and settings"
    )


def signature_call(module: nn.Module, minimal: bool) -> str | None:
    """A constructor call from the layer's attributes named like its __init__ parameters.

    `minimal` leaves out arguments at their default, passes channel counts positionally and
    writes (3, 3) as 3; the caller checks that the call re-creates the layer.
    """
    cls = type(module)
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):  # a constructor without a signature
        return None
    args = []
    positional = minimal
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype"):
            positional = False
            continue
        if not hasattr(module, p.name):
            if p.default is p.empty:
                return None
            positional = False
            continue
        value = getattr(module, p.name)
        if isinstance(value, (torch.Tensor, type(None))) and p.name == "bias":
            value = value is not None
        if not isinstance(value, (bool, int, float, str, tuple, list, type(None))):
            return None
        if minimal and isinstance(value, tuple) and value and all(v == value[0] for v in value):
            value = value[0]
        if minimal and p.default is not p.empty and _equal(value, p.default):
            positional = False
            continue
        if positional and p.name in _POSITIONAL and p.default is p.empty:
            args.append(repr(value))
        else:
            positional = False
            args.append(f"{p.name}={value!r}")
    return f"nn.{cls.__name__}({', '.join(args)})"


def same_layer(made: nn.Module, module: nn.Module) -> bool:
    """Whether `made` has `module`'s type, repr, tensor layout and public settings."""
    if type(made) is not type(module) or made.extra_repr() != module.extra_repr():
        return False

    def tensors(m: nn.Module) -> dict[str, tuple]:
        items = list(m.named_parameters()) + list(m.named_buffers())
        return {n: (tuple(t.shape), t.dtype, getattr(t, "requires_grad", False)) for n, t in items}

    if tensors(made) != tensors(module):
        return False
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training" or isinstance(value, (torch.Tensor, nn.Module)):
            continue
        try:
            if getattr(made, key, object()) != value:
                return False
        except Exception:  # a setting whose == raises or is ambiguous cannot be shown to match
            return False
    return True


def _equal(a: Any, b: Any) -> bool:
    """`a == b`, with True and 1 told apart: a bool default is left out only for the same bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    try:
        return bool(a == b)
    except Exception:  # an ambiguous comparison is not equality
        return False
