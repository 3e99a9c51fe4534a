"""Device check: the pipeline on whatever device this machine has (CUDA when available, else CPU).

Each check runs the public API the way a user on that device would and records ok / the error /
seconds: data on the device (the model is built there), a model built by name with `device=`,
a resnet50 already on the device through `dissimilate`, `build` and `export_python` (outputs
equal), a bf16 model (identified in float32, returned in bf16), wrapped models (DataParallel,
weight-averaging copies, and `torch.compile` where it is available), micro-batched scoring (with the peak memory of
identification on CUDA), a latency budget timed on the device and re-timed independently,
`export_python`'s file reloaded on the device, the mmengine example under torchrun with two
ranks writing one spec, and the regime study's smoke run training on the device. The table goes to stdout and
`benchmarks/results/gpu_check_<device type>.json`.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/gpu_check.py [--device cuda:0] [--img-size 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from timm.utils.model_ema import ModelEmaV3  # noqa: E402

import lwdna_plugin as lw  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEN = {"num_classes": 10}


def _batches(device: torch.device, img: int, batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = lw.load_batches("mnist5k", batches=2, batch_size=batch_size, img_size=img)
    return [(x.to(device), y.to(device)) for x, y in data]


def check_device_follows_data(device: torch.device, img: int) -> dict:
    result = lw.dissimilate("resnet18", data=_batches(device, img), model_kwargs=TEN)
    where = {p.device for p in result.model.parameters()}
    assert where == {device}, f"the LW-DNA model is on {where}, the data on {device}"
    assert result.spec["achieved"]["flops"] <= result.spec["target"]["flops"]
    return {"peak_memory_mb": result.peak_memory_mb}


def check_built_by_name_on_device(device: torch.device, img: int) -> dict:
    cpu_data = lw.load_batches("mnist5k", batches=2, batch_size=16, img_size=img)
    result = lw.dissimilate("resnet18", data=cpu_data, device=device, model_kwargs=TEN)
    where = {p.device for p in result.model.parameters()}
    assert where == {device}, f"device={device} built the LW-DNA model on {where}"
    return {}


def check_resnet50_build_and_export(device: torch.device, img: int) -> dict:
    """A resnet50 already on the device: its spec rebuilt by `build` and exported by
    `export_python`, both with the LW-DNA model's shapes and (with its weights) its outputs."""
    base = timm.create_model("resnet50", pretrained=False, **TEN).to(device)
    result = lw.dissimilate(base, data=_batches(device, img), batches=1)
    built = lw.build(result.spec).to(device)
    assert lw.export.tensor_shapes(built) == result.spec["shapes"], "build gave other shapes than the spec's"
    exported = _exported(result, device)
    built.load_state_dict(result.model.state_dict())
    x = torch.randn(2, 3, img, img, device=device)
    with torch.no_grad():
        reference = result.model.eval()(x)
        diffs = [(m.eval()(x) - reference).abs().max().item() for m in (built, exported)]
    assert max(diffs) < 1e-4, f"build / export_python outputs differ by {diffs}"
    return {"max_abs_diff": max(diffs), "peak_memory_mb": result.peak_memory_mb}


def check_bf16_model(device: torch.device, img: int) -> dict:
    model = timm.create_model("resnet18", pretrained=False, **TEN).to(device, torch.bfloat16)
    result = lw.dissimilate(model, data=_batches(device, img))
    dtypes = {p.dtype for p in result.model.parameters()}
    assert dtypes == {torch.bfloat16}, f"returned in {dtypes}, not bfloat16"
    x = torch.zeros(2, 3, img, img, device=device, dtype=torch.bfloat16)
    assert result.model.eval()(x).shape == (2, 10)
    assert next(model.parameters()).dtype == torch.bfloat16  # the caller's model is untouched
    return {}


def check_wrappers(device: torch.device, img: int) -> dict:
    base = timm.create_model("resnet18", pretrained=False, **TEN).to(device)
    names = {}
    wrappers: dict[str, Callable[[nn.Module], nn.Module]] = {
        "DataParallel": nn.DataParallel,
        "AveragedModel": torch.optim.swa_utils.AveragedModel,
        "timm ModelEmaV3": ModelEmaV3,
    }
    if device.type == "cuda":
        wrappers["torch.compile"] = torch.compile
    for label, wrap in wrappers.items():
        result = lw.dissimilate(wrap(base), data=_batches(device, img), batches=1)
        names[label] = result.spec["base"]["name"] if result.spec["base"] else None
        assert names[label] == "resnet18", f"{label}: the recipe was lost ({names[label]})"
    return {"wrappers": sorted(names)}


def check_micro_batches(device: torch.device, img: int) -> dict:
    data = _batches(device, img, batch_size=32)
    whole = lw.dissimilate("resnet50", data=data, batches=1, model_kwargs=TEN)
    pieces = lw.dissimilate("resnet50", data=data, batches=1, score_batch_size=8, model_kwargs=TEN)
    assert pieces.spec["score_batch_size"] == 8
    out = {"peak_mb_whole": whole.peak_memory_mb, "peak_mb_micro8": pieces.peak_memory_mb}
    if device.type == "cuda":
        assert pieces.peak_memory_mb < whole.peak_memory_mb, f"micro-batches did not lower the peak: {out}"
    return out


