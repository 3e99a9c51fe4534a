"""The adapter: wrapped and low-precision models go through the pipeline as the model they hold."""

import json
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
from mmengine.model import ExponentialMovingAverage
from timm.utils.model_ema import ModelEmaV3

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.adapter import unwrap

TEN = {"num_classes": 10}


def _names(model):
    return set(model.state_dict())


@pytest.mark.parametrize(
    "wrap", [nn.DataParallel, torch.compile, torch.optim.swa_utils.AveragedModel, ModelEmaV3, ExponentialMovingAverage]
)
def test_wrapped_models_keep_their_names_and_recipe(batches, wrap):
    model = timm.create_model("resnet18", num_classes=10)
    wrapped = wrap(model)
    # Weight-averaging wrappers hold a copy of the model.
    assert unwrap(wrapped) is getattr(wrapped, "module", model)
    result = lw.dissimilate(wrapped, data=batches)
    assert result.spec["base"] == {"zoo": "timm", "name": "resnet18", "kwargs": TEN}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in result.spec["shapes"])
    assert _names(lw.build(result.spec)) == _names(model)


def test_ddp_wrapped_model_on_gloo(tmp_path):
    script = f"""
import os, torch, timm, torch.distributed as dist, lwdna_plugin as lw
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
dist.init_process_group("gloo", rank=0, world_size=1)
model = torch.nn.parallel.DistributedDataParallel(timm.create_model("resnet18", num_classes=10))
batches = lw.load_batches("mnist5k", batches=1, batch_size=8, img_size={IMG})
result = lw.dissimilate(model, data=batches)
plain = lw.dissimilate(model.module, data=batches)  # the model inside the wrapper, the same seed
result.save({str(tmp_path)!r})
print(result.spec["base"]["name"], sorted(result.spec["shapes"])[0], result.spec["groups"] == plain.spec["groups"])
dist.destroy_process_group()
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=300)
    name, first, same = out.stdout.split()
    assert name == "resnet18" and not first.startswith("module.")
    # Unwrapped, not merely run: the wrapped model is identified exactly as the model it holds.
    assert same == "True"
    spec = json.loads((tmp_path / "spec.json").read_text())
    built = lw.build(tmp_path)
    assert {k: list(v.shape) for k, v in built.state_dict().items() if k in spec["shapes"]} == spec["shapes"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_is_identified_in_float32_and_returned_in_its_dtype(batches, dtype):
    model = timm.create_model("resnet18", num_classes=10).to(dtype)
    result = lw.dissimilate(model, data=batches)
    assert {p.dtype for p in result.model.parameters()} == {dtype}
    assert {p.dtype for p in model.parameters()} == {dtype}  # the caller's model is not touched
    reference = lw.dissimilate(timm.create_model("resnet18", num_classes=10), data=batches)
    assert result.spec["achieved"]["flops"] <= result.spec["target"]["flops"]
    assert set(result.spec["groups"]) == set(reference.spec["groups"])
    out = result.model.eval()(batches[0][0][:2].to(dtype))
    assert out.dtype == dtype and out.shape == (2, 10)


def test_low_precision_model_exports_to_python(batches, tmp_path):
    import importlib.util

    model = timm.create_model("resnet18", num_classes=10).to(torch.bfloat16)
    result = lw.dissimilate(model, data=batches)
    path = lw.export_python(result, tmp_path / "lwdna_bf16.py")
    assert "The LW-DNA model was in bfloat16" in path.read_text()
    spec = importlib.util.spec_from_file_location("lwdna_bf16", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    standalone = module.MODEL().to(torch.bfloat16)
    standalone.load_state_dict(result.model.state_dict(), strict=True)
    x = batches[0][0][:2].to(torch.bfloat16)
    assert torch.equal(standalone.eval()(x), result.model.eval()(x))
