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
from ..cameras import OPENGL_TO_OPENCV, Cameras
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


def read(folder: Path) -> Cameras:
    path = input_files(folder)[0] if input_files(folder) else folder / FILE
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise UserError(f"{path}: no 'frames' listed", hint="a transforms.json needs a non-empty 'frames' list")
    frames = sorted(frames, key=lambda fr: str(fr.get("file_path", "")))
    Ks, c2ws, ws, hs, dists, paths, names = [], [], [], [], [], [], []
    for i, fr in enumerate(frames):
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise UserError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'")
        img = _resolve_image(path.parent, fr["file_path"])
        get = lambda k, default=None: fr.get(k, meta.get(k, default))  # noqa: E731 - per-frame over global
        w, h = get("w"), get("h")
        if w is None or h is None:  # a missing image is dropped later (data.missing_images); no size needed
            w, h = image_size(img) if img.is_file() else (0, 0)
        if get("fl_x") is not None:
            fx = get("fl_x")
            fy = get("fl_y", fx)
        elif get("camera_angle_x") is not None:
            fx = 0.5 * w / math.tan(0.5 * get("camera_angle_x"))
            fy = 0.5 * h / math.tan(0.5 * get("camera_angle_y")) if get("camera_angle_y") else fx
        else:
            raise UserError(f"{path}: frame '{fr['file_path']}' has no focal length",
                            hint="give fl_x/fl_y or camera_angle_x, globally or per frame")
        cx, cy = get("cx", w / 2), get("cy", h / 2)
        m = np.asarray(fr["transform_matrix"], np.float64)
        if m.shape not in ((4, 4), (3, 4)):
            raise UserError(f"{path}: frame '{fr['file_path']}' transform_matrix must be 4x4")
        c2w = np.concatenate([m[:3, :3] @ OPENGL_TO_OPENCV, m[:3, 3:4]], axis=1)
        Ks.append([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        c2ws.append(c2w), ws.append(w), hs.append(h), paths.append(img)
        dists.append([get("k1", 0.0), get("k2", 0.0), get("p1", 0.0), get("p2", 0.0), get("k3", 0.0)])
        names.append(str(Path(fr["file_path"]).as_posix()))
    return Cameras.create(Ks, c2ws, ws, hs, paths, names, dists)


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
