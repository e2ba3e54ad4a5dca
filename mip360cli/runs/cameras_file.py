"""``RUN/cameras.json``: the run's normalized cameras, its split and the input-to-normalized transform.

Written when training starts, read by render, eval, view and export. Its one writer and its one
reader are here; the reader checks every field, since the file may come from anyone.

::

    {"cache": "/abs/path/mip360_cache.h5",
     "convention": "OpenCV axes (x right, y down, z forward), camera-to-world, normalized scene",
     "transform_input_to_normalized": 4x4,
     "train": [camera indices], "test": [camera indices],
     "cameras": [{"name", "K": 3x3, "c2w": 3x4, "width", "height", "dist": 5, "image_path"}, ...],
     "image_source": {"folders", "as_is", "resized", "filter", "read", "used"} (how the images were made)}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import MIB, atomic_write_text, read_json_bounded
from ..data.cameras import Cameras, check_intrinsics, check_poses

CONVENTION = "OpenCV axes (x right, y down, z forward), camera-to-world, normalized scene"
LIMIT = 512 * MIB  # about 1 KiB a camera: far more than the largest capture


@dataclass
class RunCameras:
    """What cameras.json holds: cameras (normalized), the split, the transform, the cache trained on."""

    cameras: Cameras
    transform: np.ndarray
    """(4, 4) input world -> normalized world."""
    train: np.ndarray
    test: np.ndarray
    cache: Path | None
    image_source: dict | None = None
    """How the cache's images were made (``data.scene.image_source``); None when not recorded."""


def write_cameras_json(path: Path, cameras: Cameras, train: np.ndarray, test: np.ndarray, transform: np.ndarray,
                       cache: Path, image_source: dict | None = None) -> None:
    """Write cameras.json atomically."""
    atomic_write_text(path, json.dumps({
        "cache": str(Path(cache).resolve()),
        "image_source": image_source,
        "convention": CONVENTION,
        "transform_input_to_normalized": np.asarray(transform).tolist(),
        "train": np.asarray(train).tolist(), "test": np.asarray(test).tolist(),
        "cameras": [{"name": cameras.names[i], "K": cameras.K[i].tolist(), "c2w": cameras.c2w[i].tolist(),
                     "width": int(cameras.width[i]), "height": int(cameras.height[i]),
                     "dist": cameras.dist[i].tolist(), "image_path": str(cameras.image_paths[i])}
                    for i in range(len(cameras))],
    }, indent=1))


def read_cameras_json(path: Path, run: Path) -> RunCameras:
    """Read and check cameras.json; every problem is one UserError naming the file and the field."""
    if not path.exists():
        raise UserError(f"{run} has no cameras.json (the run's cameras and split)",
                        hint=f"it is written when training starts: run `mip360 train DATA --run {run}` again "
                             "(it resumes), or copy the whole run folder")
    meta = read_json_bounded(path, "the run's cameras file", LIMIT)
    bad = _Bad(path, run)
    if not isinstance(meta, dict):
        raise bad("the file must hold a JSON object")
    listed = meta.get("cameras")
    if not isinstance(listed, list) or not listed:
        raise bad("'cameras' must be a non-empty list of cameras")
    Ks, c2ws, ws, hs, dists, paths, names = [], [], [], [], [], [], []
    for i, c in enumerate(listed):
        if not isinstance(c, dict):
            raise bad(f"camera {i} must be an object")
        names.append(_string(c, "name", bad, f"camera {i}"))
        Ks.append(_matrix(c.get("K"), (3, 3), bad, f"camera {i}: 'K'"))
        c2ws.append(_matrix(c.get("c2w"), (3, 4), bad, f"camera {i}: 'c2w'"))
        dists.append(_matrix(c.get("dist", [0.0] * 5), (5,), bad, f"camera {i}: 'dist'"))
        ws.append(_count(c.get("width"), bad, f"camera {i}: 'width'"))
        hs.append(_count(c.get("height"), bad, f"camera {i}: 'height'"))
        paths.append(_string(c, "image_path", bad, f"camera {i}", default=""))
    if len(set(names)) != len(names):
        raise bad("two cameras have the same name")
    cameras = Cameras.create(Ks, c2ws, ws, hs, paths, names, dists)
    try:
        check_intrinsics(cameras.K, cameras.width, cameras.height, cameras.names, path)
        check_poses(cameras.c2w, cameras.names, path)
    except UserError as e:
        raise bad(e.args[0].split(": ", 1)[-1]) from None
    transform = _matrix(meta.get("transform_input_to_normalized"), (4, 4), bad, "'transform_input_to_normalized'")
    if abs(np.linalg.det(transform[:3, :3])) < 1e-12 or np.any(transform[3] != [0, 0, 0, 1]):
        raise bad("'transform_input_to_normalized' must be an invertible similarity (last row 0 0 0 1)")
    split = {k: _indices(meta.get(k), len(cameras), bad, f"'{k}'") for k in ("train", "test")}
    if len(split["train"]) == 0:
        raise bad("'train' lists no camera")
    cache = meta.get("cache")
    if cache is not None and not isinstance(cache, str):
        raise bad("'cache' must be a path")
    source = meta.get("image_source")
    return RunCameras(cameras, transform, split["train"], split["test"], Path(cache) if cache else None,
                      source if isinstance(source, dict) else None)


class _Bad:
    """The error for a field of cameras.json: the file, the field, and how to get a good one."""

    def __init__(self, path: Path, run: Path):
        self.path, self.run = path, run

    def __call__(self, message: str) -> UserError:
        return UserError(f"{self.path}: {message}",
                         hint=f"the file is damaged: run `mip360 train DATA --run {self.run}` again to rewrite it "
                              "(it resumes), or copy the run folder again")


def _matrix(value, shape: tuple[int, ...], bad: _Bad, what: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise bad(f"{what} must be numbers of shape {shape}") from None
    if m.shape != shape or not np.all(np.isfinite(m)):
        raise bad(f"{what} must be finite numbers of shape {shape}")
    return m


def _count(value, bad: _Bad, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise bad(f"{what} must be a whole number of pixels from 1 to {1 << 20}, got {value!r}")
    return value


def _string(c: dict, key: str, bad: _Bad, what: str, default: str | None = None) -> str:
    value = c.get(key, default)
    if not isinstance(value, str):
        raise bad(f"{what}: '{key}' must be a string")
    return value


def _indices(value, n: int, bad: _Bad, what: str) -> np.ndarray:
    if not isinstance(value, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise bad(f"{what} must be a list of camera indices")
    idx = np.asarray(value, np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise bad(f"{what} names camera {int(idx.max() if idx.max() >= n else idx.min())}, but there are {n}")
    return idx
