"""Distributed runs: every rank calls `dissimilate`, and every rank plans the same widths.

Gate gradients are summed over ranks (`score`), so the scores agree. Timings cannot: each rank
would time its own device and plan its own widths, so a latency budget's measurements are taken
on rank 0 alone and broadcast (`measured_on_rank_zero`), and every rank decides alike from them.
A rank that calls `dissimilate` while another does not would wait in the first collective for
ever: `rendezvous` first meets the other ranks on the process group's store, and after
`RENDEZVOUS_SECONDS` says which ranks never came.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["RENDEZVOUS_SECONDS", "distributed", "measured_on_rank_zero", "rendezvous"]

RENDEZVOUS_SECONDS = float(os.environ.get("LWDNA_RENDEZVOUS_SECONDS", "600"))
_CALLS = itertools.count()  # this process's calls, so that each rank's n-th call meets the others' n-th

T = TypeVar("T")


def distributed() -> bool:
    """Whether a torch.distributed process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rendezvous(what: str = "dissimilate", timeout: float | None = None) -> None:
    """Wait until every rank has called `what`; raise naming the missing ranks after `timeout` s."""
    if not distributed():
        return
    timeout = RENDEZVOUS_SECONDS if timeout is None else timeout
    # The process group's own key-value store: torch has no public accessor for it.
    store = dist.distributed_c10d._get_default_store()
    key = f"lwdna/{what}/{next(_CALLS)}"
    rank, world = dist.get_rank(), dist.get_world_size()
    store.set(f"{key}/rank{rank}", "1")
    arrived = store.add(key, 1)
    deadline = time.monotonic() + timeout
    while arrived < world:
        if time.monotonic() > deadline:
            came = [r for r in range(world) if store.check([f"{key}/rank{r}"])]
            missing = sorted(set(range(world)) - set(came))
            raise RuntimeError(
                f"{what} was called on rank(s) {came} but not on {missing} within {timeout:.0f} s: under "
                f"torch.distributed every rank must call {what} (each with its own batches, to score on all "
                "of them), or call it in one process before init_process_group and share the spec it writes"
            )
        time.sleep(0.05)
        arrived = store.add(key, 0)


def measured_on_rank_zero(measure: Callable[..., T]) -> Callable[..., T]:
    """`measure` (a timing) run on rank 0 only, its result broadcast to every rank."""

    @functools.wraps(measure)
    def broadcast(*args: Any, **kwargs: Any) -> T:
        if not distributed():
            return measure(*args, **kwargs)
        box = [measure(*args, **kwargs) if dist.get_rank() == 0 else None]
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        dist.broadcast_object_list(box, src=0, device=device)
        return box[0]

    return broadcast
