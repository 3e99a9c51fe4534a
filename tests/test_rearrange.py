"""`graph.rearrange`: reshapes and permutes that change the channel count, mapped by probing
autograd: a channels-last patch merge, selective-kernel and split attention."""

import timm
import torch
from graph_models import member, small_swin

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
