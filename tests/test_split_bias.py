"""Attention blocks that keep their qkv layer's biases (timm's BEiT, EVA, Swin V2)."""

import tempfile

import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from lwdna_plugin.graph.split_bias import layers_called, split_bias_blocks

SMALL_BEIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 10}
X = torch.randn(2, 3, 32, 32)


def _beit() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", **SMALL_BEIT).eval()
    for block in model.blocks:  # zeros at init: random biases show where each channel went
        nn.init.normal_(block.attn.q_bias)
        nn.init.normal_(block.attn.v_bias)
    return model


def test_a_qkv_layer_whose_block_keeps_its_biases_is_in_a_group():
    model = _beit()
    graph = lw.GroupGraph(model, X)
    members = {m.name for g in graph.groups for m in g.members}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert "blocks.0.attn.qkv" in linears
    assert [n for n in linears if n not in members] == []
    # The blocks are switched back: the model computes with F.linear as it did.
    assert not any(b.qkv_bias_separate for b in split_bias_blocks(model).values())
    assert all(b.q_bias.requires_grad for b in split_bias_blocks(model).values())


def test_resizing_keeps_each_bias_with_its_qkv_channels():
    model = _beit()
    before = model(X)
    # The residual stream and both blocks' attention widths: each block reshapes its attention
    # output to its input's width, so they change together.
    layers = {"blocks.1.mlp.fc2": model.head, **{f"blocks.{i}.attn.proj:in": model.blocks[i].attn.proj for i in (0, 1)}}
    lw.resize(lw.GroupGraph(model, X), dict.fromkeys(layers, 96))
    attn = model.blocks[0].attn
    assert attn.qkv.weight.shape == (288, 96)
    assert [attn.q_bias.numel(), attn.k_bias.numel(), attn.v_bias.numel()] == [96, 96, 96]
    # Inserted channels are zero in every consumer's weight: the originals are the others.
    keep = {k: [i for i in range(96) if layer.weight[:, i].abs().sum() > 0] for k, layer in layers.items()}
    assert [len(k) for k in keep.values()] == [64, 64, 64]
    lw.resize(lw.GroupGraph(model, X), dict.fromkeys(layers, 64), keep)
    assert torch.equal(model(X), before)


def test_gates_and_layer_hooks_see_the_qkv_layer_while_its_block_adds_the_biases_apart():
    model = _beit()
    calls = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda *_: calls.append(1))
    model(X)
    assert calls == []  # timm calls F.linear with the layer's weight
    with layers_called(model):
        out = model(X)
    assert calls == [1]
    assert torch.allclose(out, model(X), atol=1e-6)


def test_dissimilate_ties_the_attention_widths_to_the_residual_stream_and_builds():
    # Each block reshapes its attention output to its input's width (`reshape(B, N, C)`): the
    # attention groups widen only with the residual stream, so they take its width, not fixed.
    data = lw.load_batches("mnist5k", batches=1, batch_size=8, img_size=32)
    result = lw.dissimilate("beit_base_patch16_224", data=data, model_kwargs=SMALL_BEIT, round_to=1)
    assert result.report.depth.free_share == 1.0
    groups = result.spec["groups"]
    widths = {groups[k]["kept"] for k in ("blocks.1.mlp.fc2", "blocks.0.attn.proj:in", "blocks.1.attn.proj:in")}
    assert len(widths) == 1 and widths != {64}
    assert result.model(X).shape == (2, 10)
    assert result.spec["achieved"]["flops"] <= result.spec["target"]["flops"]
    for block in result.model.blocks:
        assert 3 * block.attn.q_bias.numel() == 3 * block.attn.k_bias.numel() == block.attn.qkv.out_features
    with tempfile.TemporaryDirectory() as folder:
        result.save(folder)
        built = lw.build(f"{folder}/spec.json")
    assert lw.export.tensor_shapes(built) == result.spec["shapes"]
