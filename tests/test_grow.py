"""The grow functions (`lwdna_plugin.grow`): `insert_along`, `like` and every grower in `GROWERS`, layer by layer."""

import pytest
import torch
import torch.nn as nn
from torch_pruning import ops

from lwdna_plugin.grow import (
    GROWERS,
    ConcatGrower,
    ConvGrower,
    DepthwiseConvGrower,
    EmbeddingGrower,
    LayerNormGrower,
    LinearGrower,
    NoOpGrower,
    NormGrower,
    ParameterGrower,
    PReLUGrower,
    SplitGrower,
    insert_along,
    like,
)


def _without(tensor, dim, at, n):
    """`tensor` with the `n` entries inserted at `at` along `dim` taken out again."""
    keep = [i for i in range(tensor.shape[dim]) if not at <= i < at + n]
    return tensor.index_select(dim, torch.tensor(keep))


def _inserted(tensor, dim, at, n):
    return tensor.narrow(dim, at, n)


def test_insert_along_puts_a_filled_block_before_the_position():
    t = torch.arange(8, dtype=torch.int64).reshape(2, 4)
    out = insert_along(t, 1, 1, 2, fill=7)
    assert out.tolist() == [[0, 7, 7, 1, 2, 3], [4, 7, 7, 5, 6, 7]]
    assert out.dtype == torch.int64
    # A negative dim counts from the end; `at` at the end appends, at 0 prepends.
    assert insert_along(t, -2, 2, 1).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 0, 0, 0]]
    assert insert_along(t, 0, 0, 1, fill=-1).tolist() == [[-1, -1, -1, -1], [0, 1, 2, 3], [4, 5, 6, 7]]


def test_like_keeps_a_parameter_a_parameter_with_its_requires_grad():
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    new = like(frozen, torch.ones(3))
    assert isinstance(new, nn.Parameter) and not new.requires_grad and new.tolist() == [1, 1, 1]
    assert like(nn.Parameter(torch.zeros(2)), torch.ones(3)).requires_grad
    plain = like(torch.zeros(2), torch.ones(3))
    assert not isinstance(plain, nn.Parameter) and plain.tolist() == [1, 1, 1]


def test_conv_grows_output_channels_as_zero_filters_and_keeps_the_old_ones():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    before, weight, bias = conv(x), conv.weight.detach().clone(), conv.bias.detach().clone()
    out = ConvGrower().grow_out_channels(conv, 2, 3)
    assert out is conv and conv.out_channels == 7 and conv.weight.shape == (7, 3, 3, 3)
    assert isinstance(conv.weight, nn.Parameter) and isinstance(conv.bias, nn.Parameter)
    assert torch.equal(_without(conv.weight.data, 0, 2, 3), weight)
    assert torch.equal(_without(conv.bias.data, 0, 2, 3), bias)
    assert torch.count_nonzero(_inserted(conv.weight.data, 0, 2, 3)) == 0
    assert torch.count_nonzero(_inserted(conv.bias.data, 0, 2, 3)) == 0
    after = conv(x)
    assert torch.allclose(_without(after, 1, 2, 3), before, atol=1e-6)
    assert torch.count_nonzero(_inserted(after, 1, 2, 3)) == 0


def test_conv_grows_input_channels_as_zero_weights_without_changing_the_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 5, 5)
    before = conv(x)
    ConvGrower().grow_in_channels(conv, 4, 2)
    assert conv.in_channels == 6 and conv.weight.shape == (3, 6, 3, 3) and conv.bias is None
    # Whatever the new input channels carry, they are read with zero weights.
    assert torch.allclose(conv(torch.cat([x, torch.randn(2, 2, 5, 5)], 1)), before, atol=1e-6)


def test_grouped_conv_grows_its_inputs_at_the_end_of_every_group():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    weight = conv.weight.detach().clone()
    x = torch.randn(1, 4, 3, 3)
    before = conv(x)
    ConvGrower().grow_in_channels(conv, 4, 2)
    assert conv.in_channels == 6 and conv.groups == 2 and conv.weight.shape == (4, 3, 1, 1)
    assert torch.equal(conv.weight.data[:, :2], weight) and torch.count_nonzero(conv.weight.data[:, 2]) == 0
    # Group 0 reads inputs 0-2 (new: 2), group 1 inputs 3-5 (new: 5).
    grown = torch.cat([x[:, :2], torch.randn(1, 1, 3, 3), x[:, 2:], torch.randn(1, 1, 3, 3)], 1)
    assert torch.allclose(conv(grown), before, atol=1e-6)


