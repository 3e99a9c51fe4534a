"""`lwdna_plugin.resize`: growing and pruning channel groups in place, keep lists, and `top_channels`."""

import copy

import pytest
import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from lwdna_plugin.resize import resize, top_channels

X = torch.zeros(2, 3, 8, 8)


class GroupedNet(nn.Module):
    """conv1's 8 channels are read by a conv of 2 groups (4 channels each)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))))


def _grouped_net():
    torch.manual_seed(0)
    model = GroupedNet()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _bn_state(bn):
    return [bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var]


def test_shrinking_keeps_exactly_the_listed_channels_of_every_member():
    model = _grouped_net()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    graph = lw.GroupGraph(model, X)
    keep = [6, 1, 4, 3]  # any order: two channels of each of conv2's groups (0-3, 4-7)
    resize(graph, {"conv1": 4}, keep={"conv1": keep})
    kept = sorted(keep)
    assert model.conv1.out_channels == 4 and model.bn1.num_features == 4 and model.conv2.in_channels == 4
    assert torch.equal(model.conv1.weight, original.conv1.weight[kept])
    assert torch.equal(model.conv1.bias, original.conv1.bias[kept])
    for new, old in zip(_bn_state(model.bn1), _bn_state(original.bn1), strict=True):
        assert torch.equal(new, old[kept])
    # conv2's first group (filters 0-2) kept its inputs 1 and 3, its second group (filters 3-5) 4 and 6.
    assert torch.equal(model.conv2.weight[:3], original.conv2.weight[:3, [1, 3]])
    assert torch.equal(model.conv2.weight[3:], original.conv2.weight[3:, [0, 2]])
    assert torch.equal(model.conv2.bias, original.conv2.bias) and torch.equal(model.head.weight, original.head.weight)
    assert graph.refresh("conv1")[0].size == 4
    # The pruned model computes what the original computes with the removed channels (0, 2, 5, 7) unread.
    with torch.no_grad():
        original.conv2.weight[:3, [0, 2]] = 0
        original.conv2.weight[3:, [1, 3]] = 0
    assert torch.allclose(model(x), original(x), atol=1e-5)


def test_shrinking_without_a_keep_list_keeps_the_leading_channels_of_each_conv_group():
    model = _grouped_net()
    original = copy.deepcopy(model)
    resize(lw.GroupGraph(model, X), {"conv1": 4})
    assert torch.equal(model.conv1.weight, original.conv1.weight[[0, 1, 4, 5]])
    assert torch.equal(model.bn1.running_var, original.bn1.running_var[[0, 1, 4, 5]])
    # Every conv group reads the same number of channels: its own first two.
    assert model.conv2.weight.shape == (6, 2, 3, 3) and model.conv2.groups == 2
    assert torch.equal(model.conv2.weight, original.conv2.weight[:, :2])
    assert model(X).shape == (2, 2, 8, 8)


def test_a_keep_list_spread_unevenly_over_conv_groups_is_an_error():
    model = _grouped_net()
    with pytest.raises(ValueError, match="spread unevenly over its 2 groups"):
        resize(lw.GroupGraph(model, X), {"conv1": 4}, keep={"conv1": [0, 1, 2, 3]})


def test_a_keep_list_of_the_wrong_length_is_an_error_before_anything_changes():
    model = _grouped_net()
    graph = lw.GroupGraph(model, X)
    with pytest.raises(ValueError, match="'conv1': keep lists 3 channels, width is 4"):
        resize(graph, {"conv1": 4}, keep={"conv1": [0, 1, 4]})
    assert model.conv1.out_channels == 8 and model.conv2.in_channels == 8 and model.bn1.running_mean.shape == (8,)


def test_widths_a_group_cannot_take_are_errors():
    graph = lw.GroupGraph(_grouped_net(), X)
    with pytest.raises(ValueError, match="'conv1': width 5 must be a positive multiple of 2"):
        resize(graph, {"conv1": 5})
    with pytest.raises(ValueError, match="width 0 must be a positive multiple"):
        resize(graph, {"conv2": 0})
    with pytest.raises(ValueError, match="'head' cannot change width \\(head produces the model output\\)"):
        resize(graph, {"head": 4})
    # The group's own width is no change, even for a fixed group.
    resize(graph, {"head": 2, "conv1": 8})
    assert graph.model.head.out_channels == 2 and graph.model.conv1.out_channels == 8


def test_growing_a_group_read_by_a_grouped_conv_grows_every_conv_group_at_its_end():
    model = _grouped_net()
    original = copy.deepcopy(model)
    graph = lw.GroupGraph(model, X)
    resize(graph, {"conv1": 12})
    assert model.conv1.out_channels == 12 and model.conv2.in_channels == 12 and model.conv2.groups == 2
    # conv2 reads conv1 in two blocks of 4: each block takes 2 new channels after its old ones.
    old, new = [0, 1, 2, 3, 6, 7, 8, 9], [4, 5, 10, 11]
    assert torch.equal(model.conv1.weight[old], original.conv1.weight)
    assert torch.count_nonzero(model.conv1.weight[new]) == 0 and torch.count_nonzero(model.conv1.bias[new]) == 0
    assert model.bn1.weight[new].tolist() == [1.0] * 4 and model.bn1.running_var[new].tolist() == [1.0] * 4
    assert torch.equal(model.bn1.running_mean[old], original.bn1.running_mean)
    assert torch.count_nonzero(model.bn1.running_mean[new]) == 0
    # Each conv group reads its old 4 channels' weights, then 2 new zero ones.
    assert model.conv2.weight.shape == (6, 6, 3, 3)
    assert torch.equal(model.conv2.weight[:, :4], original.conv2.weight)
    assert torch.count_nonzero(model.conv2.weight[:, 4:]) == 0
    assert graph.refresh("conv1")[0].size == 12
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), original(x), atol=1e-5)


class Concat(nn.Module):
    """Two branches concatenated, read by a plain and by a grouped conv."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1, groups=groups)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def test_growing_the_first_branch_of_a_concat_inserts_its_channels_before_the_second():
    torch.manual_seed(0)
    model = Concat().eval()
    original = copy.deepcopy(model)
    resize(lw.GroupGraph(model, X), {"a": 6, "b": 7})
    assert model.c.in_channels == 13
    assert torch.equal(model.c.weight[:, [0, 1, 2, 3, 6, 7, 8, 9]], original.c.weight)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), original(x), atol=1e-5)


