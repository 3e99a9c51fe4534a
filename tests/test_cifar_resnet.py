"""CIFAR-style ResNets registered with timm, and the plugin on a user-registered timm model."""

import pytest
import timm
import torch

import lwdna_plugin as lw


@pytest.mark.parametrize(("name", "params"), [("cifar_resnet20", 272_474), ("cifar_resnet56", 855_770)])
def test_registered_with_timm(name, params):
    assert name in timm.list_models("cifar_resnet*")
    model = timm.create_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1] == 64


def test_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        lw.cifar_resnet.CifarResNet(depth=21)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("cifar_resnet20", pretrained=True)


def test_dissimilate_build_and_register(tmp_path):
    batches = lw.load_batches("mnist5k", batches=2, batch_size=16, img_size=28, in_chans=1)
    kwargs = {"num_classes": 10, "in_chans": 1}
    result = lw.dissimilate("cifar_resnet20", data=batches, model_kwargs=kwargs)
    original = lw.count_flops(timm.create_model("cifar_resnet20", **kwargs), batches[0][0][:1])
    assert 0.95 * original <= result.report.flops["lwdna"] <= original
    stage_widths = {k: v["kept"] for k, v in result.spec["groups"].items() if "downsample" in k or k == "conv1"}
    assert len(stage_widths) == 3 and len(set(stage_widths.values())) > 1
    result.save(tmp_path)
    rebuilt = lw.build(tmp_path / "spec.json")
    assert lw.export.tensor_shapes(rebuilt) == result.spec["shapes"]
    lw.register_timm(tmp_path / "spec.json", name="cifar_resnet20_lwdna_test")
    model = timm.create_model("cifar_resnet20_lwdna_test", num_classes=10, in_chans=1)
    assert model(batches[0][0]).shape == (16, 10)
