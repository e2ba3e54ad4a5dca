"""Volume rendering: weights, compositing, mean and median depth (docs/algorithm.md §5). Pure functions."""

from __future__ import annotations

import torch

from . import stepfun


def alpha_weights(density: torch.Tensor, t: torch.Tensor, directions: torch.Tensor,
                  opaque_background: bool = True) -> torch.Tensor:
    """Compositing weights ``w_i = alpha_i T_i`` of intervals along rays.

    Args:
        density: (R, n) sigma of each interval; t: (R, n+1) metric edges;
        directions: (R, 3) ray directions (not normalized; distances scale by |d|).
        opaque_background: treat the last interval as infinitely wide (sum w = 1).
    Returns:
        (R, n) weights.

    Example:
        >>> w = alpha_weights(torch.tensor([[1.0, 2, 4]]), torch.tensor([[0.0, .5, 1, 1.5]]),
        ...                   torch.tensor([[0.0, 0, 1]]), opaque_background=False)
        >>> [round(x, 5) for x in w[0].tolist()]
        [0.39347, 0.3834, 0.19293]
    """
    delta = (t[..., 1:] - t[..., :-1]) * directions.norm(dim=-1, keepdim=True)
    dd = density * delta
    if opaque_background:
        dd = torch.cat([dd[..., :-1], torch.full_like(dd[..., -1:], float("inf"))], dim=-1)
    alpha = 1 - torch.exp(-dd)
    trans = torch.exp(-torch.cat([torch.zeros_like(dd[..., :1]), torch.cumsum(dd[..., :-1], dim=-1)], dim=-1))
    return alpha * trans


def composite(weights: torch.Tensor, values: torch.Tensor, background: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``sum_i w_i v_i + (1 - sum w) * background``.

    Args:
        weights: (R, n); values: (R, n, C); background: scalar or (C,).
    Returns:
        (R, C).
    """
    acc = weights.sum(-1, keepdim=True)
    return (weights[..., None] * values).sum(-2) + (1 - acc) * background


def mean_depth(weights: torch.Tensor, t: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Weighted arithmetic mean of interval midpoints, clipped to [near, far]: (R,)."""
    tmid = (t[..., 1:] + t[..., :-1]) / 2
    acc = weights.sum(-1)
    d = (weights * tmid).sum(-1) / acc.clamp_min(torch.finfo(weights.dtype).eps)
    return d.clamp(near, far)


def median_depth(weights: torch.Tensor, t: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Where the piecewise-linear CDF of the weights reaches 0.5, clipped to [near, far]: (R,).

    The background weight ``1 - sum w`` is appended as one more interval ending at ``far``; the CDF is
    the step function's integral (:func:`~mip360cli.model.stepfun.integrate_weights`).

    Example:
        >>> t = torch.tensor([[1.0, 2, 3, 4]])
        >>> round(median_depth(torch.tensor([[0.1, 0.3, 0.4]]), t, 0.2, 100.0).item(), 4)
        3.25
    """
    t_ext = torch.cat([t, torch.full_like(t[..., :1], far)], dim=-1)
    w_ext = torch.cat([weights, (1 - weights.sum(-1, keepdim=True)).clamp_min(0)], dim=-1)
    half = torch.full_like(t[..., :1], 0.5)
    return stepfun.interp(half, stepfun.integrate_weights(w_ext), t_ext)[..., 0].clamp(near, far)
