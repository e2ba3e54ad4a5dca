"""Losses and PSNR (docs/algorithm.md §6, §8). Pure functions."""

from __future__ import annotations

import math

import torch

from .stepfun import EPS32, outer_measure


def charbonnier(rgb: torch.Tensor, gt: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean of ``sqrt((rgb - gt)^2 + eps^2)`` over rays and channels: scalar."""
    return torch.sqrt((rgb - gt) ** 2 + eps * eps).mean()


def interlevel(s: torch.Tensor, w: torch.Tensor, s_prop: torch.Tensor, w_prop: torch.Tensor) -> torch.Tensor:
    """Per-interval proposal loss ``max(0, w - w_outer)^2 / (w + eps)`` (gradient to the proposal only).

    Args:
        s, w: (R, n+1), (R, n) the NeRF level's edges and weights (held constant).
        s_prop, w_prop: (R, k+1), (R, k) a proposal level's.
    Returns:
        (R, n); the loss is its mean.
    """
    s, w = s.detach(), w.detach()
    w_outer = outer_measure(s, s_prop, w_prop)
    return (w - w_outer).clamp_min(0) ** 2 / (w + EPS32)


def distortion(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Distortion loss per ray in O(n) with prefix sums.

    ``sum_ij w_i w_j |u_i - u_j| + 1/3 sum_i w_i^2 (s_{i+1} - s_i)``, u = midpoints.
    Since u is increasing, the pairwise term is ``2 sum_i w_i (u_i W_<i - S_<i)``
    with W_<i, S_<i the sums of w_j and w_j u_j over j < i.

    Args:
        s: (R, n+1) edges; w: (R, n) weights.
    Returns:
        (R,) loss per ray.
    """
    u = (s[..., 1:] + s[..., :-1]) / 2
    wu = w * u
    w_before = torch.cumsum(w, -1) - w
    wu_before = torch.cumsum(wu, -1) - wu
    inter = 2 * (w * (u * w_before - wu_before)).sum(-1)
    intra = (w * w * (s[..., 1:] - s[..., :-1])).sum(-1) / 3
    return inter + intra


def distortion_bruteforce(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """O(n^2) reference of :func:`distortion` (for tests)."""
    u = (s[..., 1:] + s[..., :-1]) / 2
    inter = (w[..., :, None] * w[..., None, :] * (u[..., :, None] - u[..., None, :]).abs()).sum((-1, -2))
    return inter + (w * w * (s[..., 1:] - s[..., :-1])).sum(-1) / 3


def mse_to_psnr(mse: float | torch.Tensor) -> float | torch.Tensor:
    """PSNR of images in [0, 1]: ``-10 log10(mse)`` (inf for identical images)."""
    if isinstance(mse, torch.Tensor):
        return -10 * torch.log10(mse)
    return float("inf") if mse == 0 else -10 * math.log10(mse)
