"""`graph.cached_widths`: widths a block keeps in Python (a concatenation's, a split's, an
attention block's head dimension) found once and kept in step with a resize."""

import timm
import torch
import torch.nn as nn
from graph_models import GhostNet, X, member

import lwdna_plugin as lw
from lwdna_plugin.graph import CachedWidth


def test_concatenation_width_cached_on_a_block_follows_a_resize():
    model = GhostNet()
    graph = lw.GroupGraph(model, X)
    (cached,) = graph.cached_widths
    assert isinstance(cached, CachedWidth) and (cached.module, cached.attr, cached.kind) == (
        model.ghost,
        "out_chs",
        "width",
    )
    head = member(graph.group("ghost.primary"), "head")
    assert head.repeat == 2 and sorted(zip(head.root_idxs, head.positions, strict=True))[:2] == [(0, 0), (0, 4)]
    lw.resize(graph, {"ghost.primary": 6})
    assert model.ghost.out_chs == 12 and model.head.in_channels == 12
    assert graph.sync_cached_widths() == []  # already in step
    assert model(X).shape == (2, 2, 8, 8)


def test_attention_heads_are_rooted_at_the_projection_input():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    heads = graph.group("blocks.0.attn.proj:in")
    assert heads.prunable and heads.divisor == 3 and heads.size == 192
    assert member(heads, "blocks.0.attn.qkv").repeat == 3
    lw.resize(graph, {heads.key: 120})
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.qkv.out_features) == (3, 40, 360)
    assert attn.scale == 40**-0.5
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


class SeparateValues(nn.Module):
    """TNT's attention: `qk` and `v` separate, `head_dim` kept for `qk`'s reshape, `v`'s read off the shape."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qk = nn.Linear(dim, 2 * dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k = self.qk(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class SeparateValuesNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = SeparateValues()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x)
        return self.head((x + self.attn(x)).mean(1))


def test_heads_written_by_a_value_projection_keep_the_head_dimension_in_step():
    # The group is rooted at `v`'s outputs, not at `proj`'s input: it spans the block's heads all
    # the same, since `v` writes inside the block what `proj` reads.
    model = SeparateValuesNet()
    tokens = torch.zeros(2, 5, 3)
    graph = lw.GroupGraph(model, tokens)
    heads = graph.group("attn.v")
    assert heads.prunable and heads.divisor == 2
    assert {(m.name, m.dim) for m in heads.members} == {("attn.v", "out"), ("attn.proj", "in"), ("attn.qk", "out")}
    # The residual stream also holds a layer's input (`qk`) and another's output (`proj`) of the
    # block, but `proj` writes after `qk` reads: its width is not the heads'.
    assert graph.group("embed").divisor == 1
    lw.resize(graph, {"attn.v": 12})
    assert (model.attn.head_dim, model.attn.scale) == (6, 6**-0.5)
    assert model(tokens).shape == (2, 2)


def _small_hiera():
    from timm.models.hiera import Hiera

    return Hiera(img_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), num_classes=10)


def test_an_attention_block_that_names_its_heads_heads_keeps_its_widths_in_step():
    # Hiera's blocks keep `heads`, `head_dim` and `dim_out` (heads x head_dim), all read in forward.
    result = lw.dissimilate(_small_hiera(), criterion="synflow", input_size=(3, 64, 64), flops=1.0, round_to=1)
    assert list(result.report.fixed_groups) == ["head.fc"]
    model = lw.build(result.spec, base=_small_hiera()).eval()
    for i, block in enumerate(model.blocks):
        kept = result.spec["groups"][f"blocks.{i}.attn.proj:in"]["kept"]
        assert block.attn.dim_out == block.attn.heads * block.attn.head_dim == kept
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    assert lw.count_flops(model, torch.zeros(1, 3, 64, 64)) <= result.spec["target"]["flops"]
