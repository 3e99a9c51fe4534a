"""`graph.rearrange`: reshapes and permutes that change the channel count, mapped by probing
autograd: a channels-last patch merge, selective-kernel and split attention."""

import timm
import torch
from graph_models import member, small_swin
from torch_pruning import ops

import lwdna_plugin as lw


def test_channels_last_patch_merge_is_mapped_cyclically():
    model = small_swin((1, 2))
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    group = graph.group("layers.0.blocks.0.mlp.fc2")
    norm = member(group, "layers.1.downsample.norm")
    assert norm.repeat == 4 and group.prunable
    assert sorted(p for p, r in zip(norm.positions, norm.root_idxs, strict=True) if r == 3) == [3, 11, 19, 27]
    lw.resize(graph, {group.key: 12})
    assert model.layers[1].downsample.norm.normalized_shape[0] == 48
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_a_patch_merge_read_by_a_linear_layer_is_not_a_token_mixer():
    """Swin V2's patch merge permutes and flattens (2, 2, C) into the features its `reduction`
    reads with no norm between: a transpose then another count than C looked like a token
    mixer, and the stage's channels passed through `reduction` into every later stage."""
    model = timm.create_model(
        "swinv2_tiny_window16_256", num_classes=10, img_size=32, window_size=2, depths=(1, 1), num_heads=(2, 2),
        embed_dim=8,
    ).eval()  # fmt: skip
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    assert model.layers[1].downsample.reduction not in graph.dg.pass_through
    group = graph.group("layers.0.blocks.0.mlp.fc2")
    assert len(member(group, "layers.1.downsample.reduction").positions) == 32
    assert not any(m.name.startswith("layers.1.blocks") for m in group.members)
    # The block reshapes its attention to its input's width (`reshape(B_, N, C)`): the two resize together.
    proj = "layers.0.blocks.0.attn.proj"
    attention = next(g for g in graph.groups if any(m.name == proj and m.dim == "in" for m in g.members))
    lw.resize(graph, {group.key: 12, attention.key: 12})
    assert model.layers[1].downsample.reduction.in_features == 48
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_a_crop_of_a_channels_last_map_keeps_every_channel():
    """Twins' windowed attention pads its channels-last map to whole windows and crops it back,
    `x[:, :H, :W, :]`: torch-pruning read the crop of H (dim 1 of a 4-d tensor) as a cut of the
    channels, and every qkv group through it was fixed ("2 positions for 1536 channels")."""
    model = timm.create_model("twins_svt_small", num_classes=10, img_size=64, depths=(1, 1, 1, 1)).eval()
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 64, 64))
    crops = [n for n in graph.dg.module2node.values() if n.grad_fn is not None and n.grad_fn.name() == "SliceBackward0"]
    assert len(crops) == 8 and all(n.type != ops.OPTYPE.SLICE for n in crops)
    assert [g.key for g in graph.groups if not g.prunable] == ["head"]


def test_selective_kernel_attention_is_mapped_cyclically():
    # fc_select writes (B, 2C) that `view(B, 2, C, 1, 1)` splits into one weight per path: path j
    # of channel c is at j*C + c. torch-pruning maps the view as a flatten (c at 2c and 2c + 1).
    model = timm.create_model("skresnet18", pretrained=False, num_classes=10).eval()
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    group = graph.group("layer1.0.conv1.paths.0.conv")
    select = member(group, "layer1.0.conv1.attn.fc_select")
    assert select.repeat == 2 and group.prunable
    assert sorted(p for p, r in zip(select.positions, select.root_idxs, strict=True) if r == 3) == [3, 67]


def test_split_attention_is_mapped_cyclically_through_its_softmax():
    # ResNeSt's split attention: `conv` writes radix paths (B, 2C) that `reshape(B, 2, C, H, W)`
    # splits and `sum(dim=1)` adds; `fc2`'s weights pass `view(B, 1, 2, C).transpose(1, 2)`, a
    # softmax over the paths and three more views before they multiply the paths. Path j of
    # channel c is at j*C + c in both; torch-pruning maps every view as a flatten.
    model = timm.create_model("resnest14d", pretrained=False, num_classes=10).eval()
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    group = graph.group("layer1.0.conv2.fc1:in")  # rooted where the C channels are whole
    assert group.prunable and group.size == 64
    for name in ("layer1.0.conv2.conv", "layer1.0.conv2.bn0", "layer1.0.conv2.fc2"):
        found = member(group, name)
        assert found.repeat == 2
        assert sorted(p for p, r in zip(found.positions, found.root_idxs, strict=True) if r == 3) == [3, 67]
    assert member(group, "layer1.0.conv3").repeat == 1
    assert not [g.key for g in graph.groups if g.fixed and g.key != "fc"]


def _mixers(model, graph):
    return sorted(name for name, m in model.named_modules() if m in graph.dg.pass_through)


def test_token_mixing_layers_pass_channels_through():
    """MLP-Mixer's token MLP, ResMLP's token layer (after a patch embedding and an affine norm
    torch-pruning does not know) and gMLP's spatial gate apply a linear layer to transposed
    tokens: torch-pruning took its token count for channels (gMLP: 30 groups of 16 "channels",
    each breaking the forward when resized). Channels pass through them; they keep their size."""
    from functools import partial

    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    mixer = MlpMixer(num_classes=10, img_size=64, patch_size=16, num_blocks=2, embed_dim=32).eval()
    resmlp = MlpMixer(
        num_classes=10, img_size=64, patch_size=16, num_blocks=2, embed_dim=32, mlp_ratio=4,
        block_layer=partial(ResBlock, init_values=1e-4), norm_layer=Affine,
    ).eval()  # fmt: skip
    gmlp = timm.create_model("gmlp_ti16_224", pretrained=False, num_classes=10, img_size=64).eval()
    x = torch.zeros(1, 3, 64, 64)
    graphs = {name: lw.GroupGraph(m, x) for name, m in [("mixer", mixer), ("resmlp", resmlp), ("gmlp", gmlp)]}
    assert _mixers(mixer, graphs["mixer"]) == [f"blocks.{i}.mlp_tokens.fc{j}" for i in (0, 1) for j in (1, 2)]
    assert _mixers(resmlp, graphs["resmlp"]) == ["blocks.0.linear_tokens", "blocks.1.linear_tokens"]
    assert len(_mixers(gmlp, graphs["gmlp"])) == 30
    for name, graph in graphs.items():
        assert not any("tokens" in g.key or "gate.proj" in g.key for g in graph.groups), name
        assert lw.graph.Depth.of(graph.groups).free_share == 1.0, name
    # Every group resizes and the model runs; the token layers keep their token count.
    result = lw.dissimilate(mixer, input_size=(3, 64, 64), data=None, criterion="random", flops=1.0)
    assert result.model.blocks[0].mlp_tokens.fc1.weight.shape == mixer.blocks[0].mlp_tokens.fc1.weight.shape
    assert result.spec["groups"]["blocks.1.mlp_channels.fc2"]["widened"] == 64  # the residual stream
    assert result.model.stem.proj.out_channels == result.spec["groups"]["blocks.1.mlp_channels.fc2"]["kept"]
    assert result.model(x).shape == (1, 10)
