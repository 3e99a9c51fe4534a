"""`lwdna_plugin.ranks` under torchrun (two CPU ranks, gloo): one plan on every rank, and a
clear error when only some ranks call `dissimilate`."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("ranks_worker.py")


def _torchrun(mode: str, out: Path, port: int, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    environment = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(
        [*command, str(WORKER), mode, str(out)], capture_output=True, text=True, env=environment, timeout=600
    )


def test_a_latency_budget_plans_the_same_widths_on_every_rank(tmp_path):
    # Each rank would time its own device (here: the same two cores, contended): the
    # measurements are rank 0's, broadcast, so every rank decides alike.
    run = _torchrun("latency", tmp_path, 29531)
    assert run.returncode == 0, run.stderr[-3000:]
    specs = [json.loads((tmp_path / f"spec{rank}.json").read_text()) for rank in (0, 1)]
    assert specs[0]["achieved"]["latency_ratios"]
    assert specs[0] == specs[1]


def test_dissimilate_on_some_ranks_only_names_the_missing_ones(tmp_path):
    run = _torchrun("partial", tmp_path, 29532, LWDNA_RENDEZVOUS_SECONDS="3")
    assert run.returncode == 0, run.stderr[-3000:]
    error = (tmp_path / "error.txt").read_text()
    assert "called on rank(s) [0] but not on [1] within 3 s" in error


def test_without_torch_distributed_nothing_waits():
    from lwdna_plugin import ranks

    assert not ranks.distributed()
    ranks.rendezvous("dissimilate", timeout=0.0)  # returns at once: a single process meets no one
