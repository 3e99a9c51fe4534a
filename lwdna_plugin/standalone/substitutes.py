"""Substitutes: timm layers written as a torch layer or a helper class of the file instead of being traced through.

timm's BatchNormAct2d becomes the file's own `BatchNormAct2d` (nn.BatchNorm2d, then its drop
and act layers) and timm's LayerNorm an nn.LayerNorm, both with the same tensor names. A layer
that does not match what the substitute assumes is traced through like any other module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .layers import constructor_call, same_layer

_BATCHNORM_ACT = '''class BatchNormAct2d(nn.BatchNorm2d):
    """nn.BatchNorm2d, then `drop` and `act`: timm's BatchNormAct2d, with the same tensors and names."""

    def __init__(
        self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, drop=None, act=None
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))
'''


@dataclass(frozen=True)
class Substitutes:
    """The modules written as one constructor call, and the helper classes those calls need."""

    calls: dict[str, str] = field(default_factory=dict)  # qualified module name -> constructor call
    helpers: dict[str, str] = field(default_factory=dict)  # helper class name -> its source

    @classmethod
    def find(cls, modules: Mapping[str, nn.Module]) -> Substitutes:
        """The substitutes for `modules` (qualified name -> module, parents before children)."""
        calls: dict[str, str] = {}
        helpers: dict[str, str] = {}
        for name, module in modules.items():
            kind = f"{type(module).__module__}.{type(module).__qualname__}"
            if not name or any(name.startswith(outer + ".") for outer in calls):
                continue
            try:
                if kind == "timm.layers.norm_act.BatchNormAct2d":
                    calls[name] = _batchnorm_act(name, module)
                    helpers["BatchNormAct2d"] = _BATCHNORM_ACT
                elif kind == "timm.layers.norm.LayerNorm" and not getattr(module, "_fast_norm", True):
                    calls[name] = _layernorm(name, module)
            except ValueError:
                continue  # traced through instead
        return cls(calls, helpers)


def _batchnorm_act(name: str, module: nn.Module) -> str:
    args = [str(module.num_features)]
    defaults = {"eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True}
    args += [f"{k}={getattr(module, k)!r}" for k, v in defaults.items() if getattr(module, k) != v]
    if type(module).forward is not _timm_batchnorm_act_forward():
        raise ValueError("BatchNormAct2d.forward is not timm's")
    for child in ("drop", "act"):
        layer = getattr(module, child)
        if not isinstance(layer, nn.Identity):
            args.append(f"{child}={constructor_call(f'{name}.{child}', layer)}")
    if sorted(n for n, _ in module.named_children()) != ["act", "drop"]:
        raise ValueError("unexpected children")
    return f"BatchNormAct2d({', '.join(args)})"


def _layernorm(name: str, module: nn.Module) -> str:
    made = nn.LayerNorm(
        module.normalized_shape,
        eps=module.eps,
        elementwise_affine=module.elementwise_affine,
        bias=module.bias is not None,
    )
    # timm's LayerNorm only overrides forward: compared as an nn.LayerNorm with its settings.
    plain = nn.LayerNorm.__new__(nn.LayerNorm)
    plain.__dict__.update(module.__dict__)
    if not same_layer(made, plain):
        raise ValueError("not a plain LayerNorm")
    return constructor_call(name, made)


def _timm_batchnorm_act_forward() -> Any:
    from timm.layers.norm_act import BatchNormAct2d

    return BatchNormAct2d.forward
