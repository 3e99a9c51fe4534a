"""What each rank runs under torchrun in `test_ranks.py` (gloo, CPU): `latency` or `partial`."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

import lwdna_plugin as lw


def main(mode: str, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    # Each rank scores its own batch: the summed gate gradients make the scores agree.
    data = [lw.load_batches("mnist5k", batches=2, batch_size=8, img_size=32)[rank]]
    if mode == "latency":
        budget = lw.LatencyBudget(ratio=1.0, batch_sizes=(1,), repeats=3, rounds=2, seconds=0.2)
        result = lw.dissimilate("resnet18", data=data, latency=budget, model_kwargs={"num_classes": 10})
        (out / f"spec{rank}.json").write_text(json.dumps(result.spec, sort_keys=True))
    elif rank == 0:  # partial: rank 1 never calls dissimilate
        try:
            lw.dissimilate("resnet18", data=data, model_kwargs={"num_classes": 10})
        except RuntimeError as err:
            (out / "error.txt").write_text(str(err))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
