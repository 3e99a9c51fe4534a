"""Standalone export: the LW-DNA model as a Python module in plain PyTorch (`export_python`).

The LW-DNA model is traced with torch.fx, once in train and once in eval mode. Every layer
defined in `torch.nn` stays a layer and is written as its constructor call with explicit
channel counts (each call is checked by re-creating the layer and comparing its tensors and
settings); everything else (timm's blocks and stems) is traced through, so its forward
becomes the generated `forward` and its module becomes a plain `nn.Module` container with
the same name. A state dict saved from the LW-DNA model therefore loads with `strict=True`.
timm's BatchNormAct2d becomes a small helper class of the file (nn.BatchNorm2d, then its drop
and act layers) and timm's LayerNorm an nn.LayerNorm, both with the same tensor names.

fx fixes Python branches on `self.training`: a functional call given `training=` reads
`self.training` at run time instead; if the two traces still differ, `forward` dispatches to
one per mode. Functions timm keeps out of tracing (its fx "notrace" functions) stay calls into
timm: the generated file imports them and lists them in its docstring and in `TIMM_IMPORTS`.
None of the 12 core models needs one with timm 1.0.
"""

from __future__ import annotations

import builtins
import copy
import inspect
import json
import keyword
import math
import operator
import re
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .adapter import model_dtype

# Tensors on containers with at most this many elements and no place in the state dict (a
# non-persistent buffer, a constant fx lifted out of a forward) are written out as literals.
_MAX_LITERAL = 4096


@dataclass
class Standalone:
    """The generated module's source, its class name and the timm functions it imports."""

    source: str
    class_name: str
    timm_imports: list[str] = field(default_factory=list)

    @property
    def imports_timm(self) -> bool:
        return bool(self.timm_imports)


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
        model = copy.deepcopy(model).float()
    base = (spec or {}).get("base") or {}
    class_name = class_name or _class_name(base.get("name") or type(model).__name__)
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise ValueError(f"class_name {class_name!r} is not a Python identifier")
    return _Writer(model, spec, class_name, dtype).write()


def _resolve(obj: Any) -> tuple[nn.Module, dict[str, Any] | None]:
    from .api import Result
    from .export import build, load_spec

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
    words = re.split(r"[^0-9a-zA-Z]+", name)
    return "LWDNA" + "".join(w[:1].upper() + w[1:] for w in words if w)


class _Tracer(fx.Tracer):
    """Traces through everything but `torch.nn` layers; timm's notrace functions stay calls."""

    # Buffers read in a traced forward (BatchNormAct2d's num_batches_tracked.add_) become graph
    # nodes instead of being touched for real.
    proxy_buffer_attributes = True

    def __init__(self, leaves: frozenset[int] = frozenset()) -> None:
        self.extra_leaves = leaves
        try:
            from timm.layers import get_notrace_functions
        except ImportError:  # a module that did not come from timm
            functions = ()
        else:
            functions = tuple(f for f in get_notrace_functions() if callable(f))
        super().__init__(autowrap_functions=functions)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.extra_leaves or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, training: bool, leaves: frozenset[int]) -> fx.GraphModule:
    mode = model.training
    model.train(training)
    try:
        graph = _Tracer(leaves).trace(model)
    except Exception as error:
        raise RuntimeError(
            f"torch.fx could not trace {type(model).__name__} in {'train' if training else 'eval'} mode: {error}"
        ) from error
    finally:
        model.train(mode)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    _drop_dead_reads(gm.graph)
    _read_training_flag(gm.graph, training)
    for node in gm.graph.nodes:
        node.type = None  # no annotations in the generated signature
    gm.recompile()
    return gm


