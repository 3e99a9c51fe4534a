"""The CIFAR DenseNet registered with timm, and the plugin on it: every growth width is free."""

import importlib.util

import pytest
import timm
import torch

import lwdna_plugin as lw

KWARGS = {"num_classes": 10, "in_chans": 1}


def test_registered_with_timm_at_the_published_size():
    assert {"cifar_densenet40", "cifar_densenet100"} <= set(timm.list_models("cifar_densenet*"))
    model = timm.create_model("cifar_densenet40", num_classes=10)
    # Huang et al. 2017, table 2: DenseNet (L = 40, k = 12), 1.0M parameters.
    assert lw.count_params(model) == 1_019_722
    # fvcore's count (one per multiply-accumulate), measured when the model was registered.
    assert lw.count_flops(model, torch.randn(1, 3, 32, 32)) == 269_354_368
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 36 + 2  # stem, 3 x 12 dense layers, 2 transitions
    assert model.num_features == 16 + 3 * 12 * 12


def test_depth_must_be_3n_plus_4():
    with pytest.raises(ValueError, match="3n \\+ 4"):
        lw.cifar_densenet.CifarDenseNet(depth=41)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("cifar_densenet40", pretrained=True)


def test_every_growth_width_is_a_free_channel_group():
    model = timm.create_model("cifar_densenet40", **KWARGS)
    groups = lw.GroupGraph(model, torch.randn(1, 1, 28, 28)).groups
    free = {g.key for g in groups if g.prunable}
    growth = {f"stages.{s}.layers.{i}.conv" for s in (0, 2, 4) for i in range(12)}
    assert growth <= free
    assert {"conv1", "stages.1.2", "stages.3.2"} <= free  # the stem and both transitions


def test_dissimilate_export_build_and_register(tmp_path):
    batches = lw.load_batches("mnist5k", batches=1, batch_size=16, img_size=28, in_chans=1)
    result = lw.dissimilate("cifar_densenet40", flops=0.91, data=batches, round_to=1, model_kwargs=KWARGS)
    original = lw.count_flops(timm.create_model("cifar_densenet40", **KWARGS), batches[0][0][:1])
    assert 0.95 * 0.91 * original <= result.report.flops["lwdna"] <= 0.91 * original
    growth = [v["kept"] for k, v in result.spec["groups"].items() if ".layers." in k]
    assert len(growth) == 36 and len(set(growth)) > 1  # layer-wise different growth
    result.save(tmp_path)
    rebuilt = lw.build(tmp_path / "spec.json")
    assert lw.export.tensor_shapes(rebuilt) == result.spec["shapes"]
    lw.register_timm(tmp_path / "spec.json", name="cifar_densenet40_lwdna_test")
    assert timm.create_model("cifar_densenet40_lwdna_test", **KWARGS)(batches[0][0]).shape == (16, 10)
    path = lw.export_python(result, tmp_path / "densenet_lwdna.py")
    spec = importlib.util.spec_from_file_location("densenet_lwdna", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    standalone = module.MODEL()
    standalone.load_state_dict(result.model.state_dict(), strict=True)
    x = batches[0][0][:2]
    assert torch.equal(standalone.eval()(x), result.model.eval()(x))
