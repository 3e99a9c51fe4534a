"""The warm-up before scoring: what it trains, what it costs, and `dissimilate(warmup=...)`."""

import copy

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import widened_identification
from lwdna_plugin.adapter import classification_loss
from lwdna_plugin.score import score_channels
from lwdna_plugin.warmup import Warmup, warm_up

TEN = {"num_classes": 10}


@pytest.fixture(scope="module")
def more_batches():
    """Two scoring batches, then three for the warm-up."""
    return lw.load_batches("mnist5k", batches=5, batch_size=8, img_size=32)


def test_warm_up_trains_and_counts_its_cost(more_batches):
    model = timm.create_model("resnet18", pretrained=False, **TEN).eval()
    before = model.conv1.weight.detach().clone()
    cost = warm_up(model, Warmup(steps=5), more_batches[:2], classification_loss, cost_ratio=4.0)
    assert not torch.equal(model.conv1.weight, before)
    assert (cost.steps, cost.images, cost.original_images) == (5, 40, 160.0)
    assert not model.training  # its mode is given back
    assert all(p.grad is None for p in model.parameters())


def test_dissimilate_scores_the_warmed_up_model(more_batches):
    run = widened_identification("resnet18", TEN, more_batches, warmup=3)
    widened = copy.deepcopy(run.wide.state_dict())
    run.score()
    # The same widened model, warmed up on the three batches after the two scoring ones, then scored.
    run.wide.load_state_dict(widened)
    cold = score_channels(run.graph, "gate", more_batches[:2], classification_loss, "sum")
    warm_up(run.wide, Warmup(steps=3), more_batches[2:], classification_loss, cost_ratio=1.0)
    warm = score_channels(run.graph, "gate", more_batches[:2], classification_loss, "sum")
    assert all(torch.equal(run.scores[k], warm[k]) for k in warm)
    assert any(not torch.equal(run.scores[k], cold[k]) for k in cold)


def test_dissimilate_records_its_warm_up(more_batches):
    plain = lw.dissimilate("resnet18", data=more_batches, model_kwargs=TEN)
    warmed = lw.dissimilate("resnet18", data=more_batches, warmup=3, model_kwargs=TEN)
    assert "warmup" not in plain.spec and "warmup" not in plain.timings
    settings = warmed.spec["warmup"]
    assert (settings["steps"], settings["lr"], settings["spent"]["images"]) == (3, 0.1, 24)
    ratio = warmed.report.flops["widened"] / warmed.report.flops["original"]
    assert settings["spent"]["original_images"] == pytest.approx(24 * ratio, abs=0.1)
    assert warmed.timings["warmup"] > 0
    assert any("warm-up before scoring: 3 SGD steps" in note for note in warmed.report.notes)
    assert warmed.spec["achieved"]["flops"] <= warmed.spec["target"]["flops"]
    # The spec rebuilds: a warm-up changes only how widths were found.
    assert lw.build(warmed.spec)(more_batches[0][0]).shape == (8, 10)


def test_each_initialisation_is_warmed_up(more_batches):
    result = lw.dissimilate("resnet18", data=more_batches, warmup=Warmup(steps=2, lr=0.05), inits=2, model_kwargs=TEN)
    settings = result.spec["warmup"]
    assert (settings["steps"], settings["lr"], settings["spent"]["steps"]) == (2, 0.05, 4)


@pytest.mark.parametrize(
    ("warmup", "match"),
    [
        ("many", "warmup='many': give a number of SGD steps"),
        (-1, r"Warmup\(steps=-1\): must be a positive integer"),
        (Warmup(steps=2, lr=1e12), r"warm-up's loss is .* lower Warmup\(lr=...\)"),
    ],
)
def test_bad_warmup_is_a_clear_error(more_batches, warmup, match):
    with pytest.raises(ValueError, match=match):
        lw.dissimilate("resnet18", data=more_batches, warmup=warmup, model_kwargs=TEN)


def test_warmup_needs_data():
    with pytest.raises(ValueError, match=r"a warm-up \(2 steps\) trains on data .*: pass `data=`"):
        lw.dissimilate("resnet18", criterion="synflow", input_size=(3, 32, 32), warmup=2, model_kwargs=TEN)
