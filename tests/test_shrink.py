"""Shrinking to a plan, and the correction loop that lands fvcore's count at or under the target."""

import copy

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.planner import Planner
from lwdna_plugin.shrink import shrink, shrink_to_target
from lwdna_plugin.stages import StageTimer

X = torch.zeros(1, 3, IMG, IMG)


def _planned(target_ratio: float):
    base = timm.create_model("resnet18", pretrained=False, num_classes=10)
    wide, _ = lw.widen(base, X, 2.0)
    graph = lw.GroupGraph(wide, X)
    scores = lw.score_channels(graph, "l1")
    flop_model = lw.FlopModel(graph, X)
    target = int(target_ratio * lw.count_flops(base, X))
    return wide, graph, scores, flop_model, target


def test_shrink_keeps_the_planned_widths():
    wide, graph, scores, flop_model, target = _planned(1.0)
    plan = lw.plan_widths(graph, scores, flop_model, target)
    model = shrink(lw.GroupGraph(copy.deepcopy(wide), X), plan)
    found = {g.key: g.size for g in lw.GroupGraph(model, X).groups}
    assert {k: found[k] for k in plan.widths} == plan.widths


def test_replans_lower_when_the_count_is_over_the_target():
    wide, graph, scores, flop_model, target = _planned(0.8)
    timer = StageTimer(["shrink", "search"])
    # A plan made for 5% more than the target: fvcore counts it over, so the loop must re-plan.
    over = lw.plan_widths(graph, scores, flop_model, 1.05 * target)
    calls = []

    class Recording(Planner):
        def plan(self, target):
            calls.append(target)
            return super().plan(target)

    planner = Recording(graph, scores, flop_model, lw.Floors(), 1, "saliency")
    with timer("shrink"):
        candidate = shrink_to_target(wide, over, planner, target, X, (), timer)
    assert calls and calls[0] < target
    assert candidate.flops == lw.count_flops(candidate.model, X) <= target
    assert timer.seconds["search"] > 0
    # The widened model itself is left as it was.
    assert lw.count_flops(wide, X) == flop_model.total


class _GroupNormInCode(torch.nn.Module):
    """A functional group norm whose group count is a number in the code: widening by 2 keeps
    the width divisible by it, a shrunk width need not be, and no layer tells the graph."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.mid = torch.nn.Conv2d(16, 24, 3, padding=1)
        self.out = torch.nn.Conv2d(24, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.nn.functional.group_norm(self.mid(x), 8)
        return self.head(torch.relu(self.out(x)).mean((2, 3)))


def test_a_shrunk_model_that_fails_is_blamed_on_the_width_not_the_input():
    kwargs = dict(criterion="synflow", input_size=(3, 16, 16), flops=0.8, round_to=1)
    with pytest.raises(RuntimeError) as info:
        lw.dissimilate(_GroupNormInCode(), **kwargs)
    message = str(info.value)
    assert "shrunk _GroupNormInCode fails its forward pass" in message and "num_groups=8" in message
    assert "ignore=['mid']" in message and "input" not in message.partition("(")[0].replace("same input", "")
    # The advice it gives works.
    result = lw.dissimilate(_GroupNormInCode(), ignore=["mid"], **{**kwargs, "floors": lw.Floors(rho=0.2, tau=0.2)})
    assert result.model.mid.out_channels == 24
