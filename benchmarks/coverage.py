"""Coverage: the whole pipeline on every architecture in ../shared/zoo.txt, one subprocess each.

For each model (pretrained=False, timm's default input size): dissimilate (width 2, flops 1.0,
gate scores on real mnist5k batches of `--batch-size` images at 224x224, fewer at a larger
input: as many pixels a batch, at least one image; see `scoring_batch_size`), save the spec,
rebuild it with `lw.build`, run a forward pass and check fvcore FLOPs against the target; then,
recorded apart as `export`, write the standalone module with `export_python`, load the rebuilt
model's weights into it and compare outputs. Side by side, torch-pruning's own 50% global
magnitude pruning followed by a forward pass, the anchor we compare with.

`--timm-all` sweeps the zoo instead of a list: for every module of `timm.models` that registers
models, its smallest model by parameter count (counted on the meta device, cached in
`coverage_timm_selection.json`), skipping modules whose smallest model has over `--max-params`.
Each model runs in its own process under `--timeout` seconds and an address-space limit; its
row (ok, the stage that failed, seconds, error, peak memory, scoring images, and the depth: free
and fixed groups, the channel-weighted free share, each fixed group's reason, see
`lwdna_plugin.graph.Depth`) is
written to `coverage_timm_runs/<model>.json`, so a rerun skips finished models (unless they
scored other batches than it would); the table goes to `coverage_timm.{json,md}`.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/coverage.py [--models resnet18 ...] [--timeout 300]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/coverage.py --timm-all [--rerun]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
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


def scoring_batch_size(batch_size: int, input_size: tuple[int, ...]) -> int:
    """Images a scoring batch holds at `input_size`: at most the pixels of `batch_size` images at
    224x224, at least one image. Scoring is most of the cost (the widened net, forward and
    backward), so this holds it near a 224-px model's whatever a model's default input: at
    768x768 (qwen3_vit) 8 images cost about 94 forward passes of the original at 224."""
    pixels = input_size[-1] * input_size[-2]
    return max(1, min(batch_size, batch_size * 224 * 224 // pixels))


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
        row["scoring_images"] = scoring_images(name, batches, batch_size)
        data = lw.load_batches(
            "mnist5k", batches=batches, batch_size=row["scoring_images"][0], img_size=tuple(size[-2:])
        )
        result = lw.dissimilate(name, width=2.0, flops=1.0, data=data, model_kwargs={"num_classes": 10})
        row["dissimilate"] = True
        row["fixed_groups"] = len(result.report.fixed_groups)
        row["groups"] = len(result.spec["groups"])
        row["depth"] = result.report.depth.to_dict()
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
    if row["forward"]:
        export_step(row, result, model, size)
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["ok"] = all(row[s] for s in STEPS)
    row["stage"] = next((s for s in STEPS if not row[s]), None)
    row["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return row


def export_step(row: dict, result, model, size: tuple[int, ...]) -> None:
    """`export_python`'s file for the result: imported, loaded with the built model's weights
    (strict), and its eval output equal to the model's on a random input. Recorded apart from
    STEPS (`export`, `export_error`): rows from before this step have neither."""
    import torch

    import lwdna_plugin as lw

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = lw.export_python(result, Path(tmp) / "lwdna_model.py")
            spec = importlib.util.spec_from_file_location(f"lwdna_export_{row['model'].replace('.', '_')}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        exported = module.MODEL().eval()
        exported.load_state_dict(model.state_dict(), strict=True)
        x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            row["export"] = bool(torch.allclose(exported(x), model(x), atol=1e-4, rtol=1e-3))
        if not row["export"]:
            row["export_error"] = "the exported module's output differs from the model's"
    except Exception as err:  # noqa: BLE001 - recorded like the other steps' failures
        row["export"], row["export_error"] = False, _error(err)


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


def run_isolated(args: list[str], timeout: float, memory_gb: float | None = None) -> dict:
    cmd = [sys.executable, __file__, *args]

    def limit() -> None:
        # An address-space cap: a model whose identification explodes fails with a MemoryError
        # in its own process instead of taking the machine (and what else runs on it) down.
        cap = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit if memory_gb else None
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"worker died (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def count_params(name: str) -> int:
    """A model's parameter count without allocating it: built on the meta device (on the CPU where
    a constructor computes with real tensors)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def select_timm(max_params: float, cache: Path) -> dict:
    """Per module of `timm.models` that registers models: its smallest model by parameters, or
    why the module is skipped. Cached by timm version: counting every model takes minutes."""
    import timm

    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("timm") == timm.__version__ and cached.get("max_params") == max_params:
            return cached
    selected, skipped = [], []
    for module in timm.list_modules():
        names = timm.list_models(module=module)
        if not names:
            continue
        counts = {}
        for name in names:
            try:
                counts[name] = count_params(name)
            except Exception as err:  # noqa: BLE001 - a model timm cannot build is listed, not fatal
                skipped.append({"module": module, "model": name, "reason": f"cannot build: {_error(err)}"})
        if not counts:
            continue
        name = min(counts, key=lambda n: (counts[n], n))
        entry = {"module": module, "model": name, "params": counts[name]}
        if counts[name] > max_params:
            skipped.append({**entry, "reason": f"smallest model has {counts[name] / 1e6:.0f} M parameters"})
        else:
            selected.append(entry)
        print(f"{module}: {name} ({counts[name] / 1e6:.2f} M)", flush=True)
    result = {"timm": timm.__version__, "max_params": max_params, "selected": selected, "skipped": skipped}
    cache.write_text(json.dumps(result, indent=1) + "\n")
    return result


