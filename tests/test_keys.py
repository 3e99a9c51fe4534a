"""`graph.keys`: group keys as plans and specs write them, built and read by one type."""

import pytest
import timm
import torch

import lwdna_plugin as lw
from lwdna_plugin.graph.keys import GroupKey


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("layer1.0.conv1", GroupKey("layer1.0.conv1")),
        ("blocks.0.attn.proj:in", GroupKey("blocks.0.attn.proj", at_input=True)),
        ("stages.1.conv#0", GroupKey("stages.1.conv", piece=0)),
    ],
)
def test_a_key_reads_into_its_parts_and_writes_back(key, parts):
    assert GroupKey.parse(key) == parts
    assert str(parts) == key


def test_every_key_of_a_real_graph_round_trips():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)
    keys = [g.key for g in lw.GroupGraph(model, torch.zeros(1, 3, 32, 32)).groups]
    assert any(GroupKey.parse(k).at_input for k in keys)  # the attention projections' input groups
    assert all(str(GroupKey.parse(k)) == k for k in keys)
