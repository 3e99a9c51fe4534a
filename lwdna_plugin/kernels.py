"""Known CPU kernel defects that a layer-wise width can trigger, and the layout that avoids them.

Uniform zoo models keep channel counts that kernels are tuned for; LW-DNA widths (with
`round_to=1`) can give any layer any count, and a few counts hit defects in the kernels torch
ships. One table, `DEFECTS`, names each defect, the layers it concerns and what to do; the
report warns about the layers of a result it finds, and `training_memory_format` picks a layout
in which training the result is safe.

Example, a ResNet-20 whose first stage kept 7 channels::

    >>> import timm, torch, lwdna_plugin as lw
    >>> model = timm.create_model("cifar_resnet20", widths=[7, 13, 26], in_chans=1)
    >>> [h.layer for h in lw.cpu_kernel_hazards(model)]
    ['stages.1.0.downsample.0']
    >>> lw.training_memory_format(model) is torch.contiguous_format
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Defect:
    """A kernel defect: which layers it concerns (`concerns`), what goes wrong, where it is reported."""

    name: str
    concerns: Callable[[nn.Module], bool]
    consequence: str
    reference: str
    layout: torch.memory_format  # the layout in which it strikes


@dataclass(frozen=True)
class KernelHazard:
    """One layer of a model that a known kernel defect concerns."""

    layer: str
    defect: Defect

    def message(self) -> str:
        return f"`{self.layer}`: {self.defect.consequence} ({self.defect.reference})"


def _input_block() -> int:
    # oneDNN's 1x1 kernels process input channels in blocks of the vector width: 8 floats on
    # AVX2, 16 on AVX-512; the defect below needs fewer input channels than one block.
    return 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8


def _strided_pointwise_with_few_inputs(module: nn.Module) -> bool:
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        return False
    pointwise = tuple(module.kernel_size) == (1, 1)
    strided = any(s > 1 for s in module.stride)
    return pointwise and strided and 1 < module.in_channels < _input_block()


DEFECTS = (
    Defect(
        name="onednn-1x1-strided-backward-weights",
        concerns=_strided_pointwise_with_few_inputs,
        consequence=(
            "a strided 1x1 convolution with fewer input channels than one vector block; in channels-last "
            "layout on a CPU, its weight gradient is wrong with 2 or more threads and corrupts the heap with 1 "
            "(measured on torch 2.14.1, oneDNN 3.12, AVX2)"
        ),
        reference="oneDNN issue 6035: 1x1 convolution backward_weights writes past its workspace, nhwc, IC < ic_block",
        layout=torch.channels_last,
    ),
)


def cpu_kernel_hazards(model: nn.Module) -> list[KernelHazard]:
    """The layers of `model` that a known CPU kernel defect (`DEFECTS`) concerns, in module order."""
    return [KernelHazard(name, d) for name, m in model.named_modules() for d in DEFECTS if d.concerns(m)]


def training_memory_format(model: nn.Module) -> torch.memory_format:
    """`torch.channels_last` (oneDNN's faster layout on CPUs) unless a layer of `model` hits a
    known defect in it; then the default layout, in which those kernels are correct."""
    unsafe = {h.defect.layout for h in cpu_kernel_hazards(model)}
    return torch.contiguous_format if torch.channels_last in unsafe else torch.channels_last


def to_memory_format(tensor: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """A copy of a 4-D `tensor` with `layout`'s own strides.

    `tensor.contiguous(memory_format=...)` is not enough: with one channel (or 1 x 1 maps) a
    tensor can count as both layouts, torch then picks channels-last for the convolution, and
    every layer after it runs in channels-last whatever layout the model's weights are in."""
    return torch.empty_like(tensor, memory_format=layout).copy_(tensor)


def hazard_notes(model: nn.Module, original: nn.Module | None = None) -> list[str]:
    """The report's lines on the hazards of `model` that its widths made (those of layers that
    were hazards in `original` already, such as a stem reading the image's 3 channels, are the
    architecture's, not the plan's), with what to do about them."""
    before = {h.layer for h in cpu_kernel_hazards(original)} if original is not None else set()
    hazards = [h for h in cpu_kernel_hazards(model) if h.layer not in before]
    if not hazards:
        return []
    listed = "; ".join(h.message() for h in hazards[:3]) + ("; ..." if len(hazards) > 3 else "")
    return [
        f"the widths found make {len(hazards)} layer(s) hit a known CPU kernel defect: {listed}. "
        "To train on a CPU, keep the default memory layout, model and inputs "
        "(`lw.training_memory_format(model)` says which is safe, "
        "`lw.to_memory_format(images, layout)` puts one-channel images in it), or dissimilate "
        "with round_to=8 so no such width is chosen; GPUs are not concerned"
    ]
