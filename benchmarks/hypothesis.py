"""Where does LW-DNA beat its baseline? A regime study of the heterogeneity hypothesis.

CIFAR-style ResNet-20 (`cifar_resnet20`) on fixed, stratified Fashion-MNIST training subsets of
several sizes (default 1,000, 4,000 and 16,000 images), tested on all 10,000 test images. Every
arm at a size is trained by the one `train` function with the same epochs, batch size, SGD with a
per-step cosine schedule, augmentation and seeds; a seed fixes the data order, the augmentation
and the initialisation, so arms are compared seed by seed (paired differences):
- baseline: the model as registered, freshly initialised;
- random: `dissimilate` with random scores (same budget, floors and ranking as the paper's);
- lwdna: whatever `dissimilate` does by default (so the default is what the study measures);
- lwdna-<variant>: the identification variants under test, named in `VARIANTS`;
- uniform: the original thinned uniformly to the FLOP target (`ranking="uniform"`, `width=1`:
  every group keeps one common fraction of its width), what a user would otherwise do.

Every run also records its model's latency at batch 1 and `--latency-batch` (one thread, eval),
timed side by side with the `uniform` model of the same budget (`latency_ms`, with the ratio's
95% interval), and the git commit of the code that identified it.

Each run (size, arm, seed) writes its own JSON under `<out>/<tag>_runs/`; a rerun skips finished
runs, so the study spans sessions. After every finished run the study's summary is rewritten:
`<tag>.json` (config and a flat `runs` list), `<tag>.md` (a table per size: mean +- std, the
paired difference from the baseline and from random widths with 95% t-intervals), the paired
gain against training-set size (`<tag>_gain.png`) and the widths of each arm (`<tag>_widths.png`).
Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package. `--data cifar10:DIR`,
`cifar100:DIR` or `imagefolder:DIR` runs the same study on data read from disk (channels and
classes from the data), and `--preset` sets one of the paper's one-GPU rows (`PRESETS`).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/hypothesis.py --estimate        # print the compute budget, run nothing
    OMP_WAIT_POLICY=PASSIVE python benchmarks/hypothesis.py                   # the full study (many hours on 2 cores)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/hypothesis.py --sizes 1000 --seeds 3 \\
        --arms baseline,lwdna-sum,lwdna-mean,lwdna-flops                      # screen variants cheaply
    OMP_WAIT_POLICY=PASSIVE python benchmarks/hypothesis.py --quick           # CI smoke test, about a minute
    python benchmarks/hypothesis.py --device cuda --workers 8                  # on a GPU: hypothesis_regimes_cuda*
    python benchmarks/hypothesis.py --preset cifar10-densenet40 --data cifar10:/data/cifar --device cuda

Data order, augmentation and initialisation are drawn on the CPU whatever `--device`, so a seed
means the same batches everywhere; results on a GPU still differ in their last digits, so they go
to a study of their own (`<tag>_cuda`), never mixed with the CPU runs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import subprocess
import time
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lwdna_plugin as lw  # noqa: E402
from lwdna_plugin.latency import ratio_interval, time_samples  # noqa: E402

# Identification variants: keyword arguments of `dissimilate` on top of the study's width, budget
# and floors. "lwdna" takes dissimilate's defaults; "lwdna-sum" is the paper's criterion.
VARIANTS: dict[str, dict] = {
    "random": {"criterion": "random", "aggregate": "sum", "ranking": "saliency"},
    # No identification: the original thinned uniformly (scores are not read; l1 is the cheapest).
    "uniform": {"criterion": "l1", "ranking": "uniform", "width": 1.0, "round_to": 1},
    # The same in steps of 8, as the LW-DNA arms round by default: separates allocation from
    # rounding in the latency columns (coarse: cifar_resnet20 at flops 0.5 gets [8, 24, 48], 0.449).
    "uniform-r8": {"criterion": "l1", "ranking": "uniform", "width": 1.0, "round_to": 8},
    "lwdna": {},
    "lwdna-sum": {"criterion": "gate", "aggregate": "sum", "ranking": "saliency"},
    "lwdna-mean": {"criterion": "gate", "aggregate": "mean", "ranking": "saliency"},
    "lwdna-norm": {"criterion": "gate", "aggregate": "norm", "ranking": "saliency"},
    "lwdna-flops": {"criterion": "gate", "aggregate": "sum", "ranking": "flops"},
    "lwdna-flops-mean": {"criterion": "gate", "aggregate": "mean", "ranking": "flops"},
    "lwdna-inits": {"criterion": "gate", "aggregate": "sum", "ranking": "flops", "inits": 4, "batches": 4},
    # Scores after a warm-up of the widened net costing up to 3% of the baseline's training
    # (in image passes of the original model; see `warmup_steps`).
    "lwdna-warmup": {"criterion": "gate", "aggregate": "sum", "ranking": "flops", "warmup_share": 0.03},
    # Bounds on what widths alone can do here, not identification: channels scored by their
    # layer's depth (`depth_scores`), so the one threshold keeps early (or late) groups whole
    # and leaves the others at their floor, the most lopsided widths the budget allows.
    # FLOPs alone and any width: the footprint would pull the widths back toward the original's,
    # and steps of 8 would keep ResNet-20's 16-channel groups from their most lopsided widths.
    "prior-early": {
        "criterion": "depth-early",
        "aggregate": "sum",
        "ranking": "saliency",
        "footprint": None,
        "round_to": 1,
    },
    "prior-late": {
        "criterion": "depth-late",
        "aggregate": "sum",
        "ranking": "saliency",
        "footprint": None,
        "round_to": 1,
    },
}
ARMS = ("baseline", *VARIANTS)
# What the `lwdna` arm measures; a finished `lwdna` run made under other defaults is run again.
DISSIMILATE_DEFAULTS = {
    k: v.default.to_dict() if isinstance(v.default, lw.Footprint) else v.default
    for k, v in inspect.signature(lw.dissimilate).parameters.items()
    if k in ("criterion", "aggregate", "ranking", "inits", "batches", "warmup", "footprint", "round_to")
}
# Settings runs made before they were recorded had, as dissimilate's defaults then were.
EARLIER_DEFAULTS = {"warmup": None, "footprint": None, "round_to": 1}
DEFAULT_ARMS = "baseline,random,lwdna,lwdna-sum"
# The paper's rows that fit one GPU, as `--preset NAME --data KIND:DIR`. The paper publishes no
# per-row training commands; its reference code's defaults (github.com/ofsoundof/
# Heterogeneity_Hypothesis, util/option.py: 300 epochs, batch 128, lr 0.1, x0.1 at epochs 150 and
# 225, weight decay 1e-4; width 2, rho 0.4) stand for them, DenseNet's batch 64 is Huang et al.
# 2017 (section 4.2), the 4-pixel crop and flip is He et al. 2016's CIFAR augmentation, FLOPs are
# the paper's table rows. The README's preset table says the same, value by value.
PAPER_TRAINING = {
    "seeds": "3",
    "epochs": "300",
    "batch_size": 128,
    "lr": 0.1,
    "schedule": "step:150,225",
    "weight_decay": 1e-4,
}
PRESETS = {
    "cifar10-resnet56": {
        **PAPER_TRAINING, "data_kind": "cifar10", "model": "cifar_resnet56", "sizes": "50000", "flops": 0.991,
        "crop_pad": 4,
    },
    "cifar10-densenet40": {
        **PAPER_TRAINING, "data_kind": "cifar10", "model": "cifar_densenet40", "sizes": "50000", "flops": 0.907,
        "batch_size": 64, "crop_pad": 4, "round_to": 1,
    },
    "cifar100-densenet40": {
        **PAPER_TRAINING, "data_kind": "cifar100", "model": "cifar_densenet40", "sizes": "50000", "flops": 0.909,
        "batch_size": 64, "crop_pad": 4, "round_to": 1,
    },
    "tinyimagenet-mobilenetv2": {
        **PAPER_TRAINING, "data_kind": "imagefolder", "model": "mobilenetv2_100", "sizes": "100000",
        "flops": 0.938, "img_size": 64, "crop_pad": 8,
    },
}  # fmt: skip
QUICK = {"sizes": "500", "epochs": "2", "seeds": "2", "test_size": 1000, "evals": 1, "arms": "baseline,lwdna,random"}
# Seconds per training image-pass of cifar_resnet20 (REFERENCE_MACS at 28 x 28, one channel) on
# one thread of this repository's CI machine, from earlier runs; only used to print the budget
# of a study with no finished run yet, scaled by the studied model's MACs.
SECONDS_PER_IMAGE = 3.5e-3
REFERENCE_MACS = 31_332_416


def load_data(
    train_size: int, test_size: int, source: str = "fashion-mnist", img_size: int | None = None
) -> dict[str, torch.Tensor]:
    """A fixed stratified training subset (the same for every seed and arm) and the first
    `test_size` test images of `source` (`lw.data.SPLIT_SOURCES`), standardised by the subset's
    statistics: one mean and deviation for one-channel images, one per channel otherwise."""
    train_x, train_y = lw.data.load_split(source, "train", img_size)
    test_x, test_y = lw.data.load_split(source, "test", img_size)
    classes = int(train_y.max()) + 1
    if train_size % classes:
        raise ValueError(f"--sizes {train_size}: a stratified subset needs a multiple of {classes} images")
    fewest = int(torch.bincount(train_y, minlength=classes).min())
    if train_size // classes > fewest:
        raise ValueError(
            f"--sizes {train_size}: {source} has {fewest} training images in its smallest class, "
            f"fewer than the {train_size // classes} per class asked for"
        )
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))
    picks = [order[train_y[order] == c][: train_size // classes] for c in range(classes)]
    index = torch.cat(picks)[torch.randperm(train_size, generator=torch.Generator().manual_seed(1))]
    train_x, train_y = train_x[index].float() / 255.0, train_y[index]
    test_x, test_y = test_x[:test_size].float() / 255.0, test_y[:test_size]
    if train_x.shape[1] == 1:
        mean, std = train_x.mean(), train_x.std()
    else:
        mean, std = train_x.mean((0, 2, 3), keepdim=True), train_x.std((0, 2, 3), keepdim=True)
    return {"train_x": (train_x - mean) / std, "train_y": train_y, "test_x": (test_x - mean) / std, "test_y": test_y}


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Per image: a random crop after zero padding by `pad`, and a horizontal flip with probability 1/2."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    cropped = padded[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped).contiguous()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 in eval mode, un-augmented."""
    model.eval()
    device = next(model.parameters()).device
    correct = sum(
        (model(images[i : i + batch_size].to(device)).argmax(1).cpu() == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(labels), batch_size)
    )
    return 100.0 * correct / len(labels)


