"""Export: the result and its JSON spec, and the zoo-side rebuild from it (`build`, `register_timm`).

A spec names the base model's recipe and each channel group's width, keyed by the group's
root layer. `build` creates the base model from its zoo, resizes every group and initialises
it afresh, then checks every tensor shape against the spec: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .adapter import Recipe, check_input, copy_model, keep_timm_entrypoint, mmengine_recipe, model_device
from .flops import FLOP_CONVENTION
from .graph import GroupGraph
from .initialise import initialise
from .report import Report
from .resize import resize
from .spec import Spec


@dataclass
class Result:
    """What `dissimilate` returns: the LW-DNA model, its JSON spec and a report."""

    model: nn.Module
    spec: dict[str, Any]
    report: Report
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None  # allocated on a CUDA device during identification

    def save(self, directory: str | Path) -> Path:
        """Write spec.json, report.md and channels.png into `directory`, each file atomically."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory} is a file: give `save` a folder to write spec.json and the report into")
        directory.mkdir(parents=True, exist_ok=True)
        dump_spec(self.spec, directory / "spec.json")
        markdown = self.report.to_markdown()
        atomic_write(directory / "report.md", lambda p: p.write_text(markdown))
        atomic_write(directory / "channels.png", self.report.plot)
        return directory


def assemble_spec(
    recipe: Recipe | None,
    shape: tuple[int, ...],
    target: dict[str, Any],
    report: Report,
    settings: dict[str, Any],
    groups: dict[str, dict[str, int]],
    lw: nn.Module,
) -> dict[str, Any]:
    """The JSON spec of a result: the base recipe, the target and what was achieved, the
    settings, every group's original / widened / kept width, and every tensor's shape."""
    return Spec(
        base=recipe.to_dict() if recipe else None,
        input_size=list(shape),
        target=target,
        achieved={
            "flops": report.flops["lwdna"],
            "params": report.params["lwdna"],
            "flops_ratio": round(report.flops["lwdna"] / report.flops["original"], 6),
            "params_ratio": round(report.params["lwdna"] / report.params["original"], 6),
        },
        original={"flops": report.flops["original"], "params": report.params["original"]},
        flop_counter=FLOP_CONVENTION,
        settings=settings,
        versions=versions(),
        groups=groups,
        fixed_groups=report.fixed_groups,
        shapes=tensor_shapes(lw),
    ).to_dict()


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


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(temporary)` into the same folder, then rename it to `path`: an interrupted save
    leaves the old file or none, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: cannot save a file there")
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def dump_spec(spec: Mapping[str, Any], path: str | Path) -> Path:
    text = json.dumps(spec, indent=1, sort_keys=True) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def load_spec(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A spec (a dict, a spec.json or the folder holding it), checked field by field."""
    if isinstance(spec, Mapping):
        data, source = dict(spec), "the spec"
    elif not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"spec: give a spec dict, a spec.json path or the folder holding it, not a {type(spec).__name__}"
        )
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "spec.json"
        if not path.is_file():
            raise FileNotFoundError(f"no LW-DNA spec at {path}; pass the spec.json written by result.save()")
        source = str(path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}): expected the spec.json written by result.save(); "
                "the file may be truncated or edited"
            ) from None
    check_spec(data, source)
    return data


def check_spec(data: Any, source: str = "the spec") -> None:
    """Every field `build` reads is present and of the right type, or a ValueError names it
    (`Spec.from_dict`)."""
    Spec.from_dict(data, source)


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
        model = copy_model(base)
    elif recipe is not None:
        try:
            model = recipe.create()
        except (TypeError, ValueError, RuntimeError, KeyError) as err:
            raise ValueError(
                f"field 'base': {recipe.zoo} could not build {recipe.name!r} with {recipe.kwargs} ({err}); "
                f"the spec was made for another model or package version ({_origin(data)})"
            ) from err
    else:
        raise ValueError(
            "this spec was made from a module with no zoo recipe; pass the same base module: build(spec, base=model)"
        )
    example = torch.zeros(1, *data["input_size"], device=model_device(model))
    try:
        check_input(model, example, tuple(example.shape))
    except ValueError as err:
        raise ValueError(f"field 'input_size' {data['input_size']}: {err}") from None
    # Groups identification left at their width (found not to widen, among others) stay so here.
    graph = GroupGraph(model, example, data.get("ignored", []), data.get("fixed_groups") or {})
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


def register_timm(spec: str | Path | Mapping[str, Any], name: str, overwrite: bool = False) -> str:
    """Register `name` with timm so `timm.create_model(name, **kwargs)` builds this LW-DNA model.

    A name timm already has is refused unless `overwrite=True`; even then the base model of any
    spec named so is still built by timm's own constructor, so nothing recurses.
    """
    import timm
    from timm.models import model_entrypoint, register_model

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name={name!r}: give a Python identifier, such as 'resnet18_lwdna'")
    data = load_spec(spec)
    if name in timm.list_models():
        if not overwrite:
            raise ValueError(
                f"timm already has a model named {name!r}: registering over it would replace it for the whole "
                f"process. Choose another name (such as '{name}_lwdna') or pass overwrite=True"
            )
        if model_entrypoint(name).__module__ != __name__:  # timm's own, not an LW-DNA model registered earlier
            keep_timm_entrypoint(name)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name} is an LW-DNA architecture to train from scratch: it has no pretrained weights")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return build(data, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Overwriting", category=UserWarning)  # asked for: overwrite=True
        register_model(entrypoint)
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
    return f"spec: {base.get('name', 'a plain module')} with timm {data.get('versions', {}).get('timm', 'unknown')}"


def _verify(model: nn.Module, shapes: Mapping[str, list[int]]) -> None:
    built = tensor_shapes(model)
    wrong = [f"{k}: built {built.get(k)}, spec {v}" for k, v in shapes.items() if built.get(k) != v]
    extra = sorted(set(built) - set(shapes))
    if wrong or extra:
        detail = "; ".join(wrong[:5] + [f"unexpected tensor {k}" for k in extra[:5]])
        raise ValueError(f"rebuilt model does not match the spec ({len(wrong) + len(extra)} tensors): {detail}")