def test_a_branch_filling_one_conv_group_grows_with_the_right_shapes():
    # Each branch is one of c's two conv groups, so a branch alone cannot grow both conv
    # groups evenly: the shapes still fit (widen re-initialises what it grows).
    model = Concat(groups=2).eval()
    graph = lw.GroupGraph(model, X)
    resize(graph, {"a": 6})
    assert model.c.in_channels == 10 and model.c.weight.shape == (4, 5, 1, 1)
    assert model(X).shape == (2, 4, 8, 8)


def test_growing_every_group_of_a_resnet_keeps_its_output():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    original = copy.deepcopy(model)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    widths = {g.key: g.size * 3 // 2 for g in graph.groups if g.prunable}
    assert len(widths) == 12
    resize(graph, widths)
    assert model.conv1.out_channels == 96 and model.layer1[1].bn2.num_features == 96
    assert model.layer4[1].conv1.out_channels == 768 and model.fc.in_features == 768
    assert {g.key: g.size for g in lw.GroupGraph(model, torch.zeros(1, 3, 32, 32)).groups if g.prunable} == widths
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), original(x), atol=1e-4)


@pytest.mark.parametrize("name", ["densenet121", "dla34", "cspresnet50", "ghostnet_100", "skresnet18", "resnest14d"])
def test_growing_every_group_of_a_model_with_concatenations_keeps_its_output(name):
    # Each concatenated branch grows before the next one starts, where its readers take it; a
    # selective-kernel block's attention weights grow at the end of each path's weights, and so do a
    # split-attention block's radix paths.
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    original = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32)
    graph = lw.GroupGraph(model, x)
    widths = {g.key: g.size + g.step(1) * max(1, g.size // g.step(1) // 2) for g in graph.groups if g.prunable}
    resize(graph, widths)
    assert {g.key: g.size for g in lw.GroupGraph(model, x).groups if g.prunable} == widths
    with torch.no_grad():
        expected = original(x)
        assert torch.allclose(model(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_pruning_a_resnet_residual_group_honours_the_keep_list_in_every_member():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.5, 0.5)
    original = copy.deepcopy(model)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    group = graph.group("conv1")  # the stem's channels, through every residual sum of layer1
    keep = sorted(torch.randperm(64)[:40].tolist())
    removed = sorted(set(range(64)) - set(keep))
    resize(graph, {"conv1": 40}, keep={"conv1": keep})
    dims = {m.name: m.dim for m in group.members}
    assert {"conv1", "bn1", "layer1.0.bn2", "layer1.1.conv1", "layer2.0.downsample.0"} <= dims.keys()
    for name, dim in dims.items():
        new, old = model.get_submodule(name), original.get_submodule(name)
        if dim == "in":
            assert torch.equal(new.weight, old.weight[:, keep]), name
        else:
            assert torch.equal(new.weight, old.weight[keep]), name
        if isinstance(new, nn.BatchNorm2d):
            assert torch.equal(new.running_mean, old.running_mean[keep]), name
    # Unread, the removed channels change nothing: zero their readers in the original to compare.
    with torch.no_grad():
        for name, dim in dims.items():
            if dim == "in":
                original.get_submodule(name).weight[:, removed] = 0
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), original(x), atol=1e-4)


def test_vit_embedding_resize_prunes_and_grows_bare_parameters():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1)
    with torch.no_grad():
        model.cls_token.normal_()
    original = copy.deepcopy(model)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    key = "blocks.0.mlp.fc2"
    assert {("cls_token", "parameter"), ("pos_embed", "parameter")} <= {
        (m.name, m.optype) for m in graph.group(key).members
    }
    keep = list(range(0, 192, 2))
    resize(graph, {key: 96}, keep={key: keep})
    assert model.cls_token.shape == (1, 1, 96) and model.pos_embed.shape == (1, 5, 96)
    assert torch.equal(model.cls_token, original.cls_token[..., keep])
    assert torch.equal(model.pos_embed, original.pos_embed[..., keep])
    assert torch.equal(model.patch_embed.proj.weight, original.patch_embed.proj.weight[keep])
    assert torch.equal(model.blocks[0].attn.qkv.weight, original.blocks[0].attn.qkv.weight[:, keep])
    resize(graph, {key: 128})
    assert model.cls_token.shape == (1, 1, 128) and isinstance(model.cls_token, nn.Parameter)
    assert torch.equal(model.cls_token[..., :96], original.cls_token[..., keep])
    assert torch.count_nonzero(model.cls_token[..., 96:]) == 0 and torch.count_nonzero(model.pos_embed[..., 96:]) == 0
    # The grown parameters replaced the old ones in the graph, so it keeps resizing them.
    assert graph.dg.module2node[model.cls_token].module is model.cls_token
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_top_channels_picks_the_best_and_breaks_ties_to_the_lower_index():
    assert top_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2) == [1, 3]
    assert top_channels(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]), 2) == [1, 2]
    assert top_channels(torch.tensor([2.0, 2.0, 2.0, 2.0]), 3) == [0, 1, 2]
    assert top_channels(torch.tensor([5.0, 1.0, 5.0]), 3) == [0, 1, 2]


