"""Warm-up: a few SGD steps of the widened network before its channels are scored.

Scores at initialisation are mostly noise of the random draw; channel importance settles early in
training (You et al., "Drawing Early-Bird Tickets", ICLR 2020). A warm-up trades a little
compute for scores taken after the network has started to fit the data. Only the widths survive
(the LW-DNA model is initialised afresh), so the warm-up's weights are thrown away with it.

Its cost is reported in the unit a user budgets in: image passes of training the original model
(one widened image pass costs widened / original FLOPs of those).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .arguments import is_number, is_whole
from .data import Batch
from .gates import LossFn, check_loss
from .modes import in_mode
from .stages import StageTimer


@dataclass(frozen=True)
class Warmup:
    """Train the widened model for `steps` SGD steps (Nesterov momentum, constant `lr`) on the
    batches of `data` after the scoring ones, cycling when `data` has no more."""

    steps: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if not is_whole(self.steps):
            raise ValueError(f"Warmup(steps={self.steps!r}): must be a positive integer (leave warmup out for none)")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise ValueError(f"Warmup({name}={value!r}): must be a finite number of at least 0")
        if self.lr == 0:
            raise ValueError("Warmup(lr=0): a warm-up with no learning rate changes nothing; give lr > 0")


@dataclass
class WarmupCost:
    """What the warm-up spent: image passes through the widened model, and the same compute in
    image passes of training the original model."""

    steps: int
    images: int
    original_images: float

    @classmethod
    def total(cls, costs: Sequence[WarmupCost]) -> WarmupCost:
        """The cost of several warm-ups (one per scored initialisation)."""
        return cls(sum(c.steps for c in costs), sum(c.images for c in costs), sum(c.original_images for c in costs))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "images": self.images, "original_images": round(self.original_images, 1)}


def warm_up(
    model: nn.Module, warmup: Warmup, batches: Sequence[Batch], loss_fn: LossFn, cost_ratio: float
) -> WarmupCost:
    """Train `model` in place for `warmup.steps` steps on `batches` (cycled); `cost_ratio`: the
    model's FLOPs over the original's. Leaves the model in the training mode it had."""
    if not batches:
        raise ValueError("a warm-up trains on data: pass `data=` batches (none were given)")
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=warmup.lr,
        momentum=warmup.momentum,
        weight_decay=warmup.weight_decay,
        nesterov=warmup.momentum > 0,
    )
    images = 0
    with in_mode(model, training=True):
        try:
            for step, batch in enumerate(itertools.islice(itertools.cycle(batches), warmup.steps)):
                loss = loss_fn(model, batch)
                check_loss(loss)
                if not torch.isfinite(loss).all():
                    raise ValueError(
                        f"the warm-up's loss is {loss.detach().float().item()} at step {step}: lower "
                        f"Warmup(lr=...) (it is {warmup.lr}) or check the batches for NaN/inf"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                images += _images(batch)
        finally:
            optimizer.zero_grad(set_to_none=True)
    return WarmupCost(warmup.steps, images, images * cost_ratio)


@dataclass
class WarmingUp:
    """The warm-up of each scored draw of the widened model (charged to the timer's "warmup"
    stage), and what each cost: the score stage's state, handed to `score_initialisations`."""

    warmup: Warmup
    batches: Sequence[Batch]
    loss_fn: LossFn
    cost_ratio: float  # the widened model's FLOPs over the original's
    timer: StageTimer
    spent: list[WarmupCost] = field(default_factory=list)

    def run(self, model: nn.Module) -> None:
        with self.timer("warmup"):
            self.spent.append(warm_up(model, self.warmup, self.batches, self.loss_fn, self.cost_ratio))


def _images(batch: Any) -> int:
    """Images in a batch: an (images, targets) pair, or an mmengine batch dict of `inputs`."""
    inputs = batch.get("inputs") if isinstance(batch, dict) else batch[0]
    return len(inputs) if inputs is not None else 0


def warmup_note(warmup: Warmup, costs: Sequence[WarmupCost], batch_size: int) -> str:
    """The report's line on the warm-up and what it cost."""
    cost = WarmupCost.total(costs)
    return (
        f"warm-up before scoring: {cost.steps} SGD steps (lr {warmup.lr}, momentum {warmup.momentum}) on "
        f"{cost.images:,} images through the widened model, the compute of {cost.original_images:,.0f} image "
        f"passes of training the original model (scoring batches of {batch_size})"
    )
