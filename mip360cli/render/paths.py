"""Camera paths for novel views, in the normalized scene (OpenCV axes, +z up). Pure functions.

* ``ellipse``: an orbit around the focus point at the cameras' mean height, its
  radii from the cameras' spread (multinerf's 360 path).
* ``spiral``: an LLFF-style spiral around the mean camera, looking at the focus point.
* ``interp``: a smooth pass through the training cameras (linear positions, slerped rotations).
* a camera-path JSON file: mip360's own format or nerfstudio's ``camera_path.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.cameras import OPENGL_TO_OPENCV, look_at, quaternion_to_rotation, rotation_to_quaternion
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


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (wxyz), the shorter way round."""
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    angle = np.arccos(dot)
    return (np.sin((1 - t) * angle) * q0 + np.sin(t * angle) * q1) / np.sin(angle)


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


def _number(value, path: Path, what: str, kind: type):
    """``value`` as an int or float, or a UserError naming the file and the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise UserError(f"{path}: {what} must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise UserError(f"{path}: {what} must be a whole number, got {value!r}")
    return kind(value)


def load_path_file(path: Path, transform: np.ndarray, default_size: tuple[int, int], default_K: np.ndarray
                   ) -> tuple[np.ndarray, list[np.ndarray], tuple[int, int]]:
    """Read a camera-path JSON file into normalized poses.

    Formats:
      * mip360: ``{"width": W, "height": H, "fov_deg": vertical FOV (optional),
        "space": "input" | "normalized", "frames": [{"c2w": 3x4 or 4x4 (OpenCV axes), "fov_deg": ...}]}``
      * nerfstudio ``camera_path.json``: ``render_width``, ``render_height``, ``camera_path``
        with ``camera_to_world`` (16 values, OpenGL axes) and ``fov`` (vertical, degrees); taken
        to be in the dataset's own (input) world.

    Returns (N, 3, 4) normalized poses, N intrinsics (3, 3), (width, height).
    """
    try:
        meta = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"camera path file {path} does not exist",
                        hint="use --path ellipse|spiral|interp|test|train or an existing JSON file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read camera path file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object with 'frames' (mip360) or 'camera_path' (nerfstudio)")
    nerfstudio = "camera_path" in meta
    if not nerfstudio and "frames" not in meta:
        raise UserError(f"{path}: expected 'frames' (mip360) or 'camera_path' (nerfstudio)")
    w = _number(meta.get("render_width" if nerfstudio else "width", default_size[0]), path, "width", int)
    h = _number(meta.get("render_height" if nerfstudio else "height", default_size[1]), path, "height", int)
    if w < 1 or h < 1:
        raise UserError(f"{path}: the image size must be at least 1x1, got {w}x{h}")
    space = "input" if nerfstudio else meta.get("space", "input")
    if space not in ("input", "normalized"):
        raise UserError(f"{path}: 'space' must be 'input' or 'normalized', got {space!r}")
    listed = meta["camera_path" if nerfstudio else "frames"]
    if not isinstance(listed, list):
        raise UserError(f"{path}: '{'camera_path' if nerfstudio else 'frames'}' must be a list of frames")
    if not listed:
        raise UserError(f"{path}: the path has no frames")
    frames = []
    for i, f in enumerate(listed):
        key = "camera_to_world" if nerfstudio else "c2w"
        if not isinstance(f, dict) or key not in f:
            raise UserError(f"{path}: frame {i} must be an object with '{key}'")
        try:
            m = np.asarray(f[key], float)
            m = m.reshape(4, 4) if nerfstudio else m
        except (ValueError, TypeError):
            raise UserError(f"{path}: frame {i}: '{key}' must be a matrix of numbers "
                            f"({'16 values' if nerfstudio else '3x4 or 4x4'})") from None
        fov = f.get("fov") if nerfstudio else f.get("fov_deg", meta.get("fov_deg"))
        if fov is not None:
            fov = _number(fov, path, f"frame {i}'s field of view", float)
            if not 0 < fov < 180:
                raise UserError(f"{path}: frame {i}: the field of view must be between 0 and 180 degrees, got {fov}")
        frames.append({"c2w": m, "fov_deg": fov, "gl": nerfstudio})
    poses, Ks = [], []
    scale = np.linalg.norm(transform[0, :3])
    for i, f in enumerate(frames):
        m = f["c2w"]
        if m.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(m)):
            raise UserError(f"{path}: frame {i} needs a finite 3x4 or 4x4 camera-to-world matrix")
        R, t = m[:3, :3], m[:3, 3]
        err = float(np.abs(R.T @ R - np.eye(3)).max())
        if err > 1e-3 or abs(np.linalg.det(R) - 1) > 1e-3:
            raise UserError(f"{path}: frame {i}: the camera-to-world rotation is not a rotation "
                            f"(|R^T R - I| = {err:.3g}, det = {np.linalg.det(R):.4f})",
                            hint="poses must be rigid: no scale, shear or mirror in the 3x3 part")
        if f["gl"]:
            R = R @ OPENGL_TO_OPENCV
        if space == "input":
            R = transform[:3, :3] @ R / scale
            t = transform[:3, :3] @ t + transform[:3, 3]
        poses.append(np.concatenate([R, t[:, None]], 1))
        if f["fov_deg"]:
            fy = 0.5 * h / np.tan(np.radians(float(f["fov_deg"])) / 2)
            Ks.append(np.array([[fy, 0, w / 2], [0, fy, h / 2], [0, 0, 1.0]]))
        else:
            K = default_K.copy()
            K[0] *= w / default_size[0]
            K[1] *= h / default_size[1]
            Ks.append(K)
    return np.stack(poses), Ks, (w, h)