def test_conv_grows_input_channels_where_they_are_inserted():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 1, bias=False)
    x = torch.randn(1, 4, 3, 3)
    before = conv(x)
    ConvGrower().grow_in_channels(conv, 1, 2)
    grown = torch.cat([x[:, :1], torch.randn(1, 2, 3, 3), x[:, 1:]], 1)
    assert torch.allclose(conv(grown), before, atol=1e-6)


def test_grouped_conv_grows_its_inputs_at_given_slots_of_every_group():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    x = torch.randn(1, 4, 3, 3)
    before = conv(x)
    # One new input after input 0 (group 0) and one after input 3 (the end of group 1).
    ConvGrower().grow_grouped_in_channels(conv, [(4, 1), (1, 1)])
    assert conv.in_channels == 6 and conv.weight.shape == (4, 3, 1, 1)
    grown = torch.cat([x[:, :1], torch.randn(1, 1, 3, 3), x[:, 1:], torch.randn(1, 1, 3, 3)], 1)
    assert torch.allclose(conv(grown), before, atol=1e-6)
    with pytest.raises(ValueError, match="fall unevenly into its 2 conv groups"):
        ConvGrower().grow_grouped_in_channels(conv, [(2, 2)])
    assert conv.in_channels == 6


def test_transposed_conv_grows_along_its_swapped_weight_dims():
    conv = nn.ConvTranspose2d(3, 4, 2)
    ConvGrower().grow_out_channels(conv, 4, 2)
    assert conv.out_channels == 6 and conv.weight.shape == (3, 6, 2, 2) and conv.bias.shape == (6,)
    assert torch.count_nonzero(conv.weight.data[:, 4:]) == 0
    ConvGrower().grow_in_channels(conv, 3, 1)
    assert conv.in_channels == 4 and conv.weight.shape == (4, 6, 2, 2)
    assert conv(torch.zeros(1, 4, 3, 3)).shape == (1, 6, 4, 4)


def test_grouped_transposed_conv_grows_its_inputs_at_the_end_of_every_group():
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 6, 2, groups=2)
    x = torch.randn(1, 4, 3, 3)
    before = conv(x)
    ConvGrower().grow_in_channels(conv, 4, 2)
    assert conv.in_channels == 6 and conv.weight.shape == (6, 3, 2, 2)
    grown = torch.cat([x[:, :2], torch.randn(1, 1, 3, 3), x[:, 2:], torch.randn(1, 1, 3, 3)], 1)
    assert torch.allclose(conv(grown), before, atol=1e-6)


def test_depthwise_conv_grows_inputs_outputs_and_groups_together():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(1, 4, 5, 5)
    before = conv(x)
    grower = DepthwiseConvGrower()
    assert grower.grow_in_channels == grower.grow_out_channels
    grower.grow_out_channels(conv, 1, 2)
    assert (conv.in_channels, conv.out_channels, conv.groups) == (6, 6, 6)
    assert conv.weight.shape == (6, 1, 3, 3) and conv.bias.shape == (6,)
    after = conv(insert_along(x, 1, 1, 2, fill=5.0))
    assert torch.allclose(_without(after, 1, 1, 2), before, atol=1e-6)
    assert torch.count_nonzero(after[:, 1:3]) == 0


def test_linear_grows_outputs_with_bias_and_inputs_without():
    torch.manual_seed(0)
    fc = nn.Linear(3, 4)
    x = torch.randn(2, 3)
    before = fc(x)
    LinearGrower().grow_out_channels(fc, 0, 2)
    assert fc.out_features == 6 and fc.weight.shape == (6, 3) and fc.bias.shape == (6,)
    assert torch.allclose(fc(x)[:, 2:], before) and torch.count_nonzero(fc(x)[:, :2]) == 0
    LinearGrower().grow_in_channels(fc, 1, 2)
    assert fc.in_features == 5 and fc.weight.shape == (6, 5) and fc.bias.shape == (6,)
    assert torch.allclose(fc(insert_along(x, 1, 1, 2, fill=3.0))[:, 2:], before, atol=1e-6)


