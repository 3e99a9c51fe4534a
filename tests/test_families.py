"""Regression tests for architecture families that needed more than torch-pruning's defaults."""

import timm
import torch

import lwdna_plugin as lw
from conftest import IMG

X = torch.zeros(1, 3, IMG, IMG)


def _roundtrip(name, batches, tmp_path, **kwargs):
    result = lw.dissimilate(name, data=batches, model_kwargs={"num_classes": 10, **kwargs})
    assert result.spec["achieved"]["flops"] <= result.spec["target"]["flops"]
    result.save(tmp_path)
    model = lw.build(tmp_path / "spec.json")
    assert model(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)
    return result


def test_scaled_std_conv_gain_follows_its_layer(batches, tmp_path):
    """Normaliser-free nets: ScaledStdConv2d keeps a `gain` per output channel."""
    result = _roundtrip("nf_resnet26", batches, tmp_path)
    for m in result.model.modules():
        if hasattr(m, "gain") and isinstance(m, torch.nn.Conv2d):
            assert m.gain.shape[0] == m.out_channels


def test_ghost_modules_resize_their_slice_bound():
    """GhostNet slices its concatenation to `out_chs`; squeeze-excite groups are re-rooted."""
    model = timm.create_model("ghostnet_100", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, X)
    assert graph.cached_widths, "GhostModule.out_chs was not found"
    assert not [g for g in graph.groups if g.fixed and "se." in g.key]
    lw.resize(graph, {g.key: 2 * g.size for g in graph.groups if g.prunable})
    assert model(X).shape == (1, 10)


def test_split_and_concat_families(batches, tmp_path):
    """Res2Net splits a tensor into scales and concatenates them back."""
    _roundtrip("res2net50_26w_4s", batches, tmp_path)
