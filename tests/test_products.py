"""Products of two activations: attention written with `@` on conv features (EfficientFormerV2,
Visformer, Twins), whose element-wise reading by torch-pruning stalled every search through it."""

import pytest
import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from lwdna_plugin.graph.tracing import trace


class _ConvAttention(nn.Module):
    """q @ k on heads of conv features, scaled, softmax, then attn @ v; v twice as wide as q and k."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.v, self.proj = nn.Conv2d(dim, 2 * dim, 1), nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        q = self.q(x).reshape(B, self.heads, -1, N).permute(0, 1, 3, 2) * 0.5
        k = self.k(x).reshape(B, self.heads, -1, N)
        v = self.v(x).reshape(B, self.heads, -1, N).permute(0, 1, 3, 2)
        attn = (q @ k).softmax(-1)
        return x + self.proj((attn @ v).permute(0, 1, 3, 2).reshape(B, -1, H, W))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.a1, self.a2 = _ConvAttention(64, 4), _ConvAttention(64, 4)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a2(self.a1(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _members(graph: lw.GroupGraph, key: str) -> set[tuple[str, str]]:
    return {(m.name, m.dim) for m in graph.group(key).members}


def test_the_layers_around_a_product_are_coupled_and_its_tokens_are_not():
    graph = lw.GroupGraph(_Net().eval(), torch.zeros(1, 3, 8, 8))
    assert not graph.stalls
    for block in ("a1", "a2"):
        # q and k meet in q @ k (their channels contract together); v's pass through attn @ v to proj.
        assert _members(graph, f"{block}.k") == {(f"{block}.k", "out"), (f"{block}.q", "out")}
        assert _members(graph, f"{block}.v") == {(f"{block}.v", "out"), (f"{block}.proj", "in")}
        assert graph.group(f"{block}.k").prunable and graph.group(f"{block}.v").prunable


def test_a_product_with_a_broadcast_operand_is_left_to_torch_pruning():
    class Shared(nn.Module):
        """k of one image multiplied into every image of the batch: an expand that repeats elements."""

        def __init__(self) -> None:
            super().__init__()
            self.q, self.k = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.q(x).flatten(2).transpose(1, 2)
            k = self.k(x[:1]).flatten(2)
            return (q @ k.expand(x.shape[0], -1, -1)).mean((1, 2))

    dg = trace(Shared().eval(), torch.zeros(2, 3, 4, 4)).dg
    bmm = [n for n in dg.module2node.values() if n.grad_fn is not None and n.grad_fn.name() == "BmmBackward0"]
    assert len(bmm) == 1 and bmm[0].dependencies  # not cut: its element-wise dependencies stand


def test_dissimilate_plans_conv_attention_with_q_and_k_at_one_width():
    result = lw.dissimilate(_Net(), criterion="synflow", input_size=(3, 4, 4), flops=1.0, round_to=1)
    groups = result.spec["groups"]
    assert groups["a1.k"]["kept"] != groups["a1.k"]["original"] or groups["a1.v"]["kept"] != groups["a1.v"]["original"]
    model = lw.build(result.spec, base=_Net())
    assert model.a1.q.out_channels == model.a1.k.out_channels == groups["a1.k"]["kept"]
    assert model.a1.v.out_channels == model.a1.proj.in_channels == groups["a1.v"]["kept"]
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)


@pytest.mark.parametrize("name", ["visformer_tiny"])
def test_timm_attention_on_conv_features_is_no_longer_stalled(name):
    model = timm.create_model(name, pretrained=False, num_classes=10, img_size=64)
    graph = lw.GroupGraph(model.eval(), torch.zeros(1, 3, 64, 64))
    assert not graph.stalls
    assert graph.group("stage2.0.attn.proj:in").prunable


def test_the_flop_budget_counts_products_with_the_widths_they_scale_with():
    # At 8x8 the two products of each block hold over a third of the model's multiply-adds: a
    # FLOP model that took them for a constant could not reach 0.6 of the original.
    x = torch.zeros(1, 3, 8, 8)
    floors = lw.Floors(rho=0.1, tau=0.1)
    result = lw.dissimilate(_Net(), criterion="synflow", input_size=(3, 8, 8), flops=0.6, round_to=1, floors=floors)
    ratio = lw.count_flops(result.model, x) / lw.count_flops(_Net(), x)
    assert 0.57 <= ratio <= 0.6
