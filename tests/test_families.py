"""Regression tests for architecture families that needed more than torch-pruning's defaults."""

from functools import partial

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.graph import Why
from lwdna_plugin.widen import widen_or_fix

X = torch.zeros(1, 3, IMG, IMG)


def _roundtrip(name, batches, tmp_path, **kwargs):
    # Planned on FLOPs alone: these tests check the structure of a model whose widths changed.
    result = lw.dissimilate(name, data=batches, model_kwargs={"num_classes": 10, **kwargs}, footprint=None)
    assert result.spec["achieved"]["flops"] <= result.spec["target"]["flops"]
    result.save(tmp_path)
    model = lw.build(tmp_path / "spec.json")
    assert model(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)
    return result


def test_scaled_std_conv_gain_follows_its_layer(batches, tmp_path):
    """Normaliser-free nets: ScaledStdConv2d keeps a `gain` per output channel."""
    result = _roundtrip("nf_resnet26", batches, tmp_path)
    for m in result.model.modules():
        if hasattr(m, "gain") and isinstance(m, torch.nn.Conv2d):
            assert m.gain.shape[0] == m.out_channels


def test_ghost_modules_resize_their_slice_bound():
    """GhostNet slices its concatenation to `out_chs`; squeeze-excite groups are re-rooted."""
    from timm.models.ghostnet import GhostModule

    model = timm.create_model("ghostnet_100", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, X)
    assert graph.cached_widths, "GhostModule.out_chs was not found"
    assert not [g for g in graph.groups if g.fixed and "se." in g.key]
    ghosts = {name: m for name, m in model.named_modules() if isinstance(m, GhostModule)}
    before = {name: m.out_chs for name, m in ghosts.items()}
    lw.resize(graph, {g.key: 2 * g.size for g in graph.groups if g.prunable})
    widths = {}

    def record(name, module, inputs, output):
        widths[name] = output.shape[1]

    hooks = [m.register_forward_hook(partial(record, name)) for name, m in ghosts.items()]
    assert model(X).shape == (1, 10)
    for h in hooks:
        h.remove()
    # Every slice bound follows its module's widened output, and the module's output is wider.
    assert widths == {name: m.out_chs for name, m in ghosts.items()}
    assert all(widths[name] > before[name] for name in ghosts if before[name] > 8)


def test_split_and_concat_families(batches, tmp_path):
    """Res2Net splits a tensor into `scale` pieces of `width` and concatenates them back: after
    dissimilation every block's split width, its 3x3 convs and its conv1 still agree."""
    from timm.models.res2net import Bottle2neck

    result = _roundtrip("res2net50_26w_4s", batches, tmp_path)
    blocks = [m for m in result.model.modules() if isinstance(m, Bottle2neck)]
    assert blocks
    for block in blocks:
        assert block.conv1.out_channels == block.width * block.scale
        assert all(conv.in_channels == conv.out_channels == block.width for conv in block.convs)
    assert {block.width for block in blocks} != {26, 52, 104, 208}  # the widths changed


def test_attention_heads_keep_their_count_and_resize_their_dimension(batches):
    """ViT: the qkv/proj group is rooted at proj's input; num_heads stays, head_dim follows."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=IMG)
    graph = lw.GroupGraph(model, X)
    heads = [g for g in graph.groups if g.key.endswith("attn.proj:in")]
    assert len(heads) == len(model.blocks) and all(g.prunable and g.divisor == 3 for g in heads)
    wide, _ = lw.widen(model, X, 2.0)
    assert all(b.attn.head_dim == 128 and b.attn.qkv.out_features == 3 * 384 for b in wide.blocks)
    result = lw.dissimilate(model, data=batches)
    for block in result.model.blocks:
        attn = block.attn
        assert attn.num_heads == 3
        assert attn.head_dim * attn.num_heads == attn.proj.in_features == attn.qkv.out_features // 3
        assert attn.scale == attn.head_dim**-0.5
    assert result.model(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)


def test_layers_unknown_to_torch_pruning_follow_their_group():
    """TResNet's BlurPool2d filters every channel with F.conv2d and a `filt` buffer."""
    model = timm.create_model("tresnet_m", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, X)
    assert graph.opaque, "BlurPool2d was not found"
    lw.resize(graph, {g.key: 2 * g.size for g in graph.groups if g.prunable})
    for m in model.modules():
        if type(m).__name__ == "BlurPool2d":
            assert m.filt.shape[0] == m.channels
    assert model(X).shape == (1, 10)


def test_metaformer_scale_shape_follows_its_group():
    """PoolFormer's Scale keeps `shape = (dim, 1, 1)` beside a bare `scale` parameter."""
    model = timm.create_model("poolformer_s12", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, X)
    lw.resize(graph, {g.key: 2 * g.size for g in graph.groups if g.prunable})
    assert model(X).shape == (1, 10)


