"""The forward pass: each trace's fx code as a method, one `forward` or a dispatch on `self.training`.

fx fixes Python branches on `self.training`; if the train and eval traces still differ after
their functional calls read the flag at run time, `forward` calls `_forward_train` or
`_forward_eval`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.fx as fx

from .imports import Imports
from .style import tidy
from .trace import Traces
from .tree import ModuleTree

SAME = "The forward pass is the same in train and eval mode."
DISPATCH = "fx fixes Python branches on `self.training`: forward dispatches to the train- or eval-mode trace."

_WRAP_CALL = r'^\s*torch\.fx\._symbolic_trace\.wrap\("(\w+)"\)\n'


@dataclass(frozen=True)
class Forward:
    """The class's forward methods (source, unindented) and the header's sentence on the modes."""

    methods: list[str]
    modes: str


def write_forward(traces: Traces, tree: ModuleTree, imports: Imports) -> Forward:
    """The forward methods for `traces`; the names their code uses are added to `imports`."""
    train_code, eval_code = method_source(traces.train, tree, imports), method_source(traces.eval, tree, imports)
    if train_code == eval_code:
        return Forward([train_code], SAME)
    args = _call_args(traces.eval)
    dispatch = (
        f"def forward({_signature(traces.eval)}):\n"
        "    if self.training:\n"
        f"        return self._forward_train({args})\n"
        f"    return self._forward_eval({args})\n"
    )
    return Forward(
        [
            dispatch,
            train_code.replace("def forward(", "def _forward_train(", 1),
            eval_code.replace("def forward(", "def _forward_eval(", 1),
        ],
        DISPATCH,
    )


def method_source(gm: fx.GraphModule, tree: ModuleTree, imports: Imports) -> str:
    """`gm`'s forward as tidy source referring to `tree`'s modules; its globals are added to `imports`."""
    code = gm.graph.python_code(root_module="self")
    src = code.src.strip("\n") + "\n"
    # fx's prologue re-registers wrapped functions; torch.fx.wrap belongs at module level.
    imports.wrapped.update(re.findall(_WRAP_CALL, src, re.M))
    src = re.sub(_WRAP_CALL, "", src, flags=re.M).strip("\n") + "\n"
    for name, obj in code.globals.items():
        if re.search(rf"\b{re.escape(name)}\b", src):
            imports.add_global(name, obj)
    return tree.index_lists(tidy(src))


def _signature(gm: fx.GraphModule) -> str:
    code = gm.graph.python_code(root_module="self").src
    match = re.search(r"def forward\((.*?)\):", code, re.S)
    if match is None:
        raise RuntimeError("fx's code has no forward")
    return match.group(1)


def _call_args(gm: fx.GraphModule) -> str:
    return ", ".join(n.target for n in gm.graph.nodes if n.op == "placeholder")