def eval_epochs(epochs: int, evals: int) -> list[int]:
    """The (1-based) epochs after which the test set is evaluated: `evals` points, the last one included."""
    return sorted({max(1, round(epochs * (k + 1) / evals)) for k in range(min(evals, epochs))})


def train(
    model: nn.Module,
    data: dict[str, torch.Tensor],
    protocol: dict,
    seed: int,
    layout: torch.memory_format = torch.channels_last,
    checkpoint: Path | None = None,
    save_every_s: float = 60.0,
) -> dict:
    """The one training protocol every arm goes through; returns the curves and seconds.

    Data order and augmentation are drawn on the CPU whatever the model's device, so a seed
    draws the same batches everywhere; each batch then moves to the model's device, in
    `layout` (the model's: one-channel images would otherwise pick channels-last for it).
    With a `checkpoint` file, the state after an epoch (model, optimizer, schedule, data-order
    generator, curves) is written there at most every `save_every_s` seconds, and a call that
    finds one goes on from it: a run longer than a session finishes over several, with the
    same batches and steps as one uninterrupted call."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(1000 + seed)
    steps_per_epoch = math.ceil(len(data["train_y"]) / protocol["batch_size"])
    optimizer = torch.optim.SGD(
        model.parameters(), lr=protocol["lr"], momentum=0.9, weight_decay=protocol["weight_decay"], nesterov=True
    )
    schedule = lr_schedule(optimizer, protocol.get("schedule", "cosine"), protocol["epochs"], steps_per_epoch)
    checkpoints = eval_epochs(protocol["epochs"], protocol["evals"])
    history = {"eval_epochs": checkpoints, "test_acc": [], "train_loss": [], "train_s": 0.0}
    first = 1
    state = load_checkpoint(checkpoint, protocol, seed, model)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        history, first = state["history"], state["epoch"] + 1
        print(f"{checkpoint.name}: going on after epoch {state['epoch']} of {protocol['epochs']}", flush=True)
    saved = time.perf_counter()
    for epoch in range(first, protocol["epochs"] + 1):
        model.train()
        start, loss_sum = time.perf_counter(), 0.0
        order = torch.randperm(len(data["train_y"]), generator=generator)
        for i in range(0, len(order), protocol["batch_size"]):
            index = order[i : i + protocol["batch_size"]]
            images, labels = data["train_x"][index], data["train_y"][index]
            if protocol["augment"] == "crop-flip":
                images = augment(images, generator, protocol.get("crop_pad", 2))
            loss = F.cross_entropy(model(lw.to_memory_format(images.to(device), layout)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(index)
        history["train_s"] += time.perf_counter() - start
        history["train_loss"].append(loss_sum / len(order))
        if not math.isfinite(history["train_loss"][-1]):
            raise RuntimeError(f"training diverged at epoch {epoch}: loss {history['train_loss'][-1]}")
        if epoch in checkpoints:
            history["test_acc"].append(accuracy(model, data["test_x"], data["test_y"]))
        if checkpoint is not None and epoch < protocol["epochs"] and time.perf_counter() - saved >= save_every_s:
            state = {
                "epoch": epoch,
                "seed": seed,
                "protocol": json.dumps(protocol, sort_keys=True),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": generator.get_state(),
                "history": history,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
            saved = time.perf_counter()
    history["train_top1"] = accuracy(model, data["train_x"], data["train_y"])
    return history


def load_checkpoint(path: Path | None, protocol: dict, seed: int, model: nn.Module) -> dict | None:
    """The training state `train` left in `path`, loaded into `model`; None (and the file
    removed) when there is none, or it belongs to another protocol, seed or architecture."""
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["seed"] != seed or state["protocol"] != json.dumps(protocol, sort_keys=True):
        print(f"{path.name}: left by another protocol or seed, training from the start", flush=True)
        path.unlink()
        return None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        # The run's model changed since (identification code or defaults): its state is of no use.
        print(f"{path.name}: left by another architecture ({str(error).splitlines()[0]}), training from the start")
        path.unlink()
        return None
    return state


def lr_schedule(optimizer: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int):
    """Stepped once per training step: 'cosine' to zero over the run, or 'step:E1,E2,...' (the
    learning rate times 0.1 after each listed epoch)."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    kind, _, epochs_text = schedule.partition(":")
    if kind != "step" or not epochs_text:
        raise ValueError(f"--schedule {schedule!r}: give 'cosine' or 'step:E1,E2' (epochs after which lr x 0.1)")
    milestones = [int(e) * steps_per_epoch for e in epochs_text.split(",")]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def same_settings(settings: dict, round_to: int | None = None) -> bool:
    """Whether a run's dissimilate settings are dissimilate's defaults (runs from before a setting
    was recorded had that setting at its default). A study's `--round-to` is part of its protocol,
    every arm's: the `lwdna` arm then has dissimilate's defaults but that one."""
    expected = {**DISSIMILATE_DEFAULTS, **({"round_to": round_to} if round_to is not None else {})}
    return all(settings.get(k, EARLIER_DEFAULTS.get(k)) == v for k, v in expected.items())


