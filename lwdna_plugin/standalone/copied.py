"""Copied layers: a module fx cannot trace through, written as a helper class with its forward copied.

fx cannot trace Python control flow on input shapes; timm marks such modules "notrace" (VGG's
`ConvMlp` pools inputs smaller than its kernel). When the model does not trace, they are kept
whole and the file gets a helper class of the same name: an empty nn.Module whose forward, and
the methods of its class the forward calls, are the originals' source (normalised with
ast.unparse), built like a container, with the plain settings those methods read (torch.nn
containers inside it are built as they are). A layer the file could not run on its own (a
method that uses `super()`, a property, a decorated method, or a global other than torch, F,
nn, math and torch or timm functions) is declined with a ValueError naming the layer.
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
# torch.nn containers a copied forward may call or index: the file builds them as they are.
_CONTAINERS = (nn.Sequential, nn.ModuleDict)


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
        if kind in _CONTAINERS:
            # torch's own container: built empty, its items added to it by name like any child.
            self.builds[name] = Copy(f"nn.{kind.__name__}()", {})
            for child in _inner(name, module, substitutes):
                self._add(child, modules, substitutes, imports, taken)
            return
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
        elif type(child) in _CONTAINERS:
            inner.append(full)
        elif type(child).__module__.startswith("torch.nn"):
            raise ValueError(
                f"layer {name!r} cannot be copied: its child {child_name!r} is a {type(child).__name__}, "
                "a torch.nn container the file does not rebuild inside a copied layer"
            )
        else:
            inner.append(full)
    return inner


def _helper(name: str, kind: type, imports: Imports) -> tuple[str, set[str]]:
    """The helper class's source for `kind`, and the attributes of `self` its methods read."""
    owner = next(c for c in kind.__mro__ if "forward" in vars(c))
    if owner.__module__.startswith("torch.nn"):
        # A forward inherited from torch.nn (a subclass of nn.Sequential): the helper derives from that class.
        if getattr(nn, owner.__name__, None) is not owner:
            raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: its forward is {_path(owner)}'s")
        doc = f'"""A copy of {_path(kind)}, with nn.{owner.__name__}\'s forward."""'
        return f"class {kind.__name__}(nn.{owner.__name__}):\n    {doc}\n", set()
    functions, reads = _methods(name, kind)
    for function in functions:
        _import_globals(name, kind, function, imports)
    body = "\n\n".join(double_quotes(ast.unparse(f)) for f in functions)
    doc = f'"""A copy of {_path(kind)}: fx cannot trace it."""'
    return f"class {kind.__name__}(nn.Module):\n    {doc}\n\n{textwrap.indent(body, '    ')}\n", reads


def _methods(name: str, kind: type) -> tuple[list[ast.FunctionDef], set[str]]:
    """`kind.forward` and the methods of its class that it calls, directly or through each other,
    parsed; and the attributes of `self` they read."""
    found: dict[str, ast.FunctionDef] = {}
    reads: set[str] = set()
    todo = ["forward"]
    while todo:
        method = todo.pop(0)
        if method in found:
            continue
        found[method] = function = _parse(name, kind, method)
        called, read = _self_uses(name, kind, function)
        todo += called
        reads |= read
    return list(found.values()), reads


def _parse(name: str, kind: type, method: str) -> ast.FunctionDef:
    """`kind.<method>` parsed, without docstring and annotations."""
    try:
        source = textwrap.dedent(inspect.getsource(getattr(kind, method)))
    except (OSError, TypeError) as error:
        raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: its {method} has no source") from error
    function = ast.parse(source).body[0]
    if not isinstance(function, ast.FunctionDef) or function.decorator_list or function.name != method:
        raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: its {method} is not a plain function")
    _strip(function)
    return function


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


def _self_uses(name: str, kind: type, function: ast.FunctionDef) -> tuple[list[str], set[str]]:
    """The methods of its class a method calls on `self` (copied too) and the other attributes of
    `self` it reads; a property, `super()` or another callable of the class is declined."""
    called, reads = [], set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id == "super":
            raise ValueError(f"layer {name!r} ({_path(kind)}) cannot be copied: its {function.name} calls super()")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            attr = getattr(kind, node.attr, None)
            if attr is not None and attr is getattr(nn.Module, node.attr, None):
                continue  # nn.Module's own (register_buffer, ...), which the copy has too
            if inspect.isfunction(attr):
                called.append(node.attr)
            elif callable(attr) or isinstance(attr, property):
                raise ValueError(
                    f"layer {name!r} ({_path(kind)}) cannot be copied: its {function.name} uses self.{node.attr}, "
                    "a property or callable of its class that is not a plain method"
                )
            else:
                reads.add(node.attr)
    return called, reads


def _import_globals(name: str, kind: type, function: ast.FunctionDef, imports: Imports) -> None:
    """Add the globals a copied method uses to `imports`; one the file cannot import is declined."""
    namespace = getattr(kind, function.name).__globals__
    for free in _free_names(function):
        if free not in namespace:
            if hasattr(builtins, free):
                continue
            raise ValueError(
                f"layer {name!r} ({_path(kind)}) cannot be copied: its {function.name} uses {free!r}, not a global"
            )
        obj = namespace[free]
        if inspect.ismodule(obj) and _MODULES.get(obj) == free:
            imports.add_global(free, obj)
            continue
        root = (getattr(obj, "__module__", None) or "").split(".")[0]
        if not callable(obj) or inspect.ismodule(obj) or root not in ("torch", "timm"):
            raise ValueError(
                f"layer {name!r} ({_path(kind)}) cannot be copied: its {function.name} uses the global {free!r}, "
                "which is not torch, F, nn, math or a torch or timm function"
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
    """The plain values of the attributes the copied methods read that the tree does not build (children
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
                f"layer {name!r} ({_path(type(module))}) cannot be copied: it reads self.{attr}, "
                f"a {type(value).__name__} the file cannot write"
            )
        settings[attr] = literal
    return settings


def _literal(value: Any) -> str | None:
    """`value` (int, float, bool, str, None, or a tuple, list or dict of these) as Python source;
    None if it is none of these (an empty dict is a cache, such as TinyViT's attention biases)."""
    if isinstance(value, dict):
        pairs = [(_literal(k), _literal(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    if isinstance(value, list):
        items = [_literal(v) for v in value]
        return None if any(i is None for i in items) else f"[{', '.join(items)}]"
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
