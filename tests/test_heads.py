"""`graph.heads`: the layers and parameters of an attention block with one entry per head."""

import timm
import torch
from graph_models import small_swin

from lwdna_plugin.graph.heads import num_heads, per_head_tensors
from lwdna_plugin.graph.internals import module_name, parameter_name
from lwdna_plugin.graph.tracing import trace


def _names(dg, found):
    return sorted(parameter_name(dg, t) or module_name(dg, t) for t in found)


def test_relative_position_bias_tables_hold_one_entry_per_head():
    model = small_swin((2, 4))
    dg = trace(model, torch.zeros(1, 3, 32, 32)).dg
    assert _names(dg, per_head_tensors(dg, model)) == [
        "layers.0.blocks.0.attn.relative_position_bias_table",
        "layers.1.blocks.0.attn.relative_position_bias_table",
    ]


def test_talking_heads_projections_are_per_head_layers():
    model = timm.create_model("cait_xxs24_224", pretrained=False, num_classes=10, img_size=32, depth=1)
    dg = trace(model, torch.zeros(1, 3, 32, 32)).dg
    assert _names(dg, per_head_tensors(dg, model)) == ["blocks.0.attn.proj_l", "blocks.0.attn.proj_w"]


def test_a_single_head_has_nothing_to_tell_apart():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_heads=1, depth=1)
    assert num_heads(model.blocks[0].attn) is None
    assert num_heads(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).blocks[0].attn) == 3