def has_defaults(options: dict | None) -> bool:
    """Whether a variant's `dissimilate` options are exactly dissimilate's defaults."""
    return (
        options is not None
        and not options.get("warmup_share")
        and all(options.get(k, v) == v for k, v in DISSIMILATE_DEFAULTS.items())
    )


def input_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """(channels, height, width) of the study's images, known before they are read."""
    kind = args.data.partition(":")[0]
    side = args.img_size or 64
    return {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}.get(kind, (3, side, side))


def model_macs(args: argparse.Namespace) -> int:
    """MACs of one training image through the studied model (fvcore, at the data's image size)."""
    shape = input_shape(args)
    model = timm.create_model(args.model, pretrained=False, num_classes=10, in_chans=shape[0], **args.model_kwargs)
    return lw.count_flops(model, torch.zeros(1, *shape))


def seconds_per_image(args: argparse.Namespace, finished: list[dict]) -> tuple[float, str]:
    """Training seconds per image pass for the budget, and where the figure comes from: the
    median over the study's finished runs of this model (each under whatever load it met, so
    the budget is what this machine has been giving), else the reference constant."""
    own = [
        run["train_s"] / (run["train_size"] * run["protocol"]["epochs"])
        for run in finished
        if not run.get("same_as")
        and run["protocol"]["model"] == args.model
        and run["protocol"].get("model_kwargs", {}) == args.model_kwargs
    ]
    if own:
        return statistics.median(own), f"the median of {len(own)} finished runs"
    return SECONDS_PER_IMAGE * model_macs(args) / REFERENCE_MACS, "a reference single-thread figure scaled by MACs"


def warmup_steps(share: float, protocol: dict, size: int, width: float, batch_size: int) -> int:
    """Warm-up steps whose compute is at most `share` of the baseline's training: one widened
    image pass costs at most width**2 original ones (every group widened by `width`)."""
    return max(1, int(share * protocol["epochs"] * size / (width**2 * batch_size)))