def _read_training_flag(graph: fx.Graph, training: bool) -> None:
    """Functional calls given `training=<the trace's mode>` (F.dropout, F.batch_norm) read `self.training` instead.

    The value fx recorded is `self.training` at trace time, so reading it at run time computes the
    same; a forward whose only mode-dependence was such a call then reads the same in both modes.
    """
    flag = None
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        try:
            params = list(inspect.signature(node.target).parameters)
        except (TypeError, ValueError):
            continue
        if "training" not in params:
            continue
        index = params.index("training")
        if "training" in node.kwargs:
            value = node.kwargs["training"]
        elif index < len(node.args):
            value = node.args[index]
        else:
            continue
        if value is not training:
            continue
        if flag is None:
            first = next(n for n in graph.nodes if n.op != "placeholder")
            with graph.inserting_before(first), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flag = graph.get_attr("training")
        if "training" in node.kwargs:
            node.kwargs = {**node.kwargs, "training": flag}
        else:
            node.args = (*node.args[:index], flag, *node.args[index + 1 :])


def _drop_dead_reads(graph: fx.Graph) -> None:
    """Remove unused shape reads and attribute fetches; anything that might act in place stays."""
    pure = (builtins.getattr, operator.getitem)
    for node in reversed(list(graph.nodes)):
        if node.users:
            continue
        if node.op == "get_attr" or (node.op == "call_function" and node.target in pure):
            graph.erase_node(node)


def _is_leaf(module: nn.Module) -> bool:
    return _Tracer().is_leaf_module(module, "")


