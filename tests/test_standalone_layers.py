"""standalone.layers: a torch.nn layer written as the constructor call that re-creates it."""

import math

import pytest
import torch
import torch.nn as nn

from lwdna_plugin.standalone.layers import constructor_call, same_layer, signature_call

LAYERS = [
    (nn.Conv2d(3, 6, 3, padding=1, bias=False), "nn.Conv2d(3, 6, kernel_size=3, padding=1, bias=False)"),
    (nn.Conv2d(8, 8, (3, 5), stride=2, groups=4), "nn.Conv2d(8, 8, kernel_size=(3, 5), stride=2, groups=4)"),
    (nn.Linear(4, 5), "nn.Linear(4, 5)"),
    (nn.BatchNorm2d(7, eps=1e-3), "nn.BatchNorm2d(7, eps=0.001)"),
    (nn.LayerNorm(6, eps=1e-6), "nn.LayerNorm(6, eps=1e-06)"),
    (nn.GroupNorm(2, 8), "nn.GroupNorm(2, 8)"),
    (nn.GELU(approximate="tanh"), "nn.GELU(approximate='tanh')"),
    (nn.Dropout(0.25), "nn.Dropout(p=0.25)"),
    (nn.Hardswish(inplace=True), "nn.Hardswish(inplace=True)"),
    (nn.MultiheadAttention(8, 2), "nn.MultiheadAttention(8, 2, kdim=8, vdim=8)"),
]


def make(call):
    return eval(call, {"nn": nn, "torch": torch, "inf": math.inf, "nan": math.nan})


@pytest.mark.parametrize(("layer", "expected"), LAYERS, ids=[type(m).__name__ for m, _ in LAYERS])
def test_constructor_call_round_trips_the_layer(layer, expected):
    call = constructor_call("layer", layer)
    assert call == expected  # the shortest form: defaults left out, channel counts positional
    made = make(call)
    assert same_layer(made, layer)
    made.load_state_dict(layer.state_dict(), strict=True)
    assert {k: v.shape for k, v in made.state_dict().items()} == {k: v.shape for k, v in layer.state_dict().items()}


def test_the_full_signature_call_also_round_trips():
    layer = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=2, groups=2, bias=False, padding_mode="reflect")
    call = signature_call(layer, minimal=False)
    assert call.startswith("nn.Conv2d(in_channels=4, out_channels=8, kernel_size=(3, 3),")
    assert same_layer(make(call), layer)


def test_same_layer_tells_settings_and_tensors_apart():
    assert same_layer(nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    assert not same_layer(nn.BatchNorm2d(4, momentum=0.3), nn.BatchNorm2d(4))  # a setting
    assert not same_layer(nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4))  # the tensors
    assert not same_layer(nn.BatchNorm1d(4), nn.BatchNorm2d(4))  # the type
    frozen = nn.Linear(2, 2)
    frozen.weight.requires_grad_(False)
    assert not same_layer(nn.Linear(2, 2), frozen)


def test_a_layer_outside_torch_nn_is_refused():
    class Custom(nn.Linear):
        pass

    with pytest.raises(ValueError, match="not in torch.nn's namespace"):
        constructor_call("head.fc", Custom(2, 2))


def test_a_layer_no_call_recreates_is_refused():
    layer = nn.Linear(3, 3)
    layer.weight = nn.Parameter(torch.zeros(4, 3))  # a shape no constructor call gives
    with pytest.raises(ValueError, match="cannot write layer 'odd'"):
        constructor_call("odd", layer)
