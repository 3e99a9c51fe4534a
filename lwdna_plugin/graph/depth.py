"""Depth: how much of a model LW-DNA can resize, weighted by channels.

Counting groups hides what matters: one fixed residual stream of a transformer outweighs a
dozen free gates. The free share weighs each group by its original width, and leaves out the
model's output (the classes), whose width is never LW-DNA's to change.

    >>> import timm, torch
    >>> from lwdna_plugin.graph import GroupGraph
    >>> model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    >>> depth = Depth.of(GroupGraph(model, torch.zeros(1, 3, 64, 64)).groups)
    >>> depth.free_share, depth.fixed_groups, depth.reasons
    (1.0, 1, {'model output': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .groups import ChannelGroup
from .reasons import Why

# Below this free share the result is mostly the original architecture: the user is warned.
SHALLOW = 0.5


@dataclass(frozen=True)
class Depth:
    """Free and fixed groups, the channel-weighted free share, fixed groups by reason."""

    free_groups: int
    fixed_groups: int
    free_share: float
    # `Why.value` -> fixed groups, most frequent first.
    reasons: dict[str, int] = field(default_factory=dict)
    # `Why.value` -> the original channels those groups hold (the output's left out).
    channels: dict[str, int] = field(default_factory=dict)
    # Group key -> `Why.value`, for every fixed group.
    fixed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, groups: Sequence[ChannelGroup]) -> Depth:
        counted = [g for g in groups if not (g.fixed and g.fixed.why is Why.OUTPUT)]
        total = sum(g.size for g in counted)
        free = sum(g.size for g in counted if g.prunable)
        reasons = Counter(g.fixed.why.value for g in groups if g.fixed)
        channels: Counter[str] = Counter()
        for g in counted:
            if g.fixed:
                channels[g.fixed.why.value] += g.size
        return cls(
            free_groups=sum(g.prunable for g in groups),
            fixed_groups=sum(not g.prunable for g in groups),
            free_share=round(free / total, 4) if total else 0.0,
            reasons=dict(reasons.most_common()),
            channels=dict(channels.most_common()),
            fixed={g.key: g.fixed.why.value for g in groups if g.fixed},
        )

    @property
    def shallow(self) -> bool:
        """Whether less than `SHALLOW` of the channels can change width."""
        return self.free_share < SHALLOW

    def warning(self, model: str) -> str | None:
        """What a user must know when the result is mostly the original architecture, else None."""
        if not self.shallow:
            return None
        main = [Why(why) for why in self.channels if why != Why.OUTPUT.value][:2]
        causes = "; ".join(f"{why.value} ({self.channels[why.value]:,} channels: {why.advice})" for why in main)
        result = "keeps the original architecture" if not self.free_groups else "is mostly the original architecture"
        return (
            f"only {self.free_share:.0%} of {model}'s channels can change width ({self.free_groups} of "
            f"{self.free_groups + self.fixed_groups} groups): the result {result}. "
            f"Main reasons: {causes}. The report lists every fixed group"
        )

    def to_dict(self) -> dict:
        return asdict(self)