def sweep_timm(args: argparse.Namespace) -> None:
    """Run the smallest model of every timm module, one process each, resumable (see the module)."""
    selection = select_timm(args.max_params, args.out / "coverage_timm_selection.json")
    runs = args.out / "coverage_timm_runs"
    runs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    code = code_version()
    entries = selection["selected"]
    # `--models` with `--timm-all`: run only these models or modules (the table keeps every row).
    chosen = [e for e in entries if not args.models or e["model"] in args.models or e["module"] in args.models]
    for i, entry in enumerate([] if args.table_only else chosen, 1):
        path = runs / f"{entry['model']}.json"
        if path.is_file() and not args.rerun and not _rerun(json.loads(path.read_text()), args):
            continue
        extra = ["--batches", str(args.batches), "--batch-size", str(args.batch_size)]
        row = {"model": entry["model"], **{s: False for s in STEPS}, "ok": False, "stage": "timeout"}
        # What the worker scores, recorded even when it times out.
        row["scoring_images"] = scoring_images(entry["model"], args.batches, args.batch_size)
        row.update(run_isolated(["--worker", entry["model"], *extra], args.timeout, args.memory_gb))
        row.update(module=entry["module"], params=entry["params"], code=code)
        row.setdefault("seconds", args.timeout)
        if "stage" not in row or (not row["ok"] and row["stage"] is None):
            row["stage"] = "worker"
        path.write_text(json.dumps(row, indent=1) + "\n")
        status = "ok" if row["ok"] else f"FAIL at {row['stage']}: {row.get('error', '')}"
        print(f"[{i}/{len(chosen)}] {entry['module']}/{entry['model']}: {status} ({row['seconds']} s)", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    selected = {e["model"] for e in entries}
    rows = [r for r in rows if r["model"] in selected]
    write_timm_table(rows, selection, args, time.perf_counter() - started)


def code_version() -> str:
    """The git commit the workers import the package from ('+dirty' if its files differ), as
    `hypothesis.py` records it per run; 'unknown' outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        git = {"cwd": root, "capture_output": True, "text": True}
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git)
        dirty = subprocess.run(["git", "status", "--porcelain", "lwdna_plugin"], **git)
    except OSError:
        return "unknown"
    return "unknown" if head.returncode else head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _rerun(row: dict, args: argparse.Namespace) -> bool:
    """Whether a finished row is run again: it failed and `--rerun-failed` says so, or it scored
    other batches than this sweep would (rows from before `scoring_images` was recorded scored
    `--batches` batches of `--batch-size` at every input size), or it passed before depth was
    recorded."""
    if args.rerun_failed and not row["ok"]:
        return True
    if row["ok"] and "depth" not in row:
        return True
    wanted = scoring_images(row["model"], args.batches, args.batch_size)
    return row.get("scoring_images", [args.batch_size] * args.batches) != wanted


def scoring_images(name: str, batches: int, batch_size: int) -> list[int]:
    """Images in each of the `batches` scoring batches of model `name` at its default input."""
    import timm

    return [scoring_batch_size(batch_size, timm.get_pretrained_cfg_value(name, "input_size"))] * batches


def _depth_cells(row: dict) -> list[str]:
    """Free / all groups, the channel-weighted free share, and the two most frequent reasons."""
    d = row.get("depth")
    if not d:
        return ["", "", ""]
    reasons = [f"{why} ({n})" for why, n in d["reasons"].items() if why != "model output"][:2]
    return [
        f"{d['free_groups']} / {d['free_groups'] + d['fixed_groups']}",
        f"{d['free_share']:.2f}",
        ", ".join(reasons),
    ]


def write_timm_table(rows: list[dict], selection: dict, args: argparse.Namespace, wall: float) -> None:
    import timm

    from lwdna_plugin.graph import Why

    passed = sum(r["ok"] for r in rows)
    slow = [r["model"] for r in rows if r.get("seconds", 0) >= args.timeout]
    heavy = [r["model"] for r in rows if r.get("peak_mb", 0) > 8192]
    header = ["module", "model", "params (M)", "input", "scoring images", "ok", "failed at", "seconds", "peak MB",
              "free / all groups", "free share", "main reasons fixed (groups)", "error"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (r["ok"], r["module"])):
        error = r.get("error") or ""
        if r.get("stage") == "timeout":
            # What a timeout costs is mostly the input: every stage runs the (widened) model on it.
            size = timm.get_pretrained_cfg_value(r["model"], "input_size")
            error += f" at its default input {'x'.join(map(str, size))}" if size else ""
        scored = r.get("scoring_images", [args.batch_size] * args.batches if r.get("input") else [])
        cells = [r["module"], r["model"], f"{r['params'] / 1e6:.2f}", str(r.get("input", "")),
                 " + ".join(map(str, scored)), "ok" if r["ok"] else "-",
                 r.get("stage") or "", str(r.get("seconds", "")), str(r.get("peak_mb", "")),
                 *_depth_cells(r), error.replace("|", "/")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    depths = [r["depth"] for r in rows if r.get("depth")]
    reasons: dict[str, int] = {}
    for d in depths:
        for why, n in d["reasons"].items():
            reasons[why] = reasons.get(why, 0) + n
    deep = sum(d["free_share"] >= 0.9 for d in depths)
    shallow = [r["model"] for r in rows if r.get("depth") and r["depth"]["free_share"] < 0.5]
    depth_summary = [
        f"Depth: {deep}/{len(depths)} models with a channel-weighted free share >= 0.9; "
        f"{len(shallow)} below 0.5 ({', '.join(shallow) or 'none'}); "
        f"{sum(d['free_groups'] == 0 for d in depths)} with no free group.",
        "",
        "Fixed groups across the zoo, by reason (`lwdna_plugin.graph.Why`):",
        "",
        "| reason | groups | what it means |",
        "|---|---:|---|",
        *[f"| {why} | {n} | {Why(why).advice} |" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])],
    ]
    skipped = [f"- {s['module']}/{s['model']}: {s['reason']}" for s in selection["skipped"] if "params" in s]
    summary = (
        f"timm {selection['timm']}: {passed}/{len(rows)} of the swept models pass end to end "
        f"({len(selection['selected']) - len(rows)} not run yet) "
        f"({len(selection['selected'])} modules selected, {len(skipped)} skipped as too large); "
        f"{len(slow)} at the {args.timeout:.0f} s timeout, {len(heavy)} over 8 GB peak memory"
    )
    command = "python benchmarks/coverage.py " + " ".join(sys.argv[1:])
    payload = {"command": command, "summary": summary, "wall_s": round(wall, 1), "rows": rows,
               "skipped": selection["skipped"]}  # fmt: skip
    (args.out / "coverage_timm.json").write_text(json.dumps(payload, indent=1) + "\n")
    text = "\n".join([summary, "", *depth_summary, "", *lines, "", "Skipped:", *skipped, "", f"`{command}`", ""])
    (args.out / "coverage_timm.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        help="default: every name in ../shared/zoo.txt; with --timm-all: only these models or modules",
    )
    parser.add_argument("--zoo", type=Path, default=ZOO)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-anchor", action="store_true", help="skip torch-pruning's own pruning")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--timm-all", action="store_true", help="the smallest model of every timm module")
    parser.add_argument("--max-params", type=float, default=100e6, help="--timm-all: skip larger modules")
    parser.add_argument("--memory-gb", type=float, default=16, help="--timm-all: address-space cap per model")
    parser.add_argument("--rerun", action="store_true", help="--timm-all: rerun finished models too")
    parser.add_argument("--rerun-failed", action="store_true", help="--timm-all: rerun the models that failed")
    parser.add_argument("--table-only", action="store_true", help="--timm-all: write the table of finished rows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--anchor", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batches, args.batch_size)))
        return
    if args.anchor:
        print(json.dumps(tp_anchor(args.anchor)))
        return
    if args.timm_all:
        sweep_timm(args)
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
    exports = sum(bool(r.get("export")) for r in rows)
    anchor = sum(r.get("tp_ok", False) for r in rows)
    header = ["model", *STEPS, "export", "flops_over_target", "seconds", "tp_50%", "error"]
    mark = {True: "ok", False: "-", None: "n/a"}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["model"],
            *(mark[bool(r.get(s))] for s in STEPS),
            mark[r.get("export")],
            str(r.get("flops_over_target", "")),
            str(r.get("seconds", "")),
            mark[bool(r.get("tp_ok"))] if not args.no_anchor else "n/a",
            (r.get("error") or r.get("export_error") or "").replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    summary = (
        f"LW-DNA end to end: {ours}/{len(rows)}; standalone export equal to the model: {exports}/{len(rows)}; "
        f"torch-pruning 50% global pruning: "
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
