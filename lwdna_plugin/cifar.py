"""What the CIFAR models this package registers with timm share: timm's classifier interface
(`get_classifier`, `reset_classifier`, `forward_head`) over a global pool and a linear layer,
their initialisation and their default pretrained config."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d


class CifarNet(nn.Module):
    """A CIFAR network's head and timm interface; subclasses build the body and `forward_features`."""

    num_features: int

    def init_head(self, num_features: int, num_classes: int, drop_rate: float, global_pool: str) -> None:
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.num_features = self.head_hidden_size = num_features
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(num_features, num_classes) if num_classes else nn.Identity()

    def init_weights(self) -> None:
        """He-normal convolutions (fan out), batch norms at one and zero; linear layers as torch makes them."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """timm's pretrained config of an untrained CIFAR model: 32 x 32 inputs, CIFAR-10's statistics."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }
