"""The budget: targets, floors, rounding, rankings."""

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import IMG

X = torch.zeros(1, 3, IMG, IMG)


def test_parse_flops():
    assert lw.parse_flops(1.0, 1000) == 1000
    assert lw.parse_flops(0.5, 1000) == 500
    assert lw.parse_flops("350M", 1) == 350_000_000
    assert lw.parse_flops("1.5G", 1) == 1_500_000_000
    # A string without a unit is its number: a fraction up to 10, a count above.
    assert lw.parse_flops(" 0.5", 1000) == 500
    assert lw.parse_flops("3.5e8", 1000) == 350_000_000
    with pytest.raises(ValueError, match="flops"):
        lw.parse_flops("lots", 1)


def test_absolute_target_and_round_to(batches):
    result = lw.dissimilate(
        "resnet18", flops="120M", data=batches, round_to=8, model_kwargs={"num_classes": 10}, footprint=None
    )
    assert 0.995 * 120e6 <= result.spec["achieved"]["flops"] <= 120e6
    assert all(e["kept"] % 8 == 0 for e in result.spec["groups"].values())


def test_groups_narrower_than_the_step_can_keep_their_original_width(batches):
    # ghostnet_050's groups of 4-30 channels: in steps of 8 their floors rounded up above their
    # own widths, so the defaults could not plan even flops=1.0.
    result = lw.dissimilate("ghostnet_050", data=batches, flops=1.0, model_kwargs={"num_classes": 10})
    groups = result.spec["groups"].values()
    assert result.spec["achieved"]["flops_ratio"] <= 1.0
    assert all(e["kept"] % 8 == 0 or e["kept"] == e["original"] for e in groups)
    assert any(e["kept"] % 8 and e["kept"] < 8 for e in groups)


def test_unreachable_target_names_the_floors(batches):
    with pytest.raises(ValueError, match="floors"):
        lw.dissimilate("resnet18", flops=0.2, data=batches)


def _widened_graph(name):
    model = timm.create_model(name, pretrained=False, num_classes=10)
    wide, _ = lw.widen(model, X, 2.0)
    return lw.GroupGraph(wide, X)


def test_search_respects_floors():
    # How long the search takes is measured in benchmarks/cost.py, not asserted here.
    graph = _widened_graph("resnet50")
    scores = lw.score_channels(graph, "l1")
    model = lw.FlopModel(graph, X)
    plan = lw.plan_widths(graph, scores, model, 0.25 * model.total, lw.Floors(rho=0.3))
    assert plan.predicted_flops <= 0.25 * model.total
    assert plan.predicted_flops >= 0.999 * 0.25 * model.total
    lowest = dict(zip(model.keys, lw.floor_widths(graph, scores, model, lw.Floors(rho=0.3)), strict=True))
    assert plan.floor_flops == model(lw.floor_widths(graph, scores, model, lw.Floors(rho=0.3)))
    for key, width in plan.widths.items():
        assert width >= lowest[key] >= 0.3 * graph.group(key).size - 1
        assert len(plan.keep[key]) == width


def test_flop_model_matches_fvcore_after_resize():
    graph = _widened_graph("resnet18")
    model = lw.FlopModel(graph, X)
    widths = {g.key: g.size // 2 for g in graph.groups if g.prunable}
    vector = [widths.get(k, s) for k, s in zip(model.keys, model.sizes, strict=True)]
    predicted = model(torch.tensor(vector, dtype=torch.float64).numpy())
    lw.resize(graph, widths)
    assert abs(predicted - lw.count_flops(graph.model, X)) / predicted < 1e-3


def test_flop_model_counts_the_layers_channels_pass_through():
    """gMLP's spatial gates multiply tokens (196 x 196 at 224 px) for every channel passing
    through: a third of the model's FLOPs (0.33), which scale with their group's width though
    their weights do not change. Counted as constant, half widths were predicted at 0.50 of the
    FLOPs instead of 0.34, and at 224 px no plan fit the budget."""
    model = timm.create_model("gmlp_ti16_224", pretrained=False, num_classes=10).eval()
    x = torch.zeros(1, 3, 224, 224)
    graph = lw.GroupGraph(model, x)
    gate = graph.group("blocks.0.mlp_channels.fc2:in")
    assert gate.passes == ["blocks.0.mlp_channels.gate.proj"]
    flop_model = lw.FlopModel(graph, x)
    widths = {g.key: g.size // 2 for g in graph.groups if g.prunable}
    vector = [widths.get(k, s) for k, s in zip(flop_model.keys, flop_model.sizes, strict=True)]
    predicted = flop_model(torch.tensor(vector, dtype=torch.float64).numpy())
    lw.resize(graph, widths)
    assert abs(predicted - lw.count_flops(model, x)) / predicted < 1e-3


def test_flops_ranking_cuts_expensive_channels_first():
    """With every channel scored alike, the raw threshold cannot tell groups apart; ranking per
    FLOP keeps a larger share of the cheapest channels than of the most expensive ones."""
    from lwdna_plugin.planner import _Space

    graph = _widened_graph("resnet18")
    model = lw.FlopModel(graph, X)
    scores = {g.key: torch.ones(g.size) for g in graph.groups if g.prunable}
    target = 0.4 * model.total
    plan = lw.plan_widths(graph, scores, model, target, lw.Floors(rho=0.1), ranking="flops")
    assert plan.ranking == "flops" and target * 0.999 <= plan.predicted_flops <= target
    index = {k: i for i, k in enumerate(model.keys)}
    free = [index[k] for k in plan.widths]
    space = _Space(graph, scores, model, lw.Floors(rho=0.1), 1, target, 1e-3)
    assert sorted(space.free) == sorted(free)
    costs = space.step_costs(model.sizes.copy(), model)
    cheap, dear = min(free, key=costs.get), max(free, key=costs.get)
    share = {i: plan.widths[model.keys[i]] / model.sizes[i] for i in free}
    assert share[cheap] > share[dear]


def test_unknown_ranking_is_refused():
    graph = _widened_graph("resnet18")
    model = lw.FlopModel(graph, X)
    scores = {g.key: torch.ones(g.size) for g in graph.groups if g.prunable}
    with pytest.raises(ValueError, match="ranking='knapsack'.*saliency"):
        lw.plan_widths(graph, scores, model, 0.5 * model.total, ranking="knapsack")


def test_uniform_ranking_thins_every_group_by_one_fraction():
    """Scores do not matter to a uniform plan: every group keeps about one fraction of its width
    (rounding to whole channels), the largest that meets the target, whatever the scores say."""
    model = timm.create_model("cifar_resnet20", pretrained=False, num_classes=10, in_chans=1)
    x = torch.zeros(1, 1, 28, 28)
    graph = lw.GroupGraph(model, x)
    flop_model = lw.FlopModel(graph, x)
    generator = torch.Generator().manual_seed(0)
    scores = {g.key: torch.rand(g.size, generator=generator) for g in graph.groups if g.prunable}
    target = 0.5 * flop_model.total
    plan = lw.plan_widths(graph, scores, flop_model, target, lw.Floors(rho=0.1), ranking="uniform")
    fractions = [plan.widths[k] / graph.group(k).size for k in plan.widths]
    assert plan.ranking == "uniform" and plan.predicted_flops <= target
    # One channel of the narrowest group (16) is 1/16 of its width: rounding spreads at most that.
    assert max(fractions) - min(fractions) <= 1 / 16 + 1e-9
    assert 0.6 < min(fractions) and max(fractions) < 0.8  # FLOPs go as width squared: about 0.71
    # The architecture of cifar_resnet20 thinned by hand: `widths=[11, 23, 45]`.
    assert {graph.group(k).size: w for k, w in plan.widths.items()} == {16: 11, 32: 23, 64: 45}
    other = lw.plan_widths(graph, {k: -s for k, s in scores.items()}, flop_model, target, ranking="uniform")
    assert other.widths == plan.widths
