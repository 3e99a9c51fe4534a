"""Modes: work done in eval or train mode gives every submodule its own mode back."""

import timm
import torch

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.modes import in_mode


def _mixed():
    """A model training with its stem norm frozen in eval mode, as fine-tuning recipes do."""
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).train()
    model.bn1.eval()
    return model


def test_in_mode_restores_each_module():
    model = _mixed()
    with in_mode(model, training=False):
        assert not any(m.training for m in model.modules())
    assert model.training and model.layer1.training and not model.bn1.training
    with in_mode(model, training=True):
        assert model.bn1.training
    assert not model.bn1.training
    try:
        with in_mode(model, training=False):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert model.training and not model.bn1.training


def test_counting_and_tracing_leave_a_frozen_norm_frozen():
    model = _mixed()
    example = torch.zeros(1, 3, IMG, IMG)
    lw.count_flops(model, example)
    lw.GroupGraph(model, example)
    assert model.training and model.layer1[0].bn1.training and not model.bn1.training