def test_batch_norm_grows_as_an_identity_on_the_new_channels():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(5)
    old = {k: v.clone() for k, v in bn.state_dict().items()}
    NormGrower().grow_out_channels(bn, 2, 2)
    assert bn.num_features == 6 and bn.num_batches_tracked.item() == 5
    assert isinstance(bn.weight, nn.Parameter) and not isinstance(bn.running_mean, nn.Parameter)
    assert "running_mean" in dict(bn.named_buffers())
    for key, fill in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)]:
        grown = getattr(bn, key).data
        assert torch.equal(_without(grown, 0, 2, 2), old[key]), key
        assert _inserted(grown, 0, 2, 2).tolist() == [fill, fill], key
    x = torch.randn(1, 6, 3, 3)
    assert torch.allclose(bn.eval()(x)[:, 2:4], x[:, 2:4] / (1 + bn.eps) ** 0.5)


def test_norms_without_affine_or_running_stats_grow_their_count():
    bn = nn.BatchNorm1d(3, affine=False, track_running_stats=False)
    NormGrower().grow_out_channels(bn, 3, 2)
    assert bn.num_features == 5 and bn.weight is None and bn.running_mean is None
    assert bn(torch.randn(4, 5)).shape == (4, 5)
    inorm = nn.InstanceNorm2d(3, affine=True)
    GROWERS[ops.OPTYPE.IN].grow_in_channels(inorm, 3, 1)
    assert inorm.num_features == 4 and inorm.weight.tolist() == [1, 1, 1, 1]


def test_group_norm_grows_num_channels():
    gn = nn.GroupNorm(2, 4)
    GROWERS[ops.OPTYPE.GN].grow_out_channels(gn, 4, 2)
    assert gn.num_channels == 6 and gn.num_groups == 2 and gn.weight.shape == (6,) and gn.bias.shape == (6,)
    assert not hasattr(gn, "num_features")
    assert gn(torch.randn(1, 6, 2, 2)).shape == (1, 6, 2, 2)


def test_layer_norm_grows_the_last_normalised_dim():
    ln = nn.LayerNorm((3, 4))
    with torch.no_grad():
        ln.bias.fill_(0.5)
    LayerNormGrower().grow_out_channels(ln, 1, 2)
    assert ln.normalized_shape == (3, 6) and ln.weight.shape == (3, 6)
    assert ln.bias[:, 1:3].abs().sum() == 0 and ln.bias[:, [0, 3, 4, 5]].eq(0.5).all()
    assert ln.weight.eq(1).all()
    assert ln(torch.randn(2, 3, 6)).shape == (2, 3, 6)


def test_prelu_grows_per_channel_slopes_and_leaves_a_shared_slope_alone():
    prelu = nn.PReLU(3, init=0.1)
    PReLUGrower().grow_out_channels(prelu, 3, 2)
    assert prelu.num_parameters == 5
    assert torch.allclose(prelu.weight.data, torch.tensor([0.1, 0.1, 0.1, 0.25, 0.25]))
    shared = nn.PReLU()
    weight = shared.weight
    PReLUGrower().grow_in_channels(shared, 0, 4)
    assert shared.num_parameters == 1 and shared.weight is weight


def test_embedding_grows_its_embedding_dim():
    emb = nn.Embedding(5, 3)
    old = emb.weight.detach().clone()
    EmbeddingGrower().grow_out_channels(emb, 3, 2)
    assert emb.embedding_dim == 5 and emb.num_embeddings == 5 and emb.weight.shape == (5, 5)
    assert torch.equal(emb.weight.data[:, :3], old) and torch.count_nonzero(emb.weight.data[:, 3:]) == 0
    assert emb(torch.tensor([[0, 4]])).shape == (1, 2, 5)


