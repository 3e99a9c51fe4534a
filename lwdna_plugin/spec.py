"""Spec: the JSON record of a result, its fields declared once.

A spec names the base model's recipe, the target and what was achieved, how the widths were
found (`settings`, written flat into the JSON object beside the other fields), each channel
group's original / widened / kept width, and every tensor's shape. `Spec.from_dict` checks
every field `build` reads and names the one that is wrong; `to_dict` is the JSON object
`spec.json` holds (written with sorted keys, so its bytes do not depend on field order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .arguments import is_whole

SCHEMA = "lwdna-spec/1"
READS = (SCHEMA,)  # the spec schemas `build` reads
_MAX_GROWTH = 64
_MAX_INPUT = 2**27  # 512 MiB of float32 per sample: larger is an edited spec, not an image


@dataclass(frozen=True)
class Spec:
    """An LW-DNA spec. Every other key of the JSON object is a setting (`settings`)."""

    input_size: list[int]
    groups: dict[str, dict[str, int]]
    shapes: dict[str, list[int]]
    base: dict[str, Any] | None = None
    target: dict[str, Any] = field(default_factory=dict)
    achieved: dict[str, Any] = field(default_factory=dict)
    original: dict[str, Any] = field(default_factory=dict)
    flop_counter: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    fixed_groups: dict[str, str] = field(default_factory=dict)
    schema: str = SCHEMA

    # The JSON object's keys that are fields of their own (the rest are settings).
    FIELDS = (
        "schema", "base", "input_size", "target", "achieved", "original", "flop_counter", "versions", "groups",
        "fixed_groups", "shapes",
    )  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, source: str = "the spec") -> Spec:
        """The spec in `data`, once every field `build` reads is present and of the right type;
        otherwise a ValueError that names the field (`source`: where `data` came from)."""
        _check(data, source)
        known = {k: data[k] for k in cls.FIELDS if k in data}
        return cls(**known, settings={k: v for k, v in data.items() if k not in cls.FIELDS})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the spec, settings flat beside the other fields."""
        return {
            "schema": self.schema,
            "base": self.base,
            "input_size": list(self.input_size),
            "target": self.target,
            "achieved": self.achieved,
            "original": self.original,
            "flop_counter": self.flop_counter,
            **self.settings,
            "versions": self.versions,
            "groups": self.groups,
            "fixed_groups": self.fixed_groups,
            "shapes": self.shapes,
        }


def _check(data: Any, source: str) -> None:
    """Every field `build` reads is present and of the right type, or a ValueError names it."""

    def bad(field: str, want: str, value: Any) -> ValueError:
        text = repr(value)
        return ValueError(f"{source}: field {field!r} {want} (got {text if len(text) < 80 else text[:77] + '...'})")

    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object (an LW-DNA spec), got {type(data).__name__}")
    if data.get("schema") not in READS:
        raise ValueError(
            f"{source}: spec schema {data.get('schema')!r}; this version of lwdna_plugin reads {', '.join(READS)}. "
            "Re-export the spec with this version"
        )
    base = data.get("base")
    if base is not None:
        if not isinstance(base, Mapping):
            raise bad("base", "must be an object {zoo, name, kwargs} or null", base)
        for key in ("zoo", "name"):
            if not isinstance(base.get(key), str):
                raise bad(f"base.{key}", "must be a string", base.get(key))
        if not isinstance(base.get("kwargs", {}), Mapping):
            raise bad("base.kwargs", "must be an object of keyword arguments", base.get("kwargs"))
    size = data.get("input_size")
    if not isinstance(size, list) or not 1 <= len(size) <= 4 or not all(is_whole(v) for v in size):
        raise bad("input_size", "must be a list of positive integers (channels, height, width)", size)
    if math.prod(size) > _MAX_INPUT:
        raise bad("input_size", f"must hold at most {_MAX_INPUT:,} values per sample", size)
    groups = data.get("groups")
    if not isinstance(groups, Mapping):
        raise bad("groups", "must be an object of {original, kept} widths by layer", groups)
    for key, entry in groups.items():
        if not isinstance(entry, Mapping):
            raise bad(f"groups.{key}", "must be an object {original, kept}", entry)
        for name in ("original", "kept"):
            if not is_whole(entry.get(name)):
                raise bad(f"groups.{key}.{name}", "must be a positive integer", entry.get(name))
        # A width far above what dissimilation can reach is an edited spec, not one to allocate.
        if entry["kept"] > _MAX_GROWTH * entry["original"]:
            raise bad(f"groups.{key}.kept", f"must be at most {_MAX_GROWTH} x its original width", entry["kept"])
    shapes = data.get("shapes")
    if not isinstance(shapes, Mapping) or not all(
        isinstance(v, list) and all(is_whole(d) or d == 0 for d in v) for v in shapes.values()
    ):
        raise bad("shapes", "must be an object of tensor shapes (lists of integers) by name", shapes)
    ignored = data.get("ignored", [])
    if not isinstance(ignored, list) or not all(isinstance(v, str) for v in ignored):
        raise bad("ignored", "must be a list of layer names", ignored)
    fixed = data.get("fixed_groups", {})
    if not isinstance(fixed, Mapping) or not all(isinstance(v, str) for v in fixed.values()):
        raise bad("fixed_groups", "must be an object of reasons by layer", fixed)
    if not isinstance(data.get("versions", {}), Mapping):
        raise bad("versions", "must be an object of package versions", data.get("versions"))
