"""Substitutes: timm layers written as a torch layer or a helper class of the file instead of being traced through.

timm's BatchNormAct2d becomes the file's own `BatchNormAct2d` (nn.BatchNorm2d, then its drop
and act layers) and timm's LayerNorm an nn.LayerNorm, both with the same tensor names. timm's
TensorFlow-style "same" layers (Conv2dSame, MaxPool2dSame, AvgPool2dSame), whose padding
depends on the input size (Python control flow fx cannot trace), become the file's own
subclasses of the torch layer with that padding. A layer that does not match what the
substitute assumes is traced through like any other module.
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


_PAD_SAME = '''def _pad_same(x, kernel_size, stride, dilation=(1, 1), value=0.0):
    """TensorFlow's "same" padding of `x` for a window of `kernel_size`: timm's pad_same."""
    pads = []
    for size, k, s, d in zip(x.shape[:-3:-1], kernel_size[::-1], stride[::-1], dilation[::-1], strict=True):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)
'''

# timm's "same" layers: their base torch layer, and the file's subclass with the same padding.
_SAME = {
    "timm.layers.conv2d_same.Conv2dSame": (
        nn.Conv2d,
        '''class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "same" padding for each input's size: timm's Conv2dSame."""

    def forward(self, x):
        x = _pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
''',
    ),
    "timm.layers.pool2d_same.MaxPool2dSame": (
        nn.MaxPool2d,
        '''class MaxPool2dSame(nn.MaxPool2d):
    """nn.MaxPool2d with TensorFlow's "same" padding for each input's size: timm's MaxPool2dSame."""

    def forward(self, x):
        x = _pad_same(x, self.kernel_size, self.stride, self.dilation, value=-float("inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)
''',
    ),
    "timm.layers.pool2d_same.AvgPool2dSame": (
        nn.AvgPool2d,
        '''class AvgPool2dSame(nn.AvgPool2d):
    """nn.AvgPool2d with TensorFlow's "same" padding for each input's size: timm's AvgPool2dSame."""

    def forward(self, x):
        x = _pad_same(x, self.kernel_size, self.stride)
        return F.avg_pool2d(x, self.kernel_size, self.stride, 0, self.ceil_mode, self.count_include_pad)
''',
    ),
}


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
                elif kind in _SAME:
                    calls[name] = _same(name, module, _SAME[kind][0])
                    helpers[type(module).__name__] = _SAME[kind][1]
                    helpers["_pad_same"] = _PAD_SAME
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


def _same(name: str, module: nn.Module, base: type[nn.Module]) -> str:
    """The call of the file's "same" subclass: the base layer's call under the subclass's name."""
    if any(True for _ in module.children()) or tuple(getattr(module, "padding", (0, 0))) not in ((0, 0), (0,)):
        raise ValueError("not timm's plain 'same' layer")
    # timm's class only overrides forward (and pads in it): compared as the base layer with its settings.
    plain = base.__new__(base)
    plain.__dict__.update(module.__dict__)
    call = constructor_call(name, plain)
    return type(module).__name__ + call.removeprefix(f"nn.{base.__name__}")


def _timm_batchnorm_act_forward() -> Any:
    from timm.layers.norm_act import BatchNormAct2d

    return BatchNormAct2d.forward
