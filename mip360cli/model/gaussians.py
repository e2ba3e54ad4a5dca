"""Conical frustums as Gaussians, their contraction and their integrated positional encoding
(docs/algorithm.md §4, the paper's anti-aliasing). Pure functions.

A pixel is a cone around its ray (radius ``r`` at distance 1 along the unnormalized direction); a sample
interval ``[t0, t1]`` of it is a conical frustum, approximated by the Gaussian of the same first and
second moments (mip-NeRF eq. 7). Contraction is applied to the Gaussian by linearization about its mean
(``f(x) ~ f(mu) + J (x - mu)``: mean ``f(mu)``, covariance ``J S J^T``), and the encoding integrates each
sinusoid over the Gaussian: ``E[sin(a x)] = exp(-a^2 var / 2) sin(a mu)``.
"""

from __future__ import annotations

import math

import torch

PIXEL_RADIUS = 2 / math.sqrt(12)
"""A pixel's radius in units of its width: the disc of the same variance as the square pixel (mip-NeRF)."""


def pixel_radii(K: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """The cone radius at distance 1 of each ray: ``PIXEL_RADIUS / fx`` (a pixel's width at unit z).

    Args:
        K: (N, 3, 3) intrinsics; image_index: (R,) camera of each ray.
    Returns:
        (R,) radii.

    Example:
        >>> round(float(pixel_radii(torch.tensor([[[100., 0, 50], [0, 100, 50], [0, 0, 1]]]),
        ...                         torch.tensor([0]))[0]), 6)
        0.005774
    """
    return PIXEL_RADIUS / K[image_index, 0, 0]


def frustum_moments(t0: torch.Tensor, t1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moments of the conical frustum between distances ``t0`` and ``t1`` of a cone of radius 1 at distance 1.

    The stable form of mip-NeRF's eq. 7, with ``mu = (t0 + t1) / 2`` and ``h = (t1 - t0) / 2``.

    Args:
        t0, t1: (...) interval ends, ``t0 < t1``.
    Returns:
        t_mean (...): mean distance along the ray; t_var (...): its variance;
        r_var (...): the variance perpendicular to the ray (per axis), for a radius of 1 at distance 1.

    Example:
        >>> [round(float(x), 6) for x in frustum_moments(torch.tensor(1.), torch.tensor(3.))]
        [2.307692, 0.259172, 1.396154]
    """
    s, d = t0 + t1, t1 - t0
    eps = torch.finfo(torch.float32).eps ** 2
    ratio = d * d / torch.clamp(3 * s * s + d * d, min=eps)
    t_mean = s * (0.5 + ratio)
    t_var = d * d / 12 - ratio * ratio * (12 * s * s - d * d) / 15
    r_var = s * s / 16 + d * d * (5 / 48 - ratio / 15)
    return t_mean, t_var, r_var


def frustum_gaussians(origins: torch.Tensor, directions: torch.Tensor, radii: torch.Tensor,
                      t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussians of a batch of rays' sample intervals.

    Args:
        origins, directions: (R, 3) rays (directions not normalized); radii: (R,) cone radius at distance 1
            along ``directions``; t: (R, n+1) interval edges along ``directions``.
    Returns:
        mean (R, n, 3) and covariance (R, n, 3, 3) in world units.
    """
    t_mean, t_var, r_var = frustum_moments(t[..., :-1], t[..., 1:])
    r_var = r_var * (radii * radii)[:, None]
    d = directions
    mean = origins[:, None, :] + d[:, None, :] * t_mean[..., None]
    d_sq = torch.clamp((d * d).sum(-1, keepdim=True), min=1e-10)
    along = d[:, :, None] * d[:, None, :]  # (R, 3, 3)
    across = torch.eye(3, dtype=d.dtype, device=d.device) - along / d_sq[..., None]
    cov = t_var[..., None, None] * along[:, None] + r_var[..., None, None] * across[:, None]
    return mean, cov


def contract_gaussians(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene contraction applied to Gaussians by linearization (multinerf's ``track_linearize``).

    ``contract(x) = (2 - 1/r) x / r`` outside the unit ball has the Jacobian
    ``J = a I + b x x^T`` with ``a = (2r - 1) / r^2`` and ``b = 2 (1 - r) / r^4``; inside, ``J = I``.

    Args:
        mean: (..., 3); cov: (..., 3, 3).
    Returns:
        the contracted mean (..., 3) (as :func:`~mip360cli.model.coord.contract`) and covariance
        ``J cov J^T`` (..., 3, 3).

    Example:
        >>> m, c = contract_gaussians(torch.tensor([2.0, 0, 0]), torch.eye(3) * 0.01)
        >>> [round(v, 6) for v in m.tolist()], [round(float(c[i, i]), 6) for i in range(3)]
        ([1.5, 0.0, 0.0], [0.000625, 0.005625, 0.005625])
    """
    r_sq = torch.clamp((mean * mean).sum(-1, keepdim=True), min=torch.finfo(mean.dtype).eps)
    r = r_sq.sqrt()
    outside = r_sq > 1
    r_out = torch.where(outside, r, torch.ones_like(r))  # the formulas below only where they apply
    a = torch.where(outside, (2 * r_out - 1) / (r_out * r_out), torch.ones_like(r))
    b = torch.where(outside, 2 * (1 - r_out) / r_out ** 4, torch.zeros_like(r))
    new_mean = a * mean
    # J S J^T = a^2 S + a b (S x x^T + x x^T S) + b^2 (x^T S x) x x^T
    sx = (cov @ mean[..., None])[..., 0]  # (..., 3)
    xsx = (mean * sx).sum(-1, keepdim=True)
    outer = mean[..., :, None] * sx[..., None, :]
    new_cov = (a * a)[..., None] * cov + (a * b)[..., None] * (outer + outer.transpose(-1, -2)) \
        + (b * b * xsx)[..., None] * (mean[..., :, None] * mean[..., None, :])
    return new_mean, new_cov


def project_gaussians(mean: torch.Tensor, cov: torch.Tensor, basis: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and variances of Gaussians along the directions of a basis (multinerf's ``lift_and_diagonalize``).

    Args:
        mean: (..., 3); cov: (..., 3, 3); basis: (3, K) unit columns, or None for x, y, z.
    Returns:
        mean (..., K) and variance (..., K) of ``x @ basis``.
    """
    if basis is None:
        return mean, torch.diagonal(cov, dim1=-2, dim2=-1)
    return mean @ basis, ((cov @ basis) * basis).sum(-2)


def integrated_pos_enc(mean: torch.Tensor, var: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """``E[sin(2^k x)]`` and ``E[sin(2^k x + pi/2)]`` of Gaussians, for k < n_freqs.

    ``exp(-4^k var / 2) sin(2^k mean)``: a frequency finer than the Gaussian averages out. With
    ``var = 0`` this is :func:`~mip360cli.model.fields.pos_enc` without the identity.

    Args:
        mean, var: (..., D).
    Returns:
        (..., D * 2 * n_freqs), in the order of ``pos_enc``.

    Example:
        >>> [round(v, 4) for v in integrated_pos_enc(torch.tensor([0.5]), torch.tensor([0.1]), 2).tolist()]
        [0.456, 0.6889, 0.8348, 0.4424]
    """
    scales = 2.0 ** torch.arange(n_freqs, dtype=mean.dtype, device=mean.device)
    scaled_mean = (mean[..., None, :] * scales[:, None]).flatten(-2)
    scaled_var = (var[..., None, :] * (scales * scales)[:, None]).flatten(-2)
    damp = torch.exp(-0.5 * scaled_var)
    return torch.cat([damp * torch.sin(scaled_mean), damp * torch.sin(scaled_mean + 0.5 * math.pi)], dim=-1)
