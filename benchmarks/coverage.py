"""Coverage: the whole pipeline on every architecture in ../shared/zoo.txt, one subprocess each.

For each model (pretrained=False, timm's default input size): dissimilate (width 2, flops 1.0,
gate scores on real mnist5k batches), save the spec, rebuild it with `lw.build`, run a forward
pass and check fvcore FLOPs against the target. Side by side, torch-pruning's own 50% global
magnitude pruning followed by a forward pass, the anchor we compare with.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/coverage.py [--models resnet18 ...] [--timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "zoo.txt"
STEPS = ["dissimilate", "save", "build", "forward", "flops"]


def read_zoo(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def _error(err: BaseException) -> str:
    frame = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200]} ({Path(frame.filename).name}:{frame.lineno})"


def worker(name: str, batches: int, batch_size: int) -> dict:
    """Run one model in this process; return what passed."""
    import timm
    import torch

    import lwdna_plugin as lw

    row: dict = {"model": name, **{s: False for s in STEPS}}
    start = time.perf_counter()
    try:
        size = timm.get_pretrained_cfg(name).input_size
        row["input"] = size[-1]
        data = lw.load_batches("mnist5k", batches=batches, batch_size=batch_size, img_size=size[-1])
        result = lw.dissimilate(name, width=2.0, flops=1.0, data=data, model_kwargs={"num_classes": 10})
        row["dissimilate"] = True
        row["fixed_groups"] = len(result.report.fixed_groups)
        row["groups"] = len(result.spec["groups"])
        with tempfile.TemporaryDirectory() as tmp:
            result.save(tmp)
            row["save"] = True
            model = lw.build(Path(tmp) / "spec.json").eval()
        row["build"] = True
        x = torch.zeros(1, *size)
        with torch.no_grad():
            model(x)
        row["forward"] = True
        flops = lw.count_flops(model, x)
        target = result.spec["target"]["flops"]
        row["flops_over_target"] = round(flops / target, 5)
        row["widened_over_original"] = round(result.report.flops["widened"] / result.report.flops["original"], 3)
        row["flops"] = flops <= target
        if not row["flops"]:
            row["error"] = f"fvcore FLOPs {flops} above the target {target}"
    except Exception as err:  # noqa: BLE001 - the benchmark records every failure and goes on
        row["error"] = _error(err)
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["ok"] = all(row[s] for s in STEPS)
    return row


def tp_anchor(name: str) -> dict:
    """torch-pruning 1.6 alone: 50% global magnitude pruning, then a forward pass."""
    import timm
    import torch
    import torch_pruning as tp

    start = time.perf_counter()
    try:
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        x = torch.zeros(1, *timm.get_pretrained_cfg(name).input_size)
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            global_pruning=True,
            ignored_layers=[model.get_classifier()],
        )
        pruner.step()
        with torch.no_grad():
            model(x)
        return {"tp_ok": True, "tp_seconds": round(time.perf_counter() - start, 1)}
    except Exception as err:  # noqa: BLE001 - the anchor's failures are data too
        return {"tp_ok": False, "tp_error": _error(err), "tp_seconds": round(time.perf_counter() - start, 1)}


def run_isolated(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"worker died (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="default: every name in ../shared/zoo.txt")
    parser.add_argument("--zoo", type=Path, default=ZOO)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-anchor", action="store_true", help="skip torch-pruning's own pruning")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--anchor", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batches, args.batch_size)))
        return
    if args.anchor:
        print(json.dumps(tp_anchor(args.anchor)))
        return

    names = args.models or read_zoo(args.zoo)
    rows, started = [], time.perf_counter()
    for i, name in enumerate(names, 1):
        extra = ["--batches", str(args.batches), "--batch-size", str(args.batch_size)]
        row = {"model": name, **{s: False for s in STEPS}, "ok": False, "tp_ok": False}
        row.update(run_isolated(["--worker", name, *extra], args.timeout))
        if not args.no_anchor:
            # Its own process and timeout: torch-pruning alone can hang (rexnet's group search).
            anchor = run_isolated(["--anchor", name], args.timeout)
            row.update(anchor if "error" not in anchor else {"tp_ok": False, "tp_error": anchor["error"]})
        rows.append(row)
        status = "ok" if row["ok"] else f"FAIL {row.get('error', '')}"
        print(f"[{i}/{len(names)}] {name}: {status} ({row.get('seconds', '-')} s)", flush=True)

    total = time.perf_counter() - started
    ours = sum(r["ok"] for r in rows)
    anchor = sum(r.get("tp_ok", False) for r in rows)
    header = ["model", *STEPS, "flops_over_target", "seconds", "tp_50%", "error"]
    mark = {True: "ok", False: "-"}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["model"],
            *(mark[bool(r.get(s))] for s in STEPS),
            str(r.get("flops_over_target", "")),
            str(r.get("seconds", "")),
            mark[bool(r.get("tp_ok"))] if not args.no_anchor else "n/a",
            (r.get("error") or "").replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    summary = (
        f"LW-DNA end to end: {ours}/{len(rows)}; torch-pruning 50% global pruning: "
        f"{anchor if not args.no_anchor else 'not run'}/{len(rows)}; {total / 60:.1f} minutes"
    )
    print("\n".join(lines))
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/coverage.py " + " ".join(sys.argv[1:])
    (args.out / "coverage.json").write_text(
        json.dumps({"command": command, "summary": summary, "rows": rows}, indent=1) + "\n"
    )
    (args.out / "coverage.md").write_text("\n".join(lines) + f"\n\n{summary}\n\n`{command}`\n")


if __name__ == "__main__":
    main()