def depth_scores(model_name: str, kwargs: dict, early: bool, seed: int):
    """A `dissimilate` criterion scoring every channel of a group by where its root layer comes
    in the model (first layer 1, last 0 when `early`; reversed otherwise), with a tie-break
    1,000 times smaller drawn from `seed`."""
    names = [n for n, _ in timm.create_model(model_name, pretrained=False, **kwargs).named_modules()]
    order = {n: i / (len(names) - 1) for i, n in enumerate(names)}
    generator = torch.Generator().manual_seed(seed)

    def score(group) -> torch.Tensor:
        root = group[0].dep.target.name.split(" (")[0]
        depth = order[root]
        count = len(group[0].idxs)
        return torch.full((count,), 1 - depth if early else depth) + 1e-3 * torch.rand(count, generator=generator)

    return score


def make_arm(arm: str, data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int, protocol: dict):
    """The arm's freshly initialised model and its `dissimilate` result (None for the baseline)."""
    classes, channels = int(data["train_y"].max()) + 1, data["train_x"].shape[1]
    kwargs = {"num_classes": classes, "in_chans": channels, **args.model_kwargs}
    if arm == "baseline":
        torch.manual_seed(seed)
        return timm.create_model(args.model, pretrained=False, **kwargs), None
    options = dict(VARIANTS[arm])
    if options.get("criterion") in ("depth-early", "depth-late"):
        options["criterion"] = depth_scores(args.model, kwargs, options["criterion"] == "depth-early", seed)
    count = options.pop("batches", DISSIMILATE_DEFAULTS["batches"])
    width = options.pop("width", args.width)
    # --round-to, else the arm's own, else dissimilate's default.
    round_to = args.round_to if args.round_to is not None else options.pop("round_to", None)
    options.pop("round_to", None)
    rounding = {} if round_to is None else {"round_to": round_to}
    shuffle = torch.randperm(len(data["train_y"]), generator=torch.Generator().manual_seed(seed))
    size = args.score_batch_size
    picks = [shuffle[(i * size) % len(shuffle) :][:size] for i in range(count)]
    batches = [(data["train_x"][p], data["train_y"][p]) for p in picks]
    share = options.pop("warmup_share", None)
    if share:
        # The warm-up's batches follow the scoring ones in `data`, drawn epoch by epoch without replacement.
        steps = warmup_steps(share, protocol, len(data["train_y"]), args.width, args.warmup_batch_size)
        passes = 1 + steps * args.warmup_batch_size // len(shuffle)
        draws = [
            torch.randperm(len(shuffle), generator=torch.Generator().manual_seed(seed + 1 + e)) for e in range(passes)
        ]
        chunks = torch.cat(draws)[: steps * args.warmup_batch_size].split(args.warmup_batch_size)
        batches += [(data["train_x"][c], data["train_y"][c]) for c in chunks]
        options["warmup"] = lw.Warmup(steps, lr=protocol["lr"], weight_decay=protocol["weight_decay"])
    result = lw.dissimilate(
        args.model,
        width=width,
        flops=args.flops,
        data=batches,
        batches=count,
        floors=lw.Floors(rho=args.floor),
        **rounding,
        seed=seed,
        model_kwargs=kwargs,
        **options,
    )
    return result.model, result


_DATA: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
_UNIFORM: dict[str, nn.Module] = {}


def code_version() -> str:
    """The git commit of this checkout (with '+dirty' when the package's files differ from it),
    or 'unknown'. Read once at import (`CODE`): a process identifies with the code it imported."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "lwdna_plugin"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


CODE = code_version()


def time_against_uniform(
    model: nn.Module, data: dict[str, torch.Tensor], args: argparse.Namespace, protocol: dict
) -> dict[str, dict[str, float]]:
    """Milliseconds of one eval forward pass of `model` and of the same budget's `uniform` model,
    timed side by side on one thread at batch 1 and `args.latency_batch`, with the ratio's 95%
    bootstrap interval (`lw.latency`'s timer: interleaved, at least 20 passes and 2 s)."""
    key = json.dumps([args.model, args.model_kwargs, args.flops, args.round_to])
    if key not in _UNIFORM:
        uniform, _ = make_arm("uniform", data, args, 0, protocol)
        _UNIFORM[key] = uniform.to(args.device, memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found = {}
        for batch in (1, args.latency_batch):
            samples = time_samples([_UNIFORM[key], model], tuple(data["train_x"].shape[1:]), batch, 20, 2.0)
            low, high = ratio_interval(samples)[1]
            medians = np.median(samples, axis=0)
            found[str(batch)] = {
                "ms": round(1e3 * float(medians[1]), 3),
                "uniform_ms": round(1e3 * float(medians[0]), 3),
                "vs_uniform": round(float(medians[1] / medians[0]), 4),
                "vs_uniform_95": [round(float(low), 4), round(float(high), 4)],
            }
    finally:
        torch.set_num_threads(threads)
    return found


def run_one(args: argparse.Namespace, size: int, arm: str, seed: int, protocol: dict, path: Path) -> dict:
    """Identify (LW-DNA arms) and train one arm for one seed at one size; write its JSON atomically."""
    twin = record_twin(path, args.model, size, seed, protocol) if arm == "lwdna" else None
    if twin is not None:
        print(f"n={size:<6} seed {seed} {arm:16s} same as {twin['same_as']}: recorded, not trained", flush=True)
        return twin
    torch.set_num_threads(args.threads)
    key = (size, args.test_size)
    if key not in _DATA:
        _DATA[key] = load_data(*key, args.data, args.img_size)
    data = _DATA[key]
    start = time.perf_counter()
    model, result = make_arm(arm, data, args, seed, protocol)
    identify_s = time.perf_counter() - start if result is not None else 0.0
    # Channels-last trains these nets faster on a CPU, unless a width hits a kernel defect there
    # (a strided 1x1 conv with 2-7 inputs: wrong weight gradients, or a heap corruption on one thread).
    layout = lw.training_memory_format(model)
    model = model.to(args.device, memory_format=layout)
    example = data["train_x"][:1].to(args.device)
    flops, params = lw.count_flops(model, example), lw.count_params(model)
    checkpoint = path.with_suffix(".partial.pt")
    history = train(model, data, protocol, seed, layout, checkpoint)
    latency = time_against_uniform(model, data, args, protocol) if args.latency_batch else {}
    groups = result.spec["groups"] if result is not None else {}
    run = {
        "model": args.model,
        "train_size": size,
        "arm": arm,
        "seed": seed,
        "budget": args.flops,
        "code": CODE,
        "layout": "channels_last" if layout is torch.channels_last else "contiguous",
        "latency_ms": latency,
        "test_top1": history["test_acc"][-1],
        "train_top1": history["train_top1"],
        "flops": flops,
        "params": params,
        "widths": {k: g["kept"] for k, g in groups.items()},
        "original_widths": {k: g["original"] for k, g in groups.items()},
        "train_s": round(history["train_s"], 2),
        "identify_s": round(identify_s, 3),
        # Warm-up compute as a share of the baseline's training, both in original-model image passes.
        "warmup_pct": round(100 * result.spec["warmup"]["spent"]["original_images"] / (protocol["epochs"] * size), 3)
        if result is not None and "warmup" in result.spec
        else 0.0,
        "settings": {k: result.spec.get(k) for k in DISSIMILATE_DEFAULTS} if result is not None else {},
        "history": history,
        "protocol": protocol,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=1))
    tmp.replace(path)
    checkpoint.unlink(missing_ok=True)
    print(
        f"n={size:<6} seed {seed} {arm:16s} test {run['test_top1']:6.2f} train {run['train_top1']:6.2f} "
        f"flops {flops:,} train {run['train_s']:7.1f} s identify {identify_s:5.2f} s",
        flush=True,
    )
    return run


def device_name(args: argparse.Namespace) -> str:
    if args.device == "cpu":
        return "CPU"
    return f"{args.device} ({torch.cuda.get_device_name(torch.device(args.device))})"


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95% intervals)."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
             2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
             2.045, 2.042]  # fmt: skip
    return table[df - 1] if df <= len(table) else 1.96 + 2.4 / df