def test_scalar_affine_blocks_are_left_alone(batches, tmp_path):
    """HGNetV2's LearnableAffineBlock holds one scale and one bias, not one per channel."""
    from timm.models.hgnet import LearnableAffineBlock

    result = _roundtrip("hgnetv2_b0", batches, tmp_path)
    affine = [m for m in result.model.modules() if isinstance(m, LearnableAffineBlock)]
    assert affine and all(m.scale.shape == m.bias.shape == (1,) for m in affine)


def test_equal_split_pieces_get_a_group_each_tied_to_one_width():
    """CSPNet splits `conv_exp` in halves with `x.split(self.expand_chs // 2)`: one group per half, one width."""
    model = timm.create_model("cspresnet50", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, X)
    half = graph.group("stages.0.conv_exp.conv#0")
    tied = [g for g in graph.groups if g.tie == half.tie]
    assert len(tied) == 2 and all(g.prunable for g in tied)
    with pytest.raises(ValueError, match="tied"):
        lw.resize(graph, {tied[0].key: half.size + 8, tied[1].key: half.size})
    lw.resize(graph, {g.key: g.size * 3 // 2 for g in graph.groups if g.prunable})
    lw.resize(graph, {g.key: g.size // 3 for g in graph.groups if g.prunable})
    for stage in model.stages:
        assert stage.expand_chs == stage.conv_exp.conv.out_channels
        assert stage.blocks[0].conv1.conv.in_channels * 2 == stage.expand_chs
    assert model(X).shape == (1, 10)


def test_channels_last_patch_merging_maps_each_channel_to_every_quarter():
    """Swin's PatchMerging reshapes (B, H, W, C) to (B, H/2, W/2, 4C): channel c lands at j*C + c."""
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=IMG, window_size=2
    )
    graph = lw.GroupGraph(model, X)
    group = graph.group("layers.0.blocks.1.mlp.fc2")
    assert group.prunable
    # The relative position bias table has one column per head: the attention's channels are a
    # group of their own (rooted at the output projection's input), the table stays out of it.
    attention = graph.group("layers.0.blocks.0.attn.proj:in")
    assert attention.prunable and attention.divisor % 3 == 0
    assert not [m for g in graph.groups for m in g.members if "relative_position_bias_table" in (m.name or "")]
    table = model.layers[0].blocks[0].attn.relative_position_bias_table.shape
    norm = next(m for m in group.members if m.name == "layers.1.downsample.norm")
    c = group.size
    assert sorted(p for p, r in zip(norm.positions, norm.root_idxs, strict=True) if r == 5) == [
        5,
        c + 5,
        2 * c + 5,
        3 * c + 5,
    ]
    lw.resize(graph, {g.key: g.size * 3 // 2 for g in graph.groups if g.prunable})
    lw.resize(graph, {g.key: g.size // 2 for g in graph.groups if g.prunable})
    assert model.layers[1].downsample.norm.normalized_shape[0] == 4 * model.layers[0].blocks[1].mlp.fc2.out_features
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.shape == table
    attn = model.layers[0].blocks[0].attn
    assert attn.proj.in_features == 96 // 2 and attn.qkv.out_features == 3 * attn.proj.in_features
    assert model(X).shape == (1, 10)


def test_partial_residual_sums_are_left_fixed():
    """RexNet adds its shortcut to the first channels only (`x[:, :C] += shortcut`): those groups stay fixed."""
    model = timm.create_model("rexnet_100", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, X)
    assert graph.group("features.2.conv_pwl.conv").fixed.why is Why.IRREGULAR
    lw.resize(graph, {g.key: 2 * g.size for g in graph.groups if g.prunable})
    assert model.eval()(X).shape == (1, 10)  # eval: its squeeze-excite BatchNorm sees one value per channel


def test_grouped_convs_keep_the_same_channels_in_every_group(batches, tmp_path):
    """FastViT's final conv is grouped (384 groups, 2 outputs each): every group keeps an equal share."""
    model = timm.create_model("fastvit_t8", pretrained=False, num_classes=10)
    assert lw.GroupGraph(model, X).group("stages.3.blocks.1.mlp.fc2").balance == 384
    result = _roundtrip("fastvit_t8", batches, tmp_path)
    conv = result.model.final_conv.conv_kxk[0].conv
    assert conv.groups == 384 and conv.weight.shape[1] * 384 == conv.in_channels


def test_talking_heads_keep_the_head_count():
    """CaiT mixes attention logits across heads with `proj_l`/`proj_w` (Linear(heads, heads)):
    their groups are the head count, which LW-DNA keeps, and say so."""
    model = timm.create_model("cait_xxs24_224", pretrained=False, num_classes=10, img_size=32, depth=2)
    x = torch.zeros(1, 3, 32, 32)
    graph = lw.GroupGraph(model, x)
    for key in ("blocks.0.attn.proj_l", "blocks.1.attn.proj_w"):
        assert graph.group(key).fixed.why is Why.PER_HEAD and graph.group(key).size == 4
    wide = widen_or_fix(model, x, 1.5).model
    assert wide.blocks[0].attn.proj_l.in_features == wide.blocks[0].attn.proj_l.out_features == 4
    assert wide.blocks[0].mlp.fc1.out_features == 1152 and wide(x).shape == (1, 10)
