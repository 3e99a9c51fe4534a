"""Latency: per-layer seconds measured on the model's own device, and the latency model the
budget search runs against.

Equal FLOPs are not equal latency (PAPER.md: odd widths, wider high-resolution stages). With a
`LatencyBudget`, every layer of the original and of the widened model is timed at each batch
size, and each layer's cost follows a power of its MAC ratio fitted to those two points (see
`LatencyModel`). The search keeps that prediction under the budget; `dissimilate` then times
the result against the original side by side and tightens the limit by the measured excess.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .adapter import model_device
from .arguments import is_number, is_whole
from .flops import FlopModel
from .modes import in_mode
from .ranks import measured_on_rank_zero


@dataclass(frozen=True)
class LatencyBudget:
    """Keep the LW-DNA model at most `ratio` x the original's latency at every batch size.

    Latency is one eval-mode forward pass on the model's device, the median of `repeats` runs;
    up to `rounds` times the found model is timed against the original (at least `repeats`
    runs and `seconds` of timing per batch size, so that cheap batch sizes get many runs) and
    the limit tightened by the measured excess. The search aims `margin` below the ratio: a
    copy of one and the same model reads several percent off it (up to 6% in
    `benchmarks/latency.py` on a shared 2-core VM, 11% from 9 passes), and a model found just
    under the ratio would read over it as often as not.
    """

    ratio: float = 1.0
    batch_sizes: tuple[int, ...] = (1, 32)
    repeats: int = 5
    rounds: int = 3
    margin: float = 0.05
    seconds: float = 3.0

    def __post_init__(self) -> None:
        for name in ("ratio", "margin", "seconds"):
            if not is_number(getattr(self, name)):
                raise TypeError(f"LatencyBudget({name}={getattr(self, name)!r}): must be a finite number")
        for name in ("repeats", "rounds"):
            if not is_whole(getattr(self, name), None):
                raise TypeError(f"LatencyBudget({name}={getattr(self, name)!r}): must be a whole number")
        if not isinstance(self.batch_sizes, (tuple, list)) or not all(is_whole(b, None) for b in self.batch_sizes):
            raise TypeError(
                f"LatencyBudget(batch_sizes={self.batch_sizes!r}): give a tuple of batch sizes, e.g. (1, 32)"
            )
        if self.ratio <= 0:
            raise ValueError(f"LatencyBudget(ratio={self.ratio}): must be positive (1.0 = no slower than the original)")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"LatencyBudget(batch_sizes={self.batch_sizes}): give one or more positive batch sizes")
        if not 0 <= self.margin < 1:
            raise ValueError(f"LatencyBudget(margin={self.margin}): give a fraction in [0, 1), such as 0.05")
        if self.repeats < 1 or self.rounds < 1:
            raise ValueError(f"LatencyBudget(repeats={self.repeats}, rounds={self.rounds}): both must be at least 1")
        if self.seconds < 0:
            raise ValueError(f"LatencyBudget(seconds={self.seconds}): give the seconds of timing per check, 0 or more")

    @property
    def aim(self) -> float:
        """The latency ratio the search aims for: `ratio` less the margin."""
        return self.ratio * (1 - self.margin)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(model: nn.Module, shape: Sequence[int], batch: int) -> torch.Tensor:
    return torch.randn(batch, *shape, device=model_device(model))


@measured_on_rank_zero
@torch.no_grad()
def time_samples(
    models: Sequence[nn.Module], shape: Sequence[int], batch: int, repeats: int, seconds: float = 0.0
) -> np.ndarray:
    """Seconds of one forward pass of each model, one row per repeat: at least `repeats` rows
    and until `seconds` have been spent timing. Interleaved so drift hits all alike, in
    alternating order (forward, then backward) so that running first or last does too."""
    inputs = _inputs(models[0], shape, batch)
    modes = [m.training for m in models]
    for m in models:
        m.eval()(inputs)  # warm-up: allocator and kernel choice
    rows: list[list[float]] = []
    forward, backward = list(enumerate(models)), list(enumerate(models))[::-1]
    began = time.perf_counter()
    try:
        while len(rows) < repeats or time.perf_counter() - began < seconds:
            row = [0.0] * len(models)
            for i, model in forward if len(rows) % 2 == 0 else backward:
                device = model_device(model)
                _synchronise(device)
                start = time.perf_counter()
                model(inputs)
                _synchronise(device)
                row[i] = time.perf_counter() - start
            rows.append(row)
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    return np.array(rows)


def ratio_interval(
    samples: np.ndarray, reference: int = 0, level: float = 0.95, draws: int = 2000, seed: int = 0
) -> np.ndarray:
    """A `level` bootstrap interval of each model's median seconds over the reference model's,
    from `time_samples` rows: rows (repeats) are resampled whole, so a slow moment of the
    machine stays paired across models. Returns an array of (low, high), one per model."""
    if samples.ndim != 2 or len(samples) < 2:
        raise ValueError(f"ratio_interval needs a (repeats, models) array with 2 or more repeats, got {samples.shape}")
    rows = np.random.default_rng(seed).integers(0, len(samples), size=(draws, len(samples)))
    medians = np.median(samples[rows], axis=1)
    ratios = medians / medians[:, reference : reference + 1]
    tail = (1 - level) / 2
    return np.quantile(ratios, [tail, 1 - tail], axis=0).T


@dataclass
class Timing:
    """One model timed layer by layer: its group widths, seconds of the whole pass, each layer's
    own seconds and each layer's output size in elements."""

    widths: np.ndarray
    total: float
    layers: dict[str, float]
    sizes: dict[str, int]


