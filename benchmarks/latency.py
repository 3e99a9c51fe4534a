"""Deployed CPU latency: the baseline and its LW-DNA versions, timed side by side in one process.

For each model at timm's default input size (`cifar_resnet20`: one channel at 28 px, batch 1 and
128): the baseline, and LW-DNA models found at flops 1.0 (gate scores on mnist5k batches):
`default` is `dissimilate`'s defaults (today: the footprint limits), `flops_only` plans on FLOPs
alone (`footprint=None`, the default before), `round_to_8` the default with widths rounded to
8, and `latency` the measured latency budget (`latency=LatencyBudget(1.0, batch sizes)`,
round_to 8: layers timed on this machine). `--variants` picks them. Each repeat times one forward
pass of every variant in turn (eval mode, no grad), so drift on a shared machine hits all of
them alike; at least `--repeats` repeats and `--seconds` of timing per model and batch size.
The table reports medians, each LW-DNA median over the baseline's, and a 95% bootstrap
interval of that ratio (repeats resampled whole). A copy of the baseline is timed beside them
as a control: its ratio is the timing noise of the run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/latency.py [--models resnet50 ...] [--repeats 15] [--seconds 30]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import lwdna_plugin as lw  # noqa: E402
from lwdna_plugin.latency import ratio_interval, time_samples  # noqa: E402

MODELS = ["resnet50", "mobilenetv2_100", "convnext_atto", "efficientnet_b0", "cifar_resnet20"]
# Models off timm's 3-channel defaults: input channels, size, classes and the batch sizes timed.
SMALL = {"cifar_resnet20": {"in_chans": 1, "size": 28, "num_classes": 10, "batch_sizes": [1, 128]}}
ALL_VARIANTS = {
    "default": ("LW-DNA default", {}),
    "flops_only": ("LW-DNA FLOPs only (footprint=None)", {"footprint": None}),
    "round_to_8": ("LW-DNA default, round_to 8", {"round_to": 8}),
    "latency": ("LW-DNA latency budget", {"round_to": 8, "latency": "budget"}),
}
VARIANTS = dict(ALL_VARIANTS)


def variants(
    name: str, size: int, batch_sizes: list[int], score_batches: int, score_batch_size: int
) -> dict[str, dict]:
    """The baseline and the LW-DNA variants, each with its fvcore FLOPs."""
    small = SMALL.get(name, {})
    channels = small.get("in_chans", 3)
    kwargs = {"num_classes": small.get("num_classes", 1000), **({"in_chans": 1} if channels == 1 else {})}
    example = torch.zeros(1, channels, size, size)
    torch.manual_seed(0)
    baseline = timm.create_model(name, pretrained=False, **kwargs)
    found = {"baseline": {"model": baseline}, "control": {"model": copy.deepcopy(baseline)}}
    data = lw.load_batches(
        "mnist5k", batches=score_batches, batch_size=score_batch_size, img_size=size, in_chans=channels
    )
    for key, (_, options) in VARIANTS.items():
        if options.get("latency"):
            options = {**options, "latency": lw.LatencyBudget(1.0, tuple(batch_sizes))}
        result = lw.dissimilate(name, flops=1.0, data=data, model_kwargs=kwargs, **options)
        found[key] = {
            "model": result.model,
            "seconds": sum(result.timings.values()),
            "own_ratios": result.spec["achieved"].get("latency_ratios", {}),
            "footprint": result.spec["achieved"].get("footprint", {}),
        }
    for entry in found.values():
        entry["model"].eval()
        entry["flops"] = lw.count_flops(entry["model"], example)
    return found


def measure(
    name: str, batch_sizes: list[int], repeats: int, seconds: float, score_batches: int, score_batch_size: int
) -> list[dict]:
    small = SMALL.get(name, {})
    size = small.get("size") or timm.get_pretrained_cfg(name).input_size[-1]
    batch_sizes = small.get("batch_sizes", batch_sizes)
    found = variants(name, size, batch_sizes, score_batches, score_batch_size)
    shape = (small.get("in_chans", 3), size, size)
    rows = []
    for batch in batch_sizes:
        # Interleaved repeat by repeat; eval mode, no grad (the package's own timer).
        samples = time_samples([entry["model"] for entry in found.values()], shape, batch, repeats, seconds)
        medians = dict(zip(found, np.median(samples, axis=0).tolist(), strict=True))
        intervals = dict(zip(found, ratio_interval(samples).round(3).tolist(), strict=True))
        base = medians["baseline"]
        row = {"model": name, "input": size, "batch": batch, "repeats": len(samples)}
        row["baseline_ms"] = round(1000 * base, 2)
        row["control_latency_ratio"] = round(medians["control"] / base, 3)
        row["control_latency_interval"] = intervals["control"]
        for key in VARIANTS:
            median = medians[key]
            row[f"{key}_ms"] = round(1000 * median, 2)
            row[f"{key}_latency_ratio"] = round(median / base, 3)
            row[f"{key}_latency_interval"] = intervals[key]
            row[f"{key}_flops_ratio"] = round(found[key]["flops"] / found["baseline"]["flops"], 4)
            row[f"{key}_dissimilate_s"] = round(found[key]["seconds"], 1)
            row[f"{key}_footprint"] = found[key]["footprint"]
            if str(batch) in found[key]["own_ratios"]:
                # What dissimilate's own side-by-side check measured for the model it returned.
                row[f"{key}_own_latency_ratio"] = found[key]["own_ratios"][str(batch)]
        rows.append(row)
        print(row, flush=True)
    return rows


def _ratio(row: dict, key: str) -> str:
    low, high = row[f"{key}_latency_interval"]
    return f"{row[f'{key}_latency_ratio']:.3f}x [{low:.2f}, {high:.2f}]"


def to_markdown(rows: list[dict], meta: dict) -> str:
    labels = [label for label, _ in VARIANTS.values()]
    lines = [
        "| model | batch | repeats | baseline ms | copy of baseline (noise) | "
        + " | ".join(f"{x}: ms (latency [95%], FLOPs vs baseline)" for x in labels)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(VARIANTS),
    ]
    for r in rows:
        cells = [f"{r[f'{k}_ms']} ({_ratio(r, k)}, {r[f'{k}_flops_ratio']:.4f})" for k in VARIANTS]
        head = f"| {r['model']} | {r['batch']} | {r['repeats']} | {r['baseline_ms']} | {_ratio(r, 'control')} | "
        lines.append(head + " | ".join(cells) + " |")
    lines.append("")
    for key, label in zip(VARIANTS, labels, strict=True):
        met = sum(r[f"{key}_latency_ratio"] <= 1.0 for r in rows)
        within = sum(r[f"{key}_latency_interval"][0] <= 1.0 for r in rows)
        above = len(rows) - within
        flops = min(r[f"{key}_flops_ratio"] for r in rows)
        lines.append(
            f"{label}: median at or below the baseline's latency in {met} of {len(rows)} cases, at or below it "
            f"within the 95% interval in {within}, above it beyond the interval in {above}; FLOPs at least "
            f"{flops:.4f} of the baseline's."
        )
    noise = max(abs(r["control_latency_ratio"] - 1) for r in rows)
    covered = sum(low <= 1.0 <= high for low, high in (r["control_latency_interval"] for r in rows))
    lines.append(
        f"A copy of the baseline, timed the same way, read up to {noise:.1%} off the baseline; "
        f"its 95% interval held 1.00 in {covered} of {len(rows)} cases."
    )
    lines += [
        "",
        f"`{meta['command']}` on {meta['machine']}; medians of at least {meta['repeats']} interleaved repeats "
        f"and {meta['seconds']} s of timing per model and batch size.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument(
        "--variants", nargs="+", default=["default", "flops_only"], choices=list(ALL_VARIANTS), help="LW-DNA variants"
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=30.0, help="least seconds of timing per model and batch size")
    parser.add_argument("--score-batches", type=int, default=2)
    parser.add_argument("--score-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads for everything (default: torch's own choice)")
    parser.add_argument("--tag", default="latency", help="output file stem")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    VARIANTS.clear()
    VARIANTS.update({k: ALL_VARIANTS[k] for k in args.variants})
    if args.threads:
        torch.set_num_threads(args.threads)
    timing = (args.batch_sizes, args.repeats, args.seconds, args.score_batches, args.score_batch_size)
    rows = [row for name in args.models for row in measure(name, *timing)]
    meta = {
        "command": "python benchmarks/latency.py" + (" " + " ".join(argv) if argv else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU",
        "repeats": args.repeats,
        "seconds": args.seconds,
        "flop_convention": lw.FLOP_CONVENTION,
    }
    table = to_markdown(rows, meta)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / f"{args.tag}.md").write_text(table)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
