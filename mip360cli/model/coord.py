"""Scene contraction and the normalized-disparity warp (docs/algorithm.md §2). Pure functions."""

from __future__ import annotations

import torch


def contract(x: torch.Tensor) -> torch.Tensor:
    """Contract unbounded space into a ball of radius 2 (paper eq. 10).

    ``x`` if ``|x| <= 1``, else ``(2 - 1/|x|) x/|x|``.

    Args:
        x: (..., 3) points.
    Returns:
        (..., 3) contracted points, ``|.| < 2``.

    Example:
        >>> [round(v, 6) for v in contract(torch.tensor([3.0, 4.0, 0.0])).tolist()]
        [1.08, 1.44, 0.0]
    """
    # Clamping the squared norm keeps the gradient finite at the origin.
    mag_sq = (x * x).sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).eps)
    mag = mag_sq.sqrt()
    return torch.where(mag_sq <= 1, x, (2 - 1 / mag) * (x / mag))


def s_to_t(s: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Normalized disparity ``s`` in [0, 1] -> metric distance ``t`` in [near, far].

    ``t(s) = 1 / (s / far + (1 - s) / near)``.
    """
    return 1 / (s / far + (1 - s) / near)


def t_to_s(t: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Inverse of :func:`s_to_t`: ``s(t) = (1/t - 1/near) / (1/far - 1/near)``."""
    return (1 / t - 1 / near) / (1 / far - 1 / near)