@measured_on_rank_zero
@torch.no_grad()
def time_layers(
    model: nn.Module, widths: np.ndarray, names: Sequence[str], shape: Sequence[int], batch: int, repeats: int
) -> Timing:
    """Median seconds of the whole forward pass and of each named layer's own work (its timed
    sub-layers excluded), with forward hooks."""
    device = model_device(model)
    inputs = _inputs(model, shape, batch)
    clock = _LayerClock(device)
    sizes: dict[str, int] = {}

    def before(name: str) -> Callable:
        def hook(module, args) -> None:
            clock.start(name)

        return hook

    def after(name: str) -> Callable:
        def hook(module, args, output) -> None:
            clock.stop(name)
            if isinstance(output, torch.Tensor):
                sizes[name] = output.numel()

        return hook

    totals, per_layer = [], {n: [] for n in names}
    handles = []
    with in_mode(model, training=False):
        model(inputs)
        for _ in range(repeats):
            _synchronise(device)
            start = time.perf_counter()
            model(inputs)
            _synchronise(device)
            totals.append(time.perf_counter() - start)
        for name in names:
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name)))
        try:
            for _ in range(repeats):
                model(inputs)
                spent = clock.read()
                for name in names:
                    per_layer[name].append(spent.get(name, 0.0))
        finally:
            for h in handles:
                h.remove()
    inclusive = {n: float(np.median(t)) for n, t in per_layer.items()}
    return Timing(widths, float(np.median(totals)), _exclusive(inclusive), sizes)


class _LayerClock:
    """Seconds per named layer over one forward pass. On the CPU, wall time between the hooks;
    on CUDA, events recorded on the stream and read after one synchronisation at the end, so
    that no layer's time includes a host-device sync or the launch queue draining."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._open: dict[str, object] = {}
        self._spans: list[tuple[str, object, object]] = []

    def start(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._open[name] = event
        else:
            self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        else:
            end = time.perf_counter()
        self._spans.append((name, self._open.pop(name), end))

    def read(self) -> dict[str, float]:
        """Seconds per layer since the last read (a layer called twice counts twice)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        spent: dict[str, float] = {}
        for name, start, end in self._spans:
            seconds = start.elapsed_time(end) / 1000 if self.cuda else end - start
            spent[name] = spent.get(name, 0.0) + seconds
        self._spans.clear()
        return spent


def _exclusive(inclusive: dict[str, float]) -> dict[str, float]:
    """Each layer's seconds minus those of its nearest timed sub-layers (timm's BatchNormAct2d
    holds its activation as a child)."""
    own = dict(inclusive)
    for name in inclusive:
        parent = name.rpartition(".")[0]
        while parent and parent not in inclusive:
            parent = parent.rpartition(".")[0]
        if parent:
            own[parent] -= inclusive[name]
    return {n: max(t, 0.0) for n, t in own.items()}


