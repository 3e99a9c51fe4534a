"""Widening alone: FLOPs scale with width squared on plain CNNs; zoo initialisation; no mutation."""

import copy

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.widen import widen_or_fix

X = torch.zeros(1, 3, IMG, IMG)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "regnetx_002"])
@pytest.mark.parametrize("width", [1.5, 2.0])
def test_widen_scales_flops_by_width_squared(name, width):
    # VGG's pre-logits MLP (512 x 4096 x 7 x 7, four times that widened) made it the slowest test;
    # a sixteenth of its hidden width keeps the plain conv chain it is here for.
    kwargs = {"mlp_ratio": 1 / 16} if name.startswith("vgg") else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    wide, sizes = lw.widen(model, X, width)
    ratio = lw.count_flops(wide, X) / lw.count_flops(model, X)
    # The stem keeps its 3 input channels and the classifier its 10 outputs: slightly under width^2.
    assert 0.9 * width**2 <= ratio <= width**2
    # Every prunable group is scaled by `width`, to the nearest multiple of its step (group convs).
    original = [g for g in lw.GroupGraph(model, X).groups if g.prunable]
    assert set(sizes) == {g.key for g in original}
    for g in original:
        step = g.step()
        assert sizes[g.key] % step == 0 and abs(sizes[g.key] - width * g.size) <= step / 2, g.key
    assert {g.key: g.size for g in lw.GroupGraph(wide, X).groups if g.prunable} == sizes
    assert wide(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)


def test_widened_model_is_initialised_like_the_zoo():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    wide, _ = lw.widen(model, X, 2.0, create=lambda: timm.create_model("resnet18", num_classes=10))
    conv = wide.layer1[0].conv1.weight
    # timm's ResNet: Kaiming normal, fan_out, ReLU gain -> std = sqrt(2 / (out * k * k)).
    expected = (2.0 / (conv.shape[0] * 9)) ** 0.5
    assert abs(conv.std().item() / expected - 1) < 0.05
    # timm's ResNet zero-initialises the last norm of every residual branch.
    assert torch.count_nonzero(wide.layer1[0].bn2.weight) == 0
    assert torch.count_nonzero(wide.layer1[0].bn1.weight - 1) == 0


def test_caller_model_is_not_modified(batches):
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    before = copy.deepcopy(model.state_dict())
    result = lw.dissimilate(model, data=batches)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.model is not model
    assert result.spec["base"] == {"zoo": "timm", "name": "resnet18", "kwargs": {"num_classes": 10}}


def test_grouped_conv_widths_stay_divisible():
    model = timm.create_model("resnext50_32x4d", pretrained=False, num_classes=10)
    wide, _ = lw.widen(model, X, 1.3)
    for m in wide.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
    assert wide(torch.randn(1, 3, IMG, IMG)).shape == (1, 10)


class FixedReshape(torch.nn.Module):
    """A forward that reshapes to a width computed at construction: `mid` cannot widen, `stem` can."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mid = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.width = 16
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.mid(torch.relu(self.stem(x))), 2)
        return self.head(x.reshape(x.shape[0], self.width, 4).mean(-1))


def test_groups_that_break_the_model_when_widened_are_left_at_their_width(batches):
    from lwdna_plugin.widen import widen_or_fix

    wide, _ = lw.widen(FixedReshape(), X, 2.0)
    with pytest.raises(RuntimeError, match="shape"):
        wide(X)  # widened blindly, the model breaks in its forward
    widened = widen_or_fix(FixedReshape(), X, 2.0)
    assert set(widened.unwidenable) == {"mid"}
    assert "widening it breaks the model (RuntimeError: shape" in widened.unwidenable["mid"]
    assert widened.sizes == {"stem": 16}
    assert widened.model(torch.zeros(2, 3, IMG, IMG)).shape == (2, 10)
    result = lw.dissimilate(FixedReshape(), data=batches)
    assert "widening it breaks the model" in result.report.fixed_groups["mid"]
    assert set(result.spec["groups"]) == {"stem"}
    assert result.model(torch.zeros(2, 3, IMG, IMG)).shape == (2, 10)


class _Attention(torch.nn.Module):
    """Multi-head self-attention that keeps `num_heads` but no `head_dim`: each head's width is
    read off a tensor, the block's input (as DaVit and CrossViT do) or its own `qkv` (as Swin)."""

    def __init__(self, dim: int, heads: int, own: bool, head_dim: bool = False):
        super().__init__()
        self.num_heads, self.own = heads, own
        if head_dim:  # kept (and resized with the group), but the output still takes the input's width
            self.head_dim = dim // heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        per_head = getattr(self, "head_dim", -1 if self.own else c // self.num_heads)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, per_head).permute(2, 0, 3, 1, 4).unbind(0)
        x = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c if hasattr(self, "head_dim") else -1))


