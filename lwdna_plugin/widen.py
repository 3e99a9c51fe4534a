"""Widen: grow every prunable channel group by `width`, then initialise as the zoo would.

Some widths cannot change although the dependency graph lets them: a `reshape` to a size
computed in Python, a split with sizes fixed at construction, an attention product that
needs two widths to agree. `widen_or_fix` finds such groups by widening halves of the groups
until the culprits are single groups, and leaves each at its width with the error as reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .adapter import copy_model
from .arguments import check_module, is_number
from .graph import ChannelGroup, GroupGraph
from .graph.search import Stall
from .initialise import initialise
from .modes import in_mode
from .resize import resize

# What a model that cannot take a widened group raises, inside the resize or in its forward.
WIDEN_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AssertionError, KeyError)
_ROUNDS = 3


def widened_size(group: ChannelGroup, width: float, round_to: int = 1) -> int:
    step = group.step(round_to)
    return max(step, int(round(group.size * width / step)) * step)


def widen(
    model: nn.Module,
    example_inputs: torch.Tensor,
    width: float = 2.0,
    round_to: int = 1,
    create: Callable[[], nn.Module] | None = None,
    ignored: Iterable[str] = (),
) -> Widened:
    """A widened, freshly initialised copy of `model` and the widened size of each group, as a
    `Widened` (which unpacks as `wide, sizes = widen(...)`). Unlike `widen_or_fix`, a group whose
    widening breaks the model is not looked for: the forward pass is the caller's to check."""
    check_module("widen(model, example_inputs)", model, example_inputs)
    if not is_number(width) or width <= 0:
        raise ValueError(f"width={width!r}: must be a positive number (the paper uses 2.0)")
    wide, sizes, _ = _grown_copy(model, example_inputs, width, round_to, tuple(ignored), {})
    initialise(wide, create)
    return Widened(wide, sizes, {})


def _grown_copy(
    model: nn.Module,
    example: torch.Tensor,
    width: float,
    round_to: int,
    ignored: Sequence[str],
    fixed: Mapping[str, str],
    keys: Sequence[str] | None = None,
    stalls: Mapping[str, Stall] | None = None,
) -> tuple[nn.Module, dict[str, int], list[str]]:
    """A copy of `model` with `keys` (None: every prunable group) grown by `width`, not yet
    initialised, the grown sizes, and the grown attention groups, to be tried alone (see
    `_tied_heads`)."""
    wide = copy_model(model)
    graph = GroupGraph(wide, example, ignored, fixed, stalls)
    sizes = {g.key: widened_size(g, width, round_to) for g in graph.groups if g.prunable}
    sizes = {k: v for k, v in sizes.items() if keys is None or k in keys}
    heads = [g.key for g in graph.groups if g.key in sizes and g.attention]
    resize(graph, sizes)
    return wide, sizes, heads


@dataclass
class Widened:
    """A widened, freshly initialised copy of the model, each widened group's size, and the
    groups left at their width because widening them breaks the model (key -> reason)."""

    model: nn.Module
    sizes: dict[str, int]
    unwidenable: dict[str, str]
    # Group key -> tie label: attention groups that widen only with their block's input width.
    ties: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[nn.Module | dict[str, int]]:
        """`wide, sizes = widen(...)`: the model and the sizes, as `widen` has always returned them."""
        return iter((self.model, self.sizes))


def widen_or_fix(
    model: nn.Module,
    example_inputs: torch.Tensor,
    width: float = 2.0,
    round_to: int = 1,
    create: Callable[[], nn.Module] | None = None,
    ignored: Iterable[str] = (),
    stalls: Mapping[str, Stall] | None = None,
) -> Widened:
    """`widen`, checked by one forward pass; groups whose widening breaks the model are found
    (see the module) and left at their width. Costs one forward pass when nothing breaks, and
    two more for each attention group (one more per block input they tie to). `stalls`:
    the searches that did not settle in the model's graph (`GroupGraph.stalls`)."""
    ignored = tuple(ignored)
    fixed: dict[str, str] = {}
    ties: dict[str, str] = {}
    probed = False
    for _ in range(_ROUNDS + 1):
        try:
            wide, sizes, heads = _grown_copy(model, example_inputs, width, round_to, ignored, fixed, stalls=stalls)
            with torch.no_grad(), in_mode(wide, training=False):
                wide(example_inputs)
        except WIDEN_ERRORS as err:
            error = first_line(err)
            found = breaking_groups(
                model, example_inputs, lambda g: widened_size(g, width, round_to), ignored, fixed, error, "widening",
                stalls,
            )  # fmt: skip
            if not found:
                raise RuntimeError(f"widening {type(model).__name__} fails ({error}), but no group alone does") from err
            fixed.update(found)
            continue
        if heads and not probed:
            probed = True
            found, ties = _tied_heads(model, example_inputs, width, round_to, ignored, fixed, heads, stalls)
            if found:
                fixed.update(found)
                continue
        initialise(wide, create)
        return Widened(wide, sizes, fixed, ties)
    raise RuntimeError(
        f"widening {type(model).__name__} still fails after leaving {len(fixed)} group(s) at their width"
    )


