"""The human side of a result: per-layer channel table, totals, and the per-layer width plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn
from torch_pruning import ops

from .graph import Depth, Why
from .planner import Plan


@dataclass
class LayerRow:
    name: str
    original: int
    widened: int
    kept: int

    @property
    def ratio(self) -> float:
        return self.kept / self.original


@dataclass
class Report:
    """Per layer: original / widened / kept output channels; FLOPs and params (fvcore) before and after."""

    model: str
    layers: list[LayerRow]
    flops: dict[str, int]
    params: dict[str, int]
    convention: str
    fixed_groups: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_size: tuple[int, ...] | None = None  # (C, H, W) the FLOPs were counted at
    # How much of the model could change width (None: a report made without its groups).
    depth: Depth | None = None

    def to_markdown(self) -> str:
        f, p = self.flops, self.params
        lines = [
            f"# LW-DNA report: {self.model}",
            "",
            f"FLOPs counted by {self.convention}"
            + (
                f", at input {'x'.join(map(str, self.input_size))} (channels x height x width)."
                if self.input_size
                else "."
            ),
            "",
            "| | original | widened | LW-DNA | LW-DNA / original |",
            "|---|---:|---:|---:|---:|",
            f"| FLOPs | {f['original']:,} | {f['widened']:,} | {f['lwdna']:,} | {f['lwdna'] / f['original']:.4f} |",
            f"| params | {p['original']:,} | {p['widened']:,} | {p['lwdna']:,} | {p['lwdna'] / p['original']:.4f} |",
            "",
            f"FLOP target: {f['target']:,} ({f['target'] / f['original']:.4f} of the original).",
            "",
        ]
        lines += [f"- {note}" for note in self.notes]
        if self.depth is not None:
            d = self.depth
            lines += [
                "",
                f"Channel groups: {d.free_groups} of {d.free_groups + d.fixed_groups} can change width, holding "
                f"{d.free_share:.0%} of the channels (the model's output left out).",
            ]
        if self.fixed_groups:
            lines += ["", "## Channel groups left at their original width", ""]
            if self.depth is not None and self.depth.reasons:
                lines += ["| reason | groups | what it means |", "|---|---:|---|"]
                lines += [f"| {why} | {n} | {Why(why).advice} |" for why, n in self.depth.reasons.items()]
                lines += [""]
            lines += [f"- `{k}`: {why}" for k, why in sorted(self.fixed_groups.items())]
        lines += [
            "",
            "## Output channels per layer",
            "",
            "`#` is the layer's position on the x axis of `channels.png`.",
            "",
            "| # | layer | original | widened | kept | kept / original |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {i} | `{r.name}` | {r.original} | {r.widened} | {r.kept} | {r.ratio:.2f} |"
            for i, r in enumerate(self.layers)
        ]
        return "\n".join(lines) + "\n"

    __str__ = to_markdown

    def figure(self):
        """Per-layer output channels as a fraction of the original, the way the paper plots them
        (a matplotlib Figure; `plot` saves and closes it)."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        x = range(len(self.layers))
        fig = Figure(figsize=(max(6.0, 0.12 * len(self.layers) + 2), 3.6), dpi=120)
        ax = fig.subplots()
        ax.bar(x, [r.ratio for r in self.layers], color="#3b75af", label="LW-DNA")
        ax.plot(x, [r.widened / r.original for r in self.layers], color="#999999", lw=1, ls="--", label="widened")
        ax.axhline(1.0, color="#d62728", lw=1, label="original")
        for i in stage_starts([r.name for r in self.layers])[1:]:
            ax.axvline(i - 0.5, color="#bbbbbb", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer # (as in report.md; dotted lines: stage boundaries)")
        ax.set_ylabel("channels / original")
        ratio = self.flops["lwdna"] / self.flops["original"]
        ax.set_title(f"{self.model}: per-layer width, FLOPs {ratio:.3f}x of the original")
        ax.set_xlim(-1, len(self.layers))
        # Beside the axes, never over a bar.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
        fig.tight_layout()
        return fig

    def plot(self, path: str | Path) -> Path:
        """Save `figure()` to `path` (PNG, or any format matplotlib infers from the suffix)."""
        path = Path(path)
        self.figure().savefig(path)
        return path


def stage_of(name: str) -> str:
    """The stage a layer name belongs to: the container before its block index ("layer2" of
    "layer2.0.conv1"; "stages.1" of "stages.1.0.conv1", where stages are numbered too); "" for
    layers outside numbered blocks (stem, head)."""
    parts = name.split(".")
    first = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if first is None:
        return ""
    nested = first + 1 < len(parts) and parts[first + 1].isdigit()
    return ".".join(parts[: first + 1 if nested else first])


def stage_starts(names: list[str]) -> list[int]:
    """Positions where a new stage begins (the first layer is always one)."""
    return [i for i, name in enumerate(names) if i == 0 or stage_of(name) != stage_of(names[i - 1])]


def layer_rows(original: nn.Module, widened: nn.Module, lwdna: nn.Module) -> list[LayerRow]:
    """Output channels of every conv and linear layer in the three models, in network order."""
    wide, lw = dict(widened.named_modules()), dict(lwdna.named_modules())
    rows = []
    for name, module in original.named_modules():
        width = _out_width(module)
        if width is None or name not in lw:
            continue
        rows.append(LayerRow(name, width, _out_width(wide[name]), _out_width(lw[name])))
    return rows


def _out_width(module: nn.Module) -> int | None:
    if isinstance(module, ops.TORCH_CONV):
        return module.out_channels
    if isinstance(module, ops.TORCH_LINEAR):
        return module.out_features
    return None


_RANKED = {
    "saliency": "channels ranked by saliency (the paper's criterion)",
    "flops": "channels ranked by saliency per FLOP they cost",
    "uniform": "every group thinned by one common fraction of its width (uniform, not ranked across groups)",
}


def identification_notes(
    plan: Plan, target: int, achieved: int, criterion: object, aggregate: str, batches: int, inits: int
) -> list[str]:
    """The report's lines on how the widths were found: criterion, data, ranking, FLOP accuracy."""
    name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", type(criterion).__name__)
    source = f"on {batches} batch(es)" if batches else "data-free: no data was used"
    scored = f", {inits} initialisations averaged rank by rank" if inits > 1 else ""
    notes = [
        f"criterion: {name} (aggregate={aggregate}) {source}{scored}; {_RANKED[plan.ranking]}",
        f"achieved / target FLOPs: {achieved / target:.4f}; the search's analytic model predicted "
        f"{plan.predicted_flops / achieved:.4f}x the fvcore count",
    ]
    if plan.max_flops < target:
        notes.append("the widened model is below the target: every channel was kept (raise `width` to use the budget)")
    return notes
