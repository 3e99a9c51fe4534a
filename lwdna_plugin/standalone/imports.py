"""Imports of the generated file: what the traced forward calls, in isort's order, timm's kept apart.

Functions timm keeps out of fx tracing (its fx "notrace" functions) stay calls into timm: the
file imports them and lists them in its docstring and in `TIMM_IMPORTS`. Functions fx wraps are
registered again with `torch.fx.wrap` at module level, so a re-trace keeps them calls.
"""

from __future__ import annotations

import builtins
import inspect
from dataclasses import dataclass, field
from typing import Any

# Standard-library modules the file may import (isort puts them first).
_STANDARD = ("base64", "builtins", "math", "operator", "zlib")
# Globals of fx's code that need no import, or a fixed one.
_FIXED = {
    "inf": "from math import inf",
    "nan": "from math import nan",
    "NoneType": "NoneType = type(None)",
    "device": "from torch import device",
}


@dataclass
class Imports:
    """The import lines the file needs, collected while its forward methods are written."""

    lines: set[str] = field(default_factory=set)  # import lines and aliases other than timm's
    timm: dict[str, str] = field(default_factory=dict)  # local name -> import line from timm
    wrapped: set[str] = field(default_factory=set)  # names to register with torch.fx.wrap

    def add_global(self, name: str, obj: Any) -> None:
        """Import `obj`, which fx's code calls under the global `name`."""
        if name in ("torch", "getattr", *_FIXED) or getattr(builtins, name, None) is obj:
            if name in _FIXED:
                self.lines.add(_FIXED[name])
            return
        if inspect.ismodule(obj):
            self.lines.add(f"import {obj.__name__}" + ("" if obj.__name__ == name else f" as {name}"))
            return
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not module or not qualname or "." in qualname or "<" in qualname:
            raise ValueError(f"the traced forward calls {obj!r}, which the generated file cannot import")
        if module.split(".")[0] in ("lwdna_plugin", "__main__"):
            raise ValueError(
                f"the traced forward calls {module}.{qualname}: a standalone file cannot import it "
                "(make it a torch.nn layer or inline it)"
            )
        line = f"from {module} import {qualname}" + ("" if qualname == name else f" as {name}")
        if module.split(".")[0] == "timm":
            self.timm[name] = line
        else:
            self.lines.add(line)

    @property
    def timm_targets(self) -> list[str]:
        """The imported timm functions as dotted paths, sorted by import line."""
        return [import_target(line) for line in sorted(self.timm.values())]

    def block(self, code: str) -> str:
        """The import block for `code`: standard library, then torch and the rest (isort's order), then aliases."""
        lines = set(self.lines) | set(self.timm.values())
        lines.add("import torch.nn as nn")
        if "torch." in code or self.wrapped:
            lines.add("import torch")
        if "F." in code:
            lines.add("import torch.nn.functional as F")
        aliases = sorted(line for line in lines if not line.startswith(("import ", "from ")))
        lines -= set(aliases)
        std = sorted((line for line in lines if _root(line) in _STANDARD), key=_order)
        torch_lines = sorted((line for line in lines if _root(line) == "torch"), key=_order)
        rest = sorted(lines - set(std) - set(torch_lines), key=_order)
        text = "\n\n".join("\n".join(block) for block in (std, torch_lines + rest) if block)
        return text + ("\n\n" + "\n".join(aliases) if aliases else "")


def import_target(line: str) -> str:
    """`from a.b import c` as `a.b.c`, `import a.b` as `a.b`."""
    parts = line.split()
    return f"{parts[1]}.{parts[3]}" if parts[0] == "from" else parts[1]


def _root(line: str) -> str:
    return line.split()[1].split(".")[0]


def _order(line: str) -> tuple:
    return (line.startswith("from "), line.split()[1], line)
