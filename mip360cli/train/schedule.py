"""Learning-rate schedule (docs/algorithm.md §7). Pure function."""

from __future__ import annotations

import math


def learning_rate(step: int, lr_init: float, lr_final: float, max_steps: int, delay_steps: int = 0,
                  delay_mult: float = 1.0) -> float:
    """Log-linear decay from ``lr_init`` to ``lr_final`` over ``max_steps``, times a warm-up factor.

    ``warm-up = delay_mult + (1 - delay_mult) sin(pi/2 min(1, step / delay_steps))``.

    Example:
        >>> round(learning_rate(125_000, 2e-3, 2e-5, 250_000, 512, 0.01), 10)
        0.0002
    """
    if delay_steps > 0:
        delay = delay_mult + (1 - delay_mult) * math.sin(0.5 * math.pi * min(1.0, max(0.0, step / delay_steps)))
    else:
        delay = 1.0
    frac = min(max(step / max_steps, 0.0), 1.0)
    return delay * math.exp(math.log(lr_init) * (1 - frac) + math.log(lr_final) * frac)
