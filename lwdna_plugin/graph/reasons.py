"""Why a channel group keeps its width: one closed set of reasons, each with what a user can do.

A group the pipeline cannot resize is "fixed": it keeps the original width in the result. The
report, the spec and `benchmarks/coverage.py` count fixed groups by `Why`; the `detail` names
the layer and what was found there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Why(Enum):
    """The closed set of reasons a group keeps its width (value: the short name tables use)."""

    OUTPUT = "model output"
    IGNORED = "ignored"
    PER_HEAD = "attention heads"
    IRREGULAR = "irregular channel mapping"
    SIZED_IN_PYTHON = "size set in Python"
    LAYER_GROUPS = "layer groups"
    NO_GROWER = "no grow function"
    STALLED = "search stalled"
    BREAKS = "resizing breaks the forward"

    @property
    def advice(self) -> str:
        """What the reason means for a user, and what they can do about it."""
        return _ADVICE[self]


_ADVICE = {
    Why.OUTPUT: "its width is the model's output (the classes): it never changes",
    Why.IGNORED: "you asked for it with `ignore`",
    Why.PER_HEAD: "its width is the number of attention heads, which LW-DNA keeps (it resizes each head's width)",
    Why.IRREGULAR: (
        "a layer reads its channels in an order torch-pruning cannot map one to one (a view that spreads "
        "them over two dimensions, an index); give the layer's width as a constructor argument or `ignore` it"
    ),
    Why.SIZED_IN_PYTHON: (
        "a split, concatenation or reshape sizes it with a number in the model's code; make that number a "
        "constructor argument or read it from the tensor's shape"
    ),
    Why.LAYER_GROUPS: "a grouped layer's group count does not divide it; change `round_to` or the group count",
    Why.NO_GROWER: "a layer type has no grow function: register one in `lwdna_plugin.GROWERS`",
    Why.STALLED: "torch-pruning's coupling search did not settle on it; please report the model",
    Why.BREAKS: (
        "resizing it breaks the model's forward pass (a size kept in the code); make the size a constructor "
        "argument or read it from the tensor's shape"
    ),
}


@dataclass(frozen=True)
class Fixed:
    """Why one group keeps its width: the reason from the closed set, and the detail found."""

    why: Why
    detail: str

    def __str__(self) -> str:
        return self.detail
