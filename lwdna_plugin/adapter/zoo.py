"""Zoos: build a model from its name in a zoo, and know how to build a given model again.

A `Recipe` names a model in a zoo (`zoo`, `name`, `kwargs`); `ZOOS` maps a zoo name to the
function that builds from it, so a new zoo is one registered function. An `nn.Module` that
came from timm gets a recipe when rebuilding it reproduces every tensor shape; an mmengine
config dict is its own recipe. The registry state (`ZOOS`, `REPLACED_TIMM`) is declared here,
beside the only functions that write it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import torch.nn as nn

from ..arguments import check_module
from .modules import copy_model, unwrap

# timm's wrappers of a backbone made with `features_only=True`.
FEATURE_WRAPPERS = tuple(
    getattr(timm.models, name)
    for name in ("FeatureListNet", "FeatureDictNet", "FeatureHookNet", "FeatureGetterNet")
    if hasattr(timm.models, name)
)


# timm's own entrypoints of names that `register_timm(..., overwrite=True)` replaced: a base model
# is always rebuilt by its zoo's constructor, never by the LW-DNA model registered over it.
REPLACED_TIMM: dict[str, Callable[..., nn.Module]] = {}


def keep_timm_entrypoint(name: str) -> None:
    """Keep timm's own entrypoint of `name` before a model is registered over it (once: a name
    registered over twice keeps timm's, not the first LW-DNA model's), with its pretrained
    config, which timm drops for a name registered over."""
    from timm.models import get_pretrained_cfg, model_entrypoint

    if name not in REPLACED_TIMM:
        REPLACED_TIMM[name] = functools.partial(model_entrypoint(name), pretrained_cfg=get_pretrained_cfg(name))


def _create_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name in REPLACED_TIMM:
        return REPLACED_TIMM[name](pretrained=False, **kwargs)
    if name not in timm.list_models():
        raise ValueError(f"timm has no model {name!r} (timm {timm.__version__}); see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:
        # timm passes unknown keyword arguments on to the model's constructor, which names only itself.
        if "unexpected keyword argument" not in str(err):
            raise
        raise TypeError(f"model_kwargs={kwargs!r}: timm's {name!r} does not take them ({err})") from None


def _create_mmengine(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from mmengine.registry import MODELS

    return MODELS.build({"type": mmengine_type(name), **kwargs})


def mmengine_type(name: str) -> str:
    """`name` as mmengine's root MODELS registry finds it from any scope: OpenMMLab codebases
    (mmpretrain, mmdet, ...) register their types in a child registry of their scope, which the
    root finds only under the scope's prefix (`mmpretrain.ImageClassifier`)."""
    from mmengine.registry import MODELS, DefaultScope

    if MODELS.get(name) is not None:
        return name
    current = DefaultScope.get_current_instance()
    if current is not None:
        with MODELS.switch_scope_and_registry(current.scope_name) as registry:
            if registry.scope != MODELS.scope and registry.get(name) is not None:
                return f"{registry.scope}.{name}"
    scope = f" (default scope {current.scope_name!r})" if current is not None else ""
    raise ValueError(
        f"mmengine's MODELS registry has no type {name!r}{scope}: import the module that registers it, "
        "or set the config's `default_scope` to the codebase that does (e.g. 'mmpretrain')"
    )


ZOOS: dict[str, Callable[[str, dict[str, Any]], nn.Module]] = {"timm": _create_timm, "mmengine": _create_mmengine}


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


def mmengine_recipe(cfg: Mapping[str, Any]) -> Recipe | None:
    """The recipe of an mmengine model config, or None when it cannot be stored as JSON."""
    cfg = dict(cfg)
    name = cfg.pop("type", None)
    if not isinstance(name, str):
        return None
    # Recorded with its scope when a child registry holds it, so `build(spec)` finds it from anywhere.
    name = mmengine_type(name)
    try:
        # Stored as JSON: keep the JSON form (tuples become lists) so the spec round-trips exactly.
        return Recipe("mmengine", name, json.loads(json.dumps(cfg)))
    except TypeError:
        return None


def resolve_model(
    model: str | Mapping[str, Any] | nn.Module, model_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, Recipe | None]:
    """The caller's model as a fresh module we may change, and its recipe when it has one."""
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(
            f"model_kwargs={model_kwargs!r}: give a dict of keyword arguments for building the model, "
            "e.g. {'num_classes': 10}"
        )
    if isinstance(model, str):
        recipe = Recipe("timm", model, dict(model_kwargs or {}))
        return recipe.create(), recipe
    if isinstance(model, Mapping):
        recipe = mmengine_recipe({**model, **(model_kwargs or {})})
        if recipe is None:
            raise TypeError(
                "an mmengine model config needs a registered `type` name and JSON-serialisable arguments "
                f"so that the spec can rebuild it; got type {model.get('type')!r}"
            )
        return recipe.create(), recipe
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a timm model name, an mmengine model config or an nn.Module, got {type(model).__name__}"
        )
    if model_kwargs:
        raise ValueError("model_kwargs apply to a model name; the module you passed is already built")
    model = unwrap(model)
    check_module("dissimilate(model)", model)
    return copy_model(model), recipe_of(model)


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
    # A backbone made with features_only=True (timm's FeatureListNet and kin) keeps its feature
    # maps' indices in `feature_info`; its first layer shows the input channels as above.
    feature_info = getattr(module, "feature_info", None)
    if isinstance(module, FEATURE_WRAPPERS) and feature_info is not None:
        kwargs.pop("num_classes", None)
        kwargs["features_only"] = True
        kwargs["out_indices"] = list(feature_info.out_indices)
    return kwargs


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