class _Writer:
    def __init__(
        self, model: nn.Module, spec: dict[str, Any] | None, class_name: str, dtype: torch.dtype = torch.float32
    ) -> None:
        self.model = model
        self.dtype = dtype
        self.spec = spec
        self.class_name = class_name
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.timm_imports: dict[str, str] = {}  # local name -> import line
        self.imports: set[str] = set()
        self.constants: dict[str, torch.Tensor] = {}
        self.helpers: dict[str, str] = {}
        self.wrapped: set[str] = set()
        self.substitutes: dict[str, str] = {}

    def write(self) -> Standalone:
        self.substitutes = self._find_substitutes()
        leaves = frozenset(id(self.modules[name]) for name in self.substitutes)
        train, evaluation = _trace(self.model, True, leaves), _trace(self.model, False, leaves)
        self.graphs = {"train": train, "eval": evaluation}
        self._find_constants()
        init = self._init_body()
        train_code, eval_code = self._forward_code(train), self._forward_code(evaluation)
        if train_code == eval_code:
            forward = [train_code]
            modes = "The forward pass is the same in train and eval mode."
        else:
            signature = _signature(evaluation)
            forward = [
                f"def forward({signature}):\n"
                "    if self.training:\n"
                f"        return self._forward_train({_call_args(evaluation)})\n"
                f"    return self._forward_eval({_call_args(evaluation)})\n",
                train_code.replace("def forward(", "def _forward_train(", 1),
                eval_code.replace("def forward(", "def _forward_eval(", 1),
            ]
            modes = "fx fixes Python branches on `self.training`: forward dispatches to the train- or eval-mode trace."
        body = "\n".join(textwrap.indent(part.lstrip("\n").rstrip() + "\n", "    ") for part in [init, *forward])
        header = self._header(modes)
        imports = self._import_block("\n".join([init, *forward, *self.helpers.values(), *self.wrapped]))
        timm_list = sorted(self.timm_imports.values())
        code = (
            f"{imports}\n"
            + "".join(f'\ntorch.fx.wrap("{name}")  # a call, if this module is traced again' for name in self.wrapped)
            + ("\n" if self.wrapped else "")
            + f"\nTIMM_IMPORTS = {_pylist([_import_target(line) for line in timm_list])}\n\n\n"
            + "".join(f"{source}\n\n" for _, source in sorted(self.helpers.items()))
            + f"class {self.class_name}(nn.Module):\n"
            f'    """LW-DNA {self._base_name()} with explicit per-layer channels."""\n\n'
            f"{body.rstrip()}\n\n\n"
            f"MODEL = {self.class_name}\n"
        )
        code = "".join(_wrap(line.rstrip()) + "\n" for line in code.splitlines())
        source = f'"""{header}"""\n\n{code}'
        compile(source, "<lwdna standalone>", "exec")
        return Standalone(source, self.class_name, [_import_target(line) for line in timm_list])

    # --- which modules and tensors the file recreates -----------------------------------------

    def _find_constants(self) -> None:
        """get_attr targets that are neither parameters nor buffers of the model (fx's lifted constants)."""
        state = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        for gm in self.graphs.values():
            for node in gm.graph.nodes:
                if node.op == "get_attr" and node.target not in state and node.target != "training":
                    value = _fetch(gm, node.target)
                    if not isinstance(value, torch.Tensor):
                        raise ValueError(f"the traced graph reads {node.target!r}, which is not a tensor")
                    self.constants[node.target] = value

    def _called(self) -> set[str]:
        return {n.target for gm in self.graphs.values() for n in gm.graph.nodes if n.op == "call_module"}

    def _init_body(self) -> str:
        leaves = {name for name, m in self.modules.items() if name and _is_leaf(m)} | set(self.substitutes)
        # Modules inside a leaf are built by the leaf's own constructor.
        inside = {name for name in self.modules if any(name.startswith(leaf + ".") for leaf in leaves)}
        stateful = set()
        for name, module in self.modules.items():
            if name in inside:
                continue
            if name in leaves:
                if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                    stateful.add(name)
            elif any(True for _ in module.parameters(recurse=False)) or any(
                True for _ in module.buffers(recurse=False)
            ):
                stateful.add(name)
        needed = stateful | self._called() | {c.rpartition(".")[0] for c in self.constants}
        keep = set()
        for name in needed:
            parts = name.split(".") if name else []
            for i in range(len(parts) + 1):
                keep.add(".".join(parts[:i]))
        self.lists = {name for name in keep if name not in leaves and self._is_list(name)}
        lines = ["def __init__(self):", "    super().__init__()"]
        root_state = self._direct_state("", self.model)
        lines += ["    " + line for line in root_state]
        first: dict[int, str] = {}  # a module registered under several names is one module here too
        aliases: list[str] = []
        for name, module in self.modules.items():
            if not name or name not in keep or name in inside or any(name.startswith(a + ".") for a in aliases):
                continue
            parent, _, last = name.rpartition(".")
            if id(module) in first:
                aliases.append(name)
                lines.append("    " + self._assign(parent, last, self._ref(first[id(module)])))
                continue
            first[id(module)] = name
            if name in leaves:
                ctor = self._leaf_ctor(name, module)
            elif name in self.lists:
                count = len(list(module.named_children()))
                ctor = f"nn.ModuleList([nn.Module() for _ in range({count})])"
            else:
                ctor = "nn.Module()"
            if not (parent in self.lists and ctor == "nn.Module()"):
                lines.append("    " + self._assign(parent, last, ctor))
            if name not in leaves:
                lines += ["    " + line for line in self._direct_state(name, module)]
        return "\n".join(lines) + "\n"

    def _is_list(self, name: str) -> bool:
        module = self.modules[name]
        children = [n for n, _ in module.named_children()]
        if not children or children != [str(i) for i in range(len(children))]:
            return False
        return not self._direct_state_items(name, module)

    def _direct_state_items(self, name: str, module: nn.Module) -> list[tuple[str, str, torch.Tensor, bool]]:
        items = [(n, "parameter", p, True) for n, p in module.named_parameters(recurse=False)]
        items += [
            (n, "buffer", b, n not in module._non_persistent_buffers_set)
            for n, b in module.named_buffers(recurse=False)
        ]
        for target, value in self.constants.items():
            parent, _, attr = target.rpartition(".")
            if parent == name and not any(attr == i[0] for i in items):
                items.append((attr, "buffer", value, False))
        return items

    def _direct_state(self, name: str, module: nn.Module) -> list[str]:
        lines = []
        ref = self._ref(name)
        for attr, kind, tensor, persistent in self._direct_state_items(name, module):
            where = f"{name}.{attr}" if name else attr
            if persistent:
                value = _initial_value(tensor)
            else:
                value = self._literal(where, tensor)
            if kind == "parameter":
                grad = "" if tensor.requires_grad else ", requires_grad=False"
                if _safe_attr(attr):
                    lines.append(f"{ref}.{attr} = nn.Parameter({value}{grad})")
                else:
                    lines.append(f'{ref}.register_parameter("{attr}", nn.Parameter({value}{grad}))')
            else:
                flag = "" if persistent else ", persistent=False"
                lines.append(f'{ref}.register_buffer("{attr}", {value}{flag})')
        return lines

    def _literal(self, where: str, tensor: torch.Tensor) -> str:
        if tensor.numel() > _MAX_LITERAL:
            raise ValueError(
                f"{where!r} is a tensor of {tensor.numel()} elements the state dict does not hold: "
                "too large to write into the generated file"
            )
        data = tensor.detach().cpu()
        return f"torch.tensor({data.tolist()!r}, dtype={data.dtype})"

    def _find_substitutes(self) -> dict[str, str]:
        """timm layers written as a torch layer or a helper class of the file instead of being traced through."""
        found = {}
        for name, module in self.modules.items():
            kind = f"{type(module).__module__}.{type(module).__qualname__}"
            if not name or any(name.startswith(outer + ".") for outer in found):
                continue
            try:
                if kind == "timm.layers.norm_act.BatchNormAct2d":
                    found[name] = self._batchnorm_act(name, module)
                elif kind == "timm.layers.norm.LayerNorm" and not getattr(module, "_fast_norm", True):
                    found[name] = self._layernorm(name, module)
            except ValueError:
                continue  # traced through instead
        return found

    def _batchnorm_act(self, name: str, module: nn.Module) -> str:
        args = [str(module.num_features)]
        defaults = {"eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True}
        args += [f"{k}={getattr(module, k)!r}" for k, v in defaults.items() if getattr(module, k) != v]
        if type(module).forward is not _timm_batchnorm_act_forward():
            raise ValueError("BatchNormAct2d.forward is not timm's")
        for child in ("drop", "act"):
            layer = getattr(module, child)
            if not isinstance(layer, nn.Identity):
                args.append(f"{child}={self._leaf_ctor(f'{name}.{child}', layer)}")
        if sorted(n for n, _ in module.named_children()) != ["act", "drop"]:
            raise ValueError("unexpected children")
        self.helpers["BatchNormAct2d"] = _BATCHNORM_ACT
        return f"BatchNormAct2d({', '.join(args)})"

    def _layernorm(self, name: str, module: nn.Module) -> str:
        made = nn.LayerNorm(
            module.normalized_shape,
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            bias=module.bias is not None,
        )
        plain = nn.LayerNorm.__new__(nn.LayerNorm)
        plain.__dict__.update(module.__dict__)
        if not _same_layer(made, plain):
            raise ValueError("not a plain LayerNorm")
        return self._leaf_ctor(name, made)

    def _leaf_ctor(self, name: str, module: nn.Module) -> str:
        if name in self.substitutes:
            return self.substitutes[name]
        cls = type(module)
        if getattr(nn, cls.__name__, None) is not cls:
            raise ValueError(
                f"layer {name!r} is a {cls.__module__}.{cls.__qualname__}, which is not in torch.nn's namespace: "
                "it cannot be written as an nn constructor call"
            )
        tried = []
        candidates = (
            _signature_call(module, minimal=True),
            f"nn.{cls.__name__}({module.extra_repr()})",
            _signature_call(module, minimal=False),
        )
        for call in candidates:
            if call is None or call in tried:
                continue
            tried.append(call)
            try:
                made = eval(call, {"nn": nn, "torch": torch, "inf": math.inf, "nan": math.nan})  # noqa: S307
            except Exception:
                continue
            if _same_layer(made, module):
                return call
        raise ValueError(
            f"cannot write layer {name!r} ({cls.__name__}) as a constructor call: none of {tried} re-creates "
            "its tensors and settings"
        )

    def _ref(self, name: str) -> str:
        expr = "self"
        parts = name.split(".") if name else []
        for i, part in enumerate(parts):
            parent = ".".join(parts[:i])
            if parent in self.lists:
                expr += f"[{part}]"
            elif _safe_attr(part):
                expr += f".{part}"
            else:
                expr = f'getattr({expr}, "{part}")'
        return expr

    def _assign(self, parent: str, last: str, ctor: str) -> str:
        ref = self._ref(parent)
        if parent in self.lists:
            return f"{ref}[{last}] = {ctor}"
        if _safe_attr(last):
            return f"{ref}.{last} = {ctor}"
        return f'{ref}.add_module("{last}", {ctor})'

    # --- forward ------------------------------------------------------------------------------

    def _forward_code(self, gm: fx.GraphModule) -> str:
        code = gm.graph.python_code(root_module="self")
        src = code.src.strip("\n") + "\n"
        # fx's prologue re-registers wrapped functions; torch.fx.wrap belongs at module level.
        for name in re.findall(r'^\s*torch\.fx\._symbolic_trace\.wrap\("(\w+)"\)\n', src, re.M):
            self.wrapped.add(name)
        src = re.sub(r'^\s*torch\.fx\._symbolic_trace\.wrap\("\w+"\)\n', "", src, flags=re.M).strip("\n") + "\n"
        used = {name: obj for name, obj in code.globals.items() if re.search(rf"\b{re.escape(name)}\b", src)}
        for name, obj in used.items():
            self._import_global(name, obj)
        src = _tidy(src)
        src = self._index_lists(src)
        return src

    def _index_lists(self, src: str) -> str:
        pattern = re.compile(r'getattr\((self(?:\.\w+|\[\d+\])*), "(\d+)"\)')

        def replace(match: re.Match) -> str:
            expr, index = match.group(1), match.group(2)
            qual = re.sub(r"\[(\d+)\]", r".\1", expr[len("self") :]).lstrip(".")
            return f"{expr}[{index}]" if qual in self.lists else match.group(0)

        while True:
            new = pattern.sub(replace, src)
            if new == src:
                return src
            src = new

    def _import_global(self, name: str, obj: Any) -> None:
        if name in ("torch", "getattr", "NoneType", "inf", "nan", "device") or getattr(builtins, name, None) is obj:
            if name in ("inf", "nan"):
                self.imports.add(f"from math import {name}")
            elif name == "NoneType":
                self.imports.add("NoneType = type(None)")
            elif name == "device":
                self.imports.add("from torch import device")
            return
        if inspect.ismodule(obj):
            self.imports.add(f"import {obj.__name__}" + ("" if obj.__name__ == name else f" as {name}"))
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
            self.timm_imports[name] = line
        else:
            self.imports.add(line)

    # --- header -------------------------------------------------------------------------------

    def _base_name(self) -> str:
        base = (self.spec or {}).get("base") or {}
        return base.get("name") or type(self.model).__name__

    def _header(self, modes: str) -> str:
        spec = self.spec or {}
        base = spec.get("base") or {}
        lines = [
            f"LW-DNA {self._base_name()}: a standalone PyTorch module written by lwdna_plugin's export_python.",
            "",
        ]
        if base:
            kwargs = ", ".join(f"{k}={v!r}" for k, v in sorted(base.get("kwargs", {}).items()))
            lines.append(f"Base model: {base.get('zoo', '?')} {base['name']!r}" + (f" ({kwargs})" if kwargs else ""))
        elif spec:
            lines.append("Base model: a module with no zoo recipe")
        else:
            lines.append(f"Exported from a {type(self.model).__name__} module (no LW-DNA spec given)")
        if spec:
            achieved, original = spec.get("achieved", {}), spec.get("original", {})
            target = spec.get("target", {})
            size = "x".join(str(s) for s in spec.get("input_size", []))
            lines += [
                f"Input: {size}",
                f"FLOPs: {achieved.get('flops', 0):,} (target {target.get('flops', 0):,}, original "
                f"{original.get('flops', 0):,}, ratio {achieved.get('flops_ratio')})",
                f"FLOP counter: {spec.get('flop_counter', '?')}",
                f"Params: {achieved.get('params', 0):,} (original {original.get('params', 0):,})",
            ]
            groups = spec.get("groups", {})
            changed = sum(1 for g in groups.values() if g.get("kept") != g.get("original"))
            lines.append(f"Channel groups: {len(groups)}, {changed} with a width other than the base model's")
            versions = spec.get("versions", {})
            if versions:
                lines.append("Made with " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
        lines.append("")
        if self.timm_imports:
            lines.append("Imports timm: yes, for functions timm keeps out of fx tracing (listed in TIMM_IMPORTS):")
            lines += [f"    {_import_target(line)}" for line in sorted(self.timm_imports.values())]
        else:
            lines.append("Imports timm: no; this file needs only torch.")
        lines += [
            modes,
            "",
            "Load the LW-DNA model's weights (saved with torch.save(model.state_dict(), path)) with",
            f"    model = {self.class_name}()",
            "    model.load_state_dict(torch.load(path, weights_only=True))",
            "Layers start from PyTorch's default initialisation, not timm's; tensors held by containers",
            "start from the LW-DNA model's value where it is constant, else trunc_normal(std=0.02).",
            "Load trained weights or initialise the model yourself.",
        ]
        if self.dtype != torch.float32:
            lines += [
                f"The LW-DNA model was in {str(self.dtype).removeprefix('torch.')}; this class builds float32 layers:",
                f"    model = {self.class_name}().to({self.dtype})",
            ]
        return "\n".join(lines) + "\n"

    def _import_block(self, code: str) -> str:
        """Standard library, then torch, then timm: isort's order."""
        lines = set(self.imports) | set(self.timm_imports.values())
        lines.add("import torch.nn as nn")
        if "torch." in code or self.wrapped:
            lines.add("import torch")
        if "F." in code:
            lines.add("import torch.nn.functional as F")
        aliases = sorted(line for line in lines if not line.startswith(("import ", "from ")))
        lines -= set(aliases)

        def root(line: str) -> str:
            return line.split()[1].split(".")[0]

        def order(line: str) -> tuple:
            return (line.startswith("from "), line.split()[1], line)

        std = sorted((line for line in lines if root(line) in ("math", "operator", "builtins")), key=order)
        torch_lines = sorted((line for line in lines if root(line) == "torch"), key=order)
        rest = sorted(set(lines) - set(std) - set(torch_lines), key=order)
        text = "\n\n".join("\n".join(block) for block in (std, torch_lines + rest) if block)
        return text + ("\n\n" + "\n".join(aliases) if aliases else "")


def _fetch(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _safe_attr(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not hasattr(nn.Module, name)


def _initial_value(tensor: torch.Tensor) -> str:
    shape = ", ".join(str(s) for s in tensor.shape)
    dtype = "" if tensor.dtype == torch.float32 else f", dtype={tensor.dtype}"
    data = tensor.detach()
    if data.numel() and bool((data == data.flatten()[0]).all()):
        value = data.flatten()[0].item()
        if value == 0:
            return f"torch.zeros({shape}{dtype})" if shape else f"torch.tensor(0{dtype})"
        if value == 1:
            return f"torch.ones({shape}{dtype})" if shape else f"torch.tensor(1{dtype})"
        text = _short_float(value, tensor.dtype) if isinstance(value, float) else repr(value)
        return f"torch.full(({shape}{',' if len(tensor.shape) == 1 else ''}), {text}{dtype})"
    if data.is_floating_point():  # a position embedding, a class token: timm's usual init
        return f"nn.init.trunc_normal_(torch.empty({shape}{dtype}), std=0.02)"
    return f"torch.zeros({shape}{dtype})"


def _short_float(value: float, dtype: torch.dtype) -> str:
    """The shortest literal that rounds to the same `dtype` value (1e-06, not 9.999999974752427e-07)."""
    for digits in range(1, 18):
        text = repr(float(f"{value:.{digits}g}"))
        if torch.tensor(float(text), dtype=dtype).item() == value:
            return text
    return repr(value)


def _same_layer(made: nn.Module, module: nn.Module) -> bool:
    if type(made) is not type(module) or made.extra_repr() != module.extra_repr():
        return False

    def tensors(m: nn.Module) -> dict[str, tuple]:
        items = list(m.named_parameters()) + list(m.named_buffers())
        return {n: (tuple(t.shape), t.dtype, getattr(t, "requires_grad", False)) for n, t in items}

    if tensors(made) != tensors(module):
        return False
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training" or isinstance(value, (torch.Tensor, nn.Module)):
            continue
        try:
            if getattr(made, key, object()) != value:
                return False
        except Exception:
            return False
    return True


_POSITIONAL = {
    "in_channels",
    "out_channels",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_groups",
    "num_channels",
    "embed_dim",
    "num_heads",
}


def _signature_call(module: nn.Module, minimal: bool) -> str | None:
    """A constructor call from the layer's attributes named like its __init__ parameters.

    `minimal` leaves out arguments at their default, passes channel counts positionally and
    writes (3, 3) as 3; the caller checks that the call re-creates the layer.
    """
    cls = type(module)
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    args = []
    positional = minimal
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype"):
            positional = False
            continue
        if not hasattr(module, p.name):
            if p.default is p.empty:
                return None
            positional = False
            continue
        value = getattr(module, p.name)
        if isinstance(value, (torch.Tensor, type(None))) and p.name == "bias":
            value = value is not None
        if not isinstance(value, (bool, int, float, str, tuple, list, type(None))):
            return None
        if minimal and isinstance(value, tuple) and value and all(v == value[0] for v in value):
            value = value[0]
        if minimal and p.default is not p.empty and _equal(value, p.default):
            positional = False
            continue
        if positional and p.name in _POSITIONAL and p.default is p.empty:
            args.append(repr(value))
        else:
            positional = False
            args.append(f"{p.name}={value!r}")
    return f"nn.{cls.__name__}({', '.join(args)})"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    try:
        return bool(a == b)
    except Exception:
        return False


def _timm_batchnorm_act_forward() -> Any:
    from timm.layers.norm_act import BatchNormAct2d

    return BatchNormAct2d.forward


_BATCHNORM_ACT = '''class BatchNormAct2d(nn.BatchNorm2d):
    """nn.BatchNorm2d, then `drop` and `act`: timm's BatchNormAct2d, with the same tensors and names."""

    def __init__(
        self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, drop=None, act=None
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))
'''


def _tidy(src: str) -> str:
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
    src = "".join(_keyword_spacing(line) + "\n" for line in src.splitlines())
    src = re.sub(r"Proxy\(\w+\)", "?", src)
    src = re.sub(r"\[\(((?:slice\([-\w, ]*\)|-?\d+|None|Ellipsis|, )*)\)\]", _index, src)
    src = src.replace("torch.nn.functional.", "F.")

    def functional(match: re.Match) -> str:
        name = match.group(1)
        target = getattr(torch._C._nn, name, None)
        return f"F.{name}" if target is not None and getattr(F, name, None) is target else match.group(0)

    return re.sub(r"torch\._C\._nn\.(\w+)", functional, src)


def _index(match: re.Match) -> str:
    """`x[(slice(None, 28, None), 0)]` as `x[:28, 0]`."""
    try:
        items = eval(f"({match.group(1)},)", {"__builtins__": {}, "slice": slice, "Ellipsis": Ellipsis})  # noqa: S307
    except Exception:
        return match.group(0)
    out = []
    for item in items:
        if isinstance(item, slice):
            text = f"{'' if item.start is None else item.start}:{'' if item.stop is None else item.stop}"
            out.append(text + ("" if item.step is None else f":{item.step}"))
        elif item is Ellipsis:
            out.append("...")
        elif isinstance(item, int) or item is None:
            out.append(repr(item))
        else:
            return match.group(0)
    return f"[{', '.join(out)}]" if len(out) > 1 else f"[{out[0]},]"


def _keyword_spacing(line: str) -> str:
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


def _wrap(line: str, width: int = 120) -> str:
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
    if start is None or depth != 0:
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
    lines = "".join(f"\n{_wrap(inner + part, width)}," for part in parts)
    return line[: start + 1] + lines + f"\n{indent}{line[-1]}"


def _signature(gm: fx.GraphModule) -> str:
    code = gm.graph.python_code(root_module="self").src
    match = re.search(r"def forward\((.*?)\):", code, re.S)
    assert match is not None
    return match.group(1)


def _call_args(gm: fx.GraphModule) -> str:
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    return ", ".join(names)


def _import_target(line: str) -> str:
    parts = line.split()
    return f"{parts[1]}.{parts[3]}" if parts[0] == "from" else parts[1]


def _pylist(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"
