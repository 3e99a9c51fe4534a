"""The entry points: `export_python` writes the LW-DNA model as a file, `python_source` returns its text."""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..adapter import copy_model, model_dtype
from ..export import Result, build, load_spec
from .writer import Standalone, write_source


def export_python(
    spec_or_result: Any,
    path: str | Path,
    *,
    class_name: str | None = None,
) -> Path:
    """Write the LW-DNA architecture as a standalone PyTorch module to `path` and return the path.

    `spec_or_result` is a `Result` of `dissimilate`, a spec dict or the path of a spec.json
    (the model is then rebuilt with `build`), or the LW-DNA `nn.Module` itself. The file
    defines one class (`class_name`, by default `LWDNA` plus the base model's name) whose
    state dict has exactly the LW-DNA model's keys and shapes; `MODEL` names it and
    `TIMM_IMPORTS` lists the timm functions the file needs (empty when it needs only torch).
    """
    path = Path(path)
    if path.suffix != ".py":
        raise ValueError(f"export_python writes a Python module: give a path ending in .py, not {str(path)!r}")
    generated = python_source(spec_or_result, class_name=class_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated.source)
    return path


def python_source(spec_or_result: Any, *, class_name: str | None = None) -> Standalone:
    """The standalone module `export_python` writes, as source text with its timm imports."""
    model, spec = _resolve(spec_or_result)
    dtype = model_dtype(model)
    if dtype != torch.float32:
        # Layers are written as PyTorch constructs them, in float32; the loaded state dict is
        # cast on loading, and the header says which dtype the LW-DNA model was in.
        model = copy_model(model).float()
    base = (spec or {}).get("base") or {}
    class_name = class_name or _class_name(base.get("name") or type(model).__name__)
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise ValueError(f"class_name {class_name!r} is not a Python identifier")
    return write_source(model, spec, class_name, dtype)


def _resolve(obj: Any) -> tuple[nn.Module, dict[str, Any] | None]:
    if isinstance(obj, Result):
        return obj.model, obj.spec
    if isinstance(obj, nn.Module):
        return obj, None
    if isinstance(obj, (Mapping, str, Path)):
        spec = load_spec(obj)
        return build(spec), spec
    raise TypeError(
        f"export_python needs a Result, a spec dict, a spec.json path or a module, got {type(obj).__name__}"
    )


def _class_name(name: str) -> str:
    """`LWDNA` plus the base model's name in CamelCase: resnet18 -> LWDNAResnet18."""
    words = re.split(r"[^0-9a-zA-Z]+", name)
    return "LWDNA" + "".join(w[:1].upper() + w[1:] for w in words if w)
