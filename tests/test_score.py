"""Criteria: the gate saliency and torch-pruning importances, on real batches."""

import math

import pytest
import timm
import torch
import torch_pruning as tp

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.adapter import classification_loss

X = torch.zeros(1, 3, IMG, IMG)


@pytest.fixture(scope="module")
def graph():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return lw.GroupGraph(model, X)


def _check(scores, graph):
    prunable = [g for g in graph.groups if g.prunable]
    assert set(scores) == {g.key for g in prunable}
    for g in prunable:
        assert scores[g.key].shape == (g.size,)
        assert torch.isfinite(scores[g.key]).all()


@pytest.mark.parametrize("criterion", ["l1", "bn", "random", tp.importance.GroupMagnitudeImportance(p=2)])
def test_data_free_criteria(graph, criterion):
    _check(lw.score_channels(graph, criterion), graph)


@pytest.mark.parametrize("aggregate", ["sum", "mean", "norm"])
def test_gate_saliency(graph, batches, aggregate):

    scores = lw.score_channels(graph, "gate", batches, classification_loss, aggregate)
    _check(scores, graph)
    assert sum(float(s.sum()) for s in scores.values()) > 0
    assert all(p.grad is None for p in graph.model.parameters())


def test_gate_needs_data(batches):
    with pytest.raises(ValueError, match="input_size|data"):
        lw.dissimilate("resnet18")
    with pytest.raises(ValueError, match="no batches"):
        lw.dissimilate("resnet18", data=[])


def test_unknown_criterion(graph):
    with pytest.raises(ValueError, match="criterion"):
        lw.score_channels(graph, "psychic")


def test_the_architecture_follows_the_criterions_scores(batches):
    # A criterion that scores every channel of the 128-wide groups (resnet18's first stage,
    # widened) near zero: under one global threshold on raw scores they drop to their floor,
    # and the budget goes to the other groups.
    def first_stage_worthless(group):
        width = len(group[0].idxs)
        return torch.full((width,), 1e-6 if width == 128 else 1.0)

    result = lw.dissimilate(
        "resnet18", data=batches, criterion=first_stage_worthless, ranking="saliency", footprint=None,
        round_to=1, model_kwargs={"num_classes": 10},
    )  # fmt: skip
    groups = result.spec["groups"]
    floor = lambda g: max(math.ceil(lw.Floors().rho * g["widened"]), lw.Floors().min_channels)  # noqa: E731
    first = {k: g for k, g in groups.items() if g["widened"] == 128}
    rest = {k: g for k, g in groups.items() if g["widened"] != 128}
    assert first and rest
    assert all(g["kept"] == floor(g) for g in first.values())
    assert any(g["kept"] > floor(g) for g in rest.values())


def test_synflow_needs_no_data_and_restores_the_model(graph):
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}
    scores = lw.score_channels(graph, "synflow", example=X)
    _check(scores, graph)
    assert all(float(s.sum()) > 0 for s in scores.values())
    after = graph.model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_dissimilate_data_free():
    result = lw.dissimilate("resnet18", criterion="synflow", input_size=(3, IMG, IMG), model_kwargs={"num_classes": 10})
    flops = result.report.flops
    assert 0.95 * flops["original"] <= flops["lwdna"] <= flops["original"]
    assert result.spec["criterion"] == "synflow" and result.spec["batches"] == 0
    assert any("data-free: no data was used" in note for note in result.report.notes)
    with pytest.raises(ValueError, match="choose a data-free criterion"):
        lw.dissimilate("resnet18", input_size=(3, IMG, IMG))


def test_gate_scores_ignore_the_callers_autocast(graph, batches):
    plain = lw.score_channels(graph, "gate", batches, classification_loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = lw.score_channels(graph, "gate", batches, classification_loss)
    for key in plain:
        assert torch.allclose(plain[key], under[key], rtol=1e-4, atol=1e-12), key


def test_the_same_call_plans_the_same_widths_on_any_thread_count():
    """Gate scores are taken in float64 on the CPU: float32 gradients change in their last bits
    with the thread count, and near-equal channels swapped ranks (ResNet-20 at half the FLOPs
    planned other widths at 1 and 2 threads before)."""
    batches = lw.load_batches("mnist5k", batches=2, batch_size=64, img_size=28, in_chans=1)
    kwargs = {"num_classes": 10, "in_chans": 1}
    threads = torch.get_num_threads()
    specs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            result = lw.dissimilate(
                "cifar_resnet20", flops=0.5, data=batches, floors=lw.Floors(rho=0.2), round_to=1, model_kwargs=kwargs
            )
            specs.append(result.spec["groups"])
    finally:
        torch.set_num_threads(threads)
    assert specs[0] == specs[1]
    assert len({g["kept"] / g["original"] for g in specs[0].values()}) > 3  # widths differ layer by layer
