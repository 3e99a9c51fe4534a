"""`lwdna_plugin.initialise`: re-initialising a resized model as its zoo constructor (or each layer) would."""

import logging

import pytest
import timm
import torch
import torch.nn as nn

import lwdna_plugin as lw
from lwdna_plugin.initialise import initialise
from lwdna_plugin.resize import resize

X = torch.zeros(2, 3, 32, 32)


def _garble(model):
    """Overwrite every parameter and buffer, so a test sees what `initialise` wrote."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(3)


def _resnet18():
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


def _kaiming_fan_out_std(conv):
    return (2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5


def test_resnet_is_reinitialised_like_timm_at_the_new_widths():
    torch.manual_seed(0)
    model = _resnet18()
    graph = lw.GroupGraph(model, X)
    resize(graph, {"layer1.0.conv1": 256, "layer2.0.conv1": 64})
    _garble(model)
    assert initialise(model, _resnet18) is model
    block = model.layer1[0]
    assert block.conv1.weight.shape == (256, 64, 3, 3) and block.conv2.weight.shape == (64, 256, 3, 3)
    # Kaiming normal, fan-out: the std follows each conv's own (new) output width, not its input width.
    for conv in (block.conv1, block.conv2, model.layer2[0].conv1, model.layer2[0].conv2):
        assert abs(conv.weight.std().item() / _kaiming_fan_out_std(conv) - 1) < 0.03, conv
        assert abs(conv.weight.mean().item()) < 0.1 * _kaiming_fan_out_std(conv)
    assert abs(block.conv1.weight.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) > 0.2  # not the old width's
    # The last norm of every residual branch is zero-initialised, the others are identities.
    for b in (block, model.layer2[0]):
        assert torch.count_nonzero(b.bn2.weight) == 0 and torch.count_nonzero(b.bn2.bias) == 0
        assert torch.equal(b.bn1.weight, torch.ones_like(b.bn1.weight))
        assert torch.count_nonzero(b.bn1.bias) == 0 and torch.count_nonzero(b.bn1.running_mean) == 0
        assert torch.equal(b.bn1.running_var, torch.ones_like(b.bn1.running_var))
        assert b.bn1.num_batches_tracked.item() == 0
    assert block.bn1.weight.shape == (256,) and model.layer2[0].bn1.weight.shape == (64,)
    # The classifier keeps nn.Linear's own init: uniform within 1 / sqrt(fan_in).
    fc = model.fc.weight
    assert fc.abs().max().item() <= 512**-0.5 and fc.std().item() > 0.5 * 512**-0.5 / 3**0.5
    assert model(X).shape == (2, 10)


def test_initialise_restores_the_layer_constructors_even_when_the_zoo_fails():
    originals = [cls.__init__ for cls in (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)]

    def broken():
        nn.Conv2d(3, 4, 1)
        raise RuntimeError("zoo is broken")

    with pytest.raises(RuntimeError, match="zoo is broken"):
        initialise(nn.Conv2d(3, 4, 1), broken)
    assert [cls.__init__ for cls in (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)] == originals
    initialise(_resnet18(), _resnet18)
    assert [cls.__init__ for cls in (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)] == originals


class Counted(nn.Module):
    """A custom layer with its own `reset_parameters`."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.resets = 0

    def reset_parameters(self):
        self.resets += 1
        nn.init.constant_(self.scale, 0.5)


def test_without_a_constructor_every_layer_resets_its_own_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.GroupNorm(4, 32), nn.Linear(64, 48), nn.LayerNorm(48), Counted()
    )
    _garble(model)
    assert initialise(model, None) is model
    conv, bn, gn, fc, ln, counted = model
    # nn.Conv2d / nn.Linear: Kaiming uniform with a = sqrt(5), i.e. within 1 / sqrt(fan_in).
    for layer, fan_in in ((conv, 16 * 9), (fc, 64)):
        bound = fan_in**-0.5
        assert layer.weight.abs().max().item() <= bound
        assert abs(layer.weight.std().item() / (bound / 3**0.5) - 1) < 0.1
        assert layer.bias.abs().max().item() <= bound and layer.bias.unique().numel() > 1
    for norm in (bn, gn, ln):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.count_nonzero(norm.bias) == 0
    assert torch.count_nonzero(bn.running_mean) == 0 and torch.equal(bn.running_var, torch.ones(32))
    assert bn.num_batches_tracked.item() == 0
    assert counted.resets == 1 and counted.scale.tolist() == [0.5] * 4


