"""standalone.substitutes: timm layers written as one call, with the helper classes the calls need."""

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, LayerNorm

from lwdna_plugin.standalone.substitutes import Substitutes


def named(**modules):
    root = nn.Module()
    for name, module in modules.items():
        root.add_module(name, module)
    return dict(root.named_modules(remove_duplicate=False))


def test_batchnorm_act_becomes_the_helper_class():
    found = Substitutes.find(named(bn=BatchNormAct2d(8, eps=1e-3, act_layer=nn.ReLU)))
    assert found.calls == {"bn": "BatchNormAct2d(8, eps=0.001, act=nn.ReLU(inplace=True))"}
    assert list(found.helpers) == ["BatchNormAct2d"]
    namespace = {"nn": nn}
    exec(found.helpers["BatchNormAct2d"], namespace)
    made = eval(found.calls["bn"], namespace)
    original = BatchNormAct2d(8, eps=1e-3, act_layer=nn.ReLU)
    made.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(made.eval()(x), original.eval()(x))


def test_timm_layernorm_becomes_nn_layernorm():
    found = Substitutes.find(named(norm=LayerNorm(6, eps=1e-6)))
    assert found.calls == {"norm": "nn.LayerNorm(6, eps=1e-06)"} and found.helpers == {}


def test_modules_inside_a_substitute_and_other_layers_are_left_alone():
    bn = BatchNormAct2d(4, act_layer=nn.ReLU)
    found = Substitutes.find(named(bn=bn, conv=nn.Conv2d(4, 4, 1), norm=nn.LayerNorm(4)))
    assert list(found.calls) == ["bn"]  # not bn.act, not the plain torch layers


def test_a_layer_that_does_not_fit_is_traced_through():
    class OwnForward(BatchNormAct2d):
        def forward(self, x):
            return super().forward(x) * 2

    OwnForward.__module__, OwnForward.__qualname__ = "timm.layers.norm_act", "BatchNormAct2d"
    found = Substitutes.find(named(bn=OwnForward(4)))
    assert found.calls == {} and found.helpers == {}
