"""standalone.tensors: the tensors the file registers and the values it gives them."""

import base64
import zlib

import pytest
import torch
import torch.nn as nn

from lwdna_plugin.standalone.tensors import (
    MAX_LITERAL,
    MAX_PACKED,
    UNPACK,
    Packed,
    direct_tensors,
    initial_value,
    lifted_constants,
    literal,
    short_float,
)
from lwdna_plugin.standalone.trace import Traces


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (torch.zeros(2, 3), "torch.zeros(2, 3)"),
        (torch.ones(4), "torch.ones(4)"),
        (torch.tensor(0, dtype=torch.int64), "torch.tensor(0, dtype=torch.int64)"),
        (torch.full((5,), 1e-6), "torch.full((5,), 1e-06)"),
        (torch.full((2, 2), 3, dtype=torch.int32), "torch.full((2, 2), 3, dtype=torch.int32)"),
        (torch.arange(4.0), "nn.init.trunc_normal_(torch.empty(4), std=0.02)"),
        (torch.arange(4), "torch.zeros(4, dtype=torch.int64)"),
    ],
)
def test_initial_value(tensor, expected):
    assert initial_value(tensor) == expected
    made = eval(expected, {"torch": torch, "nn": nn})
    assert made.shape == tensor.shape and made.dtype == tensor.dtype


def test_short_float_is_the_shortest_exact_literal():
    value = torch.tensor(1e-6).item()
    assert value != 1e-6 and short_float(value, torch.float32) == "1e-06"
    assert short_float(0.1, torch.float64) == "0.1"


def test_literal_is_exact_and_bounded():
    packed = Packed()
    tensor = torch.tensor([[0.5, -1.25], [3.0, 7.0]])
    text = literal("where", tensor, packed)
    assert torch.equal(eval(text, {"torch": torch}), tensor) and not packed.blobs
    # Larger tensors are packed into module constants; equal values share one constant.
    mask = torch.zeros(4, MAX_LITERAL).masked_fill(torch.rand(4, MAX_LITERAL) > 0.5, -100.0)
    for where, tensor in (("a.mask", mask), ("b.index", torch.arange(MAX_LITERAL + 1)), ("c.mask", mask.clone())):
        text = literal(where, tensor, packed)
        namespace = {"torch": torch, "base64": base64, "zlib": zlib}
        exec(UNPACK + packed.source(), namespace)
        made = eval(text, namespace)
        assert torch.equal(made, tensor) and made.dtype == tensor.dtype
    assert list(packed.blobs) == ["_PACKED_0", "_PACKED_1"]
    noise = torch.randn(MAX_PACKED)  # random floats do not compress
    with pytest.raises(ValueError, match="'big.table' is a tensor of .* too large to write"):
        literal("big.table", noise, packed)


def test_direct_tensors_and_lifted_constants():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("mask", torch.ones(2), persistent=False)

        def forward(self, x):
            return self.fc(x) * self.mask + torch.tensor([1.0, 2.0])

    model = Net()
    constants = lifted_constants(model, Traces.of(model).both)
    assert list(constants) == ["_tensor_constant0", "_tensor_constant1"]  # one per trace
    assert torch.equal(constants["_tensor_constant0"], torch.tensor([1.0, 2.0]))
    slots = direct_tensors("", model, constants)
    assert [(s.attr, s.parameter, s.persistent) for s in slots] == [
        ("mask", False, False),
        ("_tensor_constant0", False, False),
        ("_tensor_constant1", False, False),
    ]
    fc = direct_tensors("fc", model.fc, constants)
    assert [(s.attr, s.parameter, s.persistent) for s in fc] == [("weight", True, True), ("bias", True, True)]
