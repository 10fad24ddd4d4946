"""Learning-rate schedules of the RL stages (the multiplier a ``LambdaLR`` applies per step)."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["lr_lambda"]


def lr_lambda(
    warmup_steps: int, total_steps: int, schedule: str = "cosine", min_ratio: float = 0.1
) -> Callable[[int], float]:
    """Multiplier of the base learning rate per optimiser step: linear warm-up, then
    ``"constant"``, ``"linear"`` or ``"cosine"`` decay to ``min_ratio`` at ``total_steps``.

    >>> f = lr_lambda(2, 10, "cosine", 0.0)
    >>> [round(f(s), 3) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.0]
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"schedule must be constant, linear or cosine, got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_ratio + (1.0 - min_ratio) * shape

    return factor