def test_top_channels_in_blocks_keeps_an_equal_share_of_each_block():
    score = torch.tensor([9.0, 8.0, 7.0, 6.0, 1.0, 3.0, 2.0, 3.0])
    assert top_channels(score, 4) == [0, 1, 2, 3]
    # Two blocks of 4: the best two of each, ties to the lower index within the block.
    assert top_channels(score, 4, blocks=2) == [0, 1, 5, 7]
    assert top_channels(score, 4, blocks=4) == [0, 2, 5, 7]
    # Blocks that do not divide the channels or the count fall back to the overall best.
    assert top_channels(score, 3, blocks=2) == [0, 1, 2]
    assert top_channels(score[:6], 2, blocks=4) == [0, 1]


@pytest.mark.parametrize("norm", [nn.GroupNorm(1, 8), nn.BatchNorm2d(8), nn.InstanceNorm2d(8, affine=True)])
def test_affine_norm_without_bias_is_pruned(norm):
    # timm's MetaFormer norms (GroupNorm1NoBias) are affine with no bias, which torch-pruning's
    # norm functions assume is there.
    norm.register_parameter("bias", None)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(8, 4, 1))
    graph = lw.GroupGraph(model, X)
    (group,) = [g for g in graph.groups if g.prunable]
    resize(graph, {group.key: 5})
    assert norm.weight.shape == (5,) and norm.bias is None
    assert model(X).shape == (2, 4, 8, 8)
