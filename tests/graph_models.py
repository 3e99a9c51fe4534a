"""Small models and helpers the graph tests share: layers and blocks that each exercise one
mechanism of `lwdna_plugin.graph`, at sizes a test builds in milliseconds."""

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

# Batch 2: torch-pruning first calls `model(*X)`, which a batch of one unpacks into one unbatched image.
X = torch.zeros(2, 3, 8, 8)


def member(group, name):
    return next(m for m in group.members if m.name == name)


class Ghost(nn.Module):
    """GhostNet-like: a tensor concatenated with its depthwise copy, sliced to a width on the block."""

    def __init__(self):
        super().__init__()
        self.out_chs = 8
        self.primary = nn.Conv2d(3, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.out_chs]


class GhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.ghost = Ghost()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.ghost(x))


class Blur(nn.Module):
    """A layer torch-pruning does not know: a per-channel filter applied with F.conv2d."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.register_buffer("filt", torch.ones(channels, 1, 3, 3) / 9)

    def forward(self, x):
        return F.conv2d(x, self.filt, padding=1, groups=self.channels)


class BlurNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.blur = Blur(4)
        self.gamma = nn.Parameter(torch.ones(4, 1, 1))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.blur(self.conv(x)) * self.gamma)


def small_swin(num_heads: tuple[int, int]) -> nn.Module:
    """A two-stage Swin at 32 px (windows of 2, 8 channels): its patch merge, relative position
    bias tables and heads, built in milliseconds."""
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=10,
        img_size=32,
        window_size=2,
        depths=(1, 1),
        num_heads=num_heads,
        embed_dim=8,
    )
