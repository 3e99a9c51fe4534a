"""Several initialisations: the rank-wise average of score profiles, and `dissimilate(inits=N)`."""

import copy

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import IMG, widened_identification
from lwdna_plugin.adapter import classification_loss
from lwdna_plugin.initialise import initialise
from lwdna_plugin.inits import average_inits, score_initialisations
from lwdna_plugin.score import score_channels


def test_average_inits_follows_profiles_not_channel_indices():
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


def test_dissimilate_plans_on_the_mean_profile_of_its_initialisations(batches):
    run = widened_identification("resnet18", {"num_classes": 10}, batches, inits=3, batches=1)
    widened = copy.deepcopy(run.wide.state_dict())
    run.score()
    # The same three draws scored one by one: the widened model as it is, then seeds 1 and 2.
    run.wide.load_state_dict(widened)
    draws = []
    for k in range(3):
        if k:
            torch.manual_seed(k)
            initialise(run.wide, run.create)
        draws.append(score_channels(run.graph, "gate", batches, classification_loss, "sum"))
    assert run.scores.keys() == draws[0].keys()
    averaged = average_inits(draws)
    assert all(torch.equal(run.scores[k], averaged[k]) for k in averaged)
    # Not the first draw's profile alone (its scores scaled as the average scales them).
    alone = average_inits([draws[0]] * 3)
    assert any(not torch.equal(run.scores[k], alone[k]) for k in averaged)


def test_dissimilate_records_its_initialisations(batches):
    kwargs = {"num_classes": 10}
    three = lw.dissimilate("resnet18", data=batches, batches=1, inits=3, model_kwargs=kwargs)
    assert three.spec["inits"] == 3
    assert any("3 initialisations averaged" in note for note in three.report.notes)
    with pytest.raises(ValueError, match="inits=0"):
        lw.dissimilate("resnet18", data=batches, inits=0, model_kwargs=kwargs)


def test_score_initialisations_redraws_the_network(batches):
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, IMG, IMG))
    before = model.conv1.weight.detach().clone()
    one = score_initialisations(graph, "gate", batches, classification_loss, "sum", inits=1, seed=0, create=None)
    assert torch.equal(model.conv1.weight, before)
    two = score_initialisations(graph, "gate", batches, classification_loss, "sum", inits=2, seed=0, create=None)
    assert not torch.equal(model.conv1.weight, before)
    assert one.keys() == two.keys()
    assert any(not torch.allclose(one[k], two[k]) for k in one)
