"""The CIFAR DenseNet (Huang et al. 2017, CVPR, section 3 and table 2) registered as timm models:
`cifar_densenet40` (and `cifar_densenet100`), the paper's strongest LW-DNA case.

A 3x3 stem of 16 channels (the paper's choice for DenseNet; DenseNet-BC uses twice the growth rate), three dense
blocks of (depth - 4) / 3 BN-ReLU-3x3-conv layers, each adding `growth_rate` channels read by
every later layer of its block, BN-ReLU-1x1-conv + 2x2 average-pool transitions that keep the
width (no compression: this is DenseNet, not DenseNet-BC), and BN-ReLU, global pool, linear.
Every dense layer's growth width is its own channel group. Importing `lwdna_plugin` registers
them, so `timm.create_model("cifar_densenet40", num_classes=10)` works like any timm model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .cifar import CifarNet, cifar_cfg

__all__ = ["CifarDenseNet"]


class DenseLayer(nn.Module):
    """BN-ReLU-3x3 conv from everything before it in the block to `growth` new channels."""

    def __init__(self, in_chs: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chs, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class DenseBlock(nn.Module):
    """Layers whose outputs are concatenated to the block's input, one after another."""

    def __init__(self, in_chs: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_chs + i * growth, growth) for i in range(layers))
        self.out_chs = in_chs + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (same width) and 2x2 average pooling between blocks."""

    def __init__(self, chs: int) -> None:
        super().__init__(
            nn.BatchNorm2d(chs), nn.ReLU(inplace=True), nn.Conv2d(chs, chs, 1, bias=False), nn.AvgPool2d(2)
        )


class CifarDenseNet(CifarNet):
    """A CIFAR DenseNet of depth 3n + 4 with the timm classifier interface."""

    def __init__(
        self,
        depth: int = 40,
        growth_rate: int = 12,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth < 7 or (depth - 4) % 3:
            raise ValueError(f"depth={depth}: a CIFAR DenseNet has depth 3n + 4 (40, 100)")
        layers = (depth - 4) // 3
        chs = 16
        self.conv1 = nn.Conv2d(in_chans, chs, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        self.feature_info = []
        for index in range(3):
            block = DenseBlock(chs, growth_rate, layers)
            chs = block.out_chs
            stages.append(block)
            self.feature_info.append({"num_chs": chs, "reduction": 2**index, "module": f"stages.{len(stages) - 1}"})
            if index < 2:
                stages.append(Transition(chs))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(chs)
        self.act = nn.ReLU(inplace=True)
        self.init_head(chs, num_classes, drop_rate, global_pool)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.stages(self.conv1(x))))


DEPTHS = (40, 100)
default_cfgs = generate_default_cfgs({f"cifar_densenet{depth}.untrained": cifar_cfg() for depth in DEPTHS})


def _create(depth: int, pretrained: bool, **kwargs: Any) -> CifarDenseNet:
    if pretrained:
        raise ValueError(f"cifar_densenet{depth} has no pretrained weights; use pretrained=False")
    return build_model_with_cfg(CifarDenseNet, f"cifar_densenet{depth}", pretrained, depth=depth, **kwargs)


@register_model
def cifar_densenet40(pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    """CIFAR DenseNet-40, growth rate 12: 3 blocks of 12 layers, 1.0M parameters."""
    return _create(40, pretrained, **kwargs)


@register_model
def cifar_densenet100(pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    """CIFAR DenseNet-100, growth rate 12: 3 blocks of 32 layers."""
    return _create(100, pretrained, **kwargs)
