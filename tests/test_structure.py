"""The package's shape, as the redesign set it: small modules, short functions and classes."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "lwdna_plugin"
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_CLASS_LINES = 400, 60, 250


def _code_lines(node: ast.AST) -> int:
    """Lines of a function or class body, its docstring not counted."""
    body = node.body
    docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    start = body[0].end_lineno + 1 if docstring and len(body) > 1 else body[0].lineno
    return node.end_lineno - start + 1


def _definitions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield path.relative_to(PACKAGE), node


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_60_lines_and_no_class_over_250():
    long = [
        f"{path}:{node.name} ({_code_lines(node)} lines)"
        for path, node in _definitions()
        if _code_lines(node) > (MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES)
    ]
    assert long == []
