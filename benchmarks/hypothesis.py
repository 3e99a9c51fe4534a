"""Does LW-DNA beat its baseline under one training protocol? Fashion-MNIST, CIFAR-style ResNets.

Every arm is trained by the same `train` function with the same epochs, batch size, SGD with a
per-step cosine schedule, augmentation, data order and seeds:
- baseline: the model as registered (`cifar_resnet20`, fresh initialisation);
- lwdna: `lw.dissimilate(width=2, flops=1.0)` with gate-gradient scores on `--score-batches`
  batches of the training subset at initialisation; the found model, freshly initialised;
- random: the same budget and floors with `random` scores (does the criterion matter?).
Identification (the whole `dissimilate` call) is timed and reported against training time.
Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/hypothesis.py                 # default: ResNet-20, < 1 h here
    OMP_WAIT_POLICY=PASSIVE python benchmarks/hypothesis.py --quick         # smoke test, a few minutes
    OMP_WAIT_POLICY=PASSIVE python benchmarks/hypothesis.py --model cifar_resnet56 --epochs 30 --train-size 60000
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lwdna_plugin as lw  # noqa: E402

ARMS = ("baseline", "lwdna", "random")
QUICK = {"train_size": 2000, "test_size": 1000, "epochs": 2, "seeds": 2, "score_batch_size": 64}


def load_data(train_size: int, test_size: int) -> dict[str, torch.Tensor]:
    """A fixed, seed-independent training subset and test subset, standardised by the subset's statistics."""
    train_x, train_y = lw.load_fashion_mnist("train")
    test_x, test_y = lw.load_fashion_mnist("test")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))[:train_size]
    train_x, train_y = train_x[order].float() / 255.0, train_y[order]
    test_x, test_y = test_x[:test_size].float() / 255.0, test_y[:test_size]
    mean, std = train_x.mean(), train_x.std()
    return {
        "train_x": (train_x - mean) / std,
        "train_y": train_y,
        "test_x": (test_x - mean) / std,
        "test_y": test_y,
    }


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
    model.eval()
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(labels), batch_size)
    )
    return 100.0 * correct / len(labels)


def train(model: nn.Module, data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int) -> dict:
    """The one training protocol every arm goes through; returns per-epoch curves and seconds."""
    generator = torch.Generator().manual_seed(1000 + seed)
    steps_per_epoch = math.ceil(len(data["train_y"]) / args.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)
    history = {"train_acc": [], "test_acc": [], "train_loss": [], "epoch_s": []}
    for _ in range(args.epochs):
        model.train()
        start, correct, loss_sum = time.perf_counter(), 0, 0.0
        order = torch.randperm(len(data["train_y"]), generator=generator)
        for i in range(0, len(order), args.batch_size):
            index = order[i : i + args.batch_size]
            images, labels = data["train_x"][index], data["train_y"][index]
            if args.augment == "crop-flip":
                images = augment(images, generator)
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += (logits.argmax(1) == labels).sum().item()
            loss_sum += loss.item() * len(index)
        history["epoch_s"].append(time.perf_counter() - start)
        history["train_acc"].append(100.0 * correct / len(order))
        history["train_loss"].append(loss_sum / len(order))
        history["test_acc"].append(accuracy(model, data["test_x"], data["test_y"]))
    if not all(math.isfinite(v) for v in history["train_loss"]):
        raise RuntimeError(f"training diverged: losses {history['train_loss']}")
    return history


def make_arm(arm: str, data: dict[str, torch.Tensor], args: argparse.Namespace, seed: int):
    """The arm's freshly initialised model, and its identification result (None for the baseline)."""
    kwargs = {"num_classes": 10, "in_chans": 1}
    if arm == "baseline":
        torch.manual_seed(seed)
        return timm.create_model(args.model, pretrained=False, **kwargs), None, 0.0
    shuffle = torch.randperm(len(data["train_y"]), generator=torch.Generator().manual_seed(seed))
    size = args.score_batch_size
    batches = [
        (data["train_x"][shuffle[i * size : (i + 1) * size]], data["train_y"][shuffle[i * size : (i + 1) * size]])
        for i in range(args.score_batches)
    ]
    start = time.perf_counter()
    result = lw.dissimilate(
        args.model,
        width=args.width,
        flops=args.flops,
        data=batches,
        batches=args.score_batches,
        criterion=args.criterion if arm == "lwdna" else "random",
        aggregate=args.aggregate,
        floors=lw.Floors(rho=args.floor),
        round_to=args.round_to,
        seed=seed,
        model_kwargs=kwargs,
    )
    return result.model, result, time.perf_counter() - start


