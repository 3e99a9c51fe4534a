"""Writing the file: trace the model, build its module tree and forward, and assemble the source text.

A model that does not trace is traced again with timm's notrace modules kept whole; those are
then written as helper classes with their forward copied (`copied`). A model that traces is
written as before, so its file does not depend on whether timm marks any of its modules.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .copied import RESERVED, Copies, notrace_modules
from .forward import write_forward
from .header import Header, base_name
from .imports import Imports
from .style import pylist, wrap
from .substitutes import Substitutes
from .tensors import UNPACK, lifted_constants
from .trace import TraceError, Traces
from .tree import ModuleTree


@dataclass
class Standalone:
    """The generated module's source, its class name and the timm functions it imports."""

    source: str
    class_name: str
    timm_imports: list[str] = field(default_factory=list)


def write_source(
    model: nn.Module, spec: dict[str, Any] | None, class_name: str, dtype: torch.dtype = torch.float32
) -> Standalone:
    """The standalone module for a float32 `model`; `dtype` is the dtype the header says it was in."""
    modules = dict(model.named_modules(remove_duplicate=False))
    substitutes = Substitutes.find(modules)
    imports = Imports()
    traces, copies = _traces(model, modules, substitutes, imports, {class_name, *substitutes.helpers, *RESERVED})
    tree = ModuleTree(model, substitutes.calls, traces.called(), lifted_constants(model, traces.both), copies.builds)
    init = tree.init_source()
    helpers = {**substitutes.helpers, **copies.helpers}
    if tree.packed.blobs:
        helpers["_unpack"] = UNPACK
        helpers["_PACKED"] = tree.packed.source()
        imports.lines |= {"import base64", "import zlib"}
    forward = write_forward(traces, tree, imports)
    header = Header(model, spec, class_name, dtype, imports.timm_targets, forward.modes)
    methods = [init, *forward.methods]
    code = _module_code(class_name, base_name(spec, model), methods, helpers, imports)
    source = f'"""{header.text()}"""\n\n{code}'
    compile(source, "<lwdna standalone>", "exec")  # a bug here should fail now, not on import
    return Standalone(source, class_name, imports.timm_targets)


def _traces(
    model: nn.Module, modules: Mapping[str, nn.Module], substitutes: Substitutes, imports: Imports, taken: set[str]
) -> tuple[Traces, Copies]:
    """The model's traces, and the modules copied to get them (none if it traces as it is).

    Substituted modules stay whole in the trace: the file builds them with one call. Only when
    that trace fails are timm's notrace modules kept whole too, so a file that could be written
    before is written the same.
    """
    leaves = frozenset(id(modules[name]) for name in substitutes.calls)
    try:
        return Traces.of(model, leaves), Copies()
    except TraceError as first:
        copies = Copies.of(modules, notrace_modules(modules, substitutes.calls), substitutes.calls, imports, taken)
        if not copies.builds:
            raise
        try:
            return Traces.of(model, leaves | {id(modules[name]) for name in copies.builds}), copies
        except TraceError as error:
            raise error from first


def _module_code(class_name: str, base: str, methods: list[str], helpers: Mapping[str, str], imports: Imports) -> str:
    """Everything after the docstring: imports, fx.wrap calls, TIMM_IMPORTS, helpers, the class, MODEL."""
    wrapped = sorted(imports.wrapped)
    used = "\n".join([*methods, *helpers.values(), *wrapped])  # what the import block must cover
    body = "\n".join(textwrap.indent(part.lstrip("\n").rstrip() + "\n", "    ") for part in methods)
    code = (
        f"{imports.block(used)}\n"
        + "".join(f'\ntorch.fx.wrap("{name}")  # a call, if this module is traced again' for name in wrapped)
        + ("\n" if wrapped else "")
        + f"\nTIMM_IMPORTS = {pylist(imports.timm_targets)}\n\n\n"
        + "".join(f"{source}\n\n" for _, source in sorted(helpers.items()))
        + f"class {class_name}(nn.Module):\n"
        f'    """LW-DNA {base} with explicit per-layer channels."""\n\n'
        f"{body.rstrip()}\n\n\n"
        f"MODEL = {class_name}\n"
    )
    return "".join(wrap(line.rstrip()) + "\n" for line in code.splitlines())
