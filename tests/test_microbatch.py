"""Scoring in micro-batches: pieces of each batch, gradients accumulated, the same scores."""

import pytest
import timm
import torch

import lwdna_plugin as lw
from lwdna_plugin.adapter import classification_loss, micro_batches

TEN = {"num_classes": 10}


def test_micro_batches_cut_every_per_sample_field():
    images, targets = torch.arange(10.0).view(10, 1), torch.arange(10)
    pieces = micro_batches((images, targets), 4)
    assert [len(p[0][0]) for p in pieces] == [4, 4, 2]
    assert [share for _, share in pieces] == [0.4, 0.4, 0.2]
    assert torch.equal(torch.cat([p[0][1] for p in pieces]), targets)
    batch = {"inputs": [torch.zeros(3)] * 5, "data_samples": list(range(5)), "mode": "loss"}
    pieces = micro_batches(batch, 2)
    assert [p[0]["data_samples"] for p in pieces] == [[0, 1], [2, 3], [4]]
    assert all(p[0]["mode"] == "loss" for p in pieces)
    assert micro_batches((images, targets), 10) == [((images, targets), 1.0)]


def test_micro_batched_scores_equal_whole_batch_scores():
    # LayerNorm only (no batch statistics): accumulated pieces give the whole batch's gradient.
    model = timm.create_model("convnext_atto", pretrained=False, **TEN)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    batches = lw.load_batches("mnist5k", batches=1, batch_size=8, img_size=32)
    whole = lw.score_channels(graph, "gate", batches, classification_loss)
    pieces = lw.score_channels(graph, "gate", batches, classification_loss, micro_batch=3)
    assert whole.keys() == pieces.keys()
    for key in whole:
        assert torch.allclose(whole[key], pieces[key], rtol=1e-3, atol=1e-9), key


def test_dissimilate_records_the_score_batch_size(batches):
    result = lw.dissimilate("resnet18", data=batches, score_batch_size=4, model_kwargs=TEN)
    assert result.spec["score_batch_size"] == 4
    assert result.peak_memory_mb is None  # measured on CUDA devices only
    with pytest.raises(ValueError, match="score_batch_size=0: must be a positive integer"):
        lw.dissimilate("resnet18", data=batches, score_batch_size=0, model_kwargs=TEN)
