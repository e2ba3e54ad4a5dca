"""Generated camera paths for novel views, in the normalized scene (OpenCV axes, +z up). Pure functions.

* ``ellipse``: an orbit around the focus point at the cameras' mean height, its
  radii from the cameras' spread (multinerf's 360 path).
* ``spiral``: an LLFF-style spiral around the mean camera, looking at the focus point.
* ``interp``: a smooth pass through the training cameras (linear positions, slerped rotations).

Camera-path files are read and written by :mod:`mip360cli.runs.camera_paths`.
"""

from __future__ import annotations

import numpy as np

from ..data.cameras import look_at, quaternion_to_rotation, rotation_to_quaternion, slerp
from ..core.errors import UserError


def focus_point(c2w: np.ndarray) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis: (3,).

    Args:
        c2w: (N, 3, 4) OpenCV camera-to-world (optical axis = +z column).
    """
    d = c2w[:, :, 2] / np.linalg.norm(c2w[:, :, 2], axis=-1, keepdims=True)
    o = c2w[:, :, 3]
    m = np.eye(3) - d[:, :, None] * d[:, None, :]  # (N, 3, 3) projections orthogonal to each axis
    return np.linalg.solve(m.sum(0), (m @ o[:, :, None]).sum(0))[:, 0]


def ellipse_path(c2w: np.ndarray, n_frames: int, z_variation: float = 0.0) -> np.ndarray:
    """An elliptical orbit in the horizontal plane through the cameras' mean height.

    Returns (n_frames, 3, 4) poses looking at :func:`focus_point`, up = +z.
    """
    center = focus_point(c2w)
    offset = np.array([center[0], center[1], 0.0])
    radii = np.percentile(np.abs(c2w[:, :, 3] - offset), 90, axis=0)
    z_lo, z_hi = np.percentile(c2w[:, 2, 3], 10), np.percentile(c2w[:, 2, 3], 90)
    theta = np.linspace(0, 2 * np.pi, n_frames, endpoint=False)
    pos = np.stack([offset[0] + radii[0] * np.cos(theta), offset[1] + radii[1] * np.sin(theta),
                    z_variation * (z_lo + (z_hi - z_lo) * (np.cos(theta) * 0.5 + 0.5))], -1)
    return np.stack([look_at(p, center, np.array([0.0, 0.0, 1.0])) for p in pos])


def spiral_path(c2w: np.ndarray, n_frames: int, n_rots: int = 2, radius_scale: float = 0.5) -> np.ndarray:
    """An LLFF-style spiral around the mean camera position, looking at the focus point."""
    center = focus_point(c2w)
    mean_pos = c2w[:, :, 3].mean(0)
    forward = center - mean_pos
    forward /= np.linalg.norm(forward)
    base = look_at(mean_pos, center, np.array([0.0, 0.0, 1.0]))
    radii = radius_scale * np.percentile(np.abs(c2w[:, :, 3] - mean_pos), 90, axis=0)
    r = np.array([radii[:2].max(), radii.max() * 0.5, radii.max() * 0.25])
    theta = np.linspace(0, 2 * np.pi * n_rots, n_frames, endpoint=False)
    local = np.stack([np.cos(theta) * r[0], -np.sin(theta) * r[1], -np.sin(theta * 0.5) * r[2]], -1)
    pos = mean_pos + local @ base[:, :3].T
    return np.stack([look_at(p, center, np.array([0.0, 0.0, 1.0])) for p in pos])


def interp_path(c2w: np.ndarray, n_frames: int) -> np.ndarray:
    """Pass through the given cameras in order: linear positions, slerped rotations, closed loop."""
    n = len(c2w)
    if n < 2:
        raise UserError("the interp path needs at least 2 cameras")
    quats = [rotation_to_quaternion(p[:, :3]) for p in c2w]
    out = []
    for k in range(n_frames):
        x = k * n / n_frames
        i, t = int(x) % n, x - int(x)
        j = (i + 1) % n
        R = quaternion_to_rotation(slerp(quats[i], quats[j], t))
        pos = (1 - t) * c2w[i, :, 3] + t * c2w[j, :, 3]
        out.append(np.concatenate([R, pos[:, None]], 1))
    return np.stack(out)
