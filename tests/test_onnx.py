"""LW-DNA models export with torch.onnx.export and run in onnxruntime with the same outputs."""

import copy

import numpy as np
import onnxruntime
import pytest
import torch

from conftest import core_params


@pytest.mark.parametrize("name", core_params(["resnet18", "mobilenetv2_100", "convnext_atto"]))
def test_onnx_matches_torch(name, core_result, batches, tmp_path):
    # A copy: the result is shared with the other tests of the core list.
    model = copy.deepcopy(core_result(name).model).eval()
    images = batches[0][0][:2]
    path = tmp_path / f"{name}.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model, (images,), str(path), input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},)
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inputs in (images, batches[0][0][:5]):
        (logits,) = session.run(None, {"images": inputs.numpy()})
        with torch.no_grad():
            expected = model(inputs).numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
