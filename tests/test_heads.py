"""`graph.heads`: the layers and parameters of an attention block with one entry per head."""

import timm
import torch
from graph_models import small_swin

import lwdna_plugin as lw
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


class _BiasMlpAttention(torch.nn.Module):
    """Attention whose logits get a bias an MLP makes per head from fixed coordinates (the shape
    of Swin V2's continuous position bias)."""

    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 5):
        super().__init__()
        self.num_heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.bias_mlp = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, heads))
        self.register_buffer("coords", torch.randn(tokens * tokens, 2))
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.bias_mlp(self.coords).view(n, n, self.num_heads).permute(2, 0, 1)
        attn = (q @ k.transpose(-2, -1) + bias.unsqueeze(0)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def test_a_layer_that_makes_one_value_a_head_stops_the_channel_search():
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), _BiasMlpAttention())
    x = torch.randn(2, 5, 8)
    dg = trace(model, x).dg
    assert _names(dg, per_head_tensors(dg, model)) == ["1.bias_mlp.2"]
    graph = lw.GroupGraph(model, x)
    assert graph.group("1.proj:in").prunable  # q, k and v: the search did not run into the heads
    assert not graph.group("1.bias_mlp.2").prunable
    # The MLP's hidden features reach its last layer at its input, which resizes with them.
    assert ("1.bias_mlp.2", "in") in [(m.name, m.dim) for m in graph.group("1.bias_mlp.0").members]
