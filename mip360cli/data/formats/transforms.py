"""``transforms.json`` (nerfstudio, instant-ngp, Blender synthetic).

Poses are camera-to-world 4x4 ``transform_matrix`` in OpenGL axes (x right,
y up, z backwards); converted here by flipping the y and z camera axes.
Intrinsics come from ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` (nerfstudio,
instant-ngp), or ``camera_angle_x`` (Blender), globally or per frame;
distortion from ``k1 k2 k3 p1 p2``. ``file_path`` is relative to the file
and may lack its extension (Blender).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ...core.errors import UserError
from ...core.files import MIB, read_json_bounded
from ..cameras import OPENGL_TO_OPENCV, Cameras, focal_from_fov
from ..images import IMAGE_EXTENSIONS, image_size

FILE = "transforms.json"


def detect(folder: Path) -> bool:
    return (folder / FILE).exists() or (folder / "transforms_train.json").exists()


def input_files(folder: Path) -> list[Path]:
    return [p for p in (folder / FILE, folder / "transforms_train.json") if p.exists()][:1]


def _resolve_image(base: Path, file_path: str) -> Path:
    p = base / file_path
    if p.suffix.lower() in IMAGE_EXTENSIONS or p.exists():
        return p
    for ext in (".png", ".jpg", ".jpeg"):
        if p.with_suffix(p.suffix + ext).exists():
            return p.with_suffix(p.suffix + ext)
    return p


LIMIT = 512 * MIB  # about 1 KiB a frame


def read(folder: Path) -> Cameras:
    path = input_files(folder)[0] if input_files(folder) else folder / FILE
    meta = read_json_bounded(path, "camera file", LIMIT)
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames or not isinstance(frames, list):
        raise UserError(f"{path}: no 'frames' listed", hint="a transforms.json needs a non-empty 'frames' list")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str) or "transform_matrix" not in fr:
            raise UserError(f"{path}: frame {i} needs 'file_path' (a string) and 'transform_matrix'")
    frames = sorted(frames, key=lambda fr: fr["file_path"])
    Ks, c2ws, ws, hs, dists, paths, names = [], [], [], [], [], [], []
    for fr in frames:
        img = _resolve_image(path.parent, fr["file_path"])
        get = _Field(path, fr, meta)  # per-frame over global, numbers checked
        w, h = get.number("w", None), get.number("h", None)
        if w is None or h is None:  # a missing image is dropped later (data.missing_images); no size needed
            w, h = image_size(img) if img.is_file() else (0, 0)
        if get.number("fl_x", None) is not None:
            fx = get.number("fl_x")
            fy = get.number("fl_y", fx)
        elif get.number("camera_angle_x", None) is not None:
            fx = focal_from_fov(get.angle("camera_angle_x"), w)
            fy = focal_from_fov(get.angle("camera_angle_y"), h) if get.number("camera_angle_y", None) else fx
        else:
            raise UserError(f"{path}: frame '{fr['file_path']}' has no focal length",
                            hint="give fl_x/fl_y or camera_angle_x, globally or per frame")
        cx, cy = get.number("cx", w / 2), get.number("cy", h / 2)
        try:
            m = np.asarray(fr["transform_matrix"], np.float64)
        except (TypeError, ValueError, OverflowError):
            m = np.zeros(0)
        if m.shape not in ((4, 4), (3, 4)):
            raise UserError(f"{path}: frame '{fr['file_path']}' transform_matrix must be 4x4 numbers")
        c2w = np.concatenate([m[:3, :3] @ OPENGL_TO_OPENCV, m[:3, 3:4]], axis=1)
        Ks.append([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        c2ws.append(c2w), ws.append(w), hs.append(h), paths.append(img)
        dists.append([get.number(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3")])
        names.append(str(Path(fr["file_path"]).as_posix()))
    return Cameras.create(Ks, c2ws, ws, hs, paths, names, dists)


class _Field:
    """A frame's number (or the file's global one), checked: one message naming the file, frame and key."""

    def __init__(self, path: Path, frame: dict, meta: dict):
        self.path, self.frame, self.meta = path, frame, meta

    def number(self, key: str, default=0.0):
        value = self.frame.get(key, self.meta.get(key, default))
        if value is None or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{self.path}: frame '{self.frame['file_path']}': '{key}' must be a finite number, "
                            f"got {value!r}")
        return value

    def angle(self, key: str) -> float:
        """A field of view in radians, strictly between 0 and pi (180 degrees)."""
        value = self.number(key)
        if not 0 < value < math.pi:
            raise UserError(f"{self.path}: frame '{self.frame['file_path']}': '{key}' is {value!r} radians; a field "
                            "of view must be between 0 and pi (180 degrees)")
        return value


def write(folder: Path, cameras: Cameras, image_names: list[str]) -> None:
    """Write a nerfstudio-style ``transforms.json`` with per-frame intrinsics.

    Args:
        image_names: file paths relative to ``folder``, one per camera.
    """
    frames = []
    for i in range(len(cameras)):
        K, d = cameras.K[i], cameras.dist[i]
        m = np.eye(4)
        m[:3, :3] = cameras.c2w[i, :, :3] @ OPENGL_TO_OPENCV
        m[:3, 3] = cameras.c2w[i, :, 3]
        frames.append({
            "file_path": image_names[i], "transform_matrix": m.tolist(),
            "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
            "w": int(cameras.width[i]), "h": int(cameras.height[i]),
            "k1": d[0], "k2": d[1], "p1": d[2], "p2": d[3], "k3": d[4],
        })
    meta = {"camera_model": "OPENCV", "frames": frames}
    (folder / FILE).write_text(json.dumps(meta, indent=2))
