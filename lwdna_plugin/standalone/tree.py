"""The module tree: which of the model's modules the file recreates, and the `__init__` that builds them.

torch.nn layers (and substitutes) are leaves, written as constructor calls; every other module
the file needs (one holding tensors, one a trace calls, an ancestor of either) becomes a plain
`nn.Module` container with the same name, or an `nn.ModuleList` where its children are named
0..n-1, so a state dict saved from the model loads with `strict=True`. A copied module (one fx
could not trace through) is a container too, built by its helper class, with everything inside
it and the plain settings its forward reads.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from .copied import Copy
from .layers import constructor_call
from .tensors import Packed, direct_tensors, initial_value, literal
from .trace import is_leaf


class ModuleTree:
    """The modules of `model` the file recreates, and how the file's code refers to each."""

    def __init__(
        self,
        model: nn.Module,
        substitutes: Mapping[str, str],
        called: Iterable[str],
        constants: Mapping[str, torch.Tensor],
        copies: Mapping[str, Copy] | None = None,
    ) -> None:
        """`substitutes`: module name -> constructor call; `called`: the modules the traces call;
        `constants`: the tensors fx lifted out of the forward, by qualified name; `copies`: the
        modules kept whole with their forward copied, by qualified name."""
        self.model = model
        self.copies = dict(copies or {})
        self.packed = Packed()  # large exact tensors, filled while `init_source` writes them
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.substitutes = dict(substitutes)
        self.constants = dict(constants)
        self.leaves = {name for name, m in self.modules.items() if name and is_leaf(m)} | set(self.substitutes)
        # Modules inside a leaf are built by the leaf's own constructor.
        self.inside = {name for name in self.modules if any(name.startswith(leaf + ".") for leaf in self.leaves)}
        needed = self._stateful() | set(called) | {c.rpartition(".")[0] for c in self.constants}
        # A copied forward may use any module inside its layer, not only those holding tensors.
        needed |= {name for name in self.modules if any(name.startswith(c + ".") for c in self.copies)}
        self.kept = _with_ancestors(needed)
        self.lists = {name for name in self.kept if name not in self.leaves and self._is_list(name)}

    def init_source(self) -> str:
        """The generated class's `__init__`: every kept module and tensor, parents before children."""
        lines = ["def __init__(self):", "    super().__init__()"]
        lines += ["    " + line for line in self._direct_state("", self.model)]
        first: dict[int, str] = {}  # a module registered under several names is one module here too
        aliases: list[str] = []
        for name, module in self.modules.items():
            skip = not name or name not in self.kept or name in self.inside
            if skip or any(name.startswith(a + ".") for a in aliases):
                continue
            if id(module) in first:
                aliases.append(name)
                parent, _, last = name.rpartition(".")
                lines.append("    " + self._assign(parent, last, self.ref(first[id(module)])))
                continue
            first[id(module)] = name
            lines += ["    " + line for line in self._build(name, module)]
        return "\n".join(lines) + "\n"

    def ref(self, name: str) -> str:
        """The expression for module `name` inside the class: `self.a[0].b`, or getattr for odd names."""
        expr = "self"
        parts = name.split(".") if name else []
        for i, part in enumerate(parts):
            parent = ".".join(parts[:i])
            if parent in self.lists:
                expr += f"[{part}]"
            elif safe_attr(part):
                expr += f".{part}"
            else:
                expr = f'getattr({expr}, "{part}")'
        return expr

    def index_lists(self, src: str) -> str:
        """fx's `getattr(self.blocks, "0")` as `self.blocks[0]` where `blocks` is written as a ModuleList."""
        pattern = re.compile(r'getattr\((self(?:\.\w+|\[\d+\])*), "(\d+)"\)')

        def replace(match: re.Match) -> str:
            expr, index = match.group(1), match.group(2)
            qual = re.sub(r"\[(\d+)\]", r".\1", expr[len("self") :]).lstrip(".")
            return f"{expr}[{index}]" if qual in self.lists else match.group(0)

        while True:  # nested lists: each pass resolves one more level
            new = pattern.sub(replace, src)
            if new == src:
                return src
            src = new

    def _build(self, name: str, module: nn.Module) -> list[str]:
        """The lines that create module `name` and, for a container, the tensors registered on it."""
        parent, _, last = name.rpartition(".")
        if name in self.leaves:
            ctor = self.substitutes.get(name) or constructor_call(name, module)
        elif name in self.lists:
            ctor = f"nn.ModuleList([nn.Module() for _ in range({len(list(module.named_children()))})])"
        elif name in self.copies:
            ctor = self.copies[name].ctor
        else:
            ctor = "nn.Module()"
        # A list's items already exist as the nn.Module() the list was created with.
        lines = [] if parent in self.lists and ctor == "nn.Module()" else [self._assign(parent, last, ctor)]
        if name in self.copies:
            ref = self.ref(name)
            lines += [f"{ref}.{attr} = {value}" for attr, value in self.copies[name].settings.items()]
        if name not in self.leaves:
            lines += self._direct_state(name, module)
        return lines

    def _assign(self, parent: str, last: str, ctor: str) -> str:
        ref = self.ref(parent)
        if parent in self.lists:
            return f"{ref}[{last}] = {ctor}"
        if safe_attr(last):
            return f"{ref}.{last} = {ctor}"
        return f'{ref}.add_module("{last}", {ctor})'

    def _direct_state(self, name: str, module: nn.Module) -> list[str]:
        lines = []
        ref = self.ref(name)
        for slot in direct_tensors(name, module, self.constants):
            where = f"{name}.{slot.attr}" if name else slot.attr
            value = initial_value(slot.tensor) if slot.persistent else literal(where, slot.tensor, self.packed)
            if slot.parameter:
                grad = "" if slot.tensor.requires_grad else ", requires_grad=False"
                if safe_attr(slot.attr):
                    lines.append(f"{ref}.{slot.attr} = nn.Parameter({value}{grad})")
                else:
                    lines.append(f'{ref}.register_parameter("{slot.attr}", nn.Parameter({value}{grad}))')
            else:
                flag = "" if slot.persistent else ", persistent=False"
                lines.append(f'{ref}.register_buffer("{slot.attr}", {value}{flag})')
        return lines

    def _stateful(self) -> set[str]:
        """Leaves holding any tensor and containers holding one directly, outside other leaves."""
        stateful = set()
        for name, module in self.modules.items():
            if name in self.inside:
                continue
            recurse = name in self.leaves
            if any(True for _ in module.parameters(recurse)) or any(True for _ in module.buffers(recurse)):
                stateful.add(name)
        return stateful

    def _is_list(self, name: str) -> bool:
        # The root is the file's own nn.Module subclass: a root nn.Sequential's items are attributes.
        if not name or name in self.copies:
            return False
        module = self.modules[name]
        children = [n for n, _ in module.named_children()]
        if not children or children != [str(i) for i in range(len(children))]:
            return False
        return not direct_tensors(name, module, self.constants)


def safe_attr(name: str) -> bool:
    """Whether `name` can be written as `.name` on an nn.Module without shadowing one of its members."""
    return name.isidentifier() and not keyword.iskeyword(name) and not hasattr(nn.Module, name)


def _with_ancestors(names: Iterable[str]) -> set[str]:
    """`names` and every module above one of them, the root ("") included."""
    kept = set()
    for name in names:
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            kept.add(".".join(parts[:i]))
    return kept
