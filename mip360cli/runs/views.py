"""Rendering one camera of a run, and the cameras of its splits at a given image scale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..data.cameras import Cameras, image_rays
from ..core.memory import require
from ..model.gaussians import PIXEL_RADIUS
from ..model.model import Mip360, chunk_rays, render_rays


MAX_SIDE = 16384
"""The largest image side mip360 renders (16K video): camera paths, the viewer and the Python API."""


@dataclass
class View:
    """A camera to render: (3, 3) K, (3, 4) c2w (normalized scene, OpenCV axes), (5,) distortion or None."""

    name: str
    K: np.ndarray
    c2w: np.ndarray
    dist: np.ndarray | None
    width: int
    height: int


def camera_rays(K: np.ndarray, c2w: np.ndarray, dist: np.ndarray | None, width: int, height: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One camera's rays row by row: origins, directions, viewdirs (H*W, 3) and radii (H*W,)
    (:func:`~mip360cli.model.gaussians.pixel_radii`: the pixel's cone, for the integrated encoding)."""
    o, d, vd = image_rays(K, c2w, dist, width, height, device)
    return o, d, vd, torch.full((o.shape[0],), PIXEL_RADIUS / float(K[0, 0]), device=device)


def render_image(model: Mip360, K: np.ndarray, c2w: np.ndarray, dist: np.ndarray | None, width: int, height: int,
                 chunk: int | str, device: torch.device, depth: bool = True,
                 code: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Render one camera: rgb (H, W, 3), acc, mean_depth, median_depth (H, W), float32 numpy, scene units.

    ``chunk``: rays at once, or ``auto`` (``render.chunk_rays``, see :func:`~mip360cli.model.model.chunk_rays`).
    ``code``: the appearance code (A,) of a model with appearance codes (default: the training images' mean).
    """
    require(frame_bytes(model, width, height, chunk, device), device, f"rendering a {width}x{height} frame",
            hint="render a smaller image (--ratio, or the camera path's size) or fewer rays at once "
                 "(render.chunk_rays)")
    o, d, vd, radii = camera_rays(K, c2w, dist, width, height, device)
    out = render_rays(model, o, d, vd, chunk, depth=depth, radii=radii, code=code)
    return {k: x.float().cpu().numpy().reshape(height, width, *x.shape[1:]) for k, x in out.items()}


def frame_bytes(model: Mip360, width: int, height: int, chunk: int | str, device: torch.device) -> float:
    """About the memory a frame takes to render: its rays and outputs (float32, kept twice while they are
    joined and copied to numpy) and one chunk's largest MLP activation on every level."""
    rays = width * height
    per_ray = 4 * (9 + 6) * 2  # origins, directions, viewdirs; rgb, acc, two depths
    cfg = model.cfg
    widest = max(cfg.prop.width * max(cfg.prop.samples), cfg.nerf.width * cfg.nerf.samples)
    return float(rays) * per_ray + 4.0 * chunk_rays(chunk, model, device) * widest * 3


def nearest_camera(candidates: np.ndarray, c2w: np.ndarray) -> int:
    """The index of the camera of ``candidates`` (N, 3, 4) nearest ``c2w`` (3, 4): by position, then viewing
    direction (0.1 scene units per unit of ``1 - cos``).

    Example:
        >>> cams = np.stack([np.eye(3, 4), np.eye(3, 4)]); cams[1, 0, 3] = 1.0
        >>> probe = np.eye(3, 4); probe[0, 3] = 0.8
        >>> nearest_camera(cams, probe)
        1
    """
    score = np.linalg.norm(candidates[:, :, 3] - c2w[:, 3], axis=1) + 0.1 * (1 - candidates[:, :, 2] @ c2w[:, 2])
    return int(np.argmin(score))


def split_views(cameras: Cameras, indices: np.ndarray, scale: float, split: str) -> list[View]:
    """The cameras ``indices`` of a split, their images scaled by ``scale``, named after their photos."""
    if len(indices) == 0:
        raise UserError(f"the run has no {split} views", hint="it was trained with data.test_every=0")
    sub = cameras.select(indices).scaled(scale)
    return [View(Path(sub.names[i]).stem, sub.K[i], sub.c2w[i], sub.dist[i], int(sub.width[i]), int(sub.height[i]))
            for i in range(len(sub))]
