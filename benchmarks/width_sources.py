"""Do the widths come from the data? A control for the identification variants of `hypothesis.py`.

Each variant identifies widths, exactly as the hypothesis study does (same model, subset, scoring
batches, budget and floors), from three sources over several seeds:
- real: the study's scoring batches;
- shuffled: the same images with their labels permuted;
- noise: Gaussian images (the study standardises its images, so the same mean and spread) with the real labels.
A warm-up variant also trains on its source's batches before scoring.
Widths are kept / original channels per group; the distance between two identifications is the
mean over groups of |width difference|. If real-data widths are as far from each other (seed to
seed) as they are from shuffled-label or noise widths, the data does not choose the widths: the
architecture and the initialisation do. The `random` arm (random scores) is the reference for
how different widths can be at all under the same budget and floors.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/width_sources.py              # 4 seeds, a few minutes on 2 cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/width_sources.py --quick      # CI smoke test

Writes `<out>/width_sources.{json,md}`. Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import lwdna_plugin as lw  # noqa: E402


def _study():
    # benchmarks/hypothesis.py by path: `import hypothesis` may find the property-testing package.
    spec = importlib.util.spec_from_file_location("hypothesis_study", Path(__file__).with_name("hypothesis.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hypothesis = _study()

SOURCES = ("real", "shuffled", "noise")


def source_data(data: dict[str, torch.Tensor], source: str, seed: int) -> dict[str, torch.Tensor]:
    """The study's training subset as `source` gives it: unchanged, labels permuted, or images replaced by noise."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    if source == "shuffled":
        return {**data, "train_y": data["train_y"][torch.randperm(len(data["train_y"]), generator=generator)]}
    if source == "noise":
        return {**data, "train_x": torch.randn(data["train_x"].shape, generator=generator)}
    return data


def widths_of(result: lw.Result) -> dict[str, float]:
    return {key: g["kept"] / g["original"] for key, g in sorted(result.spec["groups"].items())}


def distance(a: dict[str, float], b: dict[str, float]) -> float:
    """Mean |width difference| over the groups, in fractions of the original width."""
    return statistics.fmean(abs(a[k] - b[k]) for k in a)


def compare(runs: dict[tuple[str, int], dict[str, float]], first: str, second: str, seeds: int) -> float:
    """Mean distance between identifications from `first` and `second`, over distinct seed pairs
    (for one source with itself: each pair of different seeds once)."""
    pairs = [(s, t) for s, t in itertools.product(range(seeds), repeat=2) if (s < t if first == second else s != t)]
    return statistics.fmean(distance(runs[(first, s)], runs[(second, t)]) for s, t in pairs)


def summarise(runs: dict[str, dict[tuple[str, int], dict[str, float]]], seeds: int) -> dict[str, dict[str, float]]:
    summary = {}
    for arm, found in runs.items():
        row = {"seed_to_seed": compare(found, "real", "real", seeds)}
        for source in SOURCES[1:]:
            row[f"vs_{source}"] = compare(found, "real", source, seeds)
        if "random" in runs and arm != "random":
            row["vs_random"] = statistics.fmean(
                distance(found[("real", s)], runs["random"][("real", t)]) for s in range(seeds) for t in range(seeds)
            )
        row["mean_widths"] = {
            k: round(statistics.fmean(found[("real", s)][k] for s in range(seeds)), 3) for k in found[("real", 0)]
        }
        summary[arm] = row
    return summary


def to_markdown(payload: dict) -> str:
    config = payload["config"]
    lines = [
        f"{config['model']} on {config['size']} Fashion-MNIST training images (the hypothesis study's subset), "
        f"{config['seeds']} seeds; width {config['width']}, flops {config['flops']}, floor {config['floor']}. "
        "Mean |width difference| between two identifications, in fractions of the original width "
        "(mean over groups). `real` = the study's scoring batches; `shuffled` = same images, labels permuted; "
        "`noise` = Gaussian images, real labels. Different seeds in every comparison.",
        "",
        "| arm | real vs real (seed to seed) | real vs shuffled labels | real vs noise images | real vs random |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, row in payload["summary"].items():
        random = f"{row['vs_random']:.3f}" if "vs_random" in row else "-"
        lines.append(
            f"| {arm} | {row['seed_to_seed']:.3f} | {row['vs_shuffled']:.3f} | {row['vs_noise']:.3f} | {random} |"
        )
    lines += ["", f"`{payload['command']}` ({payload['machine']}; {payload['wall_s'] / 60:.1f} min)", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={},
        help="JSON keyword arguments of the model, as in hypothesis.py",
    )
    p.add_argument("--size", type=int, default=1000, help="the training subset the scoring batches come from")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--arms", default="random,lwdna-sum,lwdna-mean,lwdna-flops,lwdna-inits,lwdna-warmup")
    p.add_argument("--width", type=float, default=2.0)
    p.add_argument("--flops", type=float, default=1.0)
    p.add_argument("--floor", type=float, default=0.4)
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--score-batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=100, help="the study's epochs at --size: sets a warm-up's steps")
    p.add_argument("--lr", type=float, default=0.1, help="the study's learning rate, also the warm-up's")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, random and lwdna-sum")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.arms = 2, "random,lwdna-sum"
    if not isinstance(args.model_kwargs, dict):
        p.error(f"--model-kwargs: give a JSON object, got {args.model_kwargs!r}")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(hypothesis.VARIANTS))
    if unknown or args.seeds < 2:
        p.error(f"--arms from {sorted(hypothesis.VARIANTS)} (unknown: {unknown}); --seeds at least 2")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    data = hypothesis.load_data(args.size, 10)
    # make_arm reads the study's settings from these two: the same identification, batch for batch.
    study = argparse.Namespace(warmup_batch_size=32, **vars(args))
    # A warm-up arm trains on its source's batches (labels permuted or noise images included).
    protocol = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay}
    runs: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
    for arm in args.arms:
        runs[arm] = {}
        for source, seed in itertools.product(SOURCES, range(args.seeds)):
            _, result = hypothesis.make_arm(arm, source_data(data, source, seed), study, seed, protocol)
            runs[arm][(source, seed)] = widths_of(result)
        print(f"{arm}: {args.seeds} seeds x {len(SOURCES)} sources identified", flush=True)
    command = "python benchmarks/width_sources.py" + (" " + " ".join(argv) if argv else "")
    payload = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "wall_s": round(time.perf_counter() - start, 1),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "summary": summarise(runs, args.seeds),
        "runs": [
            {"arm": arm, "source": source, "seed": seed, "widths": widths}
            for arm, found in runs.items()
            for (source, seed), widths in found.items()
        ],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "width_sources_quick" if args.quick else "width_sources"
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{stem}.md").write_text(to_markdown(payload))
    print(to_markdown(payload))
    return payload


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
