"""Adapters between model zoos and the pipeline: build a model, know how to rebuild it, score it.

A `Recipe` names a model in a zoo (`zoo`, `name`, `kwargs`); `ZOOS` maps a zoo name to the
function that builds from it, so a new zoo is one registered function. An `nn.Module` that
came from timm gets a recipe when rebuilding it reproduces every tensor shape.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import Batch


def _create_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name not in timm.list_models():
        raise ValueError(f"timm has no model {name!r} (timm {timm.__version__}); see timm.list_models()")
    return timm.create_model(name, pretrained=False, **kwargs)


ZOOS: dict[str, Callable[[str, dict[str, Any]], nn.Module]] = {"timm": _create_timm}


@dataclass(frozen=True)
class Recipe:
    """How to build the base model again: a zoo, a model name and its keyword arguments."""

    zoo: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self) -> nn.Module:
        if self.zoo not in ZOOS:
            raise ValueError(f"unknown model zoo {self.zoo!r}; registered zoos: {sorted(ZOOS)}")
        return ZOOS[self.zoo](self.name, dict(self.kwargs))

    def to_dict(self) -> dict[str, Any]:
        return {"zoo": self.zoo, "name": self.name, "kwargs": dict(self.kwargs)}


def resolve_model(
    model: str | nn.Module, model_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, Recipe | None]:
    """The caller's model as a fresh module we may change, and its recipe when it has one."""
    if isinstance(model, str):
        recipe = Recipe("timm", model, dict(model_kwargs or {}))
        return recipe.create(), recipe
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a timm model name or an nn.Module, got {type(model).__name__}")
    if model_kwargs:
        raise ValueError("model_kwargs apply to a model name; the module you passed is already built")
    return copy.deepcopy(model), recipe_of(model)


def recipe_of(module: nn.Module) -> Recipe | None:
    """A timm recipe that rebuilds `module` with identical tensor shapes, or None."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name or name not in timm.list_models():
        return None
    kwargs = _observed_kwargs(module)
    try:
        rebuilt = Recipe("timm", name, kwargs).create()
    except (TypeError, ValueError, RuntimeError):
        return None
    return Recipe("timm", name, kwargs) if _same_shapes(rebuilt, module) else None


def _observed_kwargs(module: nn.Module) -> dict[str, Any]:
    """The timm keyword arguments a built model still shows: classes, input channels, image size."""
    kwargs: dict[str, Any] = {}
    if hasattr(module, "num_classes"):
        kwargs["num_classes"] = module.num_classes
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != 3:
        kwargs["in_chans"] = first_conv.in_channels
    img_size = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if img_size is not None:
        kwargs["img_size"] = list(img_size) if isinstance(img_size, (tuple, list)) else img_size
    return kwargs


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def to_device(batch: Batch, device: torch.device) -> Batch:
    images, targets = batch
    return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of a timm classifier on one batch, on the model's device."""
    images, targets = to_device(batch, model_device(model))
    logits = model(images)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return F.cross_entropy(logits, targets)
