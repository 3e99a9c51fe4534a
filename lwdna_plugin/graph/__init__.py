"""Channel groups: torch-pruning's dependency graph, seen as the units LW-DNA resizes.

One module per concept, in the style of torch-pruning's `dependency` package:

- `groups`: `ChannelGroup` and `Member`, and how a torch-pruning group is described as one;
- `keys`: `GroupKey`, a group's name (root layer, `:in` at its input, `#k` piece of a split);
- `internals`: the one module that reads torch-pruning's private names or overrides its code;
- `layout`: how a member holds a group's channels, and where growing inserts new ones;
- `tracing`: building torch-pruning's graph with recording hooks and the mappings it lacks;
- `index_mapping`: those mappings (segments of splits and concatenations, rearrangements);
- `splits`, `rearrange`: where those mappings go; `pieces`: equal-piece splits tied to one width;
- `search`: torch-pruning's group search, bounded in indices and steps;
- `heads`: attention tensors with one entry per head, where a channel search stops;
- `reasons`: `Why` a group keeps its width (a closed set) and `Fixed`, the reason with its detail;
- `cached_widths`: block attributes that cache a width, kept in step after a resize;
- `group_graph`: `GroupGraph`, which ties them together;
- `depth`: how much of a model its free groups hold, weighted by channels.
"""

from .cached_widths import CachedWidth
from .depth import Depth
from .group_graph import GroupGraph
from .groups import ChannelGroup, Member, slices_channels
from .layout import growth_slots
from .reasons import Fixed, Why

__all__ = [
    "CachedWidth",
    "ChannelGroup",
    "Depth",
    "Fixed",
    "GroupGraph",
    "Member",
    "Why",
    "growth_slots",
    "slices_channels",
]
