"""Names shared by the graph modules: group key conventions and ops that carry channels unchanged."""

from torch_pruning import ops

# Key suffix of a group rooted at a layer's input channels (an attention output projection).
INPUT_SUFFIX = ":in"

# Ops whose only pruning job is bookkeeping that the graph re-derives from shapes.
PASS_THROUGH = {
    ops.OPTYPE.ELEMENTWISE,
    ops.OPTYPE.RESHAPE,
    ops.OPTYPE.UNBIND,
    ops.OPTYPE.EXPAND,
}
