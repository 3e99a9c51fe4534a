"""Source style: fx's generated code made to read like the project's own (PEP 8, ruff format's wrapping).

Pure text functions: one statement a line, `del` for freed values, `F.` for functional calls,
tidy subscripts and keyword arguments, and long lines split as ruff format would.
"""

from __future__ import annotations

import ast
import json
import re

import torch
import torch.nn.functional as F


def tidy(src: str) -> str:
    """fx's code made readable: one statement a line, `del` for freed values, `F.` for functional calls."""
    out = []
    for line in src.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        statements = [s.strip() for s in line.split(";  ")] if ";  " in line else [line.strip()]
        for s in statements:
            freed = re.fullmatch(r"((?:\w+ = )+)None", s)
            if freed:
                names = [n for n in freed.group(1).split(" = ") if n]
                out.append(f"{indent}del {', '.join(names)}")
            else:
                out.append(indent + s)
    src = "\n".join(out) + "\n"
    src = "".join(keyword_spacing(line) + "\n" for line in src.splitlines())
    src = re.sub(r"Proxy\(\w+\)", "?", src)
    src = re.sub(r"\[\(((?:slice\([-\w, ]*\)|-?\d+|None|Ellipsis|, ?)*)\)\]", _index, src)
    src = double_quotes(src)
    src = src.replace("torch.nn.functional.", "F.")
    return re.sub(r"torch\._C\._nn\.(\w+)", _functional, src)


def double_quotes(src: str) -> str:
    """Strings without quotes or backslashes in double quotes: fx and ast.unparse write repr's
    single quotes, ruff format prefers double ones."""
    return re.sub(r"'([^'\"\\\n]*)'", r'"\1"', src)


def _functional(match: re.Match) -> str:
    """`torch._C._nn.gelu` as `F.gelu` where F exports that very function."""
    name = match.group(1)
    target = getattr(torch._C._nn, name, None)
    return f"F.{name}" if target is not None and getattr(F, name, None) is target else match.group(0)


def _index(match: re.Match) -> str:
    """`x[(slice(None, 28, None), 0)]` as `x[:28, 0]`, `x[(slice(None, n, None),)]` as `x[:n,]`."""
    try:
        items = ast.parse(f"({match.group(1).rstrip(', ')},)", mode="eval").body.elts
    except SyntaxError:  # not a plain index after all: leave it as fx wrote it
        return match.group(0)
    out = []
    for item in items:
        if isinstance(item, ast.Call) and getattr(item.func, "id", None) == "slice" and not item.keywords:
            parts = ["" if _is_none(arg) else ast.unparse(arg) for arg in item.args]
            if not 1 <= len(parts) <= 3:
                return match.group(0)
            start, stop, step = ("", parts[0], "") if len(parts) == 1 else (*parts, "")[:3]
            out.append(f"{start}:{stop}" + (f":{step}" if step else ""))
        elif getattr(item, "id", None) == "Ellipsis" or (isinstance(item, ast.Constant) and item.value is Ellipsis):
            out.append("...")
        elif isinstance(item, ast.Constant | ast.UnaryOp | ast.Name):
            out.append(ast.unparse(item))
        else:
            return match.group(0)
    return f"[{', '.join(out)}]" if len(out) > 1 else f"[{out[0]},]"


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def keyword_spacing(line: str) -> str:
    """`f(x, dim = 1)` as `f(x, dim=1)`: fx spaces keyword arguments and defaults, PEP 8 does not."""
    out, depth, quote, i = [], 0, None, 0
    while i < len(line):
        char = line[i]
        if quote:
            if char == "\\":
                out.append(line[i : i + 2])
                i += 2
                continue
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth and line.startswith(" = ", i) and not line.startswith("=", i + 3) and line[i - 1] not in "=!<>":
            out.append("=")
            i += 3
            continue
        out.append(char)
        i += 1
    return "".join(out)


def wrap(line: str, width: int = 120) -> str:
    """A statement longer than `width` that ends in a call or list split over lines as ruff format would."""
    if len(line) <= width:
        return line
    indent = line[: len(line) - len(line.lstrip())]
    if line.lstrip().startswith("del ") and "(" not in line:
        names = line.strip()[4:].split(", ")
        return f"{indent}del (" + "".join(f"\n{indent}    {name}," for name in names) + f"\n{indent})"
    if line.startswith("from ") and " import " in line and "(" not in line:
        head, _, names = line.partition(" import ")
        return f"{head} import (" + "".join(f"\n    {name}," for name in names.split(", ")) + "\n)"
    if not line.endswith((")", "]")):
        return line
    start, cuts = _last_bracket(line)
    if start is None:
        return line
    follows_name = start > 0 and (line[start - 1].isalnum() or line[start - 1] in "_)]")
    if line[start] == "[" and follows_name:
        return line  # a subscript
    if line[start] == "(" and not follows_name and not cuts:
        return line  # parentheses, not a tuple: a trailing comma would make one
    bounds = [start, *cuts, len(line) - 1]
    parts = [line[a + 1 : b].strip() for a, b in zip(bounds, bounds[1:], strict=False)]
    parts = [part for part in parts if part]
    inner = indent + "    "
    flat = inner + ", ".join(parts)
    if len(flat) <= width:
        return f"{line[: start + 1]}\n{flat}\n{indent}{line[-1]}"
    lines = "".join(f"\n{wrap(inner + part, width)}," for part in parts)
    return line[: start + 1] + lines + f"\n{indent}{line[-1]}"


def _last_bracket(line: str) -> tuple[int | None, list[int]]:
    """Where the last top-level bracket of `line` opens and its top-level commas; None if unbalanced."""
    depth, quote, start, cuts = 0, None, None, []
    for i, char in enumerate(line):
        if quote:
            if char == quote and line[i - 1] != "\\":
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            if depth == 0:
                start, cuts = i, []
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 1:
            cuts.append(i)
    return (None, []) if depth != 0 else (start, cuts)


def pylist(items: list[str]) -> str:
    """A list of strings as a double-quoted Python literal."""
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"