def paired(runs: list[dict], sizes: int | Collection[int], arm: str, other: str) -> dict | None:
    """Mean paired difference of test top-1 (arm - other) over the seeds both finished, with a 95% t-interval.

    With several sizes, every (size, seed) both finished is one pair: the pooled estimate.
    """
    sizes = {sizes} if isinstance(sizes, int) else set(sizes)

    def top1(name: str) -> dict[tuple[int, int], float]:
        mine = (r for r in runs if r["train_size"] in sizes and r["arm"] == name)
        return {(r["train_size"], r["seed"]): r["test_top1"] for r in mine}

    mine, theirs = top1(arm), top1(other)
    diffs = [mine[k] - theirs[k] for k in sorted(set(mine) & set(theirs))]
    if len(diffs) < 2:
        return None
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(diffs), "diffs": diffs}


def summarise(runs: list[dict], arms: list[str], sizes: list[int]) -> dict:
    """Per size and arm: accuracies, costs and paired differences from the baseline and from random."""
    summary: dict[str, dict] = {}
    for size in sizes:
        rows = {}
        for arm in arms:
            mine = [r for r in runs if r["train_size"] == size and r["arm"] == arm]
            if not mine:
                continue
            tests = [r["test_top1"] for r in mine]
            timed = [r for r in mine if r.get("latency_ms")]
            rows[arm] = {
                "seeds": len(mine),
                "test_top1_mean": statistics.mean(tests),
                "test_top1_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "train_top1_mean": statistics.mean(r["train_top1"] for r in mine),
                "flops": statistics.mean(r["flops"] for r in mine),
                "params": statistics.mean(r["params"] for r in mine),
                # Each run's own ratio, measured under one load, and the median over seeds: the
                # machine is shared and some runs were paused, so absolute times and time ratios
                # between runs say nothing about the models.
                "identify_pct_of_training": 100.0 * statistics.median(r["identify_s"] / r["train_s"] for r in mine),
                "vs_baseline": paired(runs, size, arm, "baseline") if arm != "baseline" else None,
                "vs_random": paired(runs, size, arm, "random") if arm not in ("baseline", "random") else None,
                "vs_uniform": paired(runs, size, arm, "uniform") if arm not in ("baseline", "uniform") else None,
                # Each run's latency over the same budget's uniform model, timed side by side, median over seeds.
                "latency_vs_uniform": {
                    batch: statistics.median(r["latency_ms"][batch]["vs_uniform"] for r in timed)
                    for batch in (timed[0]["latency_ms"] if timed else {})
                    if all(batch in r["latency_ms"] for r in timed)
                },
            }
        if rows:
            summary[str(size)] = rows
    return summary


def pooled_differences(runs: list[dict], arms: list[str], sizes: list[int]) -> dict:
    """Per arm paired at two or more sizes: its paired differences from the baseline and from random,
    every size's seeds pooled into one unweighted estimate."""
    pooled = {}
    for arm in arms:
        if arm == "baseline":
            continue
        both = [n for n in sizes if paired(runs, n, arm, "baseline")]
        if len(both) < 2:
            continue
        pooled[arm] = {
            "sizes": both,
            "vs_baseline": paired(runs, both, arm, "baseline"),
            "vs_random": paired(runs, both, arm, "random") if arm != "random" else None,
        }
    return pooled


def _interval(p: dict | None) -> str:
    return f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}] (n={p['n']})" if p else "-"


DATA_NAMES = {"fashion-mnist": "Fashion-MNIST"}


def _latencies(ratios: dict | None) -> str:
    return ", ".join(f"{batch}: {ratio:.3f}" for batch, ratio in ratios.items()) if ratios else "-"