def test_bare_parameter_grower_returns_a_new_parameter_along_its_dim():
    token = nn.Parameter(torch.ones(1, 2, 3), requires_grad=False)
    grown = ParameterGrower().grow_out_channels(token, 1, 2)
    assert isinstance(grown, nn.Parameter) and not grown.requires_grad and grown.shape == (1, 2, 5)
    assert token.shape == (1, 2, 3)  # the original is left as it was
    assert grown[..., 1:3].abs().sum() == 0 and grown[..., [0, 3, 4]].eq(1).all()
    scale = ParameterGrower(dim=0).grow_in_channels(nn.Parameter(torch.ones(3, 1, 1)), 3, 1)
    assert scale.shape == (4, 1, 1) and scale.requires_grad and scale.flatten().tolist() == [1, 1, 1, 0]


def test_concat_grower_grows_the_segment_holding_the_position_before():
    cat = ops._ConcatOp(0)
    cat.concat_sizes = [4, 6]
    ConcatGrower().grow_out_channels(cat, 4, 2)  # after the first segment's last channel
    assert cat.concat_sizes == [6, 6]
    ConcatGrower().grow_in_channels(cat, 12, 1)  # at the very end: the last segment
    assert cat.concat_sizes == [6, 7]
    ConcatGrower().grow_out_channels(cat, 3, 1)  # inside the first segment
    assert cat.concat_sizes == [7, 7]
    unsized = ops._ConcatOp(1)
    assert ConcatGrower().grow_out_channels(unsized, 0, 3) is unsized and unsized.concat_sizes is None


def test_split_grower_grows_a_piece_and_recomputes_offsets():
    split = ops._SplitOp(0)
    split.split_sizes, split.offsets = [4, 4, 2], [0, 4, 8, 10]
    SplitGrower().grow_out_channels(split, 8, 3)  # after the second piece
    assert split.split_sizes == [4, 7, 2] and split.offsets == [0, 4, 11, 13]
    SplitGrower().grow_in_channels(split, 1, 1)
    assert split.split_sizes == [5, 7, 2] and split.offsets == [0, 5, 12, 14]


@pytest.mark.parametrize(
    "optype, grower",
    [
        (ops.OPTYPE.CONV, ConvGrower),
        (ops.OPTYPE.DEPTHWISE_CONV, DepthwiseConvGrower),
        (ops.OPTYPE.LINEAR, LinearGrower),
        (ops.OPTYPE.BN, NormGrower),
        (ops.OPTYPE.IN, NormGrower),
        (ops.OPTYPE.GN, NormGrower),
        (ops.OPTYPE.LN, LayerNormGrower),
        (ops.OPTYPE.PRELU, PReLUGrower),
        (ops.OPTYPE.EMBED, EmbeddingGrower),
        (ops.OPTYPE.PARAMETER, ParameterGrower),
        (ops.OPTYPE.CONCAT, ConcatGrower),
        (ops.OPTYPE.SPLIT, SplitGrower),
        (ops.OPTYPE.ELEMENTWISE, NoOpGrower),
        (ops.OPTYPE.RESHAPE, NoOpGrower),
        (ops.OPTYPE.UNBIND, SplitGrower),
        (ops.OPTYPE.EXPAND, NoOpGrower),
    ],
)
def test_growers_table_maps_each_op_type_to_its_grower(optype, grower):
    assert type(GROWERS[optype]) is grower


def test_growers_table_leaves_out_ops_it_cannot_grow():
    # Slices, attention modules and LSTMs have no grow function: groups through them stay fixed.
    assert {ops.OPTYPE.SLICE, ops.OPTYPE.MHA, ops.OPTYPE.LSTM, ops.OPTYPE.CUSTOMIZED}.isdisjoint(GROWERS)
    assert GROWERS[ops.OPTYPE.GN].count_attr == "num_channels" and GROWERS[ops.OPTYPE.BN].count_attr == "num_features"


def test_no_op_grower_returns_the_layer_unchanged():
    layer = nn.ReLU()
    assert NoOpGrower().grow_out_channels(layer, 0, 5) is layer and NoOpGrower().grow_in_channels(layer, 0, 5) is layer
    assert GROWERS[ops.OPTYPE.ELEMENTWISE].grow_out_channels(layer, 0, 5) is layer
