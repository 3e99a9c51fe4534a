"""Copied layers: a module fx cannot trace through, written as a helper class with its forward copied.

fx cannot trace Python control flow on input shapes; timm marks such modules "notrace" (VGG's
`ConvMlp` pools inputs smaller than its kernel). When the model does not trace, they are kept
whole and the file gets a helper class of the same name: an empty nn.Module whose forward is
the original forward's source (normalised with ast.unparse), built like a container, with the
plain settings that forward reads. A forward the file could not run on its own (one calling
another method of its class, `super()`, or a global other than torch, F, nn, math and torch or
timm functions) is declined with a ValueError naming the layer.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import math
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .imports import Imports
from .style import double_quotes
from .trace import is_leaf

# Modules a copied forward may use as globals: the file imports each under its usual name.
_MODULES = {torch: "torch", nn: "nn", F: "F", math: "math"}
# Names the file's own code uses, which a helper class must not shadow.
RESERVED = frozenset({*_MODULES.values(), "MODEL", "TIMM_IMPORTS"})
_PLAIN = (bool, int, float, str, type(None))


def notrace_modules(modules: Mapping[str, nn.Module], skip: Iterable[str]) -> list[str]:
    """The outermost modules of a class timm keeps out of fx tracing, outside the root and `skip`."""
    try:
        from timm.layers import get_notrace_modules
    except ImportError:  # no timm: nothing is marked
        return []
    marked = tuple(get_notrace_modules())
    outer = list(skip)
    found = []
    for name, module in modules.items():
        if not name or any(name == o or name.startswith(o + ".") for o in outer):
            continue
        if isinstance(module, marked):
            found.append(name)
            outer.append(name)
    return found


@dataclass(frozen=True)
class Copy:
    """How the tree builds one copied module: its helper class's call and the plain settings it assigns."""

    ctor: str
    settings: dict[str, str]  # attribute -> literal


@dataclass
class Copies:
    """The copied modules (qualified name -> how to build it) and their helper classes (name -> source)."""

    builds: dict[str, Copy] = field(default_factory=dict)
    helpers: dict[str, str] = field(default_factory=dict)
    classes: dict[str, tuple[type, set[str]]] = field(default_factory=dict)  # name -> class, attributes read

    @classmethod
    def of(
        cls,
        modules: Mapping[str, nn.Module],
        names: Iterable[str],
        substitutes: Iterable[str],
        imports: Imports,
        taken: Iterable[str],
    ) -> Copies:
        """Copies of the modules `names` and of every module inside one that is neither a torch.nn
        layer nor in `substitutes`; the globals their forwards use are added to `imports`; `taken`:
        names the file already defines."""
        copies = cls()
        for name in names:
            copies._add(name, modules, set(substitutes), imports, set(taken))
        return copies

    def _add(
        self, name: str, modules: Mapping[str, nn.Module], substitutes: set[str], imports: Imports, taken: set[str]
    ) -> None:
        module = modules[name]
        kind = type(module)
        if kind.__name__ not in self.classes:
            if kind.__name__ in taken:
                raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: the file already defines the name")
            self.helpers[kind.__name__], reads = _helper(name, kind, imports)
            self.classes[kind.__name__] = (kind, reads)
        known, reads = self.classes[kind.__name__]
        if known is not kind:
            raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: {_path(known)} has the same name")
        self.builds[name] = Copy(f"{kind.__name__}()", _settings(name, module, reads))
        for child in _inner(name, module, substitutes):
            self._add(child, modules, substitutes, imports, taken)


def _inner(name: str, module: nn.Module, substitutes: set[str]) -> list[str]:
    """The modules inside a copied one that must be copied too: the tree would write them as bare
    containers, which the copied forward could not call."""
    inner = []
    for child_name, child in module.named_children():
        full = f"{name}.{child_name}"
        if full in substitutes or is_leaf(child):
            continue
        if isinstance(child, nn.ModuleList) and len(child):
            inner += _inner(full, child, substitutes)  # the tree writes it as an nn.ModuleList
        elif type(child).__module__.startswith("torch.nn"):
            raise ValueError(
                f"layer {name!r} cannot be copied: its child {child_name!r} is a {type(child).__name__}, "
                "a torch.nn container the file does not rebuild inside a copied layer"
            )
        else:
            inner.append(full)
    return inner


def _helper(name: str, kind: type, imports: Imports) -> tuple[str, set[str]]:
    """The helper class's source for `kind`, and the attributes of `self` its forward reads."""
    function, reads = _forward(name, kind)
    _import_globals(name, kind, function, imports)
    body = double_quotes(ast.unparse(function))
    doc = f'"""{_path(kind)}, kept whole (fx cannot trace it): its forward, copied."""'
    return f"class {kind.__name__}(nn.Module):\n    {doc}\n\n{textwrap.indent(body, '    ')}\n", reads