def _vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1)


def test_vit_tokens_are_resampled_from_the_zoo_distribution_at_the_new_width():
    torch.manual_seed(0)
    model = _vit()
    graph = lw.GroupGraph(model, X)
    resize(graph, {"blocks.0.mlp.fc2": 288})  # the embedding width: class token, positions, every norm
    _garble(model)
    initialise(model, _vit)
    cls_token, pos_embed = model.cls_token, model.pos_embed
    assert cls_token.shape == (1, 1, 288) and pos_embed.shape == (1, 5, 288)
    # timm: class token ~ N(0, 1e-6), position embedding ~ N(0, 0.02), new channels included.
    assert torch.count_nonzero(cls_token) == 288 and cls_token.abs().max().item() < 1e-5
    assert abs(pos_embed.std().item() / 0.02 - 1) < 0.15 and abs(pos_embed.mean().item()) < 0.005
    assert pos_embed[..., 192:].abs().min().item() > 0
    # Layers get timm's ViT init at their new shapes: truncated normal(0.02) weights, zero biases.
    fc1 = model.blocks[0].mlp.fc1
    assert fc1.weight.shape == (768, 288) and abs(fc1.weight.std().item() / 0.02 - 1) < 0.05
    assert torch.count_nonzero(fc1.bias) == 0
    assert torch.equal(model.norm.weight, torch.ones(288)) and torch.count_nonzero(model.norm.bias) == 0
    assert model(X).shape == (2, 10)


class Checked(nn.Module):
    """A constructor that checks its widths and initialises to constants."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)
        assert self.conv.out_channels == self.head.in_channels == 8
        nn.init.constant_(self.conv.weight, 0.5)
        nn.init.constant_(self.conv.bias, -0.25)
        nn.init.constant_(self.head.weight, 0.125)

    def forward(self, x):
        return self.head(self.conv(x))


def test_a_constructor_that_rejects_new_widths_gives_its_initial_values_resampled(caplog):
    model = Checked()
    resize(lw.GroupGraph(model, torch.zeros(2, 3, 4, 4)), {"conv": 12})
    _garble(model)
    with caplog.at_level(logging.INFO, logger="lwdna_plugin.initialise"):
        initialise(model, Checked)
    assert "zoo constructor rejected resized shapes" in caplog.text
    assert model.conv.weight.shape == (12, 3, 1, 1) and model.head.weight.shape == (2, 12, 1, 1)
    assert model.conv.weight.eq(0.5).all() and model.conv.bias.eq(-0.25).all() and model.head.weight.eq(0.125).all()


def test_tensors_the_constructor_does_not_make_are_left_alone():
    model = Checked()
    model.extra = nn.Linear(2, 2)
    _garble(model)
    initialise(model, Checked)
    assert model.extra.weight.eq(3).all() and model.extra.bias.eq(3).all()
    assert model.conv.weight.eq(0.5).all() and model.head.weight.eq(0.125).all()


def test_the_result_of_a_partly_frozen_model_is_wholly_trainable(batches):
    # The result is a fresh definition to train with the user's recipe: frozen flags of the
    # caller's (random or pretrained) layers mean nothing for it, so none is carried over.
    model = _resnet18()
    model.conv1.requires_grad_(False)
    model.layer1.requires_grad_(False)
    result = lw.dissimilate(model, data=batches)
    assert all(p.requires_grad for p in result.model.parameters())
    assert not model.conv1.weight.requires_grad  # the caller's model keeps its flags


def test_other_threads_build_layers_as_they_were_while_one_thread_initialises():
    import threading

    inside, release = threading.Event(), threading.Event()
    built = {}

    def create():
        # Runs under the patched constructors: let the other thread build a layer meanwhile.
        model = nn.Sequential(nn.Conv2d(3, 4, 1))
        inside.set()
        assert release.wait(30)
        return model

    def other():
        assert inside.wait(30)
        built["conv"] = nn.Conv2d(5, 7, 3)
        release.set()

    original = nn.Conv2d.__init__
    model = nn.Sequential(nn.Conv2d(3, 8, 1))  # its shape is what `create` is told to build
    thread = threading.Thread(target=other)
    thread.start()
    initialise(model, create)
    thread.join()
    assert (built["conv"].in_channels, built["conv"].out_channels) == (5, 7)
    assert nn.Conv2d.__init__ is original