class LatencyModel:
    """Predicted seconds of one forward pass at one batch size, as a function of the group widths.

    Each layer keeps its measured seconds in the original and scales with a power of its MAC
    ratio (the product of its input and output width ratios), the exponent read off the
    original and the widened timing: about 1 for compute-bound layers, 1/2 for memory-bound
    ones, 0 where per-call overhead dominates, above 1 where a larger layer falls out of cache.
    The time outside the layers (activations, element-wise ops in `forward`) scales the same
    way with the layers' total output size. Power laws pass through both timings, stay
    positive and bend no further than the data show, where per-layer linear fits to two noisy
    points can swing far outside them.
    """

    def __init__(self, flop_model: FlopModel, batch: int, base: Timing, wide: Timing) -> None:
        self.batch = batch
        self._flop_model = flop_model
        names = flop_model.layers
        slots = np.array([flop_model.slots(n) for n in names], dtype=int).reshape(-1, 3)
        self._first, self._second, self._out = slots.T
        self._base_compute = self._compute(base.widths)
        self._seconds = np.array([base.layers.get(n, 0.0) for n in names])
        self._exponent = _exponent(self._seconds, [wide.layers.get(n, 0.0) for n in names], self._base_compute)
        # Output sizes at the widths the ratios are relative to (the widened model's).
        self._elements = np.array([wide.sizes.get(n, 0) for n in names], dtype=np.float64)
        self._base_size = self._size(base.widths)
        rest_base = max(base.total - self._seconds.sum(), 0.0)
        rest_wide = max(wide.total - sum(wide.layers.get(n, 0.0) for n in names), 0.0)
        self._rest = rest_base
        self._rest_exponent = float(_exponent([rest_base], [rest_wide], [self._base_size / self._elements.sum()])[0])
        # The original's time as this model sees it: the reference a latency ratio is taken against.
        self.base_seconds = self(base.widths)

    def _compute(self, widths: np.ndarray) -> np.ndarray:
        ratio = self._flop_model.ratios(widths)
        return ratio[self._first] * ratio[self._second]

    def _size(self, widths: np.ndarray) -> float:
        return float(self._elements @ self._flop_model.ratios(widths)[self._out])

    def __call__(self, widths: np.ndarray) -> float:
        scale = self._compute(widths) / np.maximum(self._base_compute, 1e-12)
        layers = float((self._seconds * scale**self._exponent).sum())
        rest = self._rest * (self._size(widths) / max(self._base_size, 1e-12)) ** self._rest_exponent
        return layers + rest

    def __repr__(self) -> str:
        return f"latency at batch {self.batch}"


def _exponent(base: Sequence[float], wide: Sequence[float], base_ratio: Sequence[float]) -> np.ndarray:
    """Per entry, k with wide = base * (1 / base_ratio) ** k, clipped to [0, 1.5]; 0 where undefined."""
    base, wide, ratio = (np.asarray(x, dtype=np.float64) for x in (base, wide, base_ratio))
    defined = (base > 0) & (wide > 0) & (ratio > 0) & (np.abs(np.log(np.maximum(ratio, 1e-300))) > 1e-6)
    k = np.zeros_like(base)
    k[defined] = np.log(wide[defined] / base[defined]) / -np.log(ratio[defined])
    return np.clip(k, 0.0, 1.5)


def latency_models(
    flop_model: FlopModel,
    base: nn.Module,
    wide: nn.Module,
    base_widths: np.ndarray,
    shape: Sequence[int],
    budget: LatencyBudget,
) -> list[LatencyModel]:
    """One `LatencyModel` per batch size of the budget, from timing `base` and `wide` layer by layer."""
    names = flop_model.layers
    found = []
    for batch in budget.batch_sizes:
        base_timing = time_layers(base, base_widths, names, shape, batch, budget.repeats)
        wide_timing = time_layers(wide, flop_model.sizes, names, shape, batch, budget.repeats)
        found.append(LatencyModel(flop_model, batch, base_timing, wide_timing))
    return found
