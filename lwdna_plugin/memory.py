"""Scoring memory: how many samples of a batch the widened model back-propagates at once.

Back-propagating a widened model keeps every layer's activations until the backward pass: at
large inputs those, not the weights, are what runs out of memory (a widened ConvMixer-768/32
at 224 px saves about 1.2 GB a sample). `MicroBatch(auto=True)` measures it: one forward of one
sample, counting the bytes autograd saves, gives the cost of a sample, and each batch is then
scored in pieces that fit the budget. Gradients accumulate over the pieces, each piece's loss
weighted by its share of the batch, so the scores are those of the whole batch, except that
train-mode batch norm normalises each piece by its own statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .adapter import micro_batches
from .arguments import is_whole

__all__ = ["AUTO", "CPU_BUDGET", "MicroBatch", "check_widening_fits", "memory_budget", "saved_bytes"]

AUTO = "auto"
# Saved activations allowed on a CPU: small enough to leave room for the model copies the
# pipeline holds beside them, large enough that common inputs are scored in one piece.
CPU_BUDGET = 2 * 2**30


class MicroBatch:
    """How each scoring batch is cut: whole (`size=None`), in fixed pieces (`size=n`), or
    (`auto=True`) in pieces that fit `budget` bytes of saved activations (default:
    `memory_budget` of the model's device), measured on the first batch it cuts."""

    def __init__(self, size: int | None = None, *, auto: bool = False, budget: int | None = None) -> None:
        for name, value in (("size", size), ("budget", budget)):
            if value is not None and not is_whole(value):
                raise ValueError(f"MicroBatch({name}={value!r}): must be a positive integer or None")
        self.size = size
        self.auto = auto
        self.budget = budget
        self.per_sample: int | None = None  # saved bytes a sample, once measured
        self.minimum = 1  # samples a piece needs at least (2 where train mode refuses one)

    @classmethod
    def parse(cls, value: int | str | None) -> MicroBatch:
        """`dissimilate`'s `score_batch_size`: None (whole batches), a size, or 'auto'."""
        return cls(auto=True) if value == AUTO else cls(value)

    def cut(self, batch: Any, run: Callable[[Any], object], device: torch.device) -> list[tuple[Any, float]]:
        """`batch` in pieces with their shares; `run(piece)` is the forward the budget is measured on."""
        if self.auto and self.per_sample is None:
            self._measure(batch, run, device)
        if self.size is None:
            return [(batch, 1.0)]
        return micro_batches(batch, self.size, self.minimum)

    def _measure(self, batch: Any, run: Callable[[Any], object], device: torch.device) -> None:
        # One sample costs what the smallest piece costs, so the probe never needs more memory
        # than scoring will; a layer that needs two samples in train mode (batch norm on pooled
        # features) refuses one with a ValueError, and then pieces hold at least two.
        try:
            saved = _probe(batch, run, device, 1)
        except ValueError:
            if batch_len(batch) == 1:
                raise
            try:
                saved = _probe(batch, run, device, 2)
            except ValueError:
                run(batch)  # a fault of the data, not of the piece size: raise it about the whole batch
                raise
            self.minimum = 2
        self.per_sample = -(-saved // self.minimum)
        self.budget = self.budget if self.budget is not None else memory_budget(device)
        self.size = max(self.minimum, self.budget // max(1, self.per_sample))

    def split(self, batch_size: int) -> bool:
        """Whether batches of `batch_size` samples are scored in more than one piece."""
        return self.size is not None and self.size < batch_size

    def note(self, batch_size: int) -> str | None:
        """The report's line when auto-sizing cut the batches."""
        if not (self.auto and self.per_sample is not None and self.split(batch_size)):
            return None
        return (
            f"scored each batch of {batch_size} in pieces of {self.size} sample{'s' * (self.size != 1)}: "
            f"back-propagating the widened model saves about {self.per_sample / 2**20:,.0f} MiB of activations "
            f"a sample, and the budget is {self.budget / 2**20:,.0f} MiB (set `score_batch_size` to choose; "
            "train-mode batch norm normalises each piece on its own)"
        )


def saved_bytes(run: Callable[[], object]) -> int:
    """Bytes of tensors autograd saves for backward while `run()` builds its graph (parameters
    excluded). The graph `run` builds cannot run backward: it saves nothing."""
    seen: set[int] = set()
    kept: list[torch.UntypedStorage] = []  # alive while `run` runs, so no freed address is counted again
    total = 0

    def pack(tensor: torch.Tensor) -> None:
        # The graph gets no tensor back: a node that saves its own output would otherwise hold
        # itself, and every weight the graph saved, alive after `run` returns (a leak of the whole
        # widened model's weights per measured batch).
        nonlocal total
        if isinstance(tensor, nn.Parameter) or tensor.is_sparse or tensor.device.type == "meta":
            return None
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            kept.append(storage)
            total += storage.nbytes()
        return None

    with torch.autograd.graph.saved_tensors_hooks(pack, _not_saved):
        run()
    return total


def _not_saved(_: None) -> torch.Tensor:
    raise RuntimeError("saved_bytes measures a forward pass only: its graph saved no tensor to run backward with")


def memory_budget(device: torch.device) -> int:
    """Bytes of saved activations to allow on `device`: half of a GPU's free memory; on a CPU,
    `CPU_BUDGET` or a quarter of the available memory if that is less."""
    available = _free_memory(device)
    if device.type == "cuda":
        return available // 2
    return CPU_BUDGET if available is None else min(CPU_BUDGET, available // 4)


def check_widening_fits(model: nn.Module, width: float, device: torch.device) -> None:
    """Refuse a `width` whose widened model could not be held with its gradients on `device`.

    Widening multiplies a layer's weights by up to width**2 (both its channel counts grow); the
    float32 weights and their gradients must fit the memory available, or the process is killed
    by the system rather than stopped with an error.
    """
    available = _free_memory(device)
    if available is None:
        return
    params = sum(p.numel() for p in model.parameters())
    needed = 2 * 4 * params * width**2
    if needed > available:
        raise ValueError(
            f"width={width}: widening {type(model).__name__} ({params / 1e6:,.1f} M parameters) could reach "
            f"{params * width**2 / 1e6:,.0f} M parameters, {needed / 2**30:,.1f} GiB with their gradients in float32, "
            f"more than the {available / 2**30:,.1f} GiB available on {device}: lower `width` (the paper uses 2)"
        )


def _free_memory(device: torch.device) -> int | None:
    """Bytes free on `device`: a GPU's free memory, or the system's available memory (None
    where /proc/meminfo is missing)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _probe(batch: Any, run: Callable[[Any], object], device: torch.device, samples: int) -> int:
    probe, _ = micro_batches(batch, samples)[0]
    # The probe must not shift the random stream the scores are drawn with (dropout).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return saved_bytes(lambda: run(probe))


def batch_len(batch: Any) -> int:
    """How many samples a batch holds (a tuple's first element or a dict's `inputs`)."""
    return len(batch["inputs"]) if isinstance(batch, dict) else len(batch[0])