def to_markdown(payload: dict) -> str:
    cfg = payload["config"]
    model = cfg["model"] + (f" {json.dumps(cfg['model_kwargs'])}" if cfg.get("model_kwargs") else "")
    lines = [
        f"{model} on {DATA_NAMES.get(cfg.get('data', 'fashion-mnist'), cfg.get('data'))}, stratified training "
        f"subsets, the first {cfg['test_size']} test images; "
        f"batch {cfg['batch_size']}, SGD lr {cfg['lr']} (momentum 0.9, Nesterov, wd {cfg['weight_decay']}) with a "
        f"per-step {cfg.get('schedule', 'cosine')} schedule, augment {cfg['augment']} (pad {cfg.get('crop_pad', 2)}); "
        f"LW-DNA arms: width {cfg['width']}, flops {cfg['flops']}, "
        f"floor {cfg['floor']}, scoring batches of {cfg['score_batch_size']} training images. "
        "Paired differences are test top-1 points, seed by seed, with 95% t-intervals.",
        "",
        "Arms: "
        + "; ".join(
            f"`{a}` {VARIANTS.get(a, 'the registered model') or 'dissimilate defaults'}"
            for a in dict.fromkeys(a for rows in payload["summary"].values() for a in rows)
        ),
        "",
    ]
    for size, rows in payload["summary"].items():
        epochs = payload["protocols"][size]["epochs"]
        lines += [
            f"### {size} training images, {epochs} epochs",
            "",
            "| arm | seeds | test top-1 (mean +- std) | vs baseline (paired) | vs random (paired) "
            "| vs uniform (paired) | final train top-1 | FLOPs (fvcore MACs) | params "
            "| latency / uniform's (batch: median ratio) | identification / training |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = rows.get("baseline", next(iter(rows.values())))
        for arm, s in rows.items():
            lines.append(
                f"| {arm} | {s['seeds']} | {s['test_top1_mean']:.2f} +- {s['test_top1_std']:.2f} "
                f"| {_interval(s['vs_baseline'])} | {_interval(s['vs_random'])} | {_interval(s.get('vs_uniform'))} "
                f"| {s['train_top1_mean']:.2f} | {s['flops']:,.0f} ({s['flops'] / base['flops']:.3f}) "
                f"| {s['params']:,.0f} ({s['params'] / base['params']:.3f}) "
                f"| {_latencies(s.get('latency_vs_uniform'))} | {s['identify_pct_of_training']:.2f}% |"
            )
        lines.append("")
    if payload.get("pooled"):
        lines += [
            "### Every size pooled",
            "",
            "Each (size, seed) pair counts once, unweighted: the sizes' seed-to-seed spreads differ, so this is a "
            "summary of the grid, not a replacement for the per-size rows.",
            "",
            "| arm | sizes | vs baseline (paired) | vs random (paired) |",
            "|---|---|---|---|",
        ]
        for arm, p in payload["pooled"].items():
            sizes = " + ".join(f"{n:,}" for n in p["sizes"])
            lines.append(f"| {arm} | {sizes} | {_interval(p['vs_baseline'])} | {_interval(p['vs_random'])} |")
        lines.append("")
    trained = [run for run in payload["runs"] if not run.get("same_as")]  # a twin repeats its run's time
    hours = sum(run["train_s"] for run in trained) / 3600
    lines += [
        "Identification / training: each run's identification time over its own training time, median over "
        "seeds (wall clock, so it includes the warm-up arms' SGD steps). Times are wall clock on a shared machine "
        "with other work running: they are not compared between runs; the models' costs are the FLOPs column.",
        "",
        f"`{payload['command']}` ({payload['machine']}; {len(payload['runs'])} runs, {len(trained)} of them trained, "
        f"{hours:.1f} h of training wall time in all)",
        "",
    ]
    return "\n".join(lines)


def plot_gain(summary: dict, arms: list[str], path: Path) -> None:
    """The paired gain over the baseline against training-set size, per arm, with 95% intervals."""
    fig, ax = plt.subplots(figsize=(7, 4))
    others = [a for a in arms if a != "baseline"]
    for k, arm in enumerate(others):
        points = [(int(n), rows[arm]["vs_baseline"]) for n, rows in summary.items()
                  if arm in rows and rows[arm]["vs_baseline"]]  # fmt: skip
        if not points:
            continue
        shift = 1 + 0.04 * (k - (len(others) - 1) / 2)  # side by side on the log axis
        xs = [n * shift for n, _ in points]
        ys = [p["mean"] for _, p in points]
        errors = [[p["mean"] - p["low"] for _, p in points], [p["high"] - p["mean"] for _, p in points]]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=arm)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test top-1 minus baseline (points, paired)")
    ax.set_title("Paired gain over the baseline, 95% t-intervals")
    _save(fig, ax, path, legend_size=8)


def plot_widths(runs: list[dict], arms: list[str], path: Path) -> None:
    """Kept / original width of every group, per LW-DNA arm (the smallest size's lowest seed)."""
    fig, ax = plt.subplots(figsize=(9, 4))
    groups: list[str] = []
    for arm in arms:
        mine = sorted((r for r in runs if r["arm"] == arm and r["widths"]), key=lambda r: (r["train_size"], r["seed"]))
        if not mine:
            continue
        run = mine[0]
        groups = groups or list(run["widths"])
        ratios = [run["widths"][g] / run["original_widths"][g] for g in groups]
        ax.plot(
            range(len(groups)), ratios, marker="o", ms=3, label=f"{arm} (n={run['train_size']}, seed {run['seed']})"
        )
    ax.axhline(1, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=90, fontsize=6)
    ax.set_ylabel("kept / original channels")
    _save(fig, ax, path, legend_size=7)


