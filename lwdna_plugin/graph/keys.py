"""Group keys: how a channel group is named in plans and specs, and what the name says.

A key is the root layer's name (its output channels), with `:in` when the group is rooted at
the layer's input channels (an attention output projection), or `#k` for piece k of a split
whose pieces must stay equal. Specs store keys as these strings; `GroupKey` writes and reads
them, so no other module builds or splits one by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_SUFFIX = ":in"
_PIECE = "#"


@dataclass(frozen=True)
class GroupKey:
    """A group key's parts: the root layer, whether at its input, and the piece of a split."""

    layer: str
    at_input: bool = False
    piece: int | None = None

    def __str__(self) -> str:
        if self.piece is not None:
            return f"{self.layer}{_PIECE}{self.piece}"
        return f"{self.layer}{INPUT_SUFFIX}" if self.at_input else self.layer

    @classmethod
    def parse(cls, key: str) -> GroupKey:
        layer, sep, piece = key.rpartition(_PIECE)
        if sep and piece.isdigit():
            return cls(layer, piece=int(piece))
        if key.endswith(INPUT_SUFFIX):
            return cls(key.removesuffix(INPUT_SUFFIX), at_input=True)
        return cls(key)
