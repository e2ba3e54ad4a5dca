"""What the model learns per training image besides the scene: an appearance code and a pose correction.

Both are indexed by a training image's row (its position in the run's training split), not by its
camera index: held-out images have none. The pose correction follows nerfacto's ``SO3xR3``: a rotation
(axis-angle) and a translation, both in the camera's own frame, applied on the right of its
camera-to-world matrix: ``c2w' = c2w @ [exp(w) | t]``.
"""

from __future__ import annotations

import torch
from torch import nn


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of axis-angle vectors (Rodrigues), with a series near 0 (finite gradients at 0).

    Args:
        w: (..., 3) axis times angle (radians).
    Returns:
        (..., 3, 3) rotations.

    Example:
        >>> import math
        >>> [[round(v, 6) + 0.0 for v in row] for row in so3_exp(torch.tensor([0, 0, math.pi / 2])).tolist()]
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    theta_sq = (w * w).sum(-1)[..., None, None]
    small = theta_sq < 1e-8
    theta_safe = torch.where(small, torch.ones_like(theta_sq), theta_sq).sqrt()
    a = torch.where(small, 1 - theta_sq / 6, torch.sin(theta_safe) / theta_safe)  # sin(t) / t
    b = torch.where(small, 0.5 - theta_sq / 24, (1 - torch.cos(theta_safe)) / (theta_safe * theta_safe))
    zero = torch.zeros_like(w[..., 0])
    hat = torch.stack([zero, -w[..., 2], w[..., 1], w[..., 2], zero, -w[..., 0], -w[..., 1], w[..., 0], zero],
                      -1).reshape(*w.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(hat)
    return eye + a * hat + b * (hat @ hat)


def correct_poses(c2w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Camera-to-world matrices with corrections in each camera's frame.

    Args:
        c2w: (N, 3, 4); delta: (N, 6), translation (camera frame, scene units) then axis-angle.
    Returns:
        (N, 3, 4): rotation ``R exp(w)``, position ``p + R t``.

    Example:
        >>> c2w = torch.eye(3, 4)[None]
        >>> correct_poses(c2w, torch.tensor([[1.0, 0, 0, 0, 0, 0]]))[0, :, 3].tolist()
        [1.0, 0.0, 0.0]
    """
    R, p = c2w[..., :3], c2w[..., 3]
    new_R = R @ so3_exp(delta[..., 3:])
    new_p = p + (R @ delta[..., :3, None])[..., 0]
    return torch.cat([new_R, new_p[..., None]], -1)


class PerImage(nn.Module):
    """Per training image: an appearance code (``dim`` > 0) and a pose correction (``refine_poses``).

    Codes start at zero (the model starts as one without them), corrections at the identity.
    """

    def __init__(self, n_images: int, dim: int, refine_poses: bool):
        super().__init__()
        self.n_images, self.dim = n_images, dim
        self.codes = nn.Parameter(torch.zeros(n_images, dim)) if dim > 0 else None
        self.pose_delta = nn.Parameter(torch.zeros(n_images, 6)) if refine_poses else None

    def code(self, rows: torch.Tensor) -> torch.Tensor:
        """(R,) training rows -> (R, dim) codes."""
        return self.codes[rows]

    def mean_code(self) -> torch.Tensor:
        """(dim,) the mean code of the training images (a neutral appearance)."""
        return self.codes.mean(0)

    def corrected(self, c2w: torch.Tensor) -> torch.Tensor:
        """(n_images, 3, 4) poses of the training images, in row order -> corrected (unchanged without
        ``refine_poses``)."""
        return c2w if self.pose_delta is None else correct_poses(c2w, self.pose_delta)
