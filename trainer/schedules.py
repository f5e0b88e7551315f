"""Per-iteration schedules (DINOV2_SPEC.md §4.2): learning rate, weight decay, teacher momentum and temperature.

Each schedule is a precomputed array, [zeros for `freeze_iters`, linear warm-up, half-cosine to the final value];
indexing past its end returns the final value, so a run that goes on (or a high-resolution phase) stays defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.config import TrainConfig

__all__ = ["CosineScheduler", "Schedules", "build_schedules"]


class CosineScheduler:
    """base_value -> final_value along a half cosine over total_iters, after an optional warm-up and freeze."""

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0.0,
        freeze_iters: int = 0,
    ) -> None:
        if warmup_iters + freeze_iters > total_iters:
            raise ValueError(
                f"warm-up ({warmup_iters}) plus freeze ({freeze_iters}) iterations exceed the total ({total_iters})"
            )
        self.final_value = float(final_value)
        self.total_iters = int(total_iters)
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        n = total_iters - warmup_iters - freeze_iters
        steps = np.arange(n)
        cosine = final_value + 0.5 * (base_value - final_value) * (1.0 + np.cos(np.pi * steps / max(n, 1)))
        self.schedule = np.concatenate((freeze, warmup, cosine))
        assert len(self.schedule) == self.total_iters

    def __len__(self) -> int:
        return self.total_iters

    def __getitem__(self, it: int) -> float:
        if it < 0:
            raise IndexError("schedules are indexed by non-negative iteration numbers")
        if it >= self.total_iters:
            return self.final_value
        return float(self.schedule[it])


@dataclass
class Schedules:
    lr: CosineScheduler
    wd: CosineScheduler
    momentum: CosineScheduler
    teacher_temp: CosineScheduler
    last_layer_lr: CosineScheduler

    def at(self, it: int) -> dict[str, float]:
        """Every scheduled value at iteration `it` (what the loop applies and logs)."""
        return {
            "lr": self.lr[it],
            "wd": self.wd[it],
            "momentum": self.momentum[it],
            "teacher_temp": self.teacher_temp[it],
            "last_layer_lr": self.last_layer_lr[it],
        }


def build_schedules(cfg: TrainConfig, world_size: int = 1) -> Schedules:
    """The five schedules of a `TrainConfig`, with the lr scaled for the global batch (sqrt rule)."""
    o, t = cfg.optim, cfg.teacher
    total = o.total_iters
    lr_kw = dict(
        base_value=o.scaled_lr(world_size),
        final_value=o.min_lr,
        total_iters=total,
        warmup_iters=o.epochs_to_iters(o.warmup_epochs),
        start_warmup_value=0.0,
    )
    temp_iters = o.epochs_to_iters(t.warmup_temp_epochs)
    last_layer = CosineScheduler(**lr_kw)
    # Prototypes stay fixed while the rest of the network settles (upstream zeroes this stretch of the lr).
    last_layer.schedule[: o.epochs_to_iters(o.freeze_last_layer_epochs)] = 0.0
    return Schedules(
        lr=CosineScheduler(**lr_kw),
        wd=CosineScheduler(o.weight_decay, o.weight_decay_end, total),
        momentum=CosineScheduler(t.momentum, t.final_momentum, total),
        # Linear warm-up only: the schedule is exactly the warm-up, then the final value forever.
        teacher_temp=CosineScheduler(t.temp, t.temp, temp_iters, warmup_iters=temp_iters,
                                     start_warmup_value=t.warmup_temp),
        last_layer_lr=last_layer,
    )
