"""What the gate pass's float64 costs on a CPU, and what depthwise convolutions in float32 save.

The gate pass (the `gate` criterion's one forward and backward) runs in float64 on a CPU so that
scores do not depend on the thread count; depthwise convolutions run in float32 inside it (see
`lwdna_plugin.gates`). For each model, at its timm input size on real mnist5k batches, the pass
is timed side by side, interleaved, in one process: all in float64 (as before) and with
depthwise convolutions in float32 (today). The two passes' scores are compared by the least rank
correlation over groups (the planner uses their order) and the largest difference relative to
each group's largest score (float32 rounding, grown where a gate's gradient sums terms that cancel).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/gate_precision.py [--models ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import timm  # noqa: E402
import torch  # noqa: E402

import lwdna_plugin as lw  # noqa: E402
from lwdna_plugin import gates  # noqa: E402
from lwdna_plugin.adapter import classification_loss  # noqa: E402

MODELS = {"mobilenetv2_100": (224, 8), "xception41p": (299, 4), "convmixer_768_32": (224, 2), "resnet18": (224, 8)}
DEPTHWISE_FLOAT32 = gates._depthwise_in_float32


def time_model(name: str, size: int, batch: int, repeats: int) -> dict:
    """Median seconds of the gate pass in both precisions, and how far apart their scores are."""
    graph = lw.GroupGraph(timm.create_model(name, num_classes=10), torch.zeros(1, 3, size, size))
    batches = lw.load_batches("mnist5k", batches=1, batch_size=batch, img_size=size)
    arms = {"float64": lambda model: [], "depthwise_float32": DEPTHWISE_FLOAT32}
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    scores = {}
    try:
        for _ in range(repeats):
            for arm, hooks in arms.items():
                gates._depthwise_in_float32 = hooks
                start = time.perf_counter()
                scores[arm] = lw.score_channels(graph, "gate", batches, classification_loss)
                seconds[arm].append(time.perf_counter() - start)
    finally:
        gates._depthwise_in_float32 = DEPTHWISE_FLOAT32
    wide, narrow = scores["float64"], scores["depthwise_float32"]
    diff = max(float(((wide[k] - narrow[k]).abs() / wide[k].abs().max()).max()) for k in wide)
    rank = min(_rank_correlation(wide[k], narrow[k]) for k in wide if wide[k].numel() > 1)
    medians = {arm: statistics.median(s) for arm, s in seconds.items()}
    return {
        "model": name,
        "input": size,
        "batch": batch,
        "seconds": medians,
        "speedup": medians["float64"] / medians["depthwise_float32"],
        "max_relative_score_difference": diff,
        "min_rank_correlation": rank,
    }


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors."""
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(
        "| model | input x batch | all float64 (s) | depthwise in float32 (s) | speed-up "
        "| least rank correlation | max score difference |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        row = time_model(name, *MODELS[name], args.repeats)
        rows.append(row)
        s = row["seconds"]
        print(
            f"| {name} | {row['input']} x {row['batch']} | {s['float64']:.2f} | {s['depthwise_float32']:.2f} "
            f"| {row['speedup']:.2f}x | {row['min_rank_correlation']:.4f} "
            f"| {row['max_relative_score_difference']:.1e} |",
            flush=True,
        )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"command": "python benchmarks/gate_precision.py", "machine": machine, "rows": rows}
    (args.out / "gate_precision.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\n{machine}; medians of {args.repeats} interleaved repeats")
    return rows


if __name__ == "__main__":
    main()
