import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

import lwdna_plugin as lw

KWARGS = {"num_classes": 10, "in_chans": 1}


def test_a_strided_pointwise_conv_with_few_inputs_is_a_hazard():
    # 7 inputs to stage 2's strided 1x1 conv: under one vector block (8 floats on AVX2, 16 on
    # AVX-512); 16 inputs to stage 3's: a whole block on either.
    model = timm.create_model("cifar_resnet20", widths=[7, 16, 32], **KWARGS)
    hazards = lw.cpu_kernel_hazards(model)
    assert [h.layer for h in hazards] == ["stages.1.0.downsample.0"]
    assert "6035" in hazards[0].message()
    assert lw.training_memory_format(model) is torch.contiguous_format


def test_one_channel_images_get_the_layout_asked_for():
    images = torch.randn(4, 28, 28, 1).permute(0, 3, 1, 2)  # counts as both layouts
    assert images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last)
    plain = lw.to_memory_format(images, torch.contiguous_format)
    assert plain.stride() == (784, 784, 28, 1)
    assert torch.equal(plain, images)
    assert lw.to_memory_format(images, torch.channels_last).stride() == (784, 1, 28, 1)


def test_the_zoo_widths_are_safe_in_channels_last():
    model = timm.create_model("cifar_resnet20", **KWARGS)
    assert lw.cpu_kernel_hazards(model) == []
    assert lw.training_memory_format(model) is torch.channels_last


def test_dissimilate_warns_when_its_widths_hit_a_defect():
    data = lw.load_batches("mnist5k", batches=1, batch_size=16, img_size=28, in_chans=1)
    with pytest.warns(UserWarning, match="known CPU kernel defect"):
        result = lw.dissimilate(
            "cifar_resnet20", flops=0.15, data=data, ranking="uniform", criterion="l1", width=1.0,
            floors=lw.Floors(rho=0.05), round_to=1, footprint=None, model_kwargs=KWARGS,
        )  # fmt: skip
    assert result.spec["groups"]["conv1"]["kept"] < 8
    assert any("stages.1.0.downsample.0" in note for note in result.report.notes)


# Trains the hazardous model a few steps on one thread in the layout `training_memory_format`
# picks, and compares its weight gradients with the default layout's. In channels-last this
# corrupted the heap (glibc abort) on one thread and gave wrong gradients on two.
STRESS = textwrap.dedent(
    """
    import sys, timm, torch, torch.nn.functional as F, lwdna_plugin as lw
    torch.set_num_threads(int(sys.argv[1]))
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", widths=[7, 13, 26], num_classes=10, in_chans=1)
    # One-channel images in channels-last strides, as an augmentation's permute leaves them.
    images = torch.randn(64, 28, 28, 1).permute(0, 3, 1, 2)
    labels = torch.randint(0, 10, (64,))
    layer = model.get_submodule("stages.1.0.downsample.0")
    F.cross_entropy(model(lw.to_memory_format(images, torch.contiguous_format)), labels).backward()
    reference = layer.weight.grad.clone()
    fmt = lw.training_memory_format(model)
    model.zero_grad(set_to_none=True)
    model.to(memory_format=fmt)
    for _ in range(10):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(lw.to_memory_format(images, fmt)), labels).backward()
    error = float((layer.weight.grad - reference).abs().max() / reference.abs().max())
    assert error < 1e-4, error
    print("ok", error)
    """
)


@pytest.mark.parametrize("threads", [1, 2])
def test_training_in_the_chosen_layout_is_correct_and_does_not_crash(threads):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-c", STRESS, str(threads)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


class StridedPointwiseStem(torch.nn.Module):
    """A stem that reads the image's 3 channels with a strided 1x1 conv: a hazard by design."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 1, 2, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv(torch.relu(self.bn(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


def test_a_hazard_of_the_original_architecture_is_not_blamed_on_the_widths():
    import warnings

    model = StridedPointwiseStem()
    assert [h.layer for h in lw.cpu_kernel_hazards(model)] == ["stem"]
    data = lw.load_batches("mnist5k", batches=1, batch_size=8, img_size=16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = lw.dissimilate(model, data=data, round_to=1)
    assert not [w for w in seen if "kernel defect" in str(w.message)]
    assert not [n for n in result.report.notes if "kernel defect" in n]
