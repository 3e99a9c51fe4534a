"""The file's docstring: what was exported, its budget and widths, whether it imports timm, how to load weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


def base_name(spec: dict[str, Any] | None, model: nn.Module) -> str:
    """The base model's zoo name from the spec, else the model's class name."""
    base = (spec or {}).get("base") or {}
    return base.get("name") or type(model).__name__


@dataclass(frozen=True)
class Header:
    """What the file's docstring reports."""

    model: nn.Module
    spec: dict[str, Any] | None
    class_name: str
    dtype: torch.dtype = torch.float32
    timm_targets: list[str] = field(default_factory=list)  # the timm functions the file imports
    modes: str = ""  # how the forward treats train and eval mode

    def text(self) -> str:
        """The docstring's text, ending in a newline."""
        lines = [
            f"LW-DNA {base_name(self.spec, self.model)}: a standalone PyTorch module written by lwdna_plugin's "
            "export_python.",
            "",
            *self._origin(),
            "",
        ]
        if self.timm_targets:
            lines.append("Imports timm: yes, for functions timm keeps out of fx tracing (listed in TIMM_IMPORTS):")
            lines += [f"    {target}" for target in self.timm_targets]
        else:
            lines.append("Imports timm: no; this file needs only torch.")
        lines += [
            self.modes,
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

    def _origin(self) -> list[str]:
        """The base model, then the spec's input size, budget, groups and package versions."""
        spec = self.spec or {}
        base = spec.get("base") or {}
        if base:
            kwargs = ", ".join(f"{k}={v!r}" for k, v in sorted(base.get("kwargs", {}).items()))
            lines = [f"Base model: {base.get('zoo', '?')} {base['name']!r}" + (f" ({kwargs})" if kwargs else "")]
        elif spec:
            lines = ["Base model: a module with no zoo recipe"]
        else:
            lines = [f"Exported from a {type(self.model).__name__} module (no LW-DNA spec given)"]
        if not spec:
            return lines
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
        return lines
