"""CIFAR-style ResNets (He et al. 2016, section 4.2) registered as timm models: `cifar_resnet20` ... `cifar_resnet110`.

Three stages of 16/32/64 channels with (depth - 2) / 6 basic blocks each and a 3x3 stem at
full resolution. Shortcuts that change shape are 1x1 convolutions with batch norm (option B),
so every channel group is prunable. Importing `lwdna_plugin` registers them, so
`timm.create_model("cifar_resnet20", num_classes=10, in_chans=1)` works like any timm model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .cifar import CifarNet, cifar_cfg

__all__ = ["CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv-BN shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))
            if stride != 1 or in_chs != out_chs
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.downsample(x))


class CifarResNet(CifarNet):
    """A CIFAR ResNet of depth 6n + 2 with the timm classifier interface."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth}: a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110)")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        stages, in_chs = [], widths[0]
        for index, out_chs in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(in_chs, out_chs, stride)] + [BasicBlock(out_chs, out_chs) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.init_head(in_chs, num_classes, drop_rate, global_pool)
        self.feature_info = [{"num_chs": w, "reduction": 2**i, "module": f"stages.{i}"} for i, w in enumerate(widths)]
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.act1(self.bn1(self.conv1(x))))


DEPTHS = (20, 32, 44, 56, 110)
default_cfgs = generate_default_cfgs({f"cifar_resnet{depth}.untrained": cifar_cfg() for depth in DEPTHS})


def _create(depth: int, pretrained: bool, **kwargs: Any) -> CifarResNet:
    if pretrained:
        raise ValueError(f"cifar_resnet{depth} has no pretrained weights; use pretrained=False")
    return build_model_with_cfg(CifarResNet, f"cifar_resnet{depth}", pretrained, depth=depth, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20: 3 blocks per stage, 0.27M parameters."""
    return _create(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32: 5 blocks per stage."""
    return _create(32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-44: 7 blocks per stage."""
    return _create(44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56: 9 blocks per stage, 0.86M parameters."""
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110: 18 blocks per stage."""
    return _create(110, pretrained, **kwargs)