def check_latency_budget(device: torch.device, img: int) -> dict:
    """The budget's own timing, and an independent re-timing of the result against the original."""
    budget = lw.LatencyBudget(ratio=1.0, batch_sizes=(1, 8), repeats=3, rounds=2, seconds=0.5)
    result = lw.dissimilate("resnet18", data=_batches(device, img), latency=budget, model_kwargs=TEN)
    ratios = result.spec["achieved"]["latency_ratios"]
    assert set(ratios) == {"1", "8"}
    original = timm.create_model("resnet18", pretrained=False, **TEN).to(device)
    retimed = {}
    for batch in budget.batch_sizes:
        samples = lw.latency.time_samples([original, result.model], (3, img, img), batch, repeats=9, seconds=1.0)
        medians = np.median(samples, axis=0)
        retimed[str(batch)] = round(float(medians[1] / medians[0]), 4)
    return {"latency_ratios": ratios, "retimed_ratios": retimed}


def _exported(result: lw.Result, device: torch.device) -> nn.Module:
    """`export_python`'s module of `result`, loaded from its file with the result's weights."""
    with tempfile.TemporaryDirectory() as tmp:
        path = lw.export_python(result, Path(tmp) / "lwdna_exported.py")
        spec = importlib.util.spec_from_file_location("lwdna_exported", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, nn.Module)]
    model = classes[-1]().to(device).eval()
    model.load_state_dict(result.model.state_dict())
    return model


def check_export_python(device: torch.device, img: int) -> dict:
    result = lw.dissimilate("resnet18", data=_batches(device, img), model_kwargs=TEN)
    model = _exported(result, device)
    x = torch.randn(2, 3, img, img, device=device)
    with torch.no_grad():
        diff = (model(x) - result.model.eval()(x)).abs().max().item()
    assert diff < 1e-4, f"the exported file's output differs by {diff}"
    return {"max_abs_diff": diff}


def check_torchrun_mmengine(device: torch.device, img: int) -> dict:
    """The mmengine example under torchrun, two ranks (gloo with fewer GPUs than ranks): every
    rank writes the same spec, and both train."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
        script = [str(ROOT / "examples" / "mmengine_classification.py"), "--launcher", "pytorch", "--iters", "4"]
        run = subprocess.run(
            [*command, *script, "--work-dir", tmp], capture_output=True, text=True, env=env, timeout=600
        )
        assert run.returncode == 0, run.stderr[-2000:]
        specs = [(Path(tmp) / "lwdna" / f"spec.rank{r}.json").read_bytes() for r in (0, 1)]
    assert specs[0] == specs[1], "the two ranks wrote different specs"
    trained = re.findall(r"rank (\d): LW-DNA model trained 4 iterations", run.stdout)
    assert sorted(trained) == ["0", "1"], run.stdout[-2000:]
    return {}


def check_hypothesis_study(device: torch.device, img: int) -> dict:
    """The regime study's smoke run training on the device (its own `_<device>` results)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(ROOT / "benchmarks" / "hypothesis.py"), "--quick", "--workers", "1"]
        run = subprocess.run(
            [*command, "--device", str(device), "--out", tmp], capture_output=True, text=True, timeout=900
        )
        assert run.returncode == 0, run.stderr[-2000:]
        on = "" if device.type == "cpu" else "_" + str(device).replace(":", "")
        payload = json.loads((Path(tmp) / f"hypothesis_regimes_quick{on}.json").read_text())
    assert len(payload["runs"]) == 6, payload["runs"]
    return {"machine": payload["machine"], "test_top1": [r["test_top1"] for r in payload["runs"]]}


CHECKS = {
    "device follows the data": check_device_follows_data,
    "built by name with device=": check_built_by_name_on_device,
    "resnet50 build and export_python": check_resnet50_build_and_export,
    "bf16 model": check_bf16_model,
    "wrapped models": check_wrappers,
    "micro-batched scoring": check_micro_batches,
    "latency budget on the device": check_latency_budget,
    "export_python on the device": check_export_python,
    "torchrun, two ranks, mmengine example": check_torchrun_mmengine,
    "hypothesis study on the device": check_hypothesis_study,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run these checks only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    rows = []
    for label in args.only or CHECKS:
        start = time.perf_counter()
        try:
            row = {"check": label, "ok": True, **CHECKS[label](device, args.img_size)}
        except Exception as err:  # noqa: BLE001 - a check's failure is its result; the others still run
            frame = traceback.extract_tb(err.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            row = {"check": label, "ok": False, "error": f"{type(err).__name__}: {str(err)[:300]} ({where})"}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {label} ({row['seconds']} s) {row.get('error', '')}", flush=True)
    payload = {
        "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": f"{device} ({name})",
        "torch": torch.__version__,
        "passed": sum(r["ok"] for r in rows),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu_check_{device.type}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{payload['passed']}/{len(rows)} checks passed on {payload['device']}")
    return payload


if __name__ == "__main__":
    payload = main()
    sys.exit(0 if payload["passed"] == len(payload["rows"]) else 1)