def summarise(runs: list[dict], arms: list[str]) -> dict[str, dict]:
    summary = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        finals = [r["history"]["test_acc"][-1] for r in mine]
        train_s = [sum(r["history"]["epoch_s"]) for r in mine]
        summary[arm] = {
            "test_top1_mean": statistics.mean(finals),
            "test_top1_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "test_top1": finals,
            "best_test_top1_mean": statistics.mean(max(r["history"]["test_acc"]) for r in mine),
            "train_top1_mean": statistics.mean(r["history"]["train_acc"][-1] for r in mine),
            "flops": mine[0]["flops"],
            "params": mine[0]["params"],
            "train_s_mean": statistics.mean(train_s),
            "identify_s_mean": statistics.mean(r["identify_s"] for r in mine),
            "identify_pct_of_training": 100.0
            * statistics.mean(r["identify_s"] for r in mine)
            / statistics.mean(train_s),
            "widths": mine[0]["widths"],
        }
    return summary


def verdict(summary: dict[str, dict], seeds: int) -> str:
    if "baseline" not in summary or "lwdna" not in summary or seeds < 2:
        return "not enough arms or seeds for a comparison"
    base, ours = summary["baseline"], summary["lwdna"]
    diff = ours["test_top1_mean"] - base["test_top1_mean"]
    error = math.sqrt((ours["test_top1_std"] ** 2 + base["test_top1_std"] ** 2) / seeds)
    ratio = abs(diff) / error if error else math.inf
    if ratio < 2:
        return f"LW-DNA - baseline = {diff:+.2f} points, {ratio:.1f} standard errors: within seed noise, no win shown"
    word = "better" if diff > 0 else "worse"
    return f"LW-DNA - baseline = {diff:+.2f} points, {ratio:.1f} standard errors: LW-DNA is {word} on this protocol"


def to_markdown(payload: dict) -> str:
    cfg, summary = payload["config"], payload["summary"]
    base_flops = summary.get("baseline", next(iter(summary.values())))["flops"]
    base_params = summary.get("baseline", next(iter(summary.values())))["params"]
    base_epoch = summary.get("baseline", next(iter(summary.values())))["train_s_mean"]
    lines = [
        f"{cfg['model']} on Fashion-MNIST: {cfg['train_size']} training / {cfg['test_size']} test images, "
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, SGD lr {cfg['lr']} cosine, augment {cfg['augment']}, "
        f"seeds {cfg['seeds']}; width {cfg['width']}, flops {cfg['flops']}, floor {cfg['floor']}, "
        f"{cfg['score_batches']}x{cfg['score_batch_size']} scoring images, aggregate {cfg['aggregate']}",
        "",
        "| arm | test top-1 (mean +- std) | best-epoch test top-1 | final train top-1 | FLOPs (fvcore MACs) "
        "| params | training time vs baseline | identification / training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(
            f"| {arm} | {s['test_top1_mean']:.2f} +- {s['test_top1_std']:.2f} | {s['best_test_top1_mean']:.2f} "
            f"| {s['train_top1_mean']:.2f} | {s['flops']:,} ({s['flops'] / base_flops:.3f}) "
            f"| {s['params']:,} ({s['params'] / base_params:.3f}) | {s['train_s_mean'] / base_epoch:.2f}x "
            f"| {s['identify_pct_of_training']:.2f}% |"
        )
    lines += [
        "",
        f"Verdict: {payload['verdict']}",
        "",
        f"`{payload['command']}` ({payload['machine']}; {payload['wall_s'] / 60:.1f} min wall)",
        "",
    ]
    return "\n".join(lines)


