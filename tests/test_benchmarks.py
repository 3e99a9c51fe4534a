"""Benchmark scripts run as documented: the hypothesis `--quick` smoke run and a one-model latency run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]


@needs_data
def test_hypothesis_quick(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    script = ROOT / "benchmarks" / "hypothesis.py"
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], check=True, env=env, timeout=600)
    stem = "hypothesis_cifar_resnet20_quick"
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    summary = payload["summary"]
    assert set(summary) == {"baseline", "lwdna", "random"}
    assert summary["lwdna"]["flops"] <= summary["baseline"]["flops"]
    assert summary["random"]["flops"] <= summary["baseline"]["flops"]
    assert summary["lwdna"]["identify_s_mean"] > 0 and summary["baseline"]["identify_s_mean"] == 0
    assert len(payload["runs"]) == 6
    epochs = {len(run["history"]["test_acc"]) for run in payload["runs"]}
    assert epochs == {payload["config"]["epochs"]}
    assert all(run["history"]["test_acc"][-1] > 20 for run in payload["runs"])
    for name in (f"{stem}.md", f"{stem}_curves.png", f"{stem}_channels.png", f"{stem}_lwdna/spec.json"):
        assert (tmp_path / name).is_file(), name
    assert "Verdict:" in (tmp_path / f"{stem}.md").read_text()


def test_latency_smoke(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    script = ROOT / "benchmarks" / "latency.py"
    args = ["--models", "resnet18", "--batch-sizes", "1", "--repeats", "2", "--score-batches", "1", "--threads", "1"]
    args += ["--seconds", "2", "--out"]
    subprocess.run([sys.executable, str(script), *args, str(tmp_path)], check=True, env=env, timeout=600)
    result = json.loads((tmp_path / "latency.json").read_text())
    assert " 1 threads" in result["meta"]["machine"]
    (row,) = result["rows"]
    for variant in ("lwdna_r1", "lwdna_r8", "lwdna_latency"):
        assert row[f"{variant}_flops_ratio"] <= 1.0 and row[f"{variant}_latency_ratio"] > 0
    assert row["baseline_ms"] > 0 and row["control_latency_ratio"] > 0
    assert row["repeats"] > 2  # two seconds of resnet18 at batch 1 are more than two repeats
    for key in ("control", "lwdna_r1", "lwdna_r8", "lwdna_latency"):
        low, high = row[f"{key}_latency_interval"]
        assert low <= row[f"{key}_latency_ratio"] <= high
    table = (tmp_path / "latency.md").read_text()
    assert "LW-DNA latency budget: at or below the baseline's latency in" in table
    assert "A copy of the baseline, timed the same way, read up to" in table
    assert "above it beyond the 95% interval in" in table and "its 95% interval held 1.00 in" in table
