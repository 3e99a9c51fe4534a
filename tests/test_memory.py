"""Scoring memory: saved activations measured, batches cut to a budget, traces that hold none."""

import gc
import weakref

import pytest
import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from lwdna_plugin.adapter import classification_loss
from lwdna_plugin.memory import MicroBatch, memory_budget, saved_bytes

TEN = {"num_classes": 10}


def _loss_on(model):
    return lambda batch: classification_loss(model, batch)


def test_saved_bytes_counts_activations_per_sample_and_not_parameters():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    one = torch.randn(1, 3, 32, 32, requires_grad=True)
    four = torch.randn(4, 3, 32, 32, requires_grad=True)
    saved_one = saved_bytes(lambda: model(one).sum())
    saved_four = saved_bytes(lambda: model(four).sum())
    # At least the first conv's output (kept by the ReLU) of 16 x 32 x 32 floats a sample.
    assert saved_one >= 16 * 32 * 32 * 4
    assert saved_four == pytest.approx(4 * saved_one, rel=0.01)
    with torch.no_grad():
        assert saved_bytes(lambda: model(four).sum()) == 0


def test_measuring_the_scoring_memory_keeps_no_graph_alive():
    # The probe's graph is never run backward; had it held the tensors it saves, a node saving its
    # own output would keep itself, and every weight the graph saved, alive for good (373 MB a
    # call for a widened resnet50).
    model = timm.create_model("resnet18", pretrained=False, **TEN)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    weight = weakref.ref(model.fc.weight)
    batches = lw.load_batches("mnist5k", batches=1, batch_size=4, img_size=32)
    lw.score_channels(graph, "gate", batches, classification_loss, micro_batch="auto")
    del model, graph
    gc.collect()
    assert weight() is None


def test_auto_micro_batch_fits_the_budget_and_keeps_the_scores():
    # LayerNorm only (no batch statistics): pieces accumulate to the whole batch's gradient.
    model = timm.create_model("convnext_atto", pretrained=False, **TEN)
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    batches = lw.load_batches("mnist5k", batches=1, batch_size=8, img_size=32)
    whole = lw.score_channels(graph, "gate", batches, classification_loss, micro_batch=None)
    pieces = MicroBatch(auto=True, budget=1)
    cut = lw.score_channels(graph, "gate", batches, classification_loss, micro_batch=pieces)
    assert pieces.per_sample > 0
    assert pieces.size == 1 and pieces.split(8)
    for key in whole:
        # Summed in another order: channels scoring near 0 differ by rounding at the group's scale.
        scale = float(whole[key].abs().max())
        assert torch.allclose(whole[key], cut[key], rtol=1e-3, atol=1e-6 * scale), key
    roomy = MicroBatch(auto=True, budget=10 * pieces.per_sample)
    lw.score_channels(graph, "gate", batches, classification_loss, micro_batch=roomy)
    assert roomy.size == 10 and not roomy.split(8)
    assert roomy.note(8) is None and "pieces of 1 sample:" in pieces.note(8)


def test_auto_micro_batch_keeps_two_samples_where_train_mode_needs_them():
    # BatchNorm1d on pooled features refuses a single sample in train mode.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)
    ).train()
    images, targets = torch.randn(5, 3, 16, 16), torch.arange(5)
    pieces = MicroBatch(auto=True, budget=1)
    cut = pieces.cut((images, targets), _loss_on(model), torch.device("cpu"))
    assert pieces.minimum == 2
    assert [len(piece[0]) for piece, _ in cut] == [2, 3]  # the last single sample joins its neighbour
    assert sum(share for _, share in cut) == pytest.approx(1.0)


def test_memory_budget_on_cpu_is_bounded():
    budget = memory_budget(torch.device("cpu"))
    assert 0 < budget <= lw.memory.CPU_BUDGET


def test_dissimilate_reports_auto_micro_batching(batches):
    tight = MicroBatch(auto=True, budget=1)
    result = lw.dissimilate("resnet18", data=batches, score_batch_size=tight, model_kwargs=TEN)
    assert result.spec["score_batch_size"] == 1
    assert any("pieces of 1 sample:" in note for note in result.report.notes)
    default = lw.dissimilate("resnet18", data=batches, model_kwargs=TEN)
    assert "score_batch_size" not in default.spec  # a small model at 64 px fits: whole batches
    with pytest.raises(ValueError, match="score_batch_size='big': must be a positive integer, 'auto' or None"):
        lw.dissimilate("resnet18", data=batches, score_batch_size="big", model_kwargs=TEN)


class _Squares(nn.Module):
    """conv -> square: the square saves the conv's output for backward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 10)
        self.kept: list[weakref.ref] = []

    def forward(self, x):
        h = self.conv(x)
        self.kept.append(weakref.ref(h))
        return self.head((h * h).mean((2, 3)))


def test_group_graph_holds_no_activations():
    model = _Squares()
    graph = lw.GroupGraph(model, torch.zeros(1, 3, 16, 16))
    gc.collect()
    assert graph.groups and model.kept
    assert all(ref() is None for ref in model.kept)
