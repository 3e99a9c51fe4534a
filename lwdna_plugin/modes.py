"""Modes: run work with a model in train or eval mode and give every submodule its own mode back.

`model.train(was_training)` afterwards would set one flag on every submodule, silently
unfreezing a norm the caller kept in eval mode; this restores each module's flag as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn


@contextmanager
def in_mode(model: nn.Module, training: bool | None = None) -> Iterator[nn.Module]:
    """Inside the block `model` is in train (`True`) or eval (`False`) mode, or left as it is
    (`None`: only the restoring matters); afterwards every submodule has its own mode back."""
    modes = [(module, module.training) for module in model.modules()]
    if training is not None:
        model.train(training)
    try:
        yield model
    finally:
        for module, training_before in modes:
            module.training = training_before