def _save(fig, ax, path: Path, legend_size: int) -> None:
    """Legend (when anything is drawn), grid, tight layout; write and close."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(text: str, name: str, count: int) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if len(values) == 1:
        values *= count
    if len(values) != count:
        raise SystemExit(f"{name}: give one value or one per size ({count}), got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20", help="a timm model name, e.g. cifar_resnet56")
    p.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={},
        help="JSON keyword arguments of the model, e.g. '{\"widths\": [8, 16, 32]}' for a half-width ResNet",
    )
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist, cifar10:DIR, cifar100:DIR or imagefolder:DIR (read from disk, never downloaded; "
        "DIR/train and DIR/val with a folder per class); channels and classes come from the data",
    )
    p.add_argument("--img-size", type=int, default=None, help="imagefolder: resize and centre-crop to this size")
    p.add_argument("--crop-pad", type=int, default=2, help="crop-flip augmentation: zero padding before the crop")
    p.add_argument(
        "--schedule", default="cosine", help="learning rate: cosine, or step:E1,E2 (x0.1 after those epochs)"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a paper row's model, budget and training (README: preset table); give --data KIND:DIR with it",
    )
    p.add_argument("--sizes", default="1000,4000,16000", help="training subset sizes (stratified, fixed)")
    p.add_argument("--epochs", default="100,100,30", help="epochs per size (one value: every size)")
    p.add_argument("--seeds", default="8,8,5", help="paired seeds per size (one value: every size)")
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--evals", type=int, default=4, help="test-set evaluations per run (the last at the end)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--augment", choices=["crop-flip", "none"], default="crop-flip")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, from {ARMS}")
    p.add_argument("--width", type=float, default=2.0)
    p.add_argument("--flops", type=float, default=1.0)
    p.add_argument("--floor", type=float, default=0.4, help="rho: min fraction of each widened group")
    p.add_argument(
        "--round-to", type=int, default=None, help="widths a multiple of this in every arm (default: dissimilate's)"
    )
    p.add_argument("--score-batch-size", type=int, default=128)
    p.add_argument(
        "--latency-batch", type=int, default=128, help="larger batch size each run is timed at beside batch 1 (0: off)"
    )
    p.add_argument("--warmup-batch-size", type=int, default=32, help="batch size of warm-up arms' SGD steps")
    p.add_argument("--quick", action="store_true", help="smoke test: 500 images, 2 epochs, 2 seeds")
    p.add_argument("--estimate", action="store_true", help="print the compute budget of what is left, run nothing")
    p.add_argument("--report", action="store_true", help="rewrite the report from the finished runs, train nothing")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="training processes (default: cores)")
    p.add_argument(
        "--device", default="cpu", help="where to train: cpu, or cuda (then the stem gets _cuda: a study of its own)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--tag", default=None, help="output stem (default hypothesis_regimes[_quick][_<device>])")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument(
        "--combine",
        default=None,
        help="comma-separated study tags to write into one <--tag>.json/.md (flat runs, each with its budget); "
        "trains nothing",
    )
    p.add_argument(
        "--baseline-from",
        default=None,
        help="a runs folder of another study whose baseline runs (same model, training protocol and seeds) are "
        "reported here instead of training the full-width baseline again, e.g. benchmarks/results/"
        "hypothesis_regimes_runs",
    )
    args = p.parse_args(argv)
    if args.preset:
        preset = dict(PRESETS[args.preset])
        kind = preset.pop("data_kind")
        if args.data.partition(":")[0] != kind or not args.data.partition(":")[2]:
            p.error(f"--preset {args.preset} trains on {kind}: give --data {kind}:DIR")
        # A flag given on the command line wins over the preset's value.
        for key, value in preset.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.sizes = [int(v) for v in str(args.sizes).split(",") if v.strip()]
    args.epochs = _ints(str(args.epochs), "--epochs", len(args.sizes))
    args.seeds = _ints(str(args.seeds), "--seeds", len(args.sizes))
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not isinstance(args.model_kwargs, dict):
        p.error(f"--model-kwargs: give a JSON object, got {args.model_kwargs!r}")
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        p.error(f"--arms: unknown {unknown}; choose from {ARMS}")
    return args


def protocol_of(args: argparse.Namespace, index: int) -> dict:
    """Everything that must be equal for two runs at a size to be compared (and for a rerun to skip)."""
    keys = ("model", "test_size", "evals", "batch_size", "lr", "weight_decay", "augment", "width", "flops", "floor",
            "round_to", "score_batch_size")  # fmt: skip
    protocol = {"epochs": args.epochs[index], **{k: getattr(args, k) for k in keys}}
    # Added after the first runs: only warm-up arms read it, so it joins the protocol only when not
    # at its default, and earlier runs keep comparing equal.
    if args.warmup_batch_size != 32:
        protocol["warmup_batch_size"] = args.warmup_batch_size
    if args.model_kwargs:
        protocol["model_kwargs"] = args.model_kwargs
    # Likewise the data options: runs on Fashion-MNIST with 2-pixel crops compare as before.
    defaults = {"data": "fashion-mnist", "img_size": None, "crop_pad": 2, "schedule": "cosine"}
    protocol.update({k: getattr(args, k) for k, v in defaults.items() if getattr(args, k) != v})
    return protocol


def record_twin(path: Path, model: str, size: int, seed: int, protocol: dict) -> dict | None:
    """Record a finished variant run made with exactly dissimilate's defaults as the `lwdna` run
    at `path`: the same dissimilate call with the same seed makes the same model and the same
    training run (seen here: seed 3 at 1,000 images trained twice, test top-1 equal to the digit)."""
    for twin in sorted(path.parent.glob(f"{model}_n{size}_lwdna-*_s{seed}.json")):
        run = json.loads(twin.read_text())
        if same_settings(run["settings"], protocol["round_to"]) and run["protocol"] == protocol:
            record = {**run, "arm": "lwdna", "same_as": run["arm"]}
            path.write_text(json.dumps(record, indent=1))
            return record
    return None


def load_runs(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


# Protocol keys that only the identification reads: a baseline run does not depend on them.
IDENTIFICATION_KEYS = ("width", "flops", "floor", "round_to", "score_batch_size", "warmup_batch_size")


def borrowed_baselines(folder: str | None, protocols: dict[int, dict]) -> list[dict]:
    """The baseline runs of another study whose training protocol at a size equals this one's
    (identification settings aside: a baseline trains the registered model whatever they are)."""
    if folder is None:
        return []
    if not Path(folder).is_dir():
        raise SystemExit(f"--baseline-from {folder}: no such folder of runs")

    def training(protocol: dict) -> dict:
        return {k: v for k, v in protocol.items() if k not in IDENTIFICATION_KEYS}

    return [
        {**run, "borrowed_from": str(folder)}
        for run in load_runs(Path(folder))
        if run["arm"] == "baseline"
        and run["train_size"] in protocols
        and training(run["protocol"]) == training(protocols[run["train_size"]])
    ]


def combine(tags: list[str], out: Path, tag: str) -> dict:
    """One file for several studies (budgets, say): `<tag>.json` with each study's summary and
    every run flat (each with its `budget`), `<tag>.md` their reports one after another."""
    studies = {t: json.loads((out / f"{t}.json").read_text()) for t in tags if (out / f"{t}.json").is_file()}
    missing = sorted(set(tags) - set(studies))
    if missing:
        raise SystemExit(f"--combine: no report yet for {missing} in {out} (run or --report those studies first)")
    payload = {
        "studies": {t: {k: v for k, v in p.items() if k != "runs"} for t, p in studies.items()},
        "runs": [
            {**run, "study": t, "budget": run.get("budget", p["config"]["flops"])}
            for t, p in studies.items()
            for run in p["runs"]
        ],  # fmt: skip
    }
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{tag}.md").write_text("\n".join(f"## {t}\n\n" + (out / f"{t}.md").read_text() for t in studies))
    return payload


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.combine:
        return combine(args.combine.split(","), Path(args.out), args.tag or "hypothesis_combined")
    out = Path(args.out)
    # Results on another device differ in their last digits: they are a study of their own.
    on = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    study = "regimes" if args.data == "fashion-mnist" else args.data.partition(":")[0]
    tag = args.tag or f"hypothesis_{study}{'_quick' if args.quick else ''}{on}"
    folder = out / f"{tag}_runs"
    folder.mkdir(parents=True, exist_ok=True)
    jobs, done = [], 0
    protocols = {size: protocol_of(args, index) for index, size in enumerate(args.sizes)}
    # Size, then seed, then arm: whatever is finished when a session ends is a set of complete pairs.
    for index, size in enumerate(args.sizes):
        protocol = protocol_of(args, index)
        for seed in range(args.seeds[index]):
            for arm in args.arms:
                path = folder / f"{args.model}_n{size}_{arm}_s{seed}.json"
                finished = json.loads(path.read_text()) if path.is_file() else None
                # An `lwdna` run made under other defaults (the default changed since) is replaced
                # by its twin under today's defaults when one has finished, else trained again.
                if arm == "lwdna" and (finished is None or not same_settings(finished["settings"], args.round_to)):
                    finished = record_twin(path, args.model, size, seed, protocol) or finished
                if finished is not None:
                    if arm == "lwdna" and not same_settings(finished["settings"], args.round_to):
                        print(f"{path.name}: made under other defaults {finished['settings']}, run again")
                        jobs.append((size, arm, seed, protocol, path))
                        continue
                    if finished["protocol"] != protocol:
                        raise SystemExit(
                            f"{path} was run with another protocol ({finished['protocol']}); "
                            f"use another --tag or --out for this one"
                        )
                    done += 1
                    continue
                jobs.append((size, arm, seed, protocol, path))
    # The `lwdna` runs of a size go after its other arms, so a variant with dissimilate's
    # defaults has usually finished and is recorded instead of trained again (see `run_one`).
    jobs.sort(key=lambda job: (args.sizes.index(job[0]), job[1] == "lwdna"))
    per_image, source = seconds_per_image(args, load_runs(folder))
    # An `lwdna` run is recorded, not trained, when an arm of the call has dissimilate's defaults.
    twinned = any(arm != "lwdna" and has_defaults(VARIANTS.get(arm)) for arm in args.arms)
    trained = [job for job in jobs if not (job[1] == "lwdna" and twinned)]
    estimate = sum(size * protocol["epochs"] for size, *_, protocol, _ in trained) * per_image
    print(
        f"{done} runs finished, {len(jobs)} to run ({len(trained)} to train): about "
        f"{estimate / 3600 / args.workers:.1f} h on {args.workers} worker(s) (estimate: {per_image * 1e3:.2f} ms "
        f"per training image and worker, {source})",
        flush=True,
    )
    if args.estimate:
        return {}
    start = time.perf_counter()
    # The report names the study's command, not the flag that rewrote it.
    command = shlex.join(["python", "benchmarks/hypothesis.py", *(a for a in argv or [] if a != "--report")])

    def write_summary() -> dict:
        # Every finished run of the study, not only this call's: a partial call never shrinks the report.
        # An `lwdna` run made under other defaults is not today's `lwdna` (reported only after a rerun).
        current = [r for r in load_runs(folder) if r["arm"] != "lwdna" or same_settings(r["settings"], args.round_to)]
        own = {(r["train_size"], r["seed"]) for r in current if r["arm"] == "baseline"}
        current += [
            r for r in borrowed_baselines(args.baseline_from, protocols) if (r["train_size"], r["seed"]) not in own
        ]
        runs = [r for r in current if r["arm"] in ARMS]
        arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
        sizes = sorted({r["train_size"] for r in runs})
        summary = summarise(runs, arms, sizes)
        payload = {
            "command": command,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {device_name(args)}, "
            f"{args.workers} worker(s) x {args.threads} thread(s)",
            "wall_s": round(time.perf_counter() - start, 1),
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "tag", "estimate", "report")},
            "protocols": {str(r["train_size"]): r["protocol"] for r in runs},
            "summary": summary,
            "pooled": pooled_differences(runs, arms, sizes),
            "runs": [{k: v for k, v in r.items() if k not in ("history", "protocol")} for r in runs],
        }
        (out / f"{tag}.json").write_text(json.dumps(payload, indent=1))
        (out / f"{tag}.md").write_text(to_markdown(payload))
        plot_gain(summary, arms, out / f"{tag}_gain.png")
        plot_widths(runs, arms, out / f"{tag}_widths.png")
        return payload

    if args.report:
        jobs = []
    if args.workers == 1:
        for job in jobs:
            run_one(args, *job)
            write_summary()
    else:
        # One single-threaded process per core trains these small nets faster than one process
        # with two threads; arms of a seed run side by side, so every arm sees the same load.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            for future in as_completed([pool.submit(run_one, args, *job) for job in jobs]):
                future.result()
                write_summary()
    payload = write_summary()
    print(to_markdown(payload))
    return payload


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