def _tied_heads(
    model, example, width, round_to, ignored, fixed, keys: Sequence[str], stalls
) -> tuple[dict[str, str], dict[str, str]]:
    """Attention groups (every one is tried, with or without `head_dim`) that break the model
    when widened alone: the tensor it reads is another group's (DaVit's and
    CrossViT's `C // num_heads`, BEiT's and PVT's `reshape(B, N, C)`, C the block's input
    width), so the two widths are tied in a way the graph does not show. Widening every group
    by one factor hides it; a plan that shrinks them apart breaks. Swin reads the width off the
    group's own tensor and passes.

    Returns the groups to fix (key -> reason) and the ties (key -> label): the groups whose
    blocks read one input width (a transformer's residual stream) that widen together with it
    (of equal size) are tied to it, not fixed."""
    trials = _Trials(model, example, lambda g: widened_size(g, width, round_to), ignored, fixed, stalls)
    # Read before any trial: a trial leaves the descriptions of the groups it resized stale.
    inputs = {key: _input_group(trials.graph, key) for key in keys}
    failures = {key: failure for key in keys if (failure := trials.error([key])) is not None}
    by_input: dict[str | None, list[str]] = {}
    for key in failures:
        by_input.setdefault(inputs[key], []).append(key)
    found, ties = {}, {}
    for partner, keys_read in by_input.items():
        if partner is not None and trials.error([partner, *keys_read]) is None:
            ties.update(dict.fromkeys([partner, *keys_read], f"width of {partner}"))
            continue
        for key in keys_read:
            found[key] = (
                f"widening it alone breaks the model ({failures[key]}): its attention reads the head width elsewhere"
            )
    return found, ties


def _input_group(graph: GroupGraph, key: str) -> str | None:
    """The free group, of the same size, at the input of the layers whose outputs `key` holds
    (an attention block's qkv layer: the block's input width)."""
    group = graph.group(key)
    producers = {m.name for m in group.members if m.dim == "out"}
    for g in graph.groups:
        if g.key != key and g.prunable and g.tie is None and g.size == group.size:
            if any(m.dim == "in" and m.name in producers for m in g.members):
                return g.key
    return None


def first_line(err: BaseException) -> str:
    """`Type: message` of an error, its first line cut to 160 characters."""
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return f"{type(err).__name__}: {text}"


class _Trials:
    """Resizing trials on one copy of the model: resize some groups, run the copy, size them back.

    Building a group graph costs more than resizing a few groups and running the model, so the
    copy and its graph are kept across trials; only a trial whose resize itself failed, or that
    leaves a copy that no longer runs, has them rebuilt.
    """

    def __init__(self, model, example, target: Callable[[ChannelGroup], int], ignored, fixed, stalls=None) -> None:
        self.source, self.example, self.ignored, self.fixed, self.stalls = model, example, ignored, fixed, stalls
        self._rebuild()
        groups = [g for g in self.graph.groups if g.prunable and target(g) != g.size]
        self.keys = [g.key for g in groups]
        self.original = {g.key: g.size for g in groups}
        self.resized = {g.key: target(g) for g in groups}

    def _rebuild(self) -> None:
        self.copy = copy_model(self.source)
        self.graph = GroupGraph(self.copy, self.example, self.ignored, self.fixed, self.stalls)

    def _run(self) -> None:
        with torch.no_grad(), in_mode(self.copy, training=False):
            self.copy(self.example)

    def error(self, keys: Sequence[str]) -> str | None:
        """The first line of what resizing `keys` raises, in the resize or the forward pass."""
        try:
            resize(self.graph, {k: self.resized[k] for k in keys})
        except WIDEN_ERRORS as err:
            self._rebuild()
            return first_line(err)
        try:
            self._run()
            failure = None
        except WIDEN_ERRORS as err:
            failure = first_line(err)
        try:
            resize(self.graph, {k: self.original[k] for k in keys})
            self._run()
        except WIDEN_ERRORS:
            self._rebuild()
        return failure


def breaking_groups(
    model: nn.Module,
    example: torch.Tensor,
    target: Callable[[ChannelGroup], int],
    ignored: Sequence[str],
    fixed: Mapping[str, str],
    error: str,
    action: str,
    stalls: Mapping[str, Stall] | None = None,
) -> dict[str, str]:
    """Groups of `model` that break it on their own when resized to `target(group)`, each with
    the reason (`action` names the resizing: "widening", "shrinking"), found by resizing halves
    (about 2 log2(groups) trials per culprit). A failure that needs two groups together gives
    the smallest such set found."""
    trials = _Trials(model, example, target, ignored, fixed, stalls)
    found: dict[str, str] = {}
    _bisect(trials, trials.keys, error, found, action)
    return found


def _bisect(trials: _Trials, subset: list[str], failure: str, found: dict[str, str], action: str) -> None:
    # A plain recursive function, not a closure over itself: that cycle would keep the trials'
    # model copy and graph alive until the garbage collector's next full pass.
    if len(subset) == 1:
        found[subset[0]] = f"{action} it breaks the model ({failure})"
        return
    halves = subset[: len(subset) // 2], subset[len(subset) // 2 :]
    errors = [trials.error(half) for half in halves]
    for half, half_error in zip(halves, errors, strict=True):
        if half_error is not None:
            _bisect(trials, list(half), half_error, found, action)
    if all(e is None for e in errors):
        for key in subset:
            found[key] = f"{action} it together with {len(subset) - 1} other group(s) breaks the model ({failure})"
