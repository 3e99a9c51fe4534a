"""Depth: the channel-weighted share of a model LW-DNA can resize, and fixed groups by reason."""

import timm
import torch

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.graph import Depth, Fixed, Why

X = torch.zeros(1, 3, IMG, IMG)


def test_the_free_share_is_weighted_by_channels_and_leaves_the_output_out():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    groups = lw.GroupGraph(model, X).groups
    assert Depth.of(groups).free_share == 1.0  # the classifier's 10 outputs do not count
    widest = max(groups, key=lambda g: g.size if g.prunable else 0)
    widest.fixed = Fixed(Why.BREAKS, "for the test")
    depth = Depth.of(groups)
    counted = sum(g.size for g in groups if g.key != "fc")
    assert depth.free_share == round(1 - widest.size / counted, 4)
    assert depth.reasons == {"model output": 1, "resizing breaks the forward": 1}
    assert depth.channels == {"resizing breaks the forward": widest.size}
    assert depth.fixed_groups == 2 and depth.free_groups == len(groups) - 2
    assert not depth.shallow and depth.warning("resnet18") is None


def test_a_shallow_model_is_warned_about_with_its_main_reasons():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    blocks = [name for name, m in model.named_modules() if name.startswith("layer") and not list(m.children())]
    depth = Depth.of(lw.GroupGraph(model, X, blocks).groups)
    assert depth.shallow
    text = depth.warning("resnet18")
    assert text.startswith(f"only {depth.free_share:.0%} of resnet18's channels can change width")
    assert "ignored (" in text and Why.IGNORED.advice in text


def test_every_reason_has_advice():
    assert all(why.advice and why.value for why in Why)


def test_the_report_states_the_depth(batches):
    result = lw.dissimilate("resnet18", data=batches, model_kwargs={"num_classes": 10}, flops=0.9)
    assert result.report.depth == Depth.of(lw.GroupGraph(timm.create_model("resnet18", num_classes=10), X).groups)
    text = result.report.to_markdown()
    assert "can change width, holding 100% of the channels" in text
    assert "| model output | 1 | its width is the model's output" in text
