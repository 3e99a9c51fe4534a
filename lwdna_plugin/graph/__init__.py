"""Channel groups: torch-pruning's dependency graph, seen as the units LW-DNA resizes.

One module per concept, in the style of torch-pruning's `dependency` package:

- `groups`: `ChannelGroup` and `Member`, and how a torch-pruning group is described as one;
- `layout`: how a member holds a group's channels, and where growing inserts new ones;
- `tracing`: building torch-pruning's graph with recording hooks and the mappings it lacks;
- `index_mapping`: those mappings (segments of splits and concatenations, rearrangements);
- `splits`, `rearrange`: where those mappings go; `pieces`: equal-piece splits tied to one width;
- `search`: torch-pruning's group search, bounded in indices and steps;
- `cached_widths`: block attributes that cache a width, kept in step after a resize;
- `group_graph`: `GroupGraph`, which ties them together.
"""

from .cached_widths import CachedWidth
from .group_graph import GroupGraph
from .groups import ChannelGroup, Member
from .layout import growth_slots

__all__ = ["CachedWidth", "ChannelGroup", "GroupGraph", "Member", "growth_slots"]