class _Tokens(torch.nn.Module):
    def __init__(self, own: bool, head_dim: bool = False):
        super().__init__()
        self.embed = torch.nn.Linear(8, 32)
        self.attn = _Attention(32, 4, own, head_dim)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = self.embed(x)
        return self.head((x + self.attn(x)).mean(1))


@pytest.mark.parametrize("own", [False, True])
def test_attention_that_reads_its_head_width_from_its_input_is_tied_to_it(own):
    """Widening every group by one factor keeps the block's input and its heads in step; a
    plan that sizes them apart would break the model. The group is tried alone first, then
    with the group of the block's input: together they widen, so they keep one width."""
    model, x = _Tokens(own), torch.randn(2, 5, 8)
    group = lw.GroupGraph(model, x).group("attn.proj:in")
    assert group.prunable and group.heads_from_shape
    widened = widen_or_fix(model, x, 2.0)
    assert "attn.proj:in" not in widened.unwidenable
    assert widened.model.attn.proj.in_features == 64
    if own:
        assert widened.ties == {}
    else:
        assert widened.ties == {"attn.proj:in": "width of embed", "embed": "width of embed"}
        graph = lw.GroupGraph(widened.model, x, ties=widened.ties)
        assert graph.group("attn.proj:in").tie == graph.group("embed").tie is not None
        # The block splits its width into 4 heads: the stream it is tied to steps by 4 too.
        assert graph.group("attn.proj:in").divisor == graph.group("embed").divisor == 4
        with pytest.raises(ValueError, match="tied to one width"):
            lw.resize(graph, {"attn.proj:in": 48, "embed": 40})
    assert widened.model(x).shape == (2, 10)


def test_attention_that_keeps_head_dim_but_reshapes_to_its_input_width_is_tied_to_it():
    """PVT-v2 and ViT-relpos keep `head_dim` and end in `reshape(B, N, C)`, C the input's width:
    widening the heads alone breaks; found at widening, a plan cannot size them apart."""
    model, x = _Tokens(own=False, head_dim=True), torch.randn(2, 5, 8)
    assert not lw.GroupGraph(model, x).group("attn.proj:in").heads_from_shape
    widened = widen_or_fix(model, x, 2.0)
    assert widened.ties == {"attn.proj:in": "width of embed", "embed": "width of embed"}
    assert widened.model(x).shape == (2, 10)


def test_attention_whose_input_keeps_its_width_keeps_its_own():
    model, x = _Tokens(own=False), torch.randn(2, 5, 8)
    widened = widen_or_fix(model, x, 2.0, ignored=["embed"])
    assert "breaks the model" in widened.unwidenable["attn.proj:in"]
    assert widened.model.attn.proj.in_features == 32 and widened.ties == {}
    assert widened.model(x).shape == (2, 10)


def test_widen_returns_what_widen_or_fix_returns_and_still_unpacks():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.manual_seed(0)
    widened = lw.widen(model, X, 2.0)
    torch.manual_seed(0)
    checked = widen_or_fix(model, X, 2.0)
    assert type(widened) is type(checked) and widened.unwidenable == checked.unwidenable == {}
    assert widened.sizes == checked.sizes
    wide, sizes = widened
    assert wide is widened.model and sizes is widened.sizes
