"""The JSON spec: round trip, timm registration, reproducibility, clear errors."""

import json

import pytest
import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from conftest import IMG, example


def test_json_round_trip_reproduces_every_shape(resnet18_result, tmp_path):
    resnet18_result.save(tmp_path)
    for name in ("spec.json", "report.md", "channels.png"):
        assert (tmp_path / name).stat().st_size > 0
    spec = json.loads((tmp_path / "spec.json").read_text())
    rebuilt = lw.build(spec)
    assert {k: list(v.shape) for k, v in rebuilt.state_dict().items()} == spec["shapes"]
    assert spec["achieved"]["flops"] <= spec["target"]["flops"]
    assert spec["flop_counter"] == lw.FLOP_CONVENTION
    assert set(spec["versions"]) >= {"torch", "timm", "torch_pruning", "fvcore", "lwdna_plugin"}


def test_rebuild_is_freshly_initialised(resnet18_result):
    a, b = lw.build(resnet18_result.spec), lw.build(resnet18_result.spec)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_register_timm_then_create_model(resnet18_result, tmp_path):
    resnet18_result.save(tmp_path)
    lw.register_timm(tmp_path / "spec.json", name="resnet18_lwdna_test")
    model = timm.create_model("resnet18_lwdna_test", num_classes=10)
    assert model(example()).shape == (2, 10)
    assert model.conv1.out_channels == resnet18_result.model.conv1.out_channels
    five = timm.create_model("resnet18_lwdna_test", num_classes=5)
    assert five(example()).shape == (2, 5)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("resnet18_lwdna_test", pretrained=True)


def test_same_seed_gives_byte_identical_spec(batches, tmp_path):
    paths = []
    for run in ("a", "b"):
        result = lw.dissimilate("resnet18", data=batches, seed=3, model_kwargs={"num_classes": 10})
        paths.append(result.save(tmp_path / run) / "spec.json")
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_spec_for_another_model_is_a_clear_error(resnet18_result):
    spec = json.loads(json.dumps(resnet18_result.spec))
    spec["base"]["name"] = "resnet34"
    with pytest.raises(ValueError, match="another model or timm version|no channel group"):
        lw.build(spec)


def test_module_without_recipe_needs_its_base(batches):
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.body(x))

    base = Tiny()
    # round_to=1: this net's 8- and 16-channel groups cannot shrink in steps of 8.
    result = lw.dissimilate(base, data=batches, round_to=1)
    assert result.spec["base"] is None
    with pytest.raises(ValueError, match="build\\(spec, base=model\\)"):
        lw.build(result.spec)
    rebuilt = lw.build(result.spec, base=base)
    assert rebuilt(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)
    assert base.body[0].out_channels == 16


def test_schema_is_checked(resnet18_result):
    with pytest.raises(ValueError, match="schema"):
        lw.build({**resnet18_result.spec, "schema": "other/9"})


def test_timm_module_with_kwargs_gets_a_recipe(batches):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=IMG)
    result = lw.dissimilate(vit, data=batches)
    assert result.spec["base"]["kwargs"] == {"num_classes": 10, "img_size": [IMG, IMG]}
    assert lw.build(result.spec)(example()).shape == (2, 10)


def test_the_spec_type_reads_and_writes_the_json_object_unchanged(resnet18_result, tmp_path):
    from lwdna_plugin.spec import Spec

    resnet18_result.save(tmp_path)
    text = (tmp_path / "spec.json").read_text()
    spec = Spec.from_dict(json.loads(text))
    # Settings are every key that is not a field of its own, and they are written back flat.
    assert {"width", "criterion", "ranking", "seed", "ignored"} <= set(spec.settings)
    assert not set(spec.settings) & set(Spec.FIELDS)
    lw.export.dump_spec(spec.to_dict(), tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == text
    with pytest.raises(ValueError, match=r"field 'groups\.conv1\.kept' must be a positive integer"):
        Spec.from_dict({**spec.to_dict(), "groups": {"conv1": {"original": 64, "kept": 0}}})
