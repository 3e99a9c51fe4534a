"""Export: the LW-DNA spec as JSON, and the zoo-side rebuild from it (`build`, `register_timm`).

A spec names the base model's recipe and each channel group's width, keyed by the group's
root layer. `build` creates the base model from its zoo, resizes every group and initialises
it afresh, then checks every tensor shape against the spec: nothing is unpickled.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .adapter import Recipe, mmengine_recipe, model_device
from .graph import GroupGraph
from .initialise import initialise
from .resize import resize

SCHEMA = "lwdna-spec/1"


def versions() -> dict[str, str]:
    import fvcore
    import timm
    import torch_pruning

    from . import __version__

    return {
        "lwdna_plugin": __version__,
        "torch": torch.__version__.split("+")[0],
        "timm": timm.__version__,
        "torch_pruning": torch_pruning.__version__,
        "fvcore": getattr(fvcore, "__version__", "unknown"),
    }


def tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def dump_spec(spec: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    return path


def load_spec(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, Mapping):
        data = dict(spec)
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "spec.json"
        if not path.is_file():
            raise FileNotFoundError(f"no LW-DNA spec at {path}; pass the spec.json written by result.save()")
        data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"spec schema {data.get('schema')!r} is not {SCHEMA!r}; re-export it with this version")
    return data


def build(
    spec: str | Path | Mapping[str, Any], base: nn.Module | Mapping[str, Any] | None = None, **overrides: Any
) -> nn.Module:
    """The LW-DNA model a spec describes, freshly initialised by its zoo.

    `overrides` replace base keyword arguments (for example `num_classes`); the group widths
    stay as specified. `base` (a module, or an mmengine model config) is needed only for a
    spec whose model has no zoo recipe.
    """
    data = load_spec(spec)
    recipe = _recipe(data, overrides)
    if isinstance(base, Mapping):
        recipe = _base_config_recipe(base, data)
        base = None
    if base is not None:
        model = copy.deepcopy(base)
    elif recipe is not None:
        model = recipe.create()
    else:
        raise ValueError(
            "this spec was made from a module with no zoo recipe; pass the same base module: build(spec, base=model)"
        )
    example = torch.zeros(1, *data["input_size"], device=model_device(model))
    graph = GroupGraph(model, example, data.get("ignored", []))
    unlisted = sorted({g.key for g in graph.groups if g.prunable} - set(data["groups"]))
    if unlisted:
        raise ValueError(
            f"the base model has channel groups the spec does not list ({', '.join(unlisted[:3])}, ...): "
            f"the spec was made for another model or timm version ({_origin(data)})"
        )
    widths = {}
    for key, entry in data["groups"].items():
        group = _find(graph, key, data)
        if group.size != entry["original"]:
            raise ValueError(
                f"layer {key!r} has {group.size} channels in this base model, the spec expects "
                f"{entry['original']}: the spec was made for another model or timm version ({_origin(data)})"
            )
        widths[key] = entry["kept"]
    resize(graph, widths)
    initialise(model, recipe.create if recipe is not None else None)
    if not overrides:
        _verify(model, data["shapes"])
    return model


def register_timm(spec: str | Path | Mapping[str, Any], name: str) -> str:
    """Register `name` with timm so `timm.create_model(name, **kwargs)` builds this LW-DNA model."""
    import timm
    from timm.models import register_model

    data = load_spec(spec)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name} is an LW-DNA architecture to train from scratch: it has no pretrained weights")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return build(data, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    register_model(entrypoint)
    assert name in timm.list_models(name)
    return name


def _recipe(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> Recipe | None:
    base = data.get("base")
    if not base:
        return None
    return Recipe(base["zoo"], base["name"], {**base.get("kwargs", {}), **overrides})


def _base_config_recipe(base: Mapping[str, Any], data: Mapping[str, Any]) -> Recipe:
    recipe = mmengine_recipe(base)
    if recipe is None:
        raise TypeError(f"base config needs a registered `type` name and JSON-serialisable arguments, got {base!r}")
    made_for = (data.get("base") or {}).get("name")
    if made_for is not None and made_for != recipe.name:
        raise ValueError(
            f"the spec was made for base model {made_for!r}, not {recipe.name!r}: "
            "pass the base config the spec was made from, or dissimilate this model again"
        )
    return recipe


def _find(graph: GroupGraph, key: str, data: Mapping[str, Any]):
    try:
        return graph.group(key)
    except KeyError:
        raise ValueError(
            f"the base model has no channel group rooted at layer {key!r}: the spec was made for "
            f"another model or timm version ({_origin(data)})"
        ) from None


def _origin(data: Mapping[str, Any]) -> str:
    base = data.get("base") or {}
    return f"spec: {base.get('name', 'a plain module')} with timm {data['versions']['timm']}"


def _verify(model: nn.Module, shapes: Mapping[str, list[int]]) -> None:
    built = tensor_shapes(model)
    wrong = [f"{k}: built {built.get(k)}, spec {v}" for k, v in shapes.items() if built.get(k) != v]
    extra = sorted(set(built) - set(shapes))
    if wrong or extra:
        detail = "; ".join(wrong[:5] + [f"unexpected tensor {k}" for k in extra[:5]])
        raise ValueError(f"rebuilt model does not match the spec ({len(wrong) + len(extra)} tensors): {detail}")
