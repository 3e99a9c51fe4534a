"""fvcore (our counter), thop and torch.utils.flop_counter agree on LW-DNA models."""

import copy

import pytest
import thop
import torch
from fvcore.nn import FlopCountAnalysis
from torch.utils.flop_counter import FlopCounterMode

import lwdna_plugin as lw
from conftest import IMG, core_params


@pytest.mark.parametrize("name", core_params(["resnet18", "mobilenetv2_100", "regnetx_002"]))
def test_counters_agree_on_the_layers_macs(name, core_result):
    # A copy: the result is shared with the other tests of the core list.
    model = copy.deepcopy(core_result(name).model).eval()
    x = torch.zeros(1, 3, IMG, IMG)
    fv = lw.count_flops(model, x)
    analysis = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_operator = analysis.by_operator()
    layers = by_operator["conv"] + by_operator["linear"]
    # fvcore's total is its conv and linear MACs plus one per element of norms and pools, a
    # convention the others do not share: its share grows with the widths of depthwise blocks
    # (5% of mobilenetv2_100), so the counters are compared on the layers' MACs.
    assert fv == layers + sum(v for k, v in by_operator.items() if k in ("batch_norm", "adaptive_avg_pool2d"))
    # thop registers buffers on every module it visits: count a copy.
    th, _ = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    torch_macs = counter.get_total_flops() / 2  # torch counts a multiply-accumulate as two FLOPs
    assert abs(torch_macs - layers) / layers < 0.001, (name, layers, torch_macs)
    # thop adds its own per-element counts for some activations and norms (0.6% of resnet18).
    assert abs(th - layers) / layers < 0.01, (name, layers, th)
