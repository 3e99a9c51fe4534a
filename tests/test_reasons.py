"""`graph.reasons`: the closed set of reasons a group keeps its width, each with advice, read
back from the short names that tables and `Depth` store."""

import timm
import torch

import lwdna_plugin as lw
from lwdna_plugin.graph import Depth
from lwdna_plugin.graph.reasons import Fixed, Why


def test_every_reason_has_its_own_short_name_and_advice():
    assert len({why.value for why in Why}) == len(Why)
    assert all(Why(why.value) is why for why in Why)
    assert len({why.advice for why in Why}) == len(Why) and all(why.advice.strip() for why in Why)


def test_a_fixed_group_prints_its_detail_and_compares_by_reason_and_detail():
    fixed = Fixed(Why.OUTPUT, "fc produces the model output")
    assert str(fixed) == "fc produces the model output"
    assert fixed == Fixed(Why.OUTPUT, "fc produces the model output") != Fixed(Why.IGNORED, str(fixed))


def test_depth_counts_a_real_models_fixed_groups_by_reason():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32), ignored=["layer1.0.conv1"])
    depth = Depth.of(graph.groups)
    # An ignored layer keeps its inputs (the stem's group) and its outputs.
    assert depth.reasons == {Why.IGNORED.value: 2, Why.OUTPUT.value: 1}
    assert depth.fixed == {"fc": Why.OUTPUT.value, "conv1": Why.IGNORED.value, "layer1.0.conv1": Why.IGNORED.value}
    assert depth.channels == {Why.IGNORED.value: 128}  # the output's width is never LW-DNA's to change