def plot_curves(runs: list[dict], arms: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"baseline": "tab:blue", "lwdna": "tab:red", "random": "tab:gray"}
    for arm in arms:
        mine = [r["history"] for r in runs if r["arm"] == arm]
        epochs = range(1, len(mine[0]["test_acc"]) + 1)
        for key, style in (("train_acc", "--"), ("test_acc", "-")):
            mean = [statistics.mean(h[key][e] for h in mine) for e in range(len(epochs))]
            ax.plot(epochs, mean, style, color=colours.get(arm), label=f"{arm} {key.split('_')[0]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%), mean over seeds")
    ax.legend(ncol=2, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20", help="a timm model name, e.g. cifar_resnet56")
    p.add_argument("--train-size", type=int, default=10000, help="training subset size (60000 = all)")
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--augment", choices=["crop-flip", "none"], default="crop-flip")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {ARMS}")
    p.add_argument("--width", type=float, default=2.0)
    p.add_argument("--flops", type=float, default=1.0)
    p.add_argument("--floor", type=float, default=0.4, help="rho: min fraction of each widened group")
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--criterion", default="gate", help="criterion of the lwdna arm")
    p.add_argument("--aggregate", default="sum", choices=["sum", "mean", "norm"])
    p.add_argument("--score-batches", type=int, default=2)
    p.add_argument("--score-batch-size", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="smoke test: 2,000 images, 2 epochs, 2 seeds")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="training processes (default: cores)")
    p.add_argument("--tag", default=None, help="output file stem (default hypothesis_<model>[_quick])")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.threads = max(1, (os.cpu_count() or 1) // args.workers)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        p.error(f"--arms: unknown {unknown}; choose from {ARMS}")
    return args


_DATA: dict[tuple[int, int], dict[str, torch.Tensor]] = {}


def run_one(args: argparse.Namespace, seed: int, arm: str, stem: str) -> dict:
    """Identify (for LW-DNA arms) and train one arm for one seed; runs inside a worker process."""
    torch.set_num_threads(args.threads)
    key = (args.train_size, args.test_size)
    if key not in _DATA:
        _DATA[key] = load_data(*key)
    data = _DATA[key]
    model, result, identify_s = make_arm(arm, data, args, seed)
    model = model.to(memory_format=torch.channels_last)
    example = data["train_x"][:1]
    flops, params = lw.count_flops(model, example), lw.count_params(model)
    if result is not None and arm == "lwdna" and seed == 0:
        out = Path(args.out)
        result.save(out / f"{stem}_lwdna")
        result.report.plot(out / f"{stem}_channels.png")
    history = train(model, data, args, seed)
    print(
        f"seed {seed} {arm:8s} test {history['test_acc'][-1]:6.2f} train {history['train_acc'][-1]:6.2f} "
        f"flops {flops:,} train {sum(history['epoch_s']):7.1f} s identify {identify_s:5.2f} s",
        flush=True,
    )
    return {
        "arm": arm,
        "seed": seed,
        "identify_s": identify_s,
        "flops": flops,
        "params": params,
        "widths": {k: v["kept"] for k, v in result.spec["groups"].items()} if result else {},
        "history": history,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"hypothesis_{args.model}{'_quick' if args.quick else ''}"
    jobs = [(seed, arm) for seed in range(args.seeds) for arm in args.arms]
    start = time.perf_counter()
    if args.workers == 1:
        runs = [run_one(args, seed, arm, stem) for seed, arm in jobs]
    else:
        # One single-threaded process per core trains these small nets faster than one process
        # with two threads; arms are interleaved so that every arm sees the same machine load.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            runs = list(pool.map(run_one, [args] * len(jobs), *zip(*jobs, strict=True), [stem] * len(jobs)))
    summary = summarise(runs, args.arms)
    payload = {
        "command": "python benchmarks/hypothesis.py" + (" " + " ".join(argv) if argv else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU, "
        f"{args.workers} worker(s) x {args.threads} thread(s)",
        "wall_s": round(time.perf_counter() - start, 1),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "tag")},
        "summary": summary,
        "verdict": verdict(summary, args.seeds),
        "runs": runs,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{stem}.md").write_text(to_markdown(payload))
    plot_curves(runs, args.arms, out / f"{stem}_curves.png")
    print(to_markdown(payload))
    return payload


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
