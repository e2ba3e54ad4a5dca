"""Camera-path files: the one reader and the one writer of both formats mip360 knows.

* mip360's own: ``{"width": W, "height": H, "fps": F, "fov_deg": vertical FOV (optional),
  "space": "input" | "normalized", "frames": [{"c2w": 3x4 or 4x4 (OpenCV axes), "fov_deg": ...}]}``;
  the viewer also stores its ``keyframes`` there.
* nerfstudio's ``camera_path.json``: ``render_width``, ``render_height``, ``fps``, ``seconds`` and
  ``camera_path`` with ``camera_to_world`` (16 values, OpenGL axes) and ``fov`` (vertical, degrees),
  in the dataset's own (input) world.

``mip360 render --path FILE`` reads them; the viewer's camera-path editor writes them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import MIB, atomic_write_text, read_json_bounded
from ..data.cameras import OPENGL_TO_OPENCV, intrinsics_from_fov, transform_poses
from .views import MAX_SIDE

FORMATS = ("nerfstudio", "mip360")
LIMIT = 256 * MIB


def camera_path_json(frames: list[tuple[np.ndarray, float]], width: int, height: int, fps: float,
                     fmt: str, transform: np.ndarray, keyframes: list[tuple[np.ndarray, float]] = ()) -> dict:
    """A camera path as the JSON object of ``fmt``.

    Args:
        frames: (c2w (3, 4) in the normalized scene with OpenCV axes, vertical fov in radians) per frame.
        fmt: ``nerfstudio`` (the input data's world, OpenGL axes) or ``mip360`` (normalized, OpenCV axes).
        transform: (4, 4) input-to-normalized transform of the run (cameras.json).
        keyframes: the viewer's keyframes, kept in mip360's format to edit the path again.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown camera-path format {fmt!r}", hint="nerfstudio or mip360")
    if fmt == "mip360":
        return {"width": width, "height": height, "fps": fps, "space": "normalized",
                "frames": [{"c2w": np.asarray(c2w).tolist(), "fov_deg": math.degrees(fov)} for c2w, fov in frames],
                "keyframes": [{"c2w": np.asarray(c2w).tolist(), "fov_deg": math.degrees(fov)}
                              for c2w, fov in keyframes]}
    inputs = transform_poses(np.linalg.inv(transform), np.stack([c2w for c2w, _ in frames]))  # -> input world
    path = []
    for (_, fov), c2w in zip(frames, inputs):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = c2w[:, :3] @ OPENGL_TO_OPENCV, c2w[:, 3]  # OpenCV -> OpenGL axes
        path.append({"camera_to_world": m.flatten().tolist(), "fov": math.degrees(fov), "aspect": width / height})
    return {"camera_type": "perspective", "render_width": width, "render_height": height, "fps": fps,
            "seconds": len(frames) / fps, "camera_path": path}


def save_path_file(path: Path, data: dict) -> Path:
    """Write a camera path made by :func:`camera_path_json`, atomically."""
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def _number(value, path: Path, what: str, kind: type):
    """``value`` as an int or float, or a UserError naming the file and the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise UserError(f"{path}: {what} must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise UserError(f"{path}: {what} must be a whole number, got {value!r}")
    return kind(value)


def load_path_file(path: Path, transform: np.ndarray, default_size: tuple[int, int], default_K: np.ndarray
                   ) -> tuple[np.ndarray, list[np.ndarray], tuple[int, int]]:
    """Read a camera-path JSON file (either format, see the module's docstring) into normalized poses.

    Frames without a field of view take ``default_K`` scaled to the path's size.
    Returns (N, 3, 4) normalized poses, N intrinsics (3, 3), (width, height).
    """
    if not Path(path).exists():
        raise UserError(f"camera path file {path} does not exist",
                        hint="use --path ellipse|spiral|interp|test|train or an existing JSON file")
    meta = read_json_bounded(path, "camera path file", LIMIT)
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object with 'frames' (mip360) or 'camera_path' (nerfstudio)")
    nerfstudio = "camera_path" in meta
    if not nerfstudio and "frames" not in meta:
        raise UserError(f"{path}: expected 'frames' (mip360) or 'camera_path' (nerfstudio)")
    w = _number(meta.get("render_width" if nerfstudio else "width", default_size[0]), path, "width", int)
    h = _number(meta.get("render_height" if nerfstudio else "height", default_size[1]), path, "height", int)
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise UserError(f"{path}: the image size must be from 1x1 to {MAX_SIDE}x{MAX_SIDE}, got {w}x{h}")
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
        except (ValueError, TypeError, OverflowError):
            raise UserError(f"{path}: frame {i}: '{key}' must be a matrix of numbers "
                            f"({'16 values' if nerfstudio else '3x4 or 4x4'})") from None
        fov = f.get("fov") if nerfstudio else f.get("fov_deg", meta.get("fov_deg"))
        if fov is not None:
            fov = _number(fov, path, f"frame {i}'s field of view", float)
            if not 0 < fov < 180:
                raise UserError(f"{path}: frame {i}: the field of view must be between 0 and 180 degrees, got {fov}")
        frames.append({"c2w": m, "fov_deg": fov, "gl": nerfstudio})
    poses, Ks = [], []
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
        pose = np.concatenate([R, t[:, None]], 1)
        poses.append(transform_poses(transform, pose[None])[0] if space == "input" else pose)
        if f["fov_deg"]:
            Ks.append(intrinsics_from_fov(math.radians(f["fov_deg"]), w, h))
        else:
            K = default_K.copy()
            K[0] *= w / default_size[0]
            K[1] *= h / default_size[1]
            Ks.append(K)
    return np.stack(poses), Ks, (w, h)
