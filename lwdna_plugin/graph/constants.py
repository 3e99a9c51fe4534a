"""Names shared by the graph modules: ops that carry channels unchanged (group keys: `keys`)."""

from torch_pruning import ops

# Ops whose only pruning job is bookkeeping that the graph re-derives from shapes.
PASS_THROUGH = {
    ops.OPTYPE.ELEMENTWISE,
    ops.OPTYPE.RESHAPE,
    ops.OPTYPE.UNBIND,
    ops.OPTYPE.EXPAND,
}
