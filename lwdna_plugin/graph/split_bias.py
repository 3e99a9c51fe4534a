"""Attention blocks that add their q, k and v biases outside their qkv layer.

timm's BEiT, EVA and Swin V2 keep `q_bias`, `k_bias` (a zero buffer) and `v_bias` on the
attention block and call `F.linear(x, self.qkv.weight, cat(q_bias, k_bias, v_bias))`: the qkv
layer itself is never called. torch-pruning then sees no layer there (the product is an
element-wise op that ties the residual stream to three times its width), and a forward hook on
`qkv` never fires. The same blocks can call the layer and add the biases after it
(`qkv_bias_separate`, the same function up to rounding): `layers_called` switches them to that
while a graph is traced or gates are scored, and `bias_pieces` gives each bias its slice of
the layer's output channels, which `resize` removes and inserts with the layer's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

_BIASES = ("q_bias", "k_bias", "v_bias")


def split_bias_blocks(model: nn.Module) -> dict[nn.Linear, nn.Module]:
    """Each qkv layer whose biases its attention block keeps -> that block."""
    found = {}
    for block in model.modules():
        layer = getattr(block, "qkv", None)
        if (
            isinstance(layer, nn.Linear)
            and layer.bias is None
            and isinstance(getattr(block, "qkv_bias_separate", None), bool)
            and all(isinstance(getattr(block, name, None), torch.Tensor) for name in _BIASES)
        ):
            found[layer] = block
    return found


@contextmanager
def layers_called(model: nn.Module) -> Iterator[None]:
    """Every such block calls its qkv layer and adds the biases after it, until the context ends;
    the biases need no gradient meanwhile, so a trace sees them as constants added to its output."""
    blocks = [b for b in split_bias_blocks(model).values() if not b.qkv_bias_separate]
    biases = [t for b in blocks for t in (b.q_bias, b.v_bias) if isinstance(t, nn.Parameter) and t.requires_grad]
    for block in blocks:
        block.qkv_bias_separate = True
    for bias in biases:
        bias.requires_grad_(False)
    try:
        yield
    finally:
        for block in blocks:
            block.qkv_bias_separate = False
        for bias in biases:
            bias.requires_grad_(True)


def bias_pieces(
    block: nn.Module, positions: Sequence[int], roots: Sequence[int]
) -> list[tuple[nn.Module, str, list[int], list[int]]]:
    """(block, bias name, positions in that bias, root indices) for the qkv outputs at
    `positions` (with their group's `roots`): the q, k and v thirds of the layer's output."""
    width = block.q_bias.shape[0]
    pieces = []
    for i, name in enumerate(_BIASES):
        pairs = [(p - i * width, r) for p, r in zip(positions, roots, strict=True) if i * width <= p < (i + 1) * width]
        if pairs:
            pieces.append((block, name, [p for p, _ in pairs], [r for _, r in pairs]))
    return pieces
