"""`graph.pieces`: a split sized by one number keeps its pieces equal, so their groups are tied
to one width and fixed together."""

import torch
import torch.nn as nn
from graph_models import X, member

import lwdna_plugin as lw
from lwdna_plugin.graph import search


class EqualSplit(nn.Module):
    """CSPNet-like: a conv's output split in halves by one number kept on the block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.half = 4
        self.left = nn.Conv2d(4, 5, 1)
        self.right = nn.Conv2d(4, 5, 1)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        a, b = self.stem(x).split(self.half, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1))


def test_equal_pieces_get_a_group_each_tied_to_one_width():
    model = EqualSplit()
    graph = lw.GroupGraph(model, X)
    assert "stem" not in [g.key for g in graph.groups]
    first, second = graph.group("stem#0"), graph.group("stem#1")
    assert first.tie == second.tie == "stem#0" and first.prunable and second.prunable
    assert member(second, "stem").positions == [4, 5, 6, 7]
    assert member(second, "stem").root_idxs == [0, 1, 2, 3]
    assert member(second, "right").positions == [0, 1, 2, 3]
    assert [pieces for _, pieces in second.splits] == [(1,)]
    # The split's size lives on the block in Python, found and kept in step.
    assert [(c.module, c.attr, c.kind) for c in graph.cached_widths] == [(model, "half", "piece")]
    lw.resize(graph, {"stem#0": 6, "stem#1": 6})
    assert model.half == 6 and model.stem.out_channels == 12 and model.right.in_channels == 6
    assert model(X).shape == (2, 2, 8, 8)


def test_a_piece_whose_search_stalls_is_left_at_its_width(monkeypatch):
    monkeypatch.setattr(search, "SEARCH_STEPS", 1)
    graph = lw.GroupGraph(EqualSplit(), X)
    assert "did not settle" in str(graph.group("stem#0").fixed)
    assert "did not settle" in str(graph.group("stem#1").fixed)
