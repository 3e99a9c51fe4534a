"""The footprint: activations and parameters as functions of the widths, and the default limits."""

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from conftest import IMG, core_kwargs, core_params
from lwdna_plugin.footprint import layer_costs, uniform_reference, widths_vector
from lwdna_plugin.graph import search

X = torch.zeros(1, 3, IMG, IMG)


def _written(model: torch.nn.Module, names: list[str]) -> int:
    """Elements the named layers write in one forward pass of X, read with hooks."""
    total = []
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, out: total.append(out.numel())) for n in names]
    with torch.no_grad():
        model.eval()(X)
    for handle in handles:
        handle.remove()
    return sum(total)


def test_costs_match_the_resized_model():
    """Predicted at half of every free group's width, both costs equal what the resized model
    writes and holds in the layers the FLOP model tracks."""
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    wide, _ = lw.widen(model, X, 2.0)
    graph = lw.GroupGraph(wide, X)
    flop_model = lw.FlopModel(graph, X)
    costs = layer_costs(flop_model, wide, X)
    half = {g.key: g.size // 2 for g in graph.groups if g.prunable}
    widths = widths_vector(flop_model, half)
    predicted = {kind: cost(widths) for kind, cost in costs.items()}
    assert costs["activations"](flop_model.sizes) == _written(wide, flop_model.layers)
    lw.resize(graph, half)
    assert predicted["activations"] == _written(graph.model, flop_model.layers)
    held = sum(
        sum(p.numel() for p in graph.model.get_submodule(n).parameters(recurse=False)) for n in flop_model.layers
    )
    assert predicted["params"] == pytest.approx(held, rel=1e-9)


def test_uniform_reference_meets_the_target_with_one_factor():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    wide, _ = lw.widen(model, X, 2.0)
    flop_model = lw.FlopModel(lw.GroupGraph(wide, X), X)
    base = flop_model.sizes / 2
    for share in (0.5, 1.0, 1.5):
        target = share * flop_model(base)
        reference = uniform_reference(flop_model, base, share)
        factor = reference / base
        assert np.ptp(factor) < 1e-9 and flop_model(reference) == pytest.approx(target, rel=1e-6)


def test_default_keeps_the_footprint_that_flops_alone_exceed(batches):
    """On resnet18 at 64 px, planning on FLOPs alone holds 1.23x the original's parameters; the
    default footprint keeps activations and parameters at most the original's, at no less than
    0.95 of the FLOPs, and says so in the spec and the report."""
    kwargs = {"num_classes": 10}
    free = lw.dissimilate("resnet18", data=batches, model_kwargs=kwargs, footprint=None)
    kept = lw.dissimilate("resnet18", data=batches, model_kwargs=kwargs)
    assert free.spec["achieved"]["params_ratio"] > 1.05
    assert "footprint" not in free.spec["achieved"] and free.spec["footprint"] is None
    assert kept.spec["footprint"] == {"activations": 1.0, "params": 1.0, "keep_flops": 0.95}
    spent = kept.spec["achieved"]["footprint"]
    assert spent["activations"] <= 1.0 and spent["params"] <= 1.0
    assert kept.spec["achieved"]["params_ratio"] <= 1.0
    assert kept.spec["achieved"]["flops_ratio"] >= 0.95
    assert 0 <= kept.spec["achieved"]["toward_uniform"] <= 1
    assert any(n.startswith("footprint vs the original: activations") for n in kept.report.notes)


def test_footprint_arguments_are_checked():
    with pytest.raises(ValueError, match=r"Footprint\(activations=0\)"):
        lw.Footprint(activations=0)
    with pytest.raises(TypeError, match="footprint=1.0: give a `Footprint"):
        lw.dissimilate("resnet18", footprint=1.0)


@pytest.mark.parametrize(
    "name", core_params(["mobilenetv2_100", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224"])
)
def test_default_footprint_on_core_models(name, batches):
    """With the defaults, every kept footprint is at most the original's and the FLOPs between
    0.95 of the target and the target, as fvcore counts them."""
    result = lw.dissimilate(name, data=batches, model_kwargs=core_kwargs(name))
    target = result.spec["target"]["flops"]
    measured = lw.count_flops(result.model, torch.zeros(1, 3, IMG, IMG))
    assert 0.95 * target <= measured <= target
    assert all(ratio <= 1.0 for ratio in result.spec["achieved"]["footprint"].values())
    assert all(g["kept"] % 8 == 0 or g["kept"] == g["widened"] for g in result.spec["groups"].values())


def test_a_model_with_no_group_to_change_gets_its_footprint_plan(monkeypatch):
    """Every coupling search stalls (as SHViT's did until its zero-sized reshapes were handled):
    no layer depends on a width, and the footprint's per-layer costs are empty tables, which
    once failed (numpy AxisError) before planning."""
    monkeypatch.setattr(search, "SEARCH_STEPS", 0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.warns(UserWarning, match="only 0% of Sequential's channels can change width"):
        result = lw.dissimilate(model, criterion="synflow", input_size=(3, 32, 32))
    assert result.report.depth.free_groups == 0
    assert result.report.flops["lwdna"] == result.report.flops["original"]
