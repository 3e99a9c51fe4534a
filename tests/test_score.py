"""Criteria: the gate saliency and torch-pruning importances, on real batches."""

import pytest
import timm
import torch
import torch_pruning as tp

import lwdna_plugin as lw
from conftest import IMG

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
    from lwdna_plugin.adapter import classification_loss

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


def test_criterion_changes_the_architecture(batches):
    kw = {"num_classes": 10}
    gate = lw.dissimilate("resnet18", data=batches, model_kwargs=kw).spec["groups"]
    rand = lw.dissimilate("resnet18", data=batches, criterion="random", model_kwargs=kw).spec["groups"]
    assert gate != rand


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
    assert 0.995 * flops["original"] <= flops["lwdna"] <= flops["original"]
    assert result.spec["criterion"] == "synflow" and result.spec["batches"] == 0
    assert any("data-free: no data was used" in note for note in result.report.notes)
    with pytest.raises(ValueError, match="choose a data-free criterion"):
        lw.dissimilate("resnet18", input_size=(3, IMG, IMG))


def test_average_inits_follows_profiles_not_channel_indices():
    from lwdna_plugin.score import average_inits

    first = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([4.0, 0.0])}
    # Another draw of the same network: the same profile on other channels, twice the gradient scale.
    second = {"a": torch.tensor([2.0, 6.0, 4.0]), "b": torch.tensor([0.0, 8.0])}
    averaged = average_inits([first, second])
    for key in first:
        assert torch.allclose(averaged[key], first[key] / 10.0)
    # Two draws with different profiles: each rank gets the mean of that rank's scores.
    third = {"a": torch.tensor([0.0, 0.0, 10.0]), "b": torch.tensor([0.0, 0.0])}
    mixed = average_inits([first, third])
    assert torch.allclose(mixed["a"], torch.tensor([0.65, 0.05, 0.1]))
    assert torch.allclose(mixed["b"], torch.tensor([0.2, 0.0]))


def test_dissimilate_scores_several_inits(batches):
    kwargs = {"num_classes": 10}
    one = lw.dissimilate("resnet18", data=batches, batches=1, model_kwargs=kwargs)
    three = lw.dissimilate("resnet18", data=batches, batches=1, inits=3, model_kwargs=kwargs)
    assert three.spec["inits"] == 3 and one.spec["inits"] == 1
    assert three.spec["achieved"]["flops"] <= three.spec["target"]["flops"]
    kept = lambda r: {k: g["kept"] for k, g in r.spec["groups"].items()}  # noqa: E731
    assert kept(one) != kept(three)
    assert any("3 initialisations averaged" in note for note in three.report.notes)
    with pytest.raises(ValueError, match="inits=0"):
        lw.dissimilate("resnet18", data=batches, inits=0, model_kwargs=kwargs)
