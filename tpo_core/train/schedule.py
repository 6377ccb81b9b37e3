"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr_ratio`` of the base rate.

``lr_factor(step)`` multiplies each param group's base lr at optimizer step ``step`` (0-based)::

    step < warmup:  (step + 1) / warmup
    otherwise:      min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * p)),  p = (step - warmup) / (total - warmup)

so the last step (``total - 1``) runs close to ``min_ratio`` (paper: cosine to 5 %, no warm-up).
The schedule is stateless: resuming only needs the step count.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total: int, warmup: int = 0, min_ratio: float = 0.05) -> float:
    if total <= 0:
        raise ValueError(f"lr_factor: total steps must be > 0, got {total}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    p = min(1.0, max(0.0, (step - warmup) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


class CosineSchedule:
    """Sets the lr of every group of ``optimizer`` from its ``base_lr`` for a given step."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup: int = 0, min_ratio: float = 0.05):
        self.optimizer, self.total, self.warmup, self.min_ratio = optimizer, total, warmup, min_ratio
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])

    def apply(self, step: int) -> float:
        """Set the lrs for optimizer step ``step``; returns the factor."""
        f = lr_factor(step, self.total, self.warmup, self.min_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        return f

    def state_dict(self) -> dict:
        return {"total": self.total, "warmup": self.warmup, "min_ratio": self.min_ratio}
