"""Tensors the file recreates: parameters and buffers with their initial values, and constants fx lifted.

Persistent tensors are in the state dict, so the file writes a cheap initial value (the
constant where the tensor is constant, else timm's usual trunc_normal). Tensors outside the
state dict (non-persistent buffers, constants fx lifted out of a forward) must be exact, so they
are written as literals, up to `MAX_LITERAL` elements; a larger one (a Swin attention mask or
relative position index) is stored zlib-compressed in a module-level constant of the file, up
to `MAX_PACKED` characters.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

# Tensors on containers with at most this many elements and no place in the state dict (a
# non-persistent buffer, a constant fx lifted out of a forward) are written out as literals.
MAX_LITERAL = 256
# Base64 characters of one compressed tensor the file may hold (about 0.75 MB of zlib data).
MAX_PACKED = 1 << 20
# Characters of base64 text on one line of the file.
_CHUNK = 96

UNPACK = """def _unpack(data: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    \"\"\"A tensor the state dict does not hold, stored zlib-compressed and base64-encoded in this file.\"\"\"
    raw = bytearray(zlib.decompress(base64.b64decode(data)))
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).clone()
"""


@dataclass(frozen=True)
class TensorSlot:
    """A tensor registered directly on one module: a parameter, a buffer or a lifted constant."""

    attr: str
    tensor: torch.Tensor
    parameter: bool
    persistent: bool


def direct_tensors(name: str, module: nn.Module, constants: Mapping[str, torch.Tensor]) -> list[TensorSlot]:
    """The tensors registered on `module` itself (named `name`), then the lifted constants placed on it."""
    slots = [TensorSlot(n, p, True, True) for n, p in module.named_parameters(recurse=False)]
    slots += [
        TensorSlot(n, b, False, n not in module._non_persistent_buffers_set)
        for n, b in module.named_buffers(recurse=False)
    ]
    for target, value in constants.items():
        parent, _, attr = target.rpartition(".")
        if parent == name and not any(attr == slot.attr for slot in slots):
            slots.append(TensorSlot(attr, value, False, False))
    return slots


def lifted_constants(model: nn.Module, graphs: Iterable[fx.GraphModule]) -> dict[str, torch.Tensor]:
    """get_attr targets that are neither parameters nor buffers of the model (fx's lifted constants)."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    constants = {}
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op == "get_attr" and node.target not in state and node.target != "training":
                value = _fetch(gm, node.target)
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"the traced graph reads {node.target!r}, which is not a tensor")
                constants[node.target] = value
    return constants


def initial_value(tensor: torch.Tensor) -> str:
    """An expression for a tensor the state dict overwrites: its value where constant, else trunc_normal."""
    shape = ", ".join(str(s) for s in tensor.shape)
    dtype = "" if tensor.dtype == torch.float32 else f", dtype={tensor.dtype}"
    data = tensor.detach()
    if data.numel() and bool((data == data.flatten()[0]).all()):
        value = data.flatten()[0].item()
        if value == 0:
            return f"torch.zeros({shape}{dtype})" if shape else f"torch.tensor(0{dtype})"
        if value == 1:
            return f"torch.ones({shape}{dtype})" if shape else f"torch.tensor(1{dtype})"
        text = short_float(value, tensor.dtype) if isinstance(value, float) else repr(value)
        return f"torch.full(({shape}{',' if len(tensor.shape) == 1 else ''}), {text}{dtype})"
    if data.is_floating_point():  # a position embedding, a class token: timm's usual init
        return f"nn.init.trunc_normal_(torch.empty({shape}{dtype}), std=0.02)"
    return f"torch.zeros({shape}{dtype})"


@dataclass
class Packed:
    """Tensors too large for a literal, compressed into module-level constants of the file."""

    blobs: dict[str, str] = field(default_factory=dict)  # constant name -> base64 text

    def expression(self, where: str, tensor: torch.Tensor) -> str:
        """`_unpack(<constant>, dtype, shape)` for `tensor` (named `where` in errors)."""
        data = tensor.detach().cpu().contiguous()
        text = base64.b64encode(zlib.compress(data.flatten().view(torch.uint8).numpy().tobytes(), 9)).decode()
        if len(text) > MAX_PACKED:
            raise ValueError(
                f"{where!r} is a tensor of {tensor.numel()} elements the state dict does not hold, "
                f"{len(text):,} characters compressed: too large to write into the generated file"
            )
        # One constant per distinct value: timm's blocks may hold equal masks.
        name = next((n for n, t in self.blobs.items() if t == text), f"_PACKED_{len(self.blobs)}")
        self.blobs[name] = text
        return f"_unpack({name}, {data.dtype}, {tuple(data.shape)!r})"

    def source(self) -> str:
        """The module-level constants, each base64 text split over lines (ending in a newline, like a helper)."""
        return (
            "\n\n".join(
                f"{name} = (\n" + "".join(f'    "{text[i : i + _CHUNK]}"\n' for i in range(0, len(text), _CHUNK)) + ")"
                for name, text in self.blobs.items()
            )
            + "\n"
        )


def literal(where: str, tensor: torch.Tensor, packed: Packed) -> str:
    """The exact value of a tensor the state dict does not hold (named `where`): a `torch.tensor(...)`
    literal, or for a large one an `_unpack` of a constant added to `packed`."""
    if tensor.numel() > MAX_LITERAL:
        return packed.expression(where, tensor)
    data = tensor.detach().cpu()
    return f"torch.tensor({data.tolist()!r}, dtype={data.dtype})"


def short_float(value: float, dtype: torch.dtype) -> str:
    """The shortest literal that rounds to the same `dtype` value (1e-06, not 9.999999974752427e-07)."""
    for digits in range(1, 18):
        text = repr(float(f"{value:.{digits}g}"))
        if torch.tensor(float(text), dtype=dtype).item() == value:
            return text
    return repr(value)


def _fetch(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
