"""fvcore (our counter), thop and torch.utils.flop_counter agree on LW-DNA models."""

import copy

import pytest
import thop
import torch
from torch.utils.flop_counter import FlopCounterMode

import lwdna_plugin as lw
from conftest import IMG, core_params


@pytest.mark.parametrize("name", core_params(["resnet18", "mobilenetv2_100", "regnetx_002"]))
def test_counters_agree_within_5_percent(name, core_result):
    # A copy: the result is shared with the other tests of the core list.
    model = copy.deepcopy(core_result(name).model).eval()
    x = torch.zeros(1, 3, IMG, IMG)
    fv = lw.count_flops(model, x)
    # thop registers buffers on every module it visits: count a copy.
    th, _ = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    torch_macs = counter.get_total_flops() / 2  # torch counts a multiply-accumulate as two FLOPs
    for other in (th, torch_macs):
        assert abs(other - fv) / fv < 0.05, (name, fv, th, torch_macs)