def _forward(name: str, kind: type) -> tuple[ast.FunctionDef, set[str]]:
    """`kind.forward` parsed, without docstring and annotations, and the attributes of `self` it reads."""
    try:
        source = textwrap.dedent(inspect.getsource(kind.forward))
    except (OSError, TypeError) as error:
        raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: its forward has no source") from error
    function = ast.parse(source).body[0]
    if not isinstance(function, ast.FunctionDef) or function.decorator_list:
        raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: its forward is not a plain function")
    function.name = "forward"
    _strip(function)
    return function, _self_reads(name, kind, function)


def _strip(function: ast.FunctionDef) -> None:
    """Drop annotations (their names need not be importable in the file), the docstring and other
    bare strings (comments written as strings, which ast.unparse would write with escaped newlines)."""
    args = function.args
    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
        if arg is not None:
            arg.annotation = None
    function.returns = None
    for node in ast.walk(function):
        for field_name in ("body", "orelse", "finalbody"):
            statements = getattr(node, field_name, None)
            if isinstance(statements, list) and statements:
                kept = [_unannotated(s) for s in statements if not _bare_string(s)]
                setattr(node, field_name, kept or [ast.Pass()])


def _bare_string(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)


def _unannotated(statement: ast.stmt) -> ast.stmt:
    if isinstance(statement, ast.AnnAssign) and statement.value is not None:
        return ast.copy_location(ast.Assign([statement.target], statement.value), statement)
    return statement


def _self_reads(name: str, kind: type, function: ast.FunctionDef) -> set[str]:
    """The attributes of `self` the forward reads; a method of its own class it calls is declined."""
    reads = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id == "super":
            raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: its forward calls super()")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            attr = getattr(kind, node.attr, None)
            if (callable(attr) and attr is not getattr(nn.Module, node.attr, None)) or isinstance(attr, property):
                raise ValueError(
                    f"layer {name!r} ({_path(kind)}) cannot be copied: its forward uses self.{node.attr}, "
                    "a method or property of its class the file does not have"
                )
            reads.add(node.attr)
    return reads


def _import_globals(name: str, kind: type, function: ast.FunctionDef, imports: Imports) -> None:
    """Add the globals the forward uses to `imports`; one the file cannot import is declined."""
    namespace = kind.forward.__globals__
    for free in _free_names(function):
        if free not in namespace:
            if hasattr(builtins, free):
                continue
            raise ValueError(
                f"layer {name!r} ({_path(kind)}) cannot be copied: its forward uses {free!r}, not a global"
            )
        obj = namespace[free]
        if inspect.ismodule(obj) and _MODULES.get(obj) == free:
            imports.add_global(free, obj)
            continue
        root = (getattr(obj, "__module__", None) or "").split(".")[0]
        if not callable(obj) or inspect.ismodule(obj) or root not in ("torch", "timm"):
            raise ValueError(
                f"layer {name!r} ({_path(kind)}) cannot be copied: its forward uses the global {free!r}, which is "
                "not torch, F, nn, math or a torch or timm function"
            )
        try:
            imports.add_global(free, obj)
        except ValueError as error:
            raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: {error}") from error


def _free_names(function: ast.FunctionDef) -> list[str]:
    """The names the function reads but never binds, in order of first use."""
    bound = {a.arg for a in ast.walk(function) if isinstance(a, ast.arg)}
    bound |= {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {n.name for n in ast.walk(function) if isinstance(n, ast.FunctionDef) and n is not function}
    loads = [n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return [n for n in dict.fromkeys(loads) if n not in bound]


def _settings(name: str, module: nn.Module, reads: set[str]) -> dict[str, str]:
    """The plain values of the attributes the forward reads that the tree does not build (children
    and tensors it does), as literals."""
    settings = {}
    for attr in sorted(reads):
        if attr in module._modules or attr in module._parameters or attr in module._buffers:
            if getattr(module, attr) is not None:
                continue
        elif attr == "training" or not hasattr(module, attr) or (hasattr(nn.Module, attr) and attr not in vars(module)):
            continue  # nn.Module's own, which the copy has too, or one the original lacks as well
        value = getattr(module, attr)
        literal = _literal(value)
        if literal is None:
            raise ValueError(
                f"layer {name!r} ({_path(type(module))}) cannot be copied: its forward reads self.{attr}, "
                f"a {type(value).__name__} the file cannot write"
            )
        settings[attr] = literal
    return settings


def _literal(value: Any) -> str | None:
    """`value` (int, float, bool, str, None, or a tuple of these) as Python source; None if it is none of these."""
    if isinstance(value, tuple):
        items = [_literal(v) for v in value]
        if any(i is None for i in items):
            return None
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if not isinstance(value, _PLAIN):
        return None
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'
    return repr(value)


def _path(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"
