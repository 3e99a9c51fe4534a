"""What identification costs: seconds per stage, and the total in training steps of the original.

For each model at timm's default input size: dissimilate (width 2, flops 1.0, gate scores on
real mnist5k batches), record each stage's seconds, the search's FLOP error, and, timed in
the same process, one SGD training step of the ORIGINAL model (forward, backward, update at
batch 32), so the cost reads as a ratio that does not depend on the machine's speed.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/cost.py [--models resnet18 ...] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lwdna_plugin as lw  # noqa: E402

MODELS = ["resnet18", "resnet50", "mobilenetv2_100", "convnext_atto"]
STAGES = ["graph", "widen", "score", "search", "shrink", "verify"]


def train_step_seconds(name: str, size: int, batch: int = 32, repeats: int = 3) -> float:
    """Median seconds of one forward, backward and SGD step of the original model."""
    model = timm.create_model(name, pretrained=False, num_classes=10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def run(name: str, batches: int, batch_size: int) -> dict:
    size = timm.get_pretrained_cfg(name).input_size[-1]
    data = lw.load_batches("mnist5k", batches=batches, batch_size=batch_size, img_size=size)
    start = time.perf_counter()
    result = lw.dissimilate(name, width=2.0, flops=1.0, data=data, model_kwargs={"num_classes": 10})
    total = time.perf_counter() - start
    step = train_step_seconds(name, size)
    flops = result.report.flops
    return {
        "model": name,
        "input": size,
        **{f"{s}_s": round(result.timings[s], 3) for s in STAGES},
        "total_s": round(total, 2),
        "search_flop_error": round(abs(flops["predicted"] - flops["lwdna"]) / flops["lwdna"], 6),
        "achieved_over_target": round(flops["lwdna"] / flops["target"], 5),
        "train_step_s": round(step, 3),
        "total_in_train_steps": round(total / step, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rows = [run(name, args.batches, args.batch_size) for name in args.models]
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/cost.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" if not isinstance(v, list) else f"--{k} {' '.join(v)}"
            for k, v in vars(args).items()
            if k != "out"
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "scoring": f"{args.batches} batches of {args.batch_size} mnist5k images at the model's input size",
        "flop_convention": lw.FLOP_CONVENTION,
    }
    (out / "cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "cost.md").write_text(f"{table}\n\n`{meta['command']}` on {meta['machine']}; {meta['scoring']}.\n")


if __name__ == "__main__":
    main()
