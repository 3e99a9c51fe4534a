"""Widening alone: FLOPs scale with width squared on plain CNNs; zoo initialisation; no mutation."""

import copy

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import IMG

X = torch.zeros(1, 3, IMG, IMG)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "regnetx_002"])
@pytest.mark.parametrize("width", [1.5, 2.0])
def test_widen_scales_flops_by_width_squared(name, width):
    model = timm.create_model(name, pretrained=False, num_classes=10)
    wide, sizes = lw.widen(model, X, width)
    ratio = lw.count_flops(wide, X) / lw.count_flops(model, X)
    # The stem keeps its 3 input channels and the classifier its 10 outputs: slightly under width^2.
    assert 0.9 * width**2 <= ratio <= width**2
    # Every prunable group is scaled by `width`, to the nearest multiple of its step (group convs).
    original = [g for g in lw.GroupGraph(model, X).groups if g.prunable]
    assert set(sizes) == {g.key for g in original}
    for g in original:
        step = g.step()
        assert sizes[g.key] % step == 0 and abs(sizes[g.key] - width * g.size) <= step / 2, g.key
    assert {g.key: g.size for g in lw.GroupGraph(wide, X).groups if g.prunable} == sizes
    assert wide(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)


def test_widened_model_is_initialised_like_the_zoo():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    wide, _ = lw.widen(model, X, 2.0, create=lambda: timm.create_model("resnet18", num_classes=10))
    conv = wide.layer1[0].conv1.weight
    # timm's ResNet: Kaiming normal, fan_out, ReLU gain -> std = sqrt(2 / (out * k * k)).
    expected = (2.0 / (conv.shape[0] * 9)) ** 0.5
    assert abs(conv.std().item() / expected - 1) < 0.05
    # timm's ResNet zero-initialises the last norm of every residual branch.
    assert torch.count_nonzero(wide.layer1[0].bn2.weight) == 0
    assert torch.count_nonzero(wide.layer1[0].bn1.weight - 1) == 0


def test_caller_model_is_not_modified(batches):
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    before = copy.deepcopy(model.state_dict())
    result = lw.dissimilate(model, data=batches)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.model is not model
    assert result.spec["base"] == {"zoo": "timm", "name": "resnet18", "kwargs": {"num_classes": 10}}


def test_grouped_conv_widths_stay_divisible():
    model = timm.create_model("resnext50_32x4d", pretrained=False, num_classes=10)
    wide, _ = lw.widen(model, X, 1.3)
    for m in wide.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
    assert wide(torch.randn(1, 3, IMG, IMG)).shape == (1, 10)
